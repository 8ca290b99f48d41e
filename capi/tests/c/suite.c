/*
 * The C API test suite: one scenario per run, named by the first argument,
 * against a real signaling server. The harness (tests/c_api.rs) starts the
 * server, issues the tokens and runs every scenario plain, under
 * AddressSanitizer and under valgrind.
 *
 * Environment:
 *   FC_SIGNAL_PORT  the signaling server's port on 127.0.0.1
 *   FC_TOKENS       "id=token;id=token;..." for the ids scenarios use
 *                   ("<scenario>-device", "-app", "-plain")
 *   FC_WAIT_S       bound of every wait, in seconds (default 20)
 *   FC_ECHO_PLUGIN  the echo plugin's .wasm (scenario "plugin")
 *   FC_RUST_PEER    a Rust node's id (scenario "connect_rust")
 *   FC_DEAD_PORT    a TCP port nobody listens at (scenario "signal_unreachable")
 *
 * Exit status 0 when every check held; otherwise the failed check is
 * printed and the status is 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fogconnect.h"

/* ------------------------------------------------------------------ */
/* Checks and waits                                                    */

static const char* scenario = "";

#define CHECK(cond, ...)                                                                                   \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "%s: %s:%d: check failed: %s: ", scenario, __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                                                  \
            fprintf(stderr, "\n");                                                                         \
            exit(1);                                                                                       \
        }                                                                                                  \
    } while (0)

/* Everything the callbacks change is guarded by this lock; every change
 * is broadcast, so the main thread waits on conditions, never on time. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;

/* An environment variable the harness must set. */
static const char* required_env(const char* name)
{
    const char* value = getenv(name);
    CHECK(value != NULL, "%s is not set", name);
    return value;
}

static int wait_seconds(void)
{
    const char* text = getenv("FC_WAIT_S");
    return text ? atoi(text) : 20;
}

/* Waits until `cond` (evaluated under the lock) holds, at most FC_WAIT_S. */
#define WAIT_FOR(cond, ...)                                                                                \
    do {                                                                                                   \
        struct timespec deadline;                                                                          \
        clock_gettime(CLOCK_REALTIME, &deadline);                                                          \
        deadline.tv_sec += wait_seconds();                                                                 \
        pthread_mutex_lock(&lock);                                                                         \
        int timed_out = 0;                                                                                 \
        while (!(cond) && !timed_out)                                                                      \
            timed_out = pthread_cond_timedwait(&changed, &lock, &deadline) == ETIMEDOUT;                   \
        int held = (cond);                                                                                 \
        pthread_mutex_unlock(&lock);                                                                       \
        CHECK(held, __VA_ARGS__);                                                                          \
    } while (0)

static void notify(void)
{
    pthread_cond_broadcast(&changed);
}

/* Waits until a connection's final notification has returned: its handle
 * is invalid from then on. Nothing is signalled after a callback returns,
 * so this polls, with short naps, at most FC_WAIT_S. */
static void retired(void* handle)
{
    time_t deadline = time(NULL) + wait_seconds();
    while (pr_connect_is_passive(handle) != -1) {
        CHECK(time(NULL) <= deadline, "handle %p still valid after its final notification", handle);
        struct timespec nap = { 0, 1000000 };
        nanosleep(&nap, NULL);
    }
}

/* ------------------------------------------------------------------ */
/* Connections as the suite records them                               */

#define MAX_RECORDS 512
#define TEXT 256

struct record {
    void* handle;
    int passive;
    int connected;       /* CONNECTED callbacks */
    int ended;           /* final notifications: must end at exactly 1 */
    int end_event;       /* 0: the close callback; else the connect callback's event */
    char error[TEXT];    /* pr_errno_mgs during the final notification */
    int messages;        /* messages received */
    char last[TEXT];     /* the last one (its first TEXT - 1 bytes) */
    int last_size;       /* its size */
    int nul_terminated;  /* every buffer had its NUL */
    int in_order;        /* numbered messages arrived in order */
    int send_after_end;  /* pr_send_peer's result inside the final notification */
    int set_close_cb;    /* whether the app side sets a close callback */
    int numbered;        /* numbered messages to exchange (concurrent) */
    int release_on_recv; /* release this context from the receive callback */
    int expect_end;      /* 0: never gets a notification (never started, or moved away) */
    struct record* then; /* connect this one from inside the CONNECTED callback */
    const char* then_id; /* ... to this id */
    void* ctx;
};

static struct record records[MAX_RECORDS];
static int record_count;

static struct record* new_record(void)
{
    pthread_mutex_lock(&lock);
    CHECK(record_count < MAX_RECORDS, "too many records");
    struct record* r = &records[record_count++];
    memset(r, 0, sizeof *r);
    r->nul_terminated = 1;
    r->in_order = 1;
    r->set_close_cb = 1;
    r->send_after_end = 1;
    r->expect_end = 1;
    pthread_mutex_unlock(&lock);
    return r;
}

static void copy_text(char* to, const void* from, int size)
{
    int n = size < TEXT - 1 ? size : TEXT - 1;
    memcpy(to, from, (size_t)n);
    to[n] = '\0';
}

static void send_text(void* conn, const char* text)
{
    int sent = pr_send_peer(conn, (void*)text, (int)strlen(text));
    CHECK(sent == (int)strlen(text), "send %s: %d %s", text, sent, pr_errno_mgs(conn));
}

/* The final notification, from either callback. */
static void ended(struct record* r, void* conn, int event)
{
    char why[TEXT];
    snprintf(why, TEXT, "%s", pr_errno_mgs(conn));
    /* Sending now fails (and becomes the last error). */
    char probe[] = "x";
    int after = pr_send_peer(conn, probe, 1);
    pthread_mutex_lock(&lock);
    r->ended++;
    r->end_event = event;
    memcpy(r->error, why, TEXT);
    r->send_after_end = after;
    notify();
    pthread_mutex_unlock(&lock);
}

