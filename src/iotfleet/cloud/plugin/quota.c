/*
 * iotfleet's quota engine: IoT Core's rate quotas (IOT_CORE.md section 4) for the broker plugin, in plain C.
 *
 * Four rates, each 0 for none (plugin options quota_*, iotfleet.cloud.broker.Quotas):
 *   - CONNECT per second per client id (IoT Core: 1);
 *   - CONNECT per second for the region's account (500);
 *   - publishes per second per connection, inbound and outbound (100), one second of burst;
 *   - inbound publishes per second for the region's account (20,000), one second of burst.
 * Token buckets on a monotonic clock. The per-client state lives in an open-addressing table keyed by
 * client id; an entry whose client is gone and whose last CONNECT is over QUOTA_FORGET_S old is dropped
 * when the table is rebuilt, so ever-new client ids (claim provisioning's) do not grow it for ever.
 * What was throttled is counted by kind (quota_counts) for the plugin to report.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef QUOTA_FORGET_S
#define QUOTA_FORGET_S 2.0 /* seconds an entry outlives its connection: the CONNECT rule needs 1 */
#endif

enum quota_kind {
	QUOTA_CONNECT_CLIENT,
	QUOTA_CONNECT_ACCOUNT,
	QUOTA_PUBLISH_CONNECTION,
	QUOTA_PUBLISH_ACCOUNT,
	QUOTA_DELIVERY_CONNECTION,
	QUOTA_KINDS
};

static const char *const quota_names[QUOTA_KINDS] = {
	"connect_client", "connect_account", "publish_connection", "publish_account", "delivery_connection",
};

struct quota_bucket { double rate, tokens, at; };

struct quota_entry {
	char *id;
	double last_connect;
	const void *connection; /* the live connection with this client id (mosquitto's context), or NULL */
	struct quota_bucket publishes;
};

struct quota_state {
	double connect_per_client, connect_per_account, publish_per_connection, publish_per_account;
	struct quota_bucket account_connects, account_publishes;
	struct quota_entry *table;
	size_t cap, used;
	unsigned long counts[QUOTA_KINDS];
	char example[QUOTA_KINDS][128]; /* a client id throttled since the last report, per kind */
};

static struct quota_state quota;

static double quota_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Take one token if there is one; a rate of 0 is no limit. The bucket holds one second of tokens. */
static int quota_take(struct quota_bucket *b, double now)
{
	if(b->rate <= 0){
		return 1;
	}
	b->tokens += (now - b->at) * b->rate;
	if(b->tokens > b->rate){
		b->tokens = b->rate;
	}
	b->at = now;
	if(b->tokens < 1.0){
		return 0;
	}
	b->tokens -= 1.0;
	return 1;
}

static void quota_fill(struct quota_bucket *b, double rate, double now)
{
	b->rate = rate;
	b->tokens = rate;
	b->at = now;
}

static uint64_t quota_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for(; *s; s++){
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	}
	return h;
}

static struct quota_entry *quota_slot(struct quota_entry *table, size_t cap, const char *id)
{
	size_t i = (size_t)quota_hash(id) & (cap - 1);
	while(table[i].id != NULL && strcmp(table[i].id, id) != 0){
		i = (i + 1) & (cap - 1);
	}
	return &table[i];
}

/* Rebuild the table, dropping the entries no quota needs any more; grow it to keep it at most half full. */
static int quota_rebuild(double now)
{
	size_t live = 0, cap = 1024, i;
	struct quota_entry *table;
	for(i = 0; i < quota.cap; i++){
		struct quota_entry *e = &quota.table[i];
		if(e->id != NULL && (e->connection != NULL || now - e->last_connect < QUOTA_FORGET_S)){
			live++;
		}
	}
	while(cap < live * 4){
		cap *= 2;
	}
	table = calloc(cap, sizeof(*table));
	if(table == NULL){
		return 1;
	}
	for(i = 0; i < quota.cap; i++){
		struct quota_entry *e = &quota.table[i];
		if(e->id == NULL){
			continue;
		}
		if(e->connection != NULL || now - e->last_connect < QUOTA_FORGET_S){
			*quota_slot(table, cap, e->id) = *e;
		}else{
			free(e->id);
		}
	}
	free(quota.table);
	quota.table = table;
	quota.cap = cap;
	quota.used = live;
	return 0;
}

