/*
 * iotfleet's authorization engine: AWS IoT policy evaluation for the broker plugin, in plain C.
 *
 * The semantics are iotfleet.policy_engine's (the reference, in Python); a differential test runs both on
 * the same documents and requests. Python validates the documents and writes them, with every ACTIVE
 * certificate's principal, to a data file this engine loads (authz_load). Lines, fields separated by TAB,
 * each field with '%', TAB, CR and LF percent-encoded:
 *   V <version 1> <region> <account>
 *   P                                  a policy; the statements up to the next P are its
 *   S <A|D> <not-action 0|1> <not-resource 0|1> <variables 0|1>
 *   A <action pattern>                 of the last S (matched without regard to case)
 *   R <resource template>              of the last S
 *   C <operator> <quantifier> <if-exists 0|1> <key> <value>...   of the last S
 *   U <certificate CN> <thing> <thing type> <policy index>,...   a principal (thing and type may be empty;
 *                                      a certificate attached to several things has a U line for each)
 *   T <attribute> <value>              of the last U's thing
 *   X <certificate field> <value>      of the last U (a field given twice is multi-valued)
 * authz_check answers one request (action, resource ARN) of a connection (CN, client id, source IP):
 * IAM's union of statements, an applicable Deny wins, nothing allowed is denied; '*' matches any run of
 * characters, '?' exactly one, '+' and '#' are literal; variables are substituted as literal text and an
 * unresolved one makes its resource or condition value match nothing.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define AUTHZ_ALLOW 0
#define AUTHZ_EXPLICIT_DENY 1
#define AUTHZ_IMPLICIT_DENY 2
#define AUTHZ_NO_PRINCIPAL 3 /* the certificate is unknown, or not ACTIVE, in this region */

#define MAX_FIELDS 64
#define MAX_VALUES 8 /* values of a multi-valued certificate field (IoT Core keeps 5) */

struct authz_strings { char **items; int count, cap; };

struct authz_condition {
	char *op;        /* StringEquals, StringLike, Bool, IpAddress, Null, ... (no prefix, no IfExists) */
	char *quantifier; /* "", "ForAnyValue", "ForAllValues" */
	int if_exists;
	char *key;
	struct authz_strings values;
};

struct authz_statement {
	int deny, not_action, not_resource, variables;
	struct authz_strings actions, resources;
	struct authz_condition *conditions;
	int condition_count, condition_cap;
};

struct authz_policy { struct authz_statement *statements; int count, cap; };

struct authz_pair { char *name, *value; };

struct authz_principal {
	char *cn, *thing, *thing_type;
	int *policies; int policy_count;
	struct authz_pair *attributes; int attribute_count, attribute_cap;
	struct authz_pair *fields; int field_count, field_cap;
	struct authz_principal *next; /* hash chain */
};

struct authz_data {
	char *region, *account;
	struct authz_policy *policies; int policy_count, policy_cap;
	struct authz_principal **buckets; size_t bucket_count;
	size_t principals;
};

static struct authz_data *authz_current;

/* ------------------------------------------------------------------ small helpers */

static void *authz_grow(void *items, int *cap, int count, size_t size)
{
	if(count < *cap) return items;
	*cap = *cap ? *cap * 2 : 4;
	return realloc(items, (size_t)*cap * size);
}

static void authz_push(struct authz_strings *list, char *value)
{
	list->items = authz_grow(list->items, &list->cap, list->count, sizeof(char *));
	list->items[list->count++] = value;
}

static char *authz_decode(const char *field)
{
	size_t n = strlen(field), i, o = 0;
	char *out = malloc(n + 1);
	for(i = 0; i < n; i++){
		if(field[i] == '%' && i + 2 < n && isxdigit((unsigned char)field[i+1]) && isxdigit((unsigned char)field[i+2])){
			char hex[3] = {field[i+1], field[i+2], 0};
			out[o++] = (char)strtol(hex, NULL, 16);
			i += 2;
		}else{
			out[o++] = field[i];
		}
	}
	out[o] = '\0';
	return out;
}