/* ------------------------------------------------------------------ */
/* The suite's device: "welcome" on connect, "I know!" to "I am fog
 * data!", closes on "close-me", echoes the rest.                       */

static void device_recv(void* conn, void* cbarg, void* buf, int size)
{
    struct record* r = cbarg;
    const char* text = buf;
    pthread_mutex_lock(&lock);
    r->messages++;
    if (text[size] != '\0')
        r->nul_terminated = 0;
    copy_text(r->last, buf, size);
    notify();
    pthread_mutex_unlock(&lock);
    if (size == 14 && strcmp(text, "I am fog data!") == 0)
        send_text(conn, "I know!");
    else if (strcmp(text, "close-me") == 0)
        CHECK(pr_connect_close(conn) == 0, "close: %s", pr_errno_mgs(conn));
    else
        CHECK(pr_send_peer(conn, buf, size) == size, "echo: %s", pr_errno_mgs(conn));
}

static void device_close(void* conn, void* cbarg)
{
    ended(cbarg, conn, 0);
}

static void device_connected(void* conn, short events, void* cbarg)
{
    CHECK(events == PR_EVENT_CONNECTED, "passive callback with event 0x%x", events);
    CHECK(cbarg == NULL, "a passive connection's first cbarg is NULL");
    struct record* r = new_record();
    pthread_mutex_lock(&lock);
    r->handle = conn;
    r->passive = pr_connect_is_passive(conn);
    r->connected++;
    notify();
    pthread_mutex_unlock(&lock);
    pr_connect_set_userdata(conn, r);
    CHECK(pr_event_setcb(conn, device_recv, device_close) == 0, "setcb");
    send_text(conn, "welcome");
}

/* ------------------------------------------------------------------ */
/* The suite's app side                                                */

static void app_recv(void* conn, void* cbarg, void* buf, int size)
{
    struct record* r = cbarg;
    const char* text = buf;
    int done = 0;
    pthread_mutex_lock(&lock);
    if (text[size] != '\0')
        r->nul_terminated = 0;
    if (r->numbered && strcmp(text, "welcome") != 0) {
        char expected[64];
        snprintf(expected, sizeof expected, "message %d of %p", r->messages, (void*)r);
        if (strcmp(expected, text) != 0)
            r->in_order = 0;
        r->messages++;
        done = r->messages == r->numbered;
    } else if (!r->numbered) {
        r->messages++;
    }
    copy_text(r->last, buf, size);
    r->last_size = size;
    notify();
    pthread_mutex_unlock(&lock);
    if (done)
        pr_connect_close(conn);
    if (r->release_on_recv) {
        r->release_on_recv = 0;
        pr_fogconnect_release(r->ctx);
    }
}

static void app_close(void* conn, void* cbarg)
{
    ended(cbarg, conn, 0);
}

static void app_connected(void* conn, short events, void* cbarg)
{
    struct record* r = cbarg;
    if (events != PR_EVENT_CONNECTED) {
        ended(r, conn, events);
        return;
    }
    pthread_mutex_lock(&lock);
    r->handle = conn;
    r->passive = pr_connect_is_passive(conn);
    r->connected++;
    notify();
    pthread_mutex_unlock(&lock);
    CHECK(pr_event_setcb(conn, app_recv, r->set_close_cb ? app_close : NULL) == 0, "setcb");
    if (r->then) {
        r->then->ctx = r->ctx;
        CHECK(pr_connect_peer(r->ctx, r->then_id, PR_TRANSPORT_PROTOCOL_QUIC, 0, app_connected, r->then) == 0,
              "connect from inside a callback: %s", pr_errno_mgs(NULL));
    }
    for (int i = 0; i < r->numbered; i++) {
        char message[64];
        snprintf(message, sizeof message, "message %d of %p", i, (void*)r);
        send_text(conn, message);
    }
}

/* ------------------------------------------------------------------ */
/* Contexts                                                            */

static const char* token_for(const char* id)
{
    static char token[1024];
    const char* all = required_env("FC_TOKENS");
    size_t id_len = strlen(id);
    for (const char* p = all; *p;) {
        const char* end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > id_len && strncmp(p, id, id_len) == 0 && p[id_len] == '=') {
            CHECK(len - id_len - 1 < sizeof token, "token too long");
            memcpy(token, p + id_len + 1, len - id_len - 1);
            token[len - id_len - 1] = '\0';
            return token;
        }
        p += len + (end ? 1 : 0);
    }
    CHECK(0, "no token for %s", id);
    return NULL;
}

static void id_of(char* id, const char* role)
{
    snprintf(id, 128, "%s-%s", scenario, role);
}

static struct pr_signal_server signal_info(void* ctx)
{
    const char* port = required_env("FC_SIGNAL_PORT");
    struct pr_signal_server info = { (unsigned short)atoi(port), ctx, (char*)"127.0.0.1", (char*)"/ws", NULL, NULL };
    return info;
}

/* A context registered as "<scenario>-<role>", loopback only. */
static void* start(const char* role, pr_callback_t* passive, const char* plugin_on_0)
{
    char id[128];
    id_of(id, role);
    void* ctx = pr_fogconnect_init();
    CHECK(ctx != NULL, "init: %s", pr_errno_mgs(NULL));
    CHECK(pr_fogconnect_set_listen(ctx, "127.0.0.1:0") == 0, "listen: %s", pr_errno_mgs(NULL));
    CHECK(pr_fogconnect_set_token(ctx, token_for(id)) == 0, "token: %s", pr_errno_mgs(NULL));
    if (passive)
        pr_fogconnect_set_callback(ctx, passive);
    if (plugin_on_0)
        CHECK(pr_fogconnect_load_plugin(ctx, 0, plugin_on_0) == 0, "plugin: %s", pr_errno_mgs(NULL));
    set_id(id);
    struct pr_signal_server info = signal_info(ctx);
    int registered = pr_init_signal(&info);
    CHECK(registered == 0, "%s not registered (%d): %s", id, registered, pr_errno_mgs(NULL));
    return ctx;
}

