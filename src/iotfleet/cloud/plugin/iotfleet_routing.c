/*
 * iotfleet's mosquitto plugin: who a connection is, what its certificate's policies allow (IoT Core's
 * authorization), and IoT Core's per-connection provisioning answers.
 *
 * Identity. The broker does not use use_identity_as_username: this plugin's basic-auth check reads the
 * client certificate's CN and makes it the connection's username (mosquitto verified the chain), whatever
 * username the client sent. The check refuses in the CONNACK, before mosquitto takes over an existing
 * session with the same client id, so the legitimate holder of a client id is never disturbed:
 *   - a connection without a certificate CN is refused;
 *   - client ids starting with "iotfleet-service" belong to the cloud's own services: any other
 *     certificate asking for one is refused (MQTT 5 0x87, 3.1.1 code 5);
 *   - a certificate that is INACTIVE or REVOKED never gets here: the listener's CRL (written by iotfleet,
 *     re-read on reload) fails its TLS handshake, as IoT Core's does. One this region does not know (not
 *     replicated yet, pending activation, deleted) is hung up on with no CONNACK;
 *   - iot:Connect on client/<client id> is evaluated on the certificate's policies; denied: MQTT 5 0x87,
 *     3.1.1 code 5 (IoT Core's DG says 7, a code 3.1.1 reserves; mosquitto sends the spec's 5).
 *
 * Quotas (quota.c; the plugin options quota_connect_per_client, quota_connect_per_account,
 * quota_publish_per_connection and quota_publish_per_account, 0 for none): checked after authorization.
 *   - a CONNECT over its client id's or the account's rate is hung up on with no CONNACK (IoT Core's
 *     MQTT 5 CONNACK would say 0x97; mosquitto's plugin interface cannot send that code);
 *   - a PUBLISH over its connection's or the account's rate is refused as a denied one is (0x87 on MQTT 5,
 *     the connection closed on 3.1.1), so it is never acknowledged and then dropped; a delivery over the
 *     receiver's connection rate is not made;
 *   - the re-check of every connection after a reload is not a CONNECT and counts for no quota;
 *   - what was throttled is logged once a second at most: "iotfleet: throttled <kind>=<n> ...; e.g. <kind>: <id>".
 *
 * Authorization (authz.c, the policy engine; the data file is the plugin option authz_file, written by
 * iotfleet and re-read on SIGHUP). With no acl_file, this plugin's answer is final for every check:
 *   - SUBSCRIBE: iot:Subscribe on topicfilter/<filter as sent>; denied: SUBACK 0x87 for that filter on
 *     MQTT 5, and the connection closed on 3.1.1 (IOT_CORE.md section 11);
 *   - PUBLISH: iot:Publish on topic/<topic> (and iot:RetainPublish for a retained one); denied: PUBACK
 *     0x87 on MQTT 5 (a QoS 0 message is dropped), the connection closed on 3.1.1;
 *   - delivery: iot:Receive on topic/<topic>, checked per message; denied: not delivered.
 *   - UNSUBSCRIBE is always allowed.
 *   - Basic Ingest ($aws/rules/<rule>/...) reaches the cloud's rules engine only: a device's SUBSCRIBE to
 *     it is refused whatever its policy says, and no device receives it (IoT Core: no broker fan-out).
 *
 * Provisioning. On AWS IoT Core the answer to a request on $aws/certificates/... or
 * $aws/provisioning-templates/... reaches only the connection that sent it, although every device
 * shares the claim identity. mosquitto fans a publish out to every subscriber, so this plugin:
 *   - drops every property a device sent with a request and adds the user property "iotfleet-client-id"
 *     (the requester's client id), so the service knows whom to answer and no device can name another;
 *   - lets only the service (certificate CN "iotfleet-service") publish on answer topics (.../accepted,
 *     .../rejected); an answer carrying the user property "iotfleet-deliver-to" reaches only that client
 *     id, with the property stripped; an answer without it reaches no device;
 *   - delivers requests to the service only: claim connections see nothing of each other.
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

#include "authz.c"
#include "quota.c"

/* The few OpenSSL calls needed to read a CN. The plugin runs inside mosquitto, which links libcrypto,
 * so the symbols resolve at load time without OpenSSL's headers on the build machine. */