static uint64_t authz_hash(const char *text)
{
	uint64_t h = 1469598103934665603ULL;
	for(; *text; text++){ h ^= (unsigned char)*text; h *= 1099511628211ULL; }
	return h;
}

static void authz_free_strings(struct authz_strings *list)
{
	for(int i = 0; i < list->count; i++) free(list->items[i]);
	free(list->items);
}

void authz_free(struct authz_data *data)
{
	if(data == NULL) return;
	for(int p = 0; p < data->policy_count; p++){
		struct authz_policy *policy = &data->policies[p];
		for(int s = 0; s < policy->count; s++){
			struct authz_statement *st = &policy->statements[s];
			authz_free_strings(&st->actions);
			authz_free_strings(&st->resources);
			for(int c = 0; c < st->condition_count; c++){
				free(st->conditions[c].op); free(st->conditions[c].quantifier); free(st->conditions[c].key);
				authz_free_strings(&st->conditions[c].values);
			}
			free(st->conditions);
		}
		free(policy->statements);
	}
	free(data->policies);
	for(size_t b = 0; b < data->bucket_count; b++){
		struct authz_principal *u = data->buckets[b];
		while(u){
			struct authz_principal *next = u->next;
			free(u->cn); free(u->thing); free(u->thing_type); free(u->policies);
			for(int i = 0; i < u->attribute_count; i++){ free(u->attributes[i].name); free(u->attributes[i].value); }
			for(int i = 0; i < u->field_count; i++){ free(u->fields[i].name); free(u->fields[i].value); }
			free(u->attributes); free(u->fields); free(u);
			u = next;
		}
	}
	free(data->buckets);
	free(data->region); free(data->account);
	free(data);
}

/* ------------------------------------------------------------------ loading */

static int authz_split(char *line, char **fields)
{
	int n = 0;
	char *start = line;
	for(char *p = line; ; p++){
		if(*p == '\t' || *p == '\0' || *p == '\n' || *p == '\r'){
			int end = (*p != '\t');
			*p = '\0';
			if(n < MAX_FIELDS) fields[n++] = start;
			if(end) break;
			start = p + 1;
		}
	}
	return n;
}

/* The principal of certificate cn: the one of its things named client_id if there is one (IoT Core's rule for
 * a certificate attached to several things), else any (then no thing variable resolves). */
static struct authz_principal *authz_find(const struct authz_data *data, const char *cn, const char *client_id)
{
	struct authz_principal *found = NULL;
	if(data == NULL || cn == NULL || data->bucket_count == 0) return NULL;
	for(struct authz_principal *u = data->buckets[authz_hash(cn) % data->bucket_count]; u; u = u->next){
		if(strcmp(u->cn, cn) != 0) continue;
		if(u->thing && client_id && strcmp(u->thing, client_id) == 0) return u;
		if(found == NULL) found = u;
	}
	return found;
}

static void authz_rehash(struct authz_data *data)
{
	size_t count = data->bucket_count ? data->bucket_count * 2 : 1024;
	struct authz_principal **buckets = calloc(count, sizeof(*buckets));
	for(size_t b = 0; b < data->bucket_count; b++){
		struct authz_principal *u = data->buckets[b];
		while(u){
			struct authz_principal *next = u->next;
			size_t i = authz_hash(u->cn) % count;
			u->next = buckets[i]; buckets[i] = u;
			u = next;
		}
	}
	free(data->buckets);
	data->buckets = buckets; data->bucket_count = count;
}

/* Load a data file; NULL (with a reason in err) when it cannot be read or is malformed. */
struct authz_data *authz_load(const char *path, char *err, size_t err_size)
{
	FILE *file = fopen(path, "r");
	char *line = NULL, *fields[MAX_FIELDS];
	size_t size = 0;
	long number = 0;
	struct authz_data *data;
	struct authz_statement *st = NULL;
	struct authz_principal *u = NULL;