static struct record* connect_id(void* ctx, const char* id, int protocol, int service)
{
    struct record* r = new_record();
    r->ctx = ctx;
    CHECK(pr_connect_peer(ctx, id, protocol, service, app_connected, r) == 0, "connect: %s", pr_errno_mgs(NULL));
    return r;
}

static struct record* connect_to(void* ctx, const char* role, int protocol, int service)
{
    char id[128];
    id_of(id, role);
    return connect_id(ctx, id, protocol, service);
}

/* Waits for a connect's first callback: CONNECTED or its failure. */
static void settled(struct record* r)
{
    WAIT_FOR(r->connected == 1 || r->ended == 1, "the connect was not settled");
}

/* Connects over QUIC and waits until connected. */
static struct record* open_id(void* ctx, const char* id, int service)
{
    struct record* r = connect_id(ctx, id, PR_TRANSPORT_PROTOCOL_QUIC, service);
    settled(r);
    CHECK(r->connected == 1, "connect to %s service %d: %s", id, service, r->error);
    return r;
}

static struct record* open_to(void* ctx, const char* role, int service)
{
    char id[128];
    id_of(id, role);
    return open_id(ctx, id, service);
}

/* Sends `text` and waits for the connection's message number `nth` (from
 * 1), which must be `expected`. */
static void ask(struct record* r, const char* text, int nth, const char* expected)
{
    send_text(r->handle, text);
    WAIT_FOR(r->messages == nth, "no answer %d to %s", nth, text);
    CHECK(strcmp(r->last, expected) == 0, "answer to %s: %s", text, r->last);
}

/* Which device record saw the message `text` last. */
static struct record* device_record_with(const char* text)
{
    for (int i = 0; i < record_count; i++)
        if (records[i].passive == 1 && strcmp(records[i].last, text) == 0)
            return &records[i];
    return NULL;
}

/* Device-side connections that have ended (call under the lock). */
static int passive_ended(void)
{
    int n = 0;
    for (int i = 0; i < record_count; i++)
        n += records[i].passive == 1 && records[i].ended == 1;
    return n;
}

/* After release: every connection notified exactly once. */
static void every_record_ended_once(void)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < record_count; i++)
        CHECK(records[i].ended == records[i].expect_end, "record %d (%s) ended %d times (%s)", i, records[i].passive ? "passive" : "active",
              records[i].ended, records[i].error);
    pthread_mutex_unlock(&lock);
}

/* ------------------------------------------------------------------ */
/* Scenarios                                                           */

static void exchange(void)
{
    void* device = start("device", device_connected, NULL);
    void* app = start("app", NULL, NULL);

    /* Active connect by id, QUIC, service 1. */
    struct record* a = open_to(app, "device", 1);
    unsigned int convention = pr_get_convention_number(a->handle);
    CHECK((convention & 0xf) == PR_TRANSPORT_PROTOCOL_QUIC, "transport %u", convention & 0xf);
    CHECK(((convention >> 4) & 0xff) == 1, "service %u", (convention >> 4) & 0xff);
    CHECK(a->passive == 0, "the dialling side is active");
    char peer[256];
    CHECK(pr_connect_get_peer_id(a->handle, peer, sizeof peer) == 1, "peer id vouched for");
    CHECK(strcmp(peer, "exchange-device") == 0, "peer id %s", peer);

    /* Both directions: the device's welcome, then question and answer. */
    WAIT_FOR(a->messages == 1, "no welcome");
    CHECK(strcmp(a->last, "welcome") == 0, "first message %s", a->last);
    ask(a, "I am fog data!", 2, "I know!");
    struct record* d = device_record_with("I am fog data!");
    CHECK(d != NULL && d->passive == 1 && d->nul_terminated, "the device saw the question as text");
    CHECK(pr_get_convention_number(d->handle) == convention, "both ends agree on the convention");
    CHECK(pr_connect_get_peer_id(d->handle, peer, sizeof peer) == 1 && strcmp(peer, "exchange-app") == 0,
          "the device sees the app's vouched id: %s", peer);

    /* A zero-length message arrives as an empty text. */
    CHECK(pr_send_peer(a->handle, "", 0) == 0, "empty send: %s", pr_errno_mgs(a->handle));
    WAIT_FOR(a->messages == 3, "no empty echo");
    CHECK(a->last[0] == '\0' && a->nul_terminated, "empty echo");

    /* Counters follow the writer task, which may still be finishing the
     * last write when its echo is already here: poll briefly. */
    struct pr_connect_stats stats;
    time_t deadline = time(NULL) + wait_seconds();
    do {
        CHECK(pr_connect_get_stats(a->handle, &stats) == 0, "stats: %s", pr_errno_mgs(a->handle));
        struct timespec nap = { 0, 1000000 };
        if (stats.messages_sent < 2)
            nanosleep(&nap, NULL);
    } while (stats.messages_sent < 2 && time(NULL) <= deadline);
    CHECK(stats.path == PR_PATH_LAN && stats.messages_sent == 2 && stats.messages_received == 3,
          "stats path %d sent %llu received %llu", stats.path, (unsigned long long)stats.messages_sent,
          (unsigned long long)stats.messages_received);

    /* Close from the app: one notification on each side. */
    CHECK(pr_connect_close(a->handle) == 0, "close");
    WAIT_FOR(a->ended == 1 && d->ended == 1, "not both notified of the app's close");
    CHECK(a->end_event == 0 && strstr(a->error, "closed by the application"), "app side: %s", a->error);
    CHECK(a->send_after_end == -1, "send inside the close callback fails");
    CHECK(strstr(d->error, "eof") != NULL, "device side: %s", d->error);

    /* Close from the device; this app sets no close callback, so its
     * connect callback gets EOF; user data set later reaches it. */
    struct record* b = new_record();
    struct record* moved = new_record();
    moved->set_close_cb = 0;
    b->set_close_cb = 0;
    CHECK(pr_connect_peer(app, "exchange-device", PR_TRANSPORT_PROTOCOL_QUIC, 1, app_connected, b) == 0, "connect");
    settled(b);
    CHECK(b->connected == 1, "second connect: %s", b->error);
    WAIT_FOR(b->messages == 1, "no welcome");
    pr_connect_set_userdata(b->handle, moved);
    b->expect_end = 0;
    send_text(b->handle, "close-me");
    WAIT_FOR(moved->ended == 1, "the device's close was not notified");
    CHECK(moved->end_event == PR_EVENT_EOF && strstr(moved->error, "eof"), "event 0x%x: %s", moved->end_event,
          moved->error);
    struct record* closer = NULL;
    WAIT_FOR((closer = device_record_with("close-me")) != NULL && closer->ended == 1,
             "the device side was not notified of its own close");
    CHECK(strstr(closer->error, "closed by the application") != NULL, "%s", closer->error);

    /* A connect started from inside a callback. */
    struct record* first = new_record();
    struct record* chained = new_record();
    first->ctx = app;
    first->then = chained;
    first->then_id = "exchange-device";
    CHECK(pr_connect_peer(app, "exchange-device", PR_TRANSPORT_PROTOCOL_QUIC, 0, app_connected, first) == 0, "c");
    WAIT_FOR(chained->connected == 1 || chained->ended == 1, "the chained connect did not settle");
    CHECK(chained->connected == 1, "chained connect: %s", chained->error);
    ask(chained, "chained", 2, "chained");

    /* The stale handle is refused, never dereferenced. */
    retired(a->handle);
    CHECK(pr_send_peer(a->handle, "x", 1) == -1, "send on a stale handle");
    CHECK(strcmp(pr_errno_mgs(a->handle), "invalid connection") == 0, "stale: %s", pr_errno_mgs(a->handle));

    pr_fogconnect_release(app);
    pr_fogconnect_release(device);
    every_record_ended_once();
}

