/*
 * reference.c: the hand-written C baseline that evserver is measured against (see BENCHMARKS.md).
 *
 * Same flags, routes, replies and Redis commands as evserver: evhttp on one event_base per thread (SO_REUSEPORT),
 * one pipelined hiredis async connection per thread on the same base, express-session compatible sessions in
 * `sess:<id>` (signed `connect.sid` cookie, HMAC-SHA256), reads with GETEX, writes with a compare-and-set script.
 *
 *   reference [--host 127.0.0.1] --port P [--threads N] [--redis-url redis://H:P/DB] --secret S [--instance NAME]
 */
#define _GNU_SOURCE                 /* asprintf, getrandom; event-config.h would define it anyway */
#define OPENSSL_SUPPRESS_DEPRECATED /* the low-level SHA API: we precompute the HMAC pads once */
#include <sys/types.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>
#include <openssl/sha.h>
#include <openssl/crypto.h>

static const char CAS_SCRIPT[] =
    "local current = redis.call('GET', KEYS[1])\n"
    "if current == false then\n"
    "  if ARGV[1] ~= '' then return false end\n"
    "elseif redis.sha1hex(current) ~= ARGV[1] then\n"
    "  return current\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])\n"
    "return 1\n";
#define COOKIE_JSON \
    "{\"cookie\":{\"originalMaxAge\":null,\"expires\":null,\"httpOnly\":true,\"path\":\"/\",\"sameSite\":\"lax\"}"
#define TTL "86400"
#define MAX_ID 64
#define MAX_RETRIES 5

static char *redis_host = "127.0.0.1", *instance = "reference";
static int redis_port = 6379, redis_db = 0;
static char cas_sha[41];
static SHA256_CTX hmac_inner, hmac_outer; /* HMAC(secret, .) with the key pads already absorbed */

struct worker { struct event_base *base; struct evhttp *http; redisAsyncContext *redis; int listen_fd; };
enum route { ROUTE_ROOT, ROUTE_LOGIN, ROUTE_VIEWS };
struct call {                      /* one request waiting on Redis */
    struct evhttp_request *req;
    struct worker *w;
    enum route route;
    int fresh, retries;            /* fresh: the id is new, so the reply sets the cookie */
    char id[MAX_ID + 1];
};

/* ---- encoding ---- */
static size_t base64(const unsigned char *in, size_t n, char *out, const char *alphabet) {
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        if (i + 1 < n) out[o++] = alphabet[v >> 6 & 63];   /* no '=' padding: express-session strips it */
        if (i + 2 < n) out[o++] = alphabet[v & 63];
    }
    out[o] = 0;
    return o;
}
static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void sign(const char *id, size_t n, char out[44]) {
    unsigned char mac[32];
    SHA256_CTX c = hmac_inner;
    SHA256_Update(&c, id, n);
    SHA256_Final(mac, &c);
    c = hmac_outer;
    SHA256_Update(&c, mac, 32);
    SHA256_Final(mac, &c);
    base64(mac, 32, out, B64);
}

static void sha1_hex(const char *s, size_t n, char out[41]) {
    unsigned char d[20];
    SHA1((const unsigned char *)s, n, d);
    for (int i = 0; i < 20; i++) { out[2 * i] = "0123456789abcdef"[d[i] >> 4]; out[2 * i + 1] = "0123456789abcdef"[d[i] & 15]; }
    out[40] = 0;
}

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The session id from a `connect.sid` cookie, or 0 if absent, malformed or not signed with our secret. */
static int session_id_from_cookie(const char *header, char id[MAX_ID + 1]) {
    if (!header) return 0;
    for (const char *p = header; *p; ) {
        while (*p == ' ' || *p == ';') p++;
        const char *end = strchr(p, ';'); if (!end) end = p + strlen(p);
        if (end - p > 11 && !memcmp(p, "connect.sid=", 12)) {
            char v[256]; size_t n = 0;           /* percent-decode `s%3A<id>.<sig>` */
            for (const char *q = p + 12; q < end && n < sizeof v - 1; q++) {
                if (*q == '%' && q + 2 < end && hexval(q[1]) >= 0 && hexval(q[2]) >= 0) { v[n++] = hexval(q[1]) << 4 | hexval(q[2]); q += 2; }
                else v[n++] = *q;
            }
            while (n && v[n - 1] == ' ') n--;
            v[n] = 0;
            char *dot = strrchr(v, '.'), expected[44];
            if (n < 4 || strlen(v) != n || memcmp(v, "s:", 2) || !dot || dot - v - 2 < 1 || dot - v - 2 > MAX_ID) return 0;
            sign(v + 2, dot - v - 2, expected);
            if (strlen(dot + 1) != 43 || CRYPTO_memcmp(expected, dot + 1, 43)) return 0;
            memcpy(id, v + 2, dot - v - 2); id[dot - v - 2] = 0;
            return 1;
        }
        p = end;
    }
    return 0;
}