typedef struct x509_st X509;
typedef struct X509_name_st X509_NAME;
typedef struct X509_name_entry_st X509_NAME_ENTRY;
typedef struct asn1_string_st ASN1_STRING;
extern X509_NAME *X509_get_subject_name(const X509 *cert);
extern int X509_NAME_get_index_by_NID(const X509_NAME *name, int nid, int lastpos);
extern X509_NAME_ENTRY *X509_NAME_get_entry(const X509_NAME *name, int loc);
extern ASN1_STRING *X509_NAME_ENTRY_get_data(const X509_NAME_ENTRY *entry);
extern const unsigned char *ASN1_STRING_get0_data(const ASN1_STRING *str);
extern int ASN1_STRING_length(const ASN1_STRING *str);
extern void X509_free(X509 *cert);
#define IOTFLEET_NID_COMMON_NAME 13

#define SERVICE_IDENTITY "iotfleet-service"
#define SERVICE_CLIENT_PREFIX "iotfleet-service"
#define CLIENT_ID_PROPERTY "iotfleet-client-id"
#define DELIVER_TO_PROPERTY "iotfleet-deliver-to"
#define BASIC_INGEST_PREFIX "$aws/rules/"

static mosquitto_plugin_id_t *plugin_id;
static char authz_path[4096];
static const void *answer_payload; /* the answer being routed right now, if any */
static char answer_target[256];
static int rechecking; /* between a reload and the next tick: mosquitto re-runs basic auth for everyone */
static double last_report;

static int is_provisioning(const char *topic)
{
	return topic && (strncmp(topic, "$aws/certificates/", 18) == 0
			|| strncmp(topic, "$aws/provisioning-templates/", 28) == 0);
}

static int ends_with(const char *text, const char *suffix)
{
	size_t n = strlen(text), m = strlen(suffix);
	return n >= m && strcmp(text + n - m, suffix) == 0;
}

static int is_answer(const char *topic)
{
	return ends_with(topic, "/accepted") || ends_with(topic, "/rejected");
}

static int is_service(struct mosquitto *client)
{
	const char *username = mosquitto_client_username(client);
	return username && strcmp(username, SERVICE_IDENTITY) == 0;
}

/* The certificate's CN into buf; 0 on success. */
static int common_name(struct mosquitto *client, char *buf, size_t size)
{
	X509 *cert = mosquitto_client_certificate(client);
	X509_NAME *subject;
	const ASN1_STRING *data;
	int loc, len, rc = 1;

	if(cert == NULL){
		return 1;
	}
	subject = X509_get_subject_name(cert);
	loc = subject ? X509_NAME_get_index_by_NID(subject, IOTFLEET_NID_COMMON_NAME, -1) : -1;
	if(loc >= 0){
		data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, loc));
		len = data ? ASN1_STRING_length(data) : -1;
		/* refuse an empty CN, one that does not fit, and one with an embedded NUL */
		if(len > 0 && (size_t)len < size && memchr(ASN1_STRING_get0_data(data), 0, (size_t)len) == NULL){
			memcpy(buf, ASN1_STRING_get0_data(data), (size_t)len);
			buf[len] = '\0';
			rc = 0;
		}
	}
	X509_free(cert);
	return rc;
}

static int authorize(struct mosquitto *client, const char *action, const char *kind, const char *name);

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *client_id = mosquitto_client_id(ed->client);
	char cn[256];
	(void)event;
	(void)userdata;

	if(common_name(ed->client, cn, sizeof(cn)) != 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotfleet: refused %s: no usable certificate CN",
				client_id ? client_id : "(no id)");
		return MOSQ_ERR_AUTH;
	}
	if(client_id && strncmp(client_id, SERVICE_CLIENT_PREFIX, strlen(SERVICE_CLIENT_PREFIX)) == 0
			&& strcmp(cn, SERVICE_IDENTITY) != 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotfleet: refused %s: client id reserved for the cloud's services (%s)",
				client_id, cn);
		return MOSQ_ERR_AUTH;
	}
	if(mosquitto_set_username(ed->client, cn) != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_AUTH;
	}
	if(strcmp(cn, SERVICE_IDENTITY) == 0){
		return MOSQ_ERR_SUCCESS;
	}
	switch(authorize(ed->client, "iot:Connect", "client", client_id ? client_id : "")){
		case AUTHZ_ALLOW:
			if(!rechecking && quota_connect(client_id ? client_id : "", ed->client) != 0){
				return MOSQ_ERR_UNKNOWN; /* throttled: no CONNACK */
			}
			return MOSQ_ERR_SUCCESS;
		case AUTHZ_NO_PRINCIPAL:
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotfleet: refused %s: certificate %s has no policy, or is not ACTIVE, in this region",
					client_id ? client_id : "(no id)", cn);
			return MOSQ_ERR_UNKNOWN; /* no CONNACK: the connection is closed */
		default:
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotfleet: refused %s: iot:Connect denied by the policies of %s",
					client_id ? client_id : "(no id)", cn);
			return MOSQ_ERR_AUTH;
	}
}