static void failures(void)
{
    void* device = start("device", device_connected, NULL);
    void* plain = start("plain", NULL, NULL); /* serves nothing */
    void* app = start("app", NULL, NULL);

    /* An id nobody registered. */
    struct record* offline = new_record();
    CHECK(pr_connect_peer(app, "failures-nobody", PR_TRANSPORT_PROTOCOL_QUIC, 1, app_connected, offline) == 0, "c");
    WAIT_FOR(offline->ended == 1, "offline id not notified");
    CHECK(offline->end_event == PR_EVENT_ERROR && strstr(offline->error, "failures-nobody"), "offline: 0x%x %s",
          offline->end_event, offline->error);

    /* A service nobody serves. */
    struct record* unserved = connect_to(app, "plain", PR_TRANSPORT_PROTOCOL_QUIC, 9);
    WAIT_FOR(unserved->ended == 1, "unserved service not notified");
    CHECK(unserved->end_event == PR_EVENT_ERROR && strstr(unserved->error, "no such service: 9"), "unserved: %s",
          unserved->error);

    /* Without a passive callback the device serves nothing; set again at
     * once, it serves again. */
    pr_fogconnect_set_callback(device, NULL);
    struct record* off = connect_to(app, "device", PR_TRANSPORT_PROTOCOL_QUIC, 1);
    WAIT_FOR(off->ended == 1, "a connect to a device without a passive callback was not notified");
    CHECK(off->end_event == PR_EVENT_ERROR && strstr(off->error, "no such service: 1"), "%s", off->error);
    pr_fogconnect_set_callback(device, device_connected);
    ask(open_to(app, "device", 1), "I am fog data!", 2, "I know!");

    /* Transports not offered: refused with the reason, never a hang. */
    int transports[] = { PR_TRANSPORT_PROTOCOL_RTC, PR_TRANSPORT_PROTOCOL_UTP, PR_TRANSPORT_PROTOCOL_SCTP };
    for (size_t i = 0; i < sizeof transports / sizeof transports[0]; i++) {
        struct record* r = connect_to(app, "device", transports[i], 1);
        WAIT_FOR(r->ended == 1, "transport %d not notified", transports[i]);
        CHECK(r->connected == 0 && r->end_event == PR_EVENT_ERROR && strstr(r->error, "unsupported transport"),
              "transport %d: %s", transports[i], r->error);
    }

    /* Bad arguments: -1 at once, no callback, the reason for NULL. */
    struct record* none = new_record();
    none->expect_end = 0; /* never started: no notification, as documented */
    CHECK(pr_connect_peer(app, NULL, PR_TRANSPORT_PROTOCOL_QUIC, 1, app_connected, none) == -1, "NULL id");
    CHECK(strstr(pr_errno_mgs(NULL), "peerID") != NULL, "%s", pr_errno_mgs(NULL));
    CHECK(pr_connect_peer(app, "", PR_TRANSPORT_PROTOCOL_QUIC, 1, app_connected, none) == -1, "empty id");
    CHECK(pr_connect_peer(app, "a\tb", PR_TRANSPORT_PROTOCOL_QUIC, 1, app_connected, none) == -1, "control character");
    CHECK(pr_connect_peer(app, "fp:abc", PR_TRANSPORT_PROTOCOL_QUIC, 1, app_connected, none) == -1, "fp: prefix");
    CHECK(pr_connect_peer(app, "failures-device", 6, 1, app_connected, none) == -1, "protocol 6");
    CHECK(strstr(pr_errno_mgs(NULL), "protocol 6") != NULL, "%s", pr_errno_mgs(NULL));
    CHECK(pr_connect_peer(app, "failures-device", -1, 1, app_connected, none) == -1, "protocol -1");
    CHECK(pr_connect_peer(app, "failures-device", PR_TRANSPORT_PROTOCOL_QUIC, 256, app_connected, none) == -1, "256");
    CHECK(pr_connect_peer(app, "failures-device", PR_TRANSPORT_PROTOCOL_QUIC, -1, app_connected, none) == -1, "-1");
    CHECK(pr_connect_peer(app, "failures-device", PR_TRANSPORT_PROTOCOL_QUIC, 1, NULL, none) == -1, "no callback");
    CHECK(pr_connect_peer((void*)0x1234, "failures-device", 5, 1, app_connected, none) == -1, "foreign context");
    CHECK(strcmp(pr_errno_mgs(NULL), "invalid context") == 0, "%s", pr_errno_mgs(NULL));
    CHECK(pr_connect_peer(NULL, "failures-device", 5, 1, app_connected, none) == -1, "NULL context");

    /* Before pr_init_signal there is nobody to ask. */
    void* fresh = pr_fogconnect_init();
    CHECK(pr_connect_peer(fresh, "failures-device", 5, 1, app_connected, none) == -1, "not started");
    CHECK(strstr(pr_errno_mgs(NULL), "pr_init_signal") != NULL, "%s", pr_errno_mgs(NULL));
    CHECK(pr_fogconnect_set_listen(fresh, "not an address") == -1, "bad listen address");
    CHECK(pr_fogconnect_add_relay(fresh, "http://relay", "u", "p") == -1, "not a TURN URL");
    CHECK(pr_fogconnect_load_plugin(fresh, 256, "x.wasm") == -1, "service 256");
    CHECK(pr_init_signal(NULL) == -1, "NULL info");
    struct pr_signal_server bad = signal_info((void*)0x42);
    CHECK(pr_init_signal(&bad) == -1, "foreign context in info");
    /* A token for another id: refused by the server, 1 with the reason. */
    struct pr_signal_server info = signal_info(fresh);
    CHECK(pr_fogconnect_set_listen(fresh, "127.0.0.1:0") == 0, "listen");
    CHECK(pr_fogconnect_set_token(fresh, token_for("failures-app")) == 0, "token");
    set_id("failures-impostor");
    CHECK(pr_init_signal(&info) == 1, "registered with another id's token");
    CHECK(strstr(pr_errno_mgs(NULL), "not registered") != NULL, "%s", pr_errno_mgs(NULL));
    CHECK(pr_fogconnect_set_token(fresh, "x") == -1, "settings after start are refused");
    pr_fogconnect_release(fresh);

    pr_fogconnect_release(app);
    pr_fogconnect_release(plain);
    pr_fogconnect_release(device);
    every_record_ended_once();
}