	if(file == NULL){ snprintf(err, err_size, "cannot open %s", path); return NULL; }
	data = calloc(1, sizeof(*data));
	while(getline(&line, &size, file) >= 0){
		int n = authz_split(line, fields);
		number++;
		if(n == 0 || fields[0][0] == '\0') continue;
		switch(fields[0][0]){
			case 'V':
				if(n < 4 || strcmp(fields[1], "1") != 0) goto bad;
				data->region = authz_decode(fields[2]); data->account = authz_decode(fields[3]);
				break;
			case 'P':
				data->policies = authz_grow(data->policies, &data->policy_cap, data->policy_count, sizeof(*data->policies));
				memset(&data->policies[data->policy_count++], 0, sizeof(struct authz_policy));
				st = NULL;
				break;
			case 'S': {
				if(n < 5 || data->policy_count == 0) goto bad;
				struct authz_policy *policy = &data->policies[data->policy_count - 1];
				policy->statements = authz_grow(policy->statements, &policy->cap, policy->count, sizeof(*st));
				st = &policy->statements[policy->count++];
				memset(st, 0, sizeof(*st));
				st->deny = fields[1][0] == 'D';
				st->not_action = fields[2][0] == '1'; st->not_resource = fields[3][0] == '1';
				st->variables = fields[4][0] == '1';
				break;
			}
			case 'A': case 'R':
				if(n < 2 || st == NULL) goto bad;
				authz_push(fields[0][0] == 'A' ? &st->actions : &st->resources, authz_decode(fields[1]));
				break;
			case 'C': {
				if(n < 6 || st == NULL) goto bad;
				st->conditions = authz_grow(st->conditions, &st->condition_cap, st->condition_count, sizeof(struct authz_condition));
				struct authz_condition *c = &st->conditions[st->condition_count++];
				memset(c, 0, sizeof(*c));
				c->op = authz_decode(fields[1]); c->quantifier = authz_decode(fields[2]);
				c->if_exists = fields[3][0] == '1'; c->key = authz_decode(fields[4]);
				for(int i = 5; i < n; i++) authz_push(&c->values, authz_decode(fields[i]));
				break;
			}
			case 'U': {
				if(n < 5) goto bad;
				if(data->principals * 2 >= data->bucket_count) authz_rehash(data);
				u = calloc(1, sizeof(*u));
				u->cn = authz_decode(fields[1]);
				u->thing = fields[2][0] ? authz_decode(fields[2]) : NULL;
				u->thing_type = fields[3][0] ? authz_decode(fields[3]) : NULL;
				for(char *p = fields[4]; *p; ){
					long index = strtol(p, &p, 10);
					if(index < 0 || index >= data->policy_count) goto bad;
					u->policies = realloc(u->policies, sizeof(int) * (size_t)(u->policy_count + 1));
					u->policies[u->policy_count++] = (int)index;
					if(*p == ',') p++; else if(*p) goto bad;
				}
				size_t b = authz_hash(u->cn) % data->bucket_count;
				u->next = data->buckets[b]; data->buckets[b] = u;
				data->principals++;
				break;
			}
			case 'T': case 'X': {
				if(n < 3 || u == NULL) goto bad;
				int is_t = fields[0][0] == 'T';
				struct authz_pair **list = is_t ? &u->attributes : &u->fields;
				int *count = is_t ? &u->attribute_count : &u->field_count;
				int *cap = is_t ? &u->attribute_cap : &u->field_cap;
				*list = authz_grow(*list, cap, *count, sizeof(struct authz_pair));
				(*list)[*count].name = authz_decode(fields[1]);
				(*list)[(*count)++].value = authz_decode(fields[2]);
				break;
			}
			default:
				goto bad;
		}
	}
	free(line);
	fclose(file);
	if(data->region == NULL){ snprintf(err, err_size, "%s has no V line", path); authz_free(data); return NULL; }
	if(data->bucket_count == 0) authz_rehash(data);
	return data;
bad:
	snprintf(err, err_size, "%s: line %ld is malformed", path, number);
	free(line);
	fclose(file);
	authz_free(data);
	return NULL;
}