static void new_id(char id[MAX_ID + 1]) {
    unsigned char raw[24];
    if (getrandom(raw, sizeof raw, 0) != sizeof raw) abort();
    base64(raw, sizeof raw, id, B64URL);
}

/* ---- the JSON we need: find a top-level key of an object, skipping every other value ---- */
static const char *skip_ws(const char *p, const char *e) { while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++; return p; }
static const char *skip_string(const char *p, const char *e) {
    for (p++; p < e; p++) { if (*p == '\\') p++; else if (*p == '"') return p + 1; }
    return NULL;
}
static const char *skip_value(const char *p, const char *e) {
    p = skip_ws(p, e);
    if (p >= e) return NULL;
    if (*p == '"') return skip_string(p, e);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        for (; p < e; p++) {
            if (*p == '"') { if (!(p = skip_string(p, e))) return NULL; p--; }
            else if (*p == '{' || *p == '[') depth++;
            else if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
        }
        return NULL;
    }
    while (p < e && !strchr(",}] \t\r\n", *p)) p++;            /* number, true, false, null */
    return p;
}
/* Returns 1 and the value's span if `key` is a top-level key; 0 if absent; -1 if not a JSON object. */
static int find_key(const char *s, size_t n, const char *key, const char **vs, const char **ve) {
    const char *e = s + n, *p = skip_ws(s, e);
    size_t klen = strlen(key);
    if (p >= e || *p++ != '{') return -1;
    for (;;) {
        p = skip_ws(p, e);
        if (p < e && *p == '}') return 0;
        if (p >= e || *p != '"') return -1;
        const char *k = p + 1, *ke = skip_string(p, e);
        if (!ke || (p = skip_ws(ke, e)) >= e || *p++ != ':') return -1;
        const char *v = skip_ws(p, e), *after = skip_value(v, e);
        if (!after) return -1;
        if ((size_t)(ke - 1 - k) == klen && !memcmp(k, key, klen)) { *vs = v; *ve = after; return 1; }
        p = skip_ws(after, e);
        if (p < e && *p == ',') p++;
    }
}
/* Appends the JSON string at [s, e) (quotes included) to `out`, unescaped. */
static void add_unescaped(struct evbuffer *out, const char *s, const char *e) {
    for (s++, e--; s < e; s++) {
        if (*s != '\\') { const char *run = s; while (s < e && *s != '\\') s++; evbuffer_add(out, run, s - run); s--; continue; }
        char c = *++s;
        if (c == 'u' && e - s > 4) {
            unsigned u = 0; for (int i = 1; i <= 4; i++) u = u << 4 | (hexval(s[i]) & 15);
            s += 4;
            if (u >= 0xD800 && u < 0xDC00 && e - s > 6 && s[1] == '\\' && s[2] == 'u') {
                unsigned lo = 0; for (int i = 3; i <= 6; i++) lo = lo << 4 | (hexval(s[i]) & 15);
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00); s += 6;
            }
            unsigned char b[4]; int n;
            if (u < 0x80) { b[0] = u; n = 1; }
            else if (u < 0x800) { b[0] = 0xC0 | u >> 6; b[1] = 0x80 | (u & 63); n = 2; }
            else if (u < 0x10000) { b[0] = 0xE0 | u >> 12; b[1] = 0x80 | (u >> 6 & 63); b[2] = 0x80 | (u & 63); n = 3; }
            else { b[0] = 0xF0 | u >> 18; b[1] = 0x80 | (u >> 12 & 63); b[2] = 0x80 | (u >> 6 & 63); b[3] = 0x80 | (u & 63); n = 4; }
            evbuffer_add(out, b, n);
        } else {
            char r = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c == 'b' ? '\b' : c == 'f' ? '\f' : c;
            evbuffer_add(out, &r, 1);
        }
    }
}