static void handles(void)
{
    void* device = start("device", device_connected, NULL);
    void* app = start("app", NULL, NULL);
    void* made_up[] = { NULL, (void*)0x1, (void*)0x1234, (void*)&records[0], (void*)-1, app, device };
    for (size_t i = 0; i < sizeof made_up / sizeof made_up[0]; i++) {
        void* h = made_up[i];
        char peer[64];
        struct pr_connect_stats stats;
        CHECK(pr_send_peer(h, "x", 1) == -1, "send on %p", h);
        if (h != NULL)
            CHECK(strcmp(pr_errno_mgs(h), "invalid connection") == 0, "%p: %s", h, pr_errno_mgs(h));
        CHECK(pr_connect_is_passive(h) == -1, "is_passive %p", h);
        CHECK(pr_get_convention_number(h) == 0, "convention %p", h);
        CHECK(pr_event_setcb(h, app_recv, app_close) == -1, "setcb %p", h);
        CHECK(pr_connect_close(h) == -1, "close %p", h);
        CHECK(pr_connect_get_stats(h, &stats) == -1, "stats %p", h);
        CHECK(pr_connect_get_peer_id(h, peer, sizeof peer) == -1, "peer id %p", h);
        pr_connect_set_userdata(h, NULL);
    }
    CHECK(pr_errno_mgs(NULL) != NULL, "never NULL");
    pr_fogconnect_release((void*)0x1234); /* nothing happens */
    pr_fogconnect_set_callback((void*)0x1234, NULL);

    struct record* a = open_to(app, "device", 0);
    WAIT_FOR(a->messages == 1, "no welcome");
    /* Bad sends on a good handle: -1 and the reason. */
    CHECK(pr_send_peer(a->handle, "x", -1) == -1, "negative size");
    CHECK(strstr(pr_errno_mgs(a->handle), "negative") != NULL, "%s", pr_errno_mgs(a->handle));
    CHECK(pr_send_peer(a->handle, NULL, 3) == -1, "NULL buffer");
    int big = (1 << 20) + 1;
    char* large = calloc((size_t)big, 1);
    CHECK(large != NULL, "calloc");
    CHECK(pr_send_peer(a->handle, large, big) == -1, "too large");
    CHECK(strstr(pr_errno_mgs(a->handle), "maximum message size") != NULL, "%s", pr_errno_mgs(a->handle));
    free(large);
    char tiny[4];
    CHECK(pr_connect_get_peer_id(a->handle, tiny, sizeof tiny) == -1, "a buffer too small");
    CHECK(pr_connect_get_stats(a->handle, NULL) == -1, "NULL stats");
    /* The connection still works after the refused calls. */
    ask(a, "still fine", 2, "still fine");
    void* stale = a->handle;
    CHECK(pr_connect_close(stale) == 0, "close");
    WAIT_FOR(a->ended == 1, "not notified");
    retired(stale);
    CHECK(pr_send_peer(stale, "x", 1) == -1 && strcmp(pr_errno_mgs(stale), "invalid connection") == 0,
          "stale: %s", pr_errno_mgs(stale));
    CHECK(pr_connect_close(stale) == -1, "closing twice");
    pr_fogconnect_release(app);
    pr_fogconnect_release(device);
    every_record_ended_once();
}

