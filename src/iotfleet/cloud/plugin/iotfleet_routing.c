/*
 * iotfleet's mosquitto plugin: answers of the fleet-provisioning API go to the connection that asked.
 *
 * On AWS IoT Core, the answer to a request on $aws/certificates/... or $aws/provisioning-templates/...
 * reaches only the connection that sent it, although every device shares the claim identity and
 * subscribes to the same topic. mosquitto fans a publish out to every subscriber, so this plugin:
 *   - adds the user property "iotfleet-client-id" (the requester's client id) to each request a device
 *     publishes on those topics, so the provisioning service knows whom to answer;
 *   - when the service (certificate CN "iotfleet-service") publishes an answer carrying the user property
 *     "iotfleet-deliver-to", strips the property and lets only that client id receive the message.
 * mosquitto routes a publish synchronously while handling it, and its READ access check is given the
 * same payload pointer as the message event, so one "current answer" slot suffices.
 * Built for the mosquitto 2.0 plugin interface (version 5).
 */
#include <stdio.h>
#include <string.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define SERVICE_IDENTITY "iotfleet-service"
#define CLIENT_ID_PROPERTY "iotfleet-client-id"
#define DELIVER_TO_PROPERTY "iotfleet-deliver-to"

static mosquitto_plugin_id_t *plugin_id;
static const void *answer_payload; /* the answer being routed right now, if any */
static char answer_target[256];

static int is_provisioning(const char *topic)
{
	return topic && (strncmp(topic, "$aws/certificates/", 18) == 0
			|| strncmp(topic, "$aws/provisioning-templates/", 28) == 0);
}

static void take_target(struct mosquitto_evt_message *ed)
{
	const mosquitto_property *prop = ed->properties;
	char *name = NULL, *value = NULL;
	int skip_first = 0;

	while((prop = mosquitto_property_read_string_pair(prop, MQTT_PROP_USER_PROPERTY, &name, &value, skip_first))){
		skip_first = 1;
		if(name && value && strcmp(name, DELIVER_TO_PROPERTY) == 0){
			snprintf(answer_target, sizeof(answer_target), "%s", value);
			answer_payload = ed->payload;
		}
		mosquitto_free(name);
		mosquitto_free(value);
		name = value = NULL;
	}
	if(answer_payload){
		/* the service sends no other property on answers: drop them all, devices see AWS's payload only */
		mosquitto_property_free_all(&ed->properties);
	}
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	const char *username;
	(void)event;
	(void)userdata;

	answer_payload = NULL;
	if(!is_provisioning(ed->topic)){
		return MOSQ_ERR_SUCCESS;
	}
	username = mosquitto_client_username(ed->client);
	if(username && strcmp(username, SERVICE_IDENTITY) == 0){
		take_target(ed);
	}else{
		mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY, CLIENT_ID_PROPERTY,
				mosquitto_client_id(ed->client));
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *client_id;
	(void)event;
	(void)userdata;

	if(ed->access == MOSQ_ACL_READ && answer_payload && ed->payload == answer_payload && is_provisioning(ed->topic)){
		client_id = mosquitto_client_id(ed->client);
		if(client_id == NULL || strcmp(client_id, answer_target) != 0){
			return MOSQ_ERR_ACL_DENIED;
		}
	}
	return MOSQ_ERR_PLUGIN_DEFER; /* everything else is the ACL file's to decide */
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	(void)supported_version_count;
	(void)supported_versions;
	return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	plugin_id = identifier;
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)){
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	return MOSQ_ERR_SUCCESS;
}