/* ---- replies ---- */
static void reply_to(struct evhttp_request *req, const char *id, int status, const char *type) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "X-Instance", instance);
    if (id) {
        char cookie[200], sig[44];
        sign(id, strlen(id), sig);
        int n = snprintf(cookie, sizeof cookie, "connect.sid=s%%3A%s.", id);
        for (const char *s = sig; *s; s++)
            n += *s == '+' ? snprintf(cookie + n, 4, "%%2B") : *s == '/' ? snprintf(cookie + n, 4, "%%2F") : (cookie[n] = *s, 1);
        snprintf(cookie + n, sizeof cookie - n, "; Path=/; HttpOnly; SameSite=Lax");
        evhttp_add_header(h, "Set-Cookie", cookie);
    }
    evhttp_send_reply(req, status, NULL, NULL);                     /* NULL: libevent's standard reason */
}
static const char *TEXT = "text/html; charset=utf-8", *PLAIN = "text/plain; charset=utf-8",
                  *JSON = "application/json; charset=utf-8";
/* Errors are JSON, as evserver renders them: 404, 405 (+ Allow), 503 (+ Retry-After: a store failure). */
static void fail(struct evhttp_request *req, int status) {
    const char *reason = status == 404 ? "Not Found" : status == 405 ? "Method Not Allowed" : "Service Unavailable";
    if (status == 405) evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
    if (status == 503) evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
    evbuffer_add_printf(evhttp_request_get_output_buffer(req), "{\"error\":\"%s\"}", reason);
    reply_to(req, NULL, status, JSON);
}
static void unavailable(struct call *c) {
    evbuffer_drain(evhttp_request_get_output_buffer(c->req), (size_t)-1);
    fail(c->req, 503);
    free(c);
}

/* ---- Redis ---- */
static void on_get(redisAsyncContext *ac, void *r, void *privdata);
static void on_save(redisAsyncContext *ac, void *r, void *privdata);