#define CONCURRENT 100
#define NUMBERED 20

static void concurrent(void)
{
    void* device = start("device", device_connected, NULL);
    void* app = start("app", NULL, NULL);
    struct record* conns[CONCURRENT];
    for (int i = 0; i < CONCURRENT; i++) {
        conns[i] = new_record();
        conns[i]->numbered = NUMBERED;
        CHECK(pr_connect_peer(app, "concurrent-device", PR_TRANSPORT_PROTOCOL_QUIC, 0, app_connected, conns[i]) == 0,
              "connect %d: %s", i, pr_errno_mgs(NULL));
    }
    for (int i = 0; i < CONCURRENT; i++) {
        WAIT_FOR(conns[i]->ended == 1, "connection %d: %d of %d messages, connected %d: %s", i, conns[i]->messages,
                 NUMBERED, conns[i]->connected, conns[i]->error);
        CHECK(conns[i]->connected == 1 && conns[i]->messages == NUMBERED && conns[i]->in_order &&
                  conns[i]->nul_terminated,
              "connection %d: %d messages, in order %d: %s", i, conns[i]->messages, conns[i]->in_order, conns[i]->error);
    }
    /* Every device side is notified of its end too. */
    WAIT_FOR(passive_ended() == CONCURRENT, "not every device connection ended");
    pr_fogconnect_release(app);
    pr_fogconnect_release(device);
    every_record_ended_once();
}

#define RELEASED 5

static void release_in_callback(void)
{
    void* device = start("device", device_connected, NULL);
    void* app = start("app", NULL, NULL);
    struct record* conns[RELEASED];
    for (int i = 0; i < RELEASED; i++) {
        conns[i] = open_to(app, "device", 0);
        WAIT_FOR(conns[i]->messages == 1, "no welcome");
    }
    /* The next message's receive callback releases the app's context. */
    conns[0]->release_on_recv = 1;
    send_text(conns[0]->handle, "release now");
    for (int i = 0; i < RELEASED; i++) {
        WAIT_FOR(conns[i]->ended == 1, "connection %d not notified after the release", i);
        CHECK(strstr(conns[i]->error, "context released") != NULL, "%d: %s", i, conns[i]->error);
    }
    WAIT_FOR(passive_ended() == RELEASED, "the device did not see every end");
    /* The released context is gone. */
    CHECK(pr_connect_peer(app, "release_in_callback-device", 5, 0, app_connected, conns[0]) == -1, "released");
    CHECK(strcmp(pr_errno_mgs(NULL), "invalid context") == 0, "%s", pr_errno_mgs(NULL));
    pr_fogconnect_release(device);
    every_record_ended_once();
}

static void plugin(void)
{
    const char* echo = required_env("FC_ECHO_PLUGIN");
    /* Service 0 through the Wasm echo plugin, the rest in C. */
    void* device = start("device", device_connected, echo);
    void* app = start("app", NULL, NULL);

    /* The plugin echoes without a welcome: its answer comes first. */
    ask(open_to(app, "device", 0), "through the sandbox", 1, "through the sandbox");

    struct record* c = open_to(app, "device", 1);
    WAIT_FOR(c->messages == 1, "no welcome from C");
    ask(c, "I am fog data!", 2, "I know!");

    /* A plugin loaded on the running device, and one on a taken number. */
    CHECK(pr_fogconnect_load_plugin(device, 2, echo) == 0, "load on 2: %s", pr_errno_mgs(NULL));
    CHECK(pr_fogconnect_load_plugin(device, 2, echo) == -1, "2 is taken");
    CHECK(strstr(pr_errno_mgs(NULL), "already served") != NULL, "%s", pr_errno_mgs(NULL));
    CHECK(pr_fogconnect_load_plugin(device, 3, "/nonexistent/plugin.wasm") == -1, "missing file");
    ask(open_to(app, "device", 2), "two", 1, "two");

    pr_fogconnect_release(app);
    pr_fogconnect_release(device);
    /* Device-side records exist only for the C service. */
    every_record_ended_once();
}

/* The device build (no WebAssembly runtime): loading a plugin fails at
 * once with the reason, before and after the node starts, and the device
 * serves its C services as usual. */
static void device_build(void)
{
    void* fresh = pr_fogconnect_init();
    CHECK(fresh != NULL, "init");
    CHECK(pr_fogconnect_load_plugin(fresh, 0, "echo.wasm") == -1, "a plugin was accepted before start");
    CHECK(strstr(pr_errno_mgs(NULL), "device build") != NULL, "%s", pr_errno_mgs(NULL));
    pr_fogconnect_release(fresh);

    void* device = start("device", device_connected, NULL);
    void* app = start("app", NULL, NULL);
    CHECK(pr_fogconnect_load_plugin(device, 2, "echo.wasm") == -1, "a plugin was loaded on the running device");
    CHECK(strstr(pr_errno_mgs(NULL), "without the WebAssembly plugin runtime") != NULL, "%s", pr_errno_mgs(NULL));
    struct record* c = open_to(app, "device", 1);
    WAIT_FOR(c->messages == 1, "no welcome from C");
    ask(c, "I am fog data!", 2, "I know!");
    pr_fogconnect_release(app);
    pr_fogconnect_release(device);
    every_record_ended_once();
}