/* ------------------------------------------------------------------ matching */

struct authz_request {
	const struct authz_principal *u;
	const char *client_id, *thing, *source_ip; /* thing: set when the client id is the principal's thing */
};

/* The values of a certificate field: path "Subject.CommonName" (first), "X.1" (second), "X.List" (all). */
static int authz_field_values(const struct authz_principal *u, const char *path, const char **out, int max)
{
	char base[512];
	int index = 0, all = 0, n = 0, seen = 0;
	size_t len = strlen(path);
	if(len >= sizeof(base)) return 0;
	memcpy(base, path, len + 1);
	if(len > 5 && strcmp(base + len - 5, ".List") == 0){ base[len - 5] = '\0'; all = 1; }
	else{
		char *dot = strrchr(base, '.');
		if(dot && dot[1] && strspn(dot + 1, "0123456789") == strlen(dot + 1)){
			int known = 0;
			*dot = '\0';
			for(int i = 0; i < u->field_count; i++) if(strcmp(u->fields[i].name, base) == 0) known = 1;
			if(known) index = atoi(dot + 1); else *dot = '.';
		}
	}
	for(int i = 0; i < u->field_count && seen < 5; i++){
		if(strcmp(u->fields[i].name, base) != 0) continue;
		const char *v = u->fields[i].value;
		int usable = strlen(v) <= 1024 && strpbrk(v, "*$+?#") == NULL;
		if(all){ if(usable && n < max) out[n++] = v; }
		else if(seen == index){ if(usable && n < max) out[n++] = v; break; }
		seen++;
	}
	return n;
}

/* The value of ${name}; NULL when it does not resolve. */
static const char *authz_variable(const struct authz_request *r, const char *name, size_t len)
{
	char key[512];
	if(len >= sizeof(key)) return NULL;
	memcpy(key, name, len); key[len] = '\0';
	if(strcmp(key, "iot:ClientId") == 0) return r->client_id;
	if(strcmp(key, "aws:SourceIp") == 0) return r->source_ip;
	if(strncmp(key, "iot:Connection.Thing.", 21) == 0){
		if(r->thing == NULL) return NULL;
		if(strcmp(key, "iot:Connection.Thing.ThingName") == 0) return r->thing;
		if(strcmp(key, "iot:Connection.Thing.ThingTypeName") == 0) return r->u->thing_type;
		if(strncmp(key, "iot:Connection.Thing.Attributes[", 32) == 0 && key[len - 1] == ']'){
			key[len - 1] = '\0';
			for(int i = 0; i < r->u->attribute_count; i++){
				if(strcmp(r->u->attributes[i].name, key + 32) == 0) return r->u->attributes[i].value;
			}
		}
		return NULL;
	}
	if(strncmp(key, "iot:Certificate.", 16) == 0){
		const char *value = NULL;
		return authz_field_values(r->u, key + 16, &value, 1) ? value : NULL;
	}
	return NULL;
}

/* Glob-match text against a template: literal text, '*', '?', and (when variables) ${...} substituted as
 * literal text, ${*} ${?} ${$} as literal characters. -1: a variable did not resolve. */