static void take_target(struct mosquitto_evt_message *ed)
{
	const mosquitto_property *prop = ed->properties;
	char *name = NULL, *value = NULL;
	int skip_first = 0;

	answer_target[0] = '\0';
	while((prop = mosquitto_property_read_string_pair(prop, MQTT_PROP_USER_PROPERTY, &name, &value, skip_first))){
		skip_first = 1;
		if(name && value && strcmp(name, DELIVER_TO_PROPERTY) == 0){
			snprintf(answer_target, sizeof(answer_target), "%s", value);
		}
		mosquitto_free(name);
		mosquitto_free(value);
		name = value = NULL;
	}
	/* an answer with no target reaches nobody: the READ check compares against an empty target */
	answer_payload = ed->payload;
	/* the service sends no other property on answers: drop them all, devices see AWS's payload only */
	mosquitto_property_free_all(&ed->properties);
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	(void)event;
	(void)userdata;

	answer_payload = NULL;
	if(!is_provisioning(ed->topic)){
		return MOSQ_ERR_SUCCESS;
	}
	if(is_service(ed->client)){
		if(is_answer(ed->topic)){
			take_target(ed);
		}
		return MOSQ_ERR_SUCCESS;
	}
	/* a device's request: only the broker's own property goes to the service */
	mosquitto_property_free_all(&ed->properties);
	mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY, CLIENT_ID_PROPERTY,
			mosquitto_client_id(ed->client));
	return MOSQ_ERR_SUCCESS;
}

/* The policy engine's answer for the connection of client: action on arn:aws:iot:<region>:<account>:<kind>/<name>. */
static int authorize(struct mosquitto *client, const char *action, const char *kind, const char *name)
{
	char resource[1024];
	int n;
	if(authz_current == NULL){
		return AUTHZ_IMPLICIT_DENY;
	}
	n = snprintf(resource, sizeof(resource), "arn:aws:iot:%s:%s:%s/%s", authz_current->region,
			authz_current->account, kind, name);
	if(n < 0 || (size_t)n >= sizeof(resource)){
		return AUTHZ_IMPLICIT_DENY; /* far beyond IoT Core's 256-byte topic limit */
	}
	return authz_check(authz_current, mosquitto_client_username(client), mosquitto_client_id(client),
			mosquitto_client_address(client), action, resource);
}

/* A denied SUBSCRIBE or PUBLISH: a failure code on MQTT 5, the connection closed on 3.1.1 (as IoT Core). */
static int refused(struct mosquitto *client)
{
	return mosquitto_client_protocol_version(client) == 5 ? MOSQ_ERR_ACL_DENIED : MOSQ_ERR_AUTH;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *client_id;
	(void)event;
	(void)userdata;

	if(is_service(ed->client)){
		return MOSQ_ERR_SUCCESS;
	}
	if(is_provisioning(ed->topic)){
		if(ed->access == MOSQ_ACL_WRITE && is_answer(ed->topic)){
			return refused(ed->client); /* devices ask; only the service answers */
		}
		if(ed->access == MOSQ_ACL_READ){
			/* a device receives exactly the answers addressed to it, never another device's request */
			client_id = mosquitto_client_id(ed->client);
			if(answer_payload == NULL || ed->payload != answer_payload || client_id == NULL
					|| answer_target[0] == '\0' || strcmp(client_id, answer_target) != 0){
				return MOSQ_ERR_ACL_DENIED;
			}
		}
	}
	if(strncmp(ed->topic, BASIC_INGEST_PREFIX, strlen(BASIC_INGEST_PREFIX)) == 0){
		/* Basic Ingest goes to the rules engine only: no device subscribes to it or receives it */
		if(ed->access == MOSQ_ACL_SUBSCRIBE){
			return refused(ed->client);
		}
		if(ed->access == MOSQ_ACL_READ){
			return MOSQ_ERR_ACL_DENIED;
		}
	}
	switch(ed->access){
		case MOSQ_ACL_SUBSCRIBE:
			return authorize(ed->client, "iot:Subscribe", "topicfilter", ed->topic) == AUTHZ_ALLOW
				? MOSQ_ERR_SUCCESS : refused(ed->client);
		case MOSQ_ACL_WRITE:
			if(authorize(ed->client, "iot:Publish", "topic", ed->topic) != AUTHZ_ALLOW
					|| (ed->retain && authorize(ed->client, "iot:RetainPublish", "topic", ed->topic) != AUTHZ_ALLOW)
					|| quota_publish(mosquitto_client_id(ed->client), 1) != 0){
				return refused(ed->client);
			}
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_READ:
			return authorize(ed->client, "iot:Receive", "topic", ed->topic) == AUTHZ_ALLOW
					&& quota_publish(mosquitto_client_id(ed->client), 0) == 0
				? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		default:
			return MOSQ_ERR_SUCCESS; /* UNSUBSCRIBE */
	}
}