static int send_get(struct call *c) {
    char key[5 + MAX_ID + 1];
    int n = snprintf(key, sizeof key, "sess:%s", c->id);
    const char *argv[] = {"GETEX", key, "EX", TTL};
    size_t lens[] = {5, (size_t)n, 2, sizeof TTL - 1};
    return c->w->redis ? redisAsyncCommandArgv(c->w->redis, on_get, c, 4, argv, lens) : REDIS_ERR;
}
/* Saves `json` if the stored value is still `loaded` (NULL: still absent). */
static void save(struct call *c, const char *loaded, size_t loaded_len, const char *json, size_t json_len) {
    char key[5 + MAX_ID + 1], expected[41] = "";
    int n = snprintf(key, sizeof key, "sess:%s", c->id);
    if (loaded) sha1_hex(loaded, loaded_len, expected);
    const char *argv[] = {"EVALSHA", cas_sha, "1", key, expected, json, TTL};
    size_t lens[] = {7, 40, 1, (size_t)n, loaded ? 40 : 0, json_len, sizeof TTL - 1};
    if (!c->w->redis || redisAsyncCommandArgv(c->w->redis, on_save, c, 7, argv, lens) != REDIS_OK) unavailable(c);
}
/* The session after this route's change, or NULL if the route leaves it unchanged (nothing to save). */
static char *apply(struct call *c, const char *cur, size_t n, size_t *out_len, long long *views) {
    const char *vs, *ve;
    char *out = NULL;
    if (!cur) { cur = COOKIE_JSON "}"; n = sizeof COOKIE_JSON "}" - 1; }
    int found = find_key(cur, n, c->route == ROUTE_VIEWS ? "views" : "userName", &vs, &ve);
    if (found < 0) { cur = COOKIE_JSON "}"; n = sizeof COOKIE_JSON "}" - 1; found = 0; }    /* unreadable: start over */
    if (c->route == ROUTE_VIEWS) {
        *views = found && *vs >= '0' && *vs <= '9' ? strtoll(vs, NULL, 10) + 1 : 1;
        if (found) *out_len = asprintf(&out, "%.*s%lld%.*s", (int)(vs - cur), cur, *views, (int)(cur + n - ve), ve);
    } else {
        if (found && ve - vs == 12 && !memcmp(vs, "\"Aditya@123\"", 12)) return NULL;
        if (found) *out_len = asprintf(&out, "%.*s\"Aditya@123\"%.*s", (int)(vs - cur), cur, (int)(cur + n - ve), ve);
    }
    if (!found) {                                           /* insert before the closing brace */
        const char *close = cur + n - 1;
        while (*close != '}') close--;
        const char *before = skip_ws(cur + 1, close) == close ? "" : ",";
        *out_len = c->route == ROUTE_VIEWS
            ? asprintf(&out, "%.*s%s\"views\":%lld}", (int)(close - cur), cur, before, *views)
            : asprintf(&out, "%.*s%s\"userName\":\"Aditya@123\"}", (int)(close - cur), cur, before);
    }
    return out;
}
/* Applies the route to the loaded session (NULL: none) and saves it, or answers right away if unchanged. */
static void update(struct call *c, const char *cur, size_t n) {
    long long views = 0;
    size_t len = 0;
    char *json = apply(c, cur, n, &len, &views);
    if (!json) { evbuffer_add(evhttp_request_get_output_buffer(c->req), "Thanks for visiting", 19); reply_to(c->req, NULL, 200, TEXT); free(c); return; }
    if (c->route == ROUTE_VIEWS) evbuffer_add_printf(evhttp_request_get_output_buffer(c->req), "{\"views\":%lld,\"instance\":\"%s\"}", views, instance);
    else evbuffer_add(evhttp_request_get_output_buffer(c->req), "Thanks for visiting", 19);
    save(c, cur, n, json, len);
    free(json);
}
static void on_get(redisAsyncContext *ac, void *r, void *privdata) {
    redisReply *reply = r;
    struct call *c = privdata;
    (void)ac;
    if (!reply || (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL)) { unavailable(c); return; }
    const char *json = reply->type == REDIS_REPLY_STRING ? reply->str : NULL;
    if (c->route == ROUTE_LOGIN) {
        struct evbuffer *out = evhttp_request_get_output_buffer(c->req);
        const char *vs, *ve;
        evbuffer_add(out, "Welcome ", 8);
        if (json && find_key(json, reply->len, "userName", &vs, &ve) == 1 && *vs == '"') add_unescaped(out, vs, ve);
        else evbuffer_add(out, "guest", 5);
        reply_to(c->req, NULL, 200, TEXT);
        free(c);
        return;
    }
    if (!json) { new_id(c->id); c->fresh = 1; }                  /* expired or destroyed: a new session */
    update(c, json, json ? reply->len : 0);
}
static void on_save(redisAsyncContext *ac, void *r, void *privdata) {
    redisReply *reply = r;
    struct call *c = privdata;
    if (reply && reply->type == REDIS_REPLY_INTEGER) {             /* saved */
        reply_to(c->req, c->fresh ? c->id : NULL, 200, c->route == ROUTE_VIEWS ? JSON : TEXT);
        free(c);
    } else if (reply && reply->type == REDIS_REPLY_ERROR && !strncmp(reply->str, "NOSCRIPT", 8)) {
        redisAsyncCommand(ac, NULL, NULL, "SCRIPT LOAD %s", CAS_SCRIPT);    /* Redis lost it: load it again */
        evbuffer_drain(evhttp_request_get_output_buffer(c->req), (size_t)-1);
        if (c->retries++ < MAX_RETRIES && send_get(c) == REDIS_OK) return;
        unavailable(c);
    } else if (reply && (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_NIL) && c->retries++ < MAX_RETRIES) {
        /* Conflict: someone saved first. Re-apply our change to what is stored now (NIL: it is gone). */
        evbuffer_drain(evhttp_request_get_output_buffer(c->req), (size_t)-1);
        update(c, reply->type == REDIS_REPLY_STRING ? reply->str : NULL, reply->type == REDIS_REPLY_STRING ? reply->len : 0);
    } else unavailable(c);
}