static int authz_match(const char *pattern, const char *text, int variables, int wildcards, int fold,
		const struct authz_request *r)
{
	/* backtracking over the last '*': positions in pattern and text, plus a substituted value being read */
	const char *p = pattern, *t = text, *star_p = NULL, *star_t = NULL;
	const char *sub = NULL, *star_sub = NULL, *after_sub = NULL, *star_after = NULL;
	for(;;){
		int pc_kind; /* 0 literal char, 1 star, 2 one, 3 end */
		char pc = 0;
		if(sub && *sub){ pc_kind = 0; pc = *sub; }
		else{
			if(sub){ p = after_sub; sub = NULL; }
			if(*p == '\0') pc_kind = 3;
			else if(variables && p[0] == '$' && p[1] == '{'){
				const char *close = strchr(p + 2, '}');
				if(close == NULL){ pc_kind = 0; pc = *p; }
				else{
					size_t len = (size_t)(close - p - 2);
					if(len == 1 && (p[2] == '*' || p[2] == '?' || p[2] == '$')){ pc_kind = 0; pc = p[2]; p = close; }
					else{
						const char *value = authz_variable(r, p + 2, len);
						if(value == NULL) return -1;
						after_sub = close + 1; sub = value; p = close;
						continue;
					}
				}
			}
			else if(wildcards && *p == '*') pc_kind = 1;
			else if(wildcards && *p == '?') pc_kind = 2;
			else{ pc_kind = 0; pc = *p; }
		}
		if(pc_kind == 1){
			star_p = p + 1; star_t = t; star_sub = NULL; star_after = NULL;
			p++;
			continue;
		}
		if(pc_kind == 3){
			if(*t == '\0') return 1;
		}else if(*t != '\0' && (pc_kind == 2 || pc == *t
				|| (fold && tolower((unsigned char)pc) == tolower((unsigned char)*t)))){
			if(sub) sub++; else p++;
			t++;
			continue;
		}
		if(star_p == NULL || *star_t == '\0') return 0;
		/* the star takes one more character; resume just after it (a star is never inside a value) */
		star_t++; t = star_t; p = star_p; sub = star_sub; after_sub = star_after;
	}
}

static int authz_in_network(const char *address, const char *network)
{
	unsigned char a[16], n[16];
	char net[64];
	int family = strchr(address, ':') ? AF_INET6 : AF_INET, bits, size = family == AF_INET6 ? 16 : 4;
	const char *slash = strchr(network, '/');
	size_t len = slash ? (size_t)(slash - network) : strlen(network);
	if(len >= sizeof(net) || inet_pton(family, address, a) != 1) return 0;
	memcpy(net, network, len); net[len] = '\0';
	if(inet_pton(family, net, n) != 1) return 0;
	bits = slash ? atoi(slash + 1) : size * 8;
	for(int i = 0; i < size && bits > 0; i++, bits -= 8){
		unsigned char mask = bits >= 8 ? 0xff : (unsigned char)(0xff << (8 - bits));
		if((a[i] & mask) != (n[i] & mask)) return 0;
	}
	return 1;
}

/* The request's values for a condition key; -1 when the request has no such key. */
static int authz_key_values(const struct authz_request *r, const char *key, const char **out, int max)
{
	static const char *yes = "true", *no = "false";
	if(strcmp(key, "iot:Connection.Thing.IsAttached") == 0){ out[0] = r->thing ? yes : no; return 1; }
	if(strncmp(key, "iot:Certificate.", 16) == 0 && strlen(key) > 21 && strcmp(key + strlen(key) - 5, ".List") == 0){
		return authz_field_values(r->u, key + 16, out, max);
	}
	out[0] = authz_variable(r, key, strlen(key));
	return out[0] ? 1 : -1;
}

static int authz_value_matches(const struct authz_condition *c, const char *value, int variables,
		const struct authz_request *r)
{
	const char *op = c->op;
	int like = strstr(op, "Like") != NULL, fold = strstr(op, "IgnoreCase") != NULL;
	for(int i = 0; i < c->values.count; i++){
		const char *expected = c->values.items[i];
		if(strcmp(op, "Bool") == 0){ if(strcasecmp(value, expected) == 0) return 1; continue; }
		if(strcmp(op, "IpAddress") == 0 || strcmp(op, "NotIpAddress") == 0){
			if(authz_in_network(value, expected)) return 1;
			continue;
		}
		if(authz_match(expected, value, variables, like, fold, r) == 1) return 1;
	}
	return 0;
}