/* Read the authorization data; on failure keep what was loaded (none at start: the broker refuses to run).
 * After a reload mosquitto runs the basic-auth check again for every connection (security_default.c,
 * mosquitto_security_apply_default), so a certificate that left ACTIVE (revoked, deactivated, deleted), or
 * whose policies no longer allow its CONNECT, loses its live sessions at once, as IoT Core closes them. */
static int load_authz(void)
{
	char err[512];
	struct authz_data *data = authz_load(authz_path, err, sizeof(err));
	if(data == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotfleet: authorization data not loaded: %s", err);
		return MOSQ_ERR_UNKNOWN;
	}
	authz_free(authz_current);
	authz_current = data;
	mosquitto_log_printf(MOSQ_LOG_INFO, "iotfleet: authorization data loaded: %d policies, %lu principals",
			data->policy_count, (unsigned long)data->principals);
	return MOSQ_ERR_SUCCESS;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	load_authz();
	rechecking = 1; /* mosquitto re-runs basic auth for every connection now, before the next tick */
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	(void)event;
	(void)userdata;
	quota_disconnected(mosquitto_client_id(ed->client), ed->client);
	return MOSQ_ERR_SUCCESS;
}

/* Once a second at most: what the quotas refused since the last report, by kind, then one client id of
 * each kind (iotfleet reads the counts, before the ';'). */
static void report_throttled(double now)
{
	char counts[512], examples[1024];
	size_t n = 0, m = 0;
	int k;
	last_report = now;
	counts[0] = examples[0] = '\0';
	for(k = 0; k < QUOTA_KINDS; k++){
		if(quota.counts[k] > 0){
			if(n < sizeof(counts)){
				n += (size_t)snprintf(counts + n, sizeof(counts) - n, " %s=%lu", quota_names[k], quota.counts[k]);
			}
			if(m < sizeof(examples)){
				m += (size_t)snprintf(examples + m, sizeof(examples) - m, "%s%s: %s", m ? ", " : "", quota_names[k],
						quota.example[k]);
			}
			quota.counts[k] = 0;
		}
	}
	if(n > 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotfleet: throttled%s; e.g. %s", counts, examples);
	}
}

static int on_tick(int event, void *event_data, void *userdata)
{
	double now = quota_now();
	(void)event;
	(void)event_data;
	(void)userdata;
	rechecking = 0;
	if(now - last_report >= 1.0){
		report_throttled(now);
	}
	return MOSQ_ERR_SUCCESS;
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
	plugin_id = identifier;
	double rates[4] = {0, 0, 0, 0};
	static const char *const rate_options[4] = {
		"quota_connect_per_client", "quota_connect_per_account", "quota_publish_per_connection",
		"quota_publish_per_account",
	};
	for(int i = 0; i < opt_count; i++){
		if(strcmp(opts[i].key, "authz_file") == 0){
			snprintf(authz_path, sizeof(authz_path), "%s", opts[i].value);
		}
		for(int r = 0; r < 4; r++){
			if(strcmp(opts[i].key, rate_options[r]) == 0){
				rates[r] = strtod(opts[i].value, NULL);
			}
		}
	}
	quota_configure(rates[0], rates[1], rates[2], rates[3]);
	if(authz_path[0] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotfleet: the plugin needs 'plugin_opt_authz_file PATH'");
		return MOSQ_ERR_INVAL;
	}
	if(load_authz() != MOSQ_ERR_SUCCESS){
		return MOSQ_ERR_INVAL;
	}
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL)
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL)){
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	quota_free();
	authz_free(authz_current);
	authz_current = NULL;
	return MOSQ_ERR_SUCCESS;
}