/* A signaling server nobody answers at: pr_init_signal gives up after its
 * documented 10 s with 1 and the reason; the context stays usable. */
static void signal_unreachable(void)
{
    const char* dead = required_env("FC_DEAD_PORT");
    char id[128];
    id_of(id, "app");
    void* ctx = pr_fogconnect_init();
    CHECK(pr_fogconnect_set_listen(ctx, "127.0.0.1:0") == 0, "listen");
    CHECK(pr_fogconnect_set_token(ctx, token_for(id)) == 0, "token");
    set_id(id);
    struct pr_signal_server info = { (unsigned short)atoi(dead), ctx, (char*)"127.0.0.1", (char*)"/ws", NULL, NULL };
    time_t started = time(NULL);
    CHECK(pr_init_signal(&info) == 1, "registered with nobody");
    time_t waited = time(NULL) - started;
    CHECK(waited >= 9 && waited <= 30, "gave up after %ld s", (long)waited);
    CHECK(strstr(pr_errno_mgs(NULL), "not registered") != NULL, "%s", pr_errno_mgs(NULL));
    pr_fogconnect_release(ctx);
}

/* The whole text of `path` (at most 8 KiB) into `out`; its length. */
static size_t read_file(const char* path, char* out, size_t size)
{
    FILE* f = fopen(path, "rb");
    CHECK(f != NULL, "cannot open %s: %s", path, strerror(errno));
    size_t n = fread(out, 1, size, f);
    fclose(f);
    return n;
}

/* A registered context with the identity file `path`: 0, or -1. */
static int start_with_identity(const char* path)
{
    char id[128];
    id_of(id, "device");
    void* ctx = pr_fogconnect_init();
    CHECK(pr_fogconnect_set_listen(ctx, "127.0.0.1:0") == 0, "listen");
    CHECK(pr_fogconnect_set_token(ctx, token_for(id)) == 0, "token");
    CHECK(pr_fogconnect_set_identity_file(ctx, path) == 0, "identity: %s", pr_errno_mgs(NULL));
    set_id(id);
    struct pr_signal_server info = signal_info(ctx);
    int result = pr_init_signal(&info);
    pr_fogconnect_release(ctx);
    return result;
}

/* pr_fogconnect_set_identity_file: made on first use (owner only), read
 * unchanged on the next start, refused when others may read it. */
static void identity(void)
{
    char dir[] = "/tmp/fogconnect-identity-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
    char path[128];
    snprintf(path, sizeof path, "%s/device.identity", dir);
    CHECK(pr_fogconnect_set_identity_file(NULL, path) == -1, "NULL context");
    CHECK(start_with_identity(path) == 0, "first start: %s", pr_errno_mgs(NULL));
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "identity file mode %o", st.st_mode & 0777);
    static char first[8192], again[8192];
    size_t first_len = read_file(path, first, sizeof first);
    CHECK(first_len > 0 && strstr(first, "BEGIN CERTIFICATE") != NULL, "no certificate in the file");
    CHECK(start_with_identity(path) == 0, "second start: %s", pr_errno_mgs(NULL));
    size_t again_len = read_file(path, again, sizeof again);
    CHECK(again_len == first_len && memcmp(first, again, first_len) == 0, "the identity file changed");
    CHECK(chmod(path, 0644) == 0, "chmod");
    CHECK(start_with_identity(path) == -1, "a world-readable identity file was used");
    CHECK(strstr(pr_errno_mgs(NULL), "chmod 600") != NULL, "%s", pr_errno_mgs(NULL));
    unlink(path);
    rmdir(dir);
}

/* Network events: registration reported through the event callback. */
static int signal_ups;
static int foreign_events;

static void on_net_event(void* ctx, void* conn, int event, const char* detail, void* cbarg)
{
    pthread_mutex_lock(&lock);
    if (cbarg != &signal_ups || detail == NULL)
        foreign_events++;
    else if (event == PR_NET_EVENT_SIGNAL_UP && conn == NULL && ctx != NULL && strstr(detail, "registered") != NULL)
        signal_ups++;
    pthread_mutex_unlock(&lock);
    notify();
}

static void events(void)
{
    CHECK(pr_fogconnect_set_event_callback(NULL, on_net_event, NULL) == -1, "NULL context");
    char id[128];
    id_of(id, "device");
    void* ctx = pr_fogconnect_init();
    CHECK(pr_fogconnect_set_listen(ctx, "127.0.0.1:0") == 0, "listen");
    CHECK(pr_fogconnect_set_token(ctx, token_for(id)) == 0, "token");
    CHECK(pr_fogconnect_set_event_callback(ctx, on_net_event, &signal_ups) == 0, "event callback");
    set_id(id);
    struct pr_signal_server info = signal_info(ctx);
    CHECK(pr_init_signal(&info) == 0, "not registered: %s", pr_errno_mgs(NULL));
    WAIT_FOR(signal_ups == 1, "no PR_NET_EVENT_SIGNAL_UP");
    CHECK(foreign_events == 0, "%d events with another argument", foreign_events);
    /* Removed: no more calls. */
    CHECK(pr_fogconnect_set_event_callback(ctx, NULL, NULL) == 0, "remove");
    pr_fogconnect_release(ctx);
}

/* For the harness: a C device a Rust node connects to. Prints "ready",
 * serves until its one connection ended, prints how, and exits. */
static void serve_for_rust(void)
{
    void* device = start("device", device_connected, NULL);
    printf("ready\n");
    fflush(stdout);
    WAIT_FOR(record_count == 1 && records[0].ended == 1, "the Rust node's connection did not end");
    printf("ended once: %s; last message: %s\n", records[0].error, records[0].last);
    pr_fogconnect_release(device);
    every_record_ended_once();
}