static void redis_connect(struct worker *w);
static void on_reconnect(evutil_socket_t fd, short what, void *arg) { (void)fd; (void)what; redis_connect(arg); }
static void on_connect(const redisAsyncContext *ac, int status) {
    if (status == REDIS_OK) return;
    fprintf(stderr, "reference: redis %s:%d: %s\n", redis_host, redis_port, ac->errstr);
    struct worker *w = ac->data;
    w->redis = NULL;                                               /* hiredis frees the context */
    struct timeval tv = {0, 200000};
    event_base_once(w->base, -1, EV_TIMEOUT, on_reconnect, w, &tv);
}
static void on_disconnect(const redisAsyncContext *ac, int status) { if (status != REDIS_OK) on_connect(ac, REDIS_ERR); }
static void redis_connect(struct worker *w) {
    redisAsyncContext *ac = redisAsyncConnect(redis_host, redis_port);
    if (!ac || ac->err) { fprintf(stderr, "reference: cannot connect to redis\n"); exit(1); }
    ac->data = w;
    redisLibeventAttach(ac, w->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (redis_db) redisAsyncCommand(ac, NULL, NULL, "SELECT %d", redis_db);   /* queued before any request's command */
    redisAsyncCommand(ac, NULL, NULL, "SCRIPT LOAD %s", CAS_SCRIPT);
    w->redis = ac;
}

/* ---- HTTP ---- */
static void on_request(struct evhttp_request *req, void *arg) {
    struct worker *w = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    int hello = path && !strcmp(path, "/hello");
    enum route route = !path ? -1 : !strcmp(path, "/") ? ROUTE_ROOT : !strcmp(path, "/login") ? ROUTE_LOGIN
                     : !strcmp(path, "/views") ? ROUTE_VIEWS : -1;
    if ((int)route < 0 && !hello) { fail(req, 404); return; }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) { fail(req, 405); return; }
    if (hello) {
        evbuffer_add(evhttp_request_get_output_buffer(req), "ok", 2);
        reply_to(req, NULL, 200, PLAIN);
        return;
    }
    struct call *c = calloc(1, sizeof *c);
    c->req = req; c->w = w; c->route = route;
    if (session_id_from_cookie(evhttp_find_header(evhttp_request_get_input_headers(req), "Cookie"), c->id)) {
        if (send_get(c) != REDIS_OK) unavailable(c);
    } else if (route == ROUTE_LOGIN) {                             /* no session, and nothing to save */
        evbuffer_add(evhttp_request_get_output_buffer(req), "Welcome guest", 13);
        reply_to(req, NULL, 200, TEXT);
        free(c);
    } else {
        new_id(c->id); c->fresh = 1;
        update(c, NULL, 0);
    }
}

static void *run_worker(void *arg) {
    struct worker *w = arg;
    struct event_config *cfg = event_config_new();
    event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST | EVENT_BASE_FLAG_NOLOCK);
    w->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    w->http = evhttp_new(w->base);
    if (!w->base || !w->http || evhttp_accept_socket(w->http, w->listen_fd)) { fprintf(stderr, "reference: libevent setup failed\n"); exit(1); }
    evhttp_set_gencb(w->http, on_request, w);
    redis_connect(w);
    event_base_dispatch(w->base);
    return NULL;
}

static int listen_on(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), };
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);    /* one socket per thread; the kernel spreads */
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "reference: --host must be an IPv4 address\n"); exit(2); }
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4096)) { perror("reference: listen"); exit(1); }
    return fd;
}

int main(int argc, char **argv) {
    int port = 3000, threads = 1;
    char *secret = NULL, *host = "127.0.0.1";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--secret")) secret = argv[i + 1];
        else if (!strcmp(argv[i], "--instance")) instance = argv[i + 1];
        else if (!strcmp(argv[i], "--redis-url")) {
            static char host[256];
            if (sscanf(argv[i + 1], "redis://%255[^:/]:%d/%d", host, &redis_port, &redis_db) < 1) { fprintf(stderr, "reference: bad --redis-url\n"); return 2; }
            redis_host = host;
        } else { fprintf(stderr, "reference: unknown option %s\n", argv[i]); return 2; }
    }
    if (!secret || !*secret || threads < 1 || port <= 0 || strpbrk(instance, "\"\\")) {
        fprintf(stderr, "usage: reference [--host IP] --port P [--threads N] [--redis-url redis://H:P/DB] --secret S [--instance NAME]\n");
        return 2;
    }
    unsigned char key[64] = {0}, pad[64];                            /* HMAC key pads (RFC 2104) */
    if (strlen(secret) > 64) SHA256((unsigned char *)secret, strlen(secret), key); else memcpy(key, secret, strlen(secret));
    for (int i = 0; i < 64; i++) pad[i] = key[i] ^ 0x36;
    SHA256_Init(&hmac_inner); SHA256_Update(&hmac_inner, pad, 64);
    for (int i = 0; i < 64; i++) pad[i] = key[i] ^ 0x5c;
    SHA256_Init(&hmac_outer); SHA256_Update(&hmac_outer, pad, 64);
    sha1_hex(CAS_SCRIPT, sizeof CAS_SCRIPT - 1, cas_sha);           /* what SCRIPT LOAD answers */
    signal(SIGPIPE, SIG_IGN);

    struct worker *workers = calloc(threads, sizeof *workers);
    for (int i = 0; i < threads; i++) {
        workers[i].listen_fd = listen_on(host, port);
        pthread_t t;
        if (i > 0 && pthread_create(&t, NULL, run_worker, &workers[i])) { perror("reference: pthread_create"); return 1; }
    }
    fprintf(stderr, "reference: listening on %s:%d, %d thread(s), redis %s:%d/%d\n", host, port, threads, redis_host, redis_port, redis_db);
    run_worker(&workers[0]);
    return 0;
}