/* The entry of client id, made if asked; NULL if it does not exist (or cannot be made). */
static struct quota_entry *quota_entry(const char *id, int make, double now)
{
	struct quota_entry *e;
	if(quota.table == NULL || (make && (quota.used + 1) * 2 > quota.cap)){
		if(quota_rebuild(now) != 0){
			return NULL;
		}
	}
	e = quota_slot(quota.table, quota.cap, id);
	if(e->id == NULL){
		if(!make || (e->id = strdup(id)) == NULL){
			return NULL;
		}
		e->last_connect = -1e9;
		e->connection = NULL;
		quota.used++;
	}
	return e;
}

static void quota_count(enum quota_kind kind, const char *client_id)
{
	if(quota.counts[kind]++ == 0 && client_id != NULL){
		strncpy(quota.example[kind], client_id, sizeof(quota.example[kind]) - 1);
		quota.example[kind][sizeof(quota.example[kind]) - 1] = '\0';
	}
}

static void quota_configure(double connect_per_client, double connect_per_account, double publish_per_connection,
		double publish_per_account)
{
	double now = quota_now();
	quota.connect_per_client = connect_per_client;
	quota.connect_per_account = connect_per_account;
	quota.publish_per_connection = publish_per_connection;
	quota.publish_per_account = publish_per_account;
	quota_fill(&quota.account_connects, connect_per_account, now);
	quota_fill(&quota.account_publishes, publish_per_account, now);
}

/* A CONNECT (of connection ``connection``) that passed authentication and authorization: 0 to accept it,
 * 1 when a quota refuses it. */
static int quota_connect(const char *client_id, const void *connection)
{
	double now = quota_now();
	struct quota_entry *e = quota_entry(client_id, 1, now);
	if(e != NULL && quota.connect_per_client > 0 && now - e->last_connect < 1.0 / quota.connect_per_client){
		quota_count(QUOTA_CONNECT_CLIENT, client_id);
		return 1;
	}
	if(!quota_take(&quota.account_connects, now)){
		quota_count(QUOTA_CONNECT_ACCOUNT, client_id);
		return 1;
	}
	if(e != NULL){
		e->last_connect = now;
		e->connection = connection;
		quota_fill(&e->publishes, quota.publish_per_connection, now);
	}
	return 0;
}

/* Connection ``connection`` ended. The entry is its only while it is the client id's live connection: when
 * a new connection took the client id over, the old one's end leaves the new one's entry alone. */
static void quota_disconnected(const char *client_id, const void *connection)
{
	struct quota_entry *e;
	if(client_id == NULL || quota.table == NULL){
		return;
	}
	e = quota_slot(quota.table, quota.cap, client_id);
	if(e->id != NULL && e->connection == connection){
		e->connection = NULL;
	}
}

/* A device's PUBLISH (inbound: 1) or a delivery to it (0): 0 to let it through, 1 when a quota refuses it. */
static int quota_publish(const char *client_id, int inbound)
{
	double now = quota_now();
	struct quota_entry *e = client_id != NULL && quota.table != NULL ? quota_slot(quota.table, quota.cap, client_id) : NULL;
	if(e != NULL && e->id != NULL && !quota_take(&e->publishes, now)){
		quota_count(inbound ? QUOTA_PUBLISH_CONNECTION : QUOTA_DELIVERY_CONNECTION, client_id);
		return 1;
	}
	if(inbound && !quota_take(&quota.account_publishes, now)){
		quota_count(QUOTA_PUBLISH_ACCOUNT, client_id);
		return 1;
	}
	return 0;
}

static void quota_free(void)
{
	for(size_t i = 0; i < quota.cap; i++){
		free(quota.table[i].id);
	}
	free(quota.table);
	memset(&quota, 0, sizeof(quota));
}

#ifdef QUOTA_TEST
/* For tests (ctypes), built with -DQUOTA_TEST: the engine's entry points, with connections as numbers. */
void quota_test_configure(double per_client, double per_account, double per_connection, double account_publishes)
{
	quota_free();
	quota_configure(per_client, per_account, per_connection, account_publishes);
}

int quota_test_connect(const char *client_id, long connection)
{
	return quota_connect(client_id, (const void *)connection);
}

void quota_test_disconnected(const char *client_id, long connection)
{
	quota_disconnected(client_id, (const void *)connection);
}

int quota_test_publish(const char *client_id, int inbound)
{
	return quota_publish(client_id, inbound);
}

unsigned long quota_test_count(int kind)
{
	return quota.counts[kind];
}
#endif