static int authz_negated(const char *op)
{
	return strncmp(op, "StringNot", 9) == 0 || strncmp(op, "ArnNot", 6) == 0 || strcmp(op, "NotIpAddress") == 0;
}

static int authz_condition_holds(const struct authz_condition *c, int variables, const struct authz_request *r)
{
	const char *values[MAX_VALUES];
	int n = authz_key_values(r, c->key, values, MAX_VALUES), negated = authz_negated(c->op);
	if(strcmp(c->op, "Null") == 0){ /* a key with no value counts as absent */
		for(int i = 0; i < c->values.count; i++){
			if((strcasecmp(c->values.items[i], "true") == 0) == (n > 0)) return 0;
		}
		return 1;
	}
	if(n <= 0){ /* absent: ForAllValues holds vacuously, IfExists and negated operators hold, others fail */
		if(strcmp(c->quantifier, "ForAllValues") == 0) return 1;
		return !c->quantifier[0] && (c->if_exists || negated);
	}
	if(strcmp(c->quantifier, "ForAllValues") == 0){
		for(int i = 0; i < n; i++) if(authz_value_matches(c, values[i], variables, r) == negated) return 0;
		return 1;
	}
	if(strcmp(c->quantifier, "ForAnyValue") == 0){
		for(int i = 0; i < n; i++) if(authz_value_matches(c, values[i], variables, r) != negated) return 1;
		return 0;
	}
	return authz_value_matches(c, values[0], variables, r) != negated;
}

static int authz_applies(const struct authz_statement *st, const char *action, const char *resource,
		const struct authz_request *r)
{
	int named = 0, matched = 0;
	for(int i = 0; i < st->actions.count && !named; i++){
		named = authz_match(st->actions.items[i], action, 0, 1, 1, r) == 1;
	}
	if(named == st->not_action) return 0;
	for(int i = 0; i < st->resources.count && !matched; i++){
		matched = authz_match(st->resources.items[i], resource, st->variables, 1, 0, r) == 1;
	}
	if(matched == st->not_resource) return 0;
	for(int i = 0; i < st->condition_count; i++){
		if(!authz_condition_holds(&st->conditions[i], st->variables, r)) return 0;
	}
	return 1;
}

/* IoT Core's answer for action on resource (an ARN) for the connection of certificate cn with client_id. */
int authz_check(const struct authz_data *data, const char *cn, const char *client_id, const char *source_ip,
		const char *action, const char *resource)
{
	const struct authz_principal *u = authz_find(data, cn, client_id);
	struct authz_request r;
	int allowed = 0;
	if(u == NULL) return AUTHZ_NO_PRINCIPAL;
	r.u = u; r.client_id = client_id ? client_id : ""; r.source_ip = source_ip;
	r.thing = (u->thing && client_id && strcmp(u->thing, client_id) == 0) ? u->thing : NULL;
	for(int p = 0; p < u->policy_count; p++){
		const struct authz_policy *policy = &data->policies[u->policies[p]];
		for(int s = 0; s < policy->count; s++){
			if(authz_applies(&policy->statements[s], action, resource, &r)){
				if(policy->statements[s].deny) return AUTHZ_EXPLICIT_DENY;
				allowed = 1;
			}
		}
	}
	return allowed ? AUTHZ_ALLOW : AUTHZ_IMPLICIT_DENY;
}

#ifdef AUTHZ_TEST
/* For the differential test (ctypes), built with -DAUTHZ_TEST: load into the module's slot, then check. */
int authz_test_load(const char *path)
{
	char err[256];
	struct authz_data *data = authz_load(path, err, sizeof(err));
	if(data == NULL){ fprintf(stderr, "%s\n", err); return -1; }
	authz_free(authz_current);
	authz_current = data;
	return 0;
}

int authz_test_check(const char *cn, const char *client_id, const char *source_ip, const char *action,
		const char *resource)
{
	return authz_check(authz_current, cn, client_id, source_ip, action, resource);
}
#endif