/* For the harness: a C app that asks a Rust node's native service. */
static void connect_rust(void)
{
    const char* peer = required_env("FC_RUST_PEER");
    void* app = start("app", NULL, NULL);
    struct record* r = open_id(app, peer, 4);
    ask(r, "hello from C", 1, "rust:hello from C");
    CHECK(pr_connect_close(r->handle) == 0, "close");
    WAIT_FOR(r->ended == 1, "not notified");
    pr_fogconnect_release(app);
    every_record_ended_once();
}

/* Whether the last message of `r` is `text` (call under the lock). */
static int last_is(const struct record* r, const char* text)
{
    return strncmp(r->last, text, TEXT - 1) == 0 && r->last_size == (int)strlen(text);
}

/* Sends `text` until the connection's last message is its echo (each
 * datagram may be lost): a second per try, three tries. */
static void ask_datagram(struct record* r, const char* text)
{
    for (int try = 0; try < 3; try++) {
        send_text(r->handle, text);
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 1;
        pthread_mutex_lock(&lock);
        int timed_out = 0;
        while (!last_is(r, text) && !timed_out)
            timed_out = pthread_cond_timedwait(&changed, &lock, &deadline) == ETIMEDOUT;
        int answered = last_is(r, text);
        pthread_mutex_unlock(&lock);
        if (answered)
            return;
    }
    CHECK(0, "no echo of %s after three tries", text);
}

/* The transports besides QUIC. UDP: each message one datagram, echoed;
 * one above the path's datagram size refused at once; the connection
 * carries on. KCP: reliable and ordered like QUIC. */
static void transports(void)
{
    void* device = start("device", device_connected, NULL);
    void* app = start("app", NULL, NULL);
    struct record* r = connect_to(app, "device", PR_TRANSPORT_PROTOCOL_UDP, 1);
    settled(r);
    CHECK(r->connected == 1, "UDP connect: %s", r->error);
    CHECK((pr_get_convention_number(r->handle) & 0xf) == PR_TRANSPORT_PROTOCOL_UDP, "transport %u",
          pr_get_convention_number(r->handle) & 0xf);
    struct pr_connect_datagram_stats stats;
    CHECK(pr_connect_get_datagram_stats(r->handle, &stats) == 0, "%s", pr_errno_mgs(r->handle));
    CHECK(stats.max_size >= 1100 && stats.max_size < 1500, "max_size %u", stats.max_size);
    for (int i = 0; i < 20; i++) {
        char text[64];
        snprintf(text, sizeof text, "datagram %d", i);
        ask_datagram(r, text);
    }
    /* The size grows while path MTU discovery runs: a send one above the
     * size just read may have become allowed; read it again then. */
    static char large[2048];
    memset(large, 'd', sizeof large);
    int refused = 0;
    for (int try = 0; try < 5 && !refused; try++) {
        CHECK(pr_connect_get_datagram_stats(r->handle, &stats) == 0, "%s", pr_errno_mgs(r->handle));
        CHECK(stats.max_size < sizeof large - 1, "max_size %u", stats.max_size);
        refused = pr_send_peer(r->handle, large, (int)stats.max_size + 1) == -1;
    }
    CHECK(refused, "a message above the datagram size was sent");
    CHECK(strstr(pr_errno_mgs(r->handle), "exceeds") != NULL, "%s", pr_errno_mgs(r->handle));
    large[stats.max_size] = '\0';
    ask_datagram(r, large);
    CHECK(pr_connect_get_datagram_stats(r->handle, NULL) == -1, "NULL stats");
    /* A QUIC connection has no datagram side. */
    struct record* q = open_to(app, "device", 1);
    CHECK(pr_connect_get_datagram_stats(q->handle, &stats) == -1, "QUIC connection");
    CHECK(strstr(pr_errno_mgs(q->handle), "UDP") != NULL, "%s", pr_errno_mgs(q->handle));

    /* KCP: the welcome, then every answer, in order. */
    struct record* k = connect_to(app, "device", PR_TRANSPORT_PROTOCOL_KCP, 1);
    settled(k);
    CHECK(k->connected == 1, "KCP connect: %s", k->error);
    CHECK((pr_get_convention_number(k->handle) & 0xf) == PR_TRANSPORT_PROTOCOL_KCP, "transport %u",
          pr_get_convention_number(k->handle) & 0xf);
    ask(k, "I am fog data!", 2, "I know!");
    for (int i = 0; i < 50; i++) {
        char text[64];
        snprintf(text, sizeof text, "kcp %d", i);
        ask(k, text, 3 + i, text);
    }
    pr_fogconnect_release(app);
    pr_fogconnect_release(device);
    every_record_ended_once();
}

int main(int argc, char** argv)
{
    static const struct {
        const char* name;
        void (*run)(void);
    } scenarios[] = {
        { "exchange", exchange },
        { "failures", failures },
        { "handles", handles },
        { "concurrent", concurrent },
        { "release_in_callback", release_in_callback },
        { "plugin", plugin },
        { "device_build", device_build },
        { "signal_unreachable", signal_unreachable },
        { "identity", identity },
        { "events", events },
        { "serve_for_rust", serve_for_rust },
        { "connect_rust", connect_rust },
        { "transports", transports },
    };
    if (argc != 2) {
        fprintf(stderr, "usage: %s SCENARIO\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        if (strcmp(argv[1], scenarios[i].name) == 0) {
            scenario = scenarios[i].name;
            scenarios[i].run();
            printf("%s: ok\n", scenario);
            return 0;
        }
    }
    fprintf(stderr, "unknown scenario %s\n", argv[1]);
    return 2;
}
