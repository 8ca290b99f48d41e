/*
 * A camera written against the IoT Video SDK's raw P2P API (iv_av_p2p.h)
 * on fogconnect. It registers by id with the pr_* calls of fogconnect.h,
 * then serves streams on service 2 (or the one given) with iv_avt_p2p_init.
 *
 * Each stream carries numbered frames: an 8-byte big-endian frame number,
 * then filler, sized for the bitrate the application asked for
 * ("bitrate=" in bits per second, default 1 Mbit/s) at one frame per
 * 10 ms pull. On WATERMARK_HIGH the camera halves the stream's bitrate, on
 * WATERMARK_LOW it raises it by an eighth of what was asked, up to that.
 * "fail_after=N" makes the frame source fail after N frames (the error
 * path of the get callback).
 *
 * Commands (p2p_handle_command_cb):
 *   stats          streams, frames, talk-back bytes, the largest send
 *                  buffer seen at a pull, bitrates
 *   bitrate N      every stream at N bit/s
 *   ask PEER TEXT  sends TEXT to the application PEER from another thread
 *                  (iv_avt_p2p_send_command, 16-byte reply buffer, 1 s)
 *                  and prints the outcome
 *   inline         calls iv_avt_p2p_send_command from inside the callback,
 *                  which must fail with IV_ERR_P2P_IN_CALLBACK
 *   close          replies nothing: the command channel closes
 *
 * Every frame and reply buffer is handed over with a buf_free_fn that
 * counts; at exit (SIGINT or SIGTERM) the camera stops serving
 * (iv_avt_p2p_exit) and prints its totals, including buffers handed over
 * and freed, streams started and stopped.
 *
 *   FOGCONNECT_TOKEN=$(fogconnect signal token --id cam-1 ...) \
 *     ./camera cam-1 127.0.0.1 7600 [service]
 *   fogconnect stream --signal ws://127.0.0.1:7600/ws --peer cam-1 \
 *     --service 2 --params action=live
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fogconnect.h"
#include "iv_av_p2p.h"

#define TICKS_PER_SECOND 100
#define MIN_BITRATE 64000u
#define REPLY_ROOM 16

/* One stream the camera sends. */
struct stream {
    uint32_t asked;
    uint32_t bitrate;
    uint64_t next_frame;
    long fail_after; /* -1: never */
    struct stream* next;
};

/* The live streams. Only the callbacks touch them, and the callbacks run
 * one at a time on the library's stream thread: no lock is needed. */
static struct stream* streams;

/* One talk-back stream. */
struct talk {
    uint64_t bytes;
};

static atomic_ullong buffers_handed, buffers_freed;
static atomic_ullong streams_started, streams_stopped;
static atomic_ullong frames_sent;
static atomic_ullong talk_bytes, talk_ends;
static atomic_uint live_streams;
/* The largest send buffer seen at a pull, over every stream. */
static size_t max_buffered;

static void free_buffer(uint8_t* buf, size_t size)
{
    (void)size;
    free(buf);
    atomic_fetch_add(&buffers_freed, 1);
}

/* A buffer for the library; NULL with size 0 when out of memory. */
static iv_cm_memory_s hand_over(size_t size)
{
    iv_cm_memory_s memory = { NULL, 0, free_buffer };
    memory.buf = malloc(size);
    if (memory.buf != NULL) {
        memory.size = size;
        atomic_fetch_add(&buffers_handed, 1);
    }
    return memory;
}

/* The value of KEY in "a=1&b=2", or fallback. */
static long param(const char* params, const char* key, long fallback)
{
    size_t len = strlen(key);
    const char* at = params;
    while (at != NULL && *at != '\0') {
        if (strncmp(at, key, len) == 0 && at[len] == '=') {
            return strtol(at + len + 1, NULL, 10);
        }
        at = strchr(at, '&');
        if (at != NULL) {
            at++;
        }
    }
    return fallback;
}

static void* send_init(const char* params, const char* peer)
{
    if (strstr(params, "action=live") == NULL) {
        printf("camera: refused %s from %s\n", params, peer);
        fflush(stdout);
        return NULL;
    }
    struct stream* s = calloc(1, sizeof *s);
    if (s == NULL) {
        return NULL;
    }
    s->asked = (uint32_t)param(params, "bitrate", 1000000);
    s->bitrate = s->asked;
    s->fail_after = param(params, "fail_after", -1);
    s->next = streams;
    streams = s;
    atomic_fetch_add(&streams_started, 1);
    atomic_fetch_add(&live_streams, 1);
    printf("camera: stream %p for %s: %s\n", (void*)s, peer, params);
    fflush(stdout);
    return s;
}

static iv_cm_memory_s send_get(void* handle)
{
    struct stream* s = handle;
    iv_cm_memory_s none = { NULL, 0, NULL };
    size_t buffered = iv_avt_p2p_get_send_buf(handle);
    if (buffered > max_buffered) {
        max_buffered = buffered;
    }
    if (s->fail_after >= 0 && s->next_frame >= (uint64_t)s->fail_after) {
        none.size = (size_t)-1;
        return none;
    }
    size_t size = s->bitrate / 8 / TICKS_PER_SECOND;
    if (size < 8) {
        size = 8;
    }
    iv_cm_memory_s frame = hand_over(size);
    if (frame.buf == NULL) {
        return none;
    }
    for (int i = 0; i < 8; i++) {
        frame.buf[i] = (uint8_t)(s->next_frame >> (56 - 8 * i));
    }
    memset(frame.buf + 8, (int)(s->next_frame % 251), size - 8);
    s->next_frame++;
    atomic_fetch_add(&frames_sent, 1);
    return frame;
}

static int send_stop(void* handle)
{
    struct stream* s = handle;
    printf("camera: stream %p stopped after %llu frames\n", handle, (unsigned long long)s->next_frame);
    fflush(stdout);
    for (struct stream** at = &streams; *at != NULL; at = &(*at)->next) {
        if (*at == s) {
            *at = s->next;
            break;
        }
    }
    free(s);
    atomic_fetch_add(&streams_stopped, 1);
    atomic_fetch_sub(&live_streams, 1);
    return 0;
}

static const char* event_name(iv_avt_event_e event)
{
    switch (event) {
    case IV_AVT_EVENT_P2P_PEER_READY: return "PEER_READY";
    case IV_AVT_EVENT_P2P_PEER_ADDR_CHANGED: return "PEER_ADDR_CHANGED";
    case IV_AVT_EVENT_P2P_WATERMARK_LOW: return "WATERMARK_LOW";
    case IV_AVT_EVENT_P2P_WATERMARK_WARN: return "WATERMARK_WARN";
    case IV_AVT_EVENT_P2P_WATERMARK_HIGH: return "WATERMARK_HIGH";
    case IV_AVT_EVENT_P2P_LOCAL_NET_READY: return "LOCAL_NET_READY";
    case IV_AVT_EVENT_P2P_LINK_DISCONNECT: return "LINK_DISCONNECT";
    case IV_AVT_EVENT_P2P_CLI_SEND_CLOSE: return "CLI_SEND_CLOSE";
    default: return "OTHER";
    }
}

static void event_notify(iv_avt_event_e event, void* handle)
{
    struct stream* s = handle;
    if (event == IV_AVT_EVENT_P2P_WATERMARK_HIGH && s != NULL) {
        s->bitrate = s->bitrate / 2 < MIN_BITRATE ? MIN_BITRATE : s->bitrate / 2;
    } else if (event == IV_AVT_EVENT_P2P_WATERMARK_LOW && s != NULL) {
        s->bitrate = s->bitrate + s->asked / 8 > s->asked ? s->asked : s->bitrate + s->asked / 8;
    }
    if (s != NULL) {
        printf("camera: event %s stream %p bitrate %u buffered %zu\n", event_name(event), handle, s->bitrate,
               iv_avt_p2p_get_send_buf(handle));
    } else {
        printf("camera: event %s\n", event_name(event));
    }
    fflush(stdout);
}

static void* recv_init(const char* params, const char* peer)
{
    printf("camera: talk-back from %s: %s\n", peer, params);
    fflush(stdout);
    return calloc(1, sizeof(struct talk));
}

static void recv_voice(void* handle, uint8_t* buf, size_t len)
{
    struct talk* t = handle;
    if (buf == NULL && len == 0) {
        printf("camera: talk-back ended after %llu bytes\n", (unsigned long long)t->bytes);
        fflush(stdout);
        free(t);
        atomic_fetch_add(&talk_ends, 1);
        return;
    }
    t->bytes += len;
    atomic_fetch_add(&talk_bytes, len);
}

/* The reply "text" as a buffer for the library. */
static iv_cm_memory_s reply_text(const char* text)
{
    size_t len = strlen(text);
    iv_cm_memory_s reply = hand_over(len);
    if (reply.buf != NULL) {
        memcpy(reply.buf, text, len);
    }
    return reply;
}

/* "ask PEER TEXT", run on a thread of its own. */
struct ask {
    char peer[128];
    char text[256];
};

static void* ask_thread(void* arg)
{
    struct ask* ask = arg;
    unsigned char reply[REPLY_ROOM];
    size_t reply_len = sizeof reply;
    int rc = iv_avt_p2p_send_command(ask->peer, ask->text, strlen(ask->text), reply, &reply_len, 1000);
    if (rc == IV_ERR_NONE) {
        printf("camera: ask %s -> rc=0 reply=%.*s\n", ask->text, (int)reply_len, (char*)reply);
    } else {
        printf("camera: ask %s -> rc=%d len=%zu (%s)\n", ask->text, rc, reply_len, pr_errno_mgs(NULL));
    }
    fflush(stdout);
    free(ask);
    return NULL;
}

static iv_cm_memory_s command(const char* cmd, size_t cmd_len, const char* peer)
{
    char text[512];
    char answer[256];
    iv_cm_memory_s none = { NULL, 0, NULL };
    size_t len = cmd_len < sizeof text - 1 ? cmd_len : sizeof text - 1;
    memcpy(text, cmd, len);
    text[len] = '\0';
    printf("camera: command from %s: %s\n", peer, text);
    fflush(stdout);
    if (strcmp(text, "stats") == 0) {
        int at = snprintf(answer, sizeof answer, "streams=%u frames=%llu talk=%llu max_buffered=%zu bitrates=",
                          atomic_load(&live_streams), (unsigned long long)atomic_load(&frames_sent),
                          (unsigned long long)atomic_load(&talk_bytes), max_buffered);
        for (struct stream* s = streams; s != NULL && at > 0 && (size_t)at < sizeof answer; s = s->next) {
            at += snprintf(answer + at, sizeof answer - (size_t)at, "%u,", s->bitrate);
        }
        return reply_text(answer);
    }
    if (strncmp(text, "bitrate ", 8) == 0) {
        uint32_t bitrate = (uint32_t)strtoul(text + 8, NULL, 10);
        for (struct stream* s = streams; s != NULL; s = s->next) {
            s->asked = bitrate;
            s->bitrate = bitrate;
        }
        return reply_text("ok");
    }
    if (strncmp(text, "ask ", 4) == 0) {
        struct ask* ask = calloc(1, sizeof *ask);
        const char* space = strchr(text + 4, ' ');
        if (ask == NULL || space == NULL) {
            free(ask);
            return reply_text("usage: ask PEER TEXT");
        }
        snprintf(ask->peer, sizeof ask->peer, "%.*s", (int)(space - (text + 4)), text + 4);
        snprintf(ask->text, sizeof ask->text, "%s", space + 1);
        pthread_t thread;
        if (pthread_create(&thread, NULL, ask_thread, ask) != 0) {
            free(ask);
            return reply_text("cannot start a thread");
        }
        pthread_detach(thread);
        return reply_text("asking");
    }
    if (strcmp(text, "inline") == 0) {
        unsigned char reply[REPLY_ROOM];
        size_t reply_len = sizeof reply;
        int rc = iv_avt_p2p_send_command(peer, "x", 1, reply, &reply_len, 100);
        snprintf(answer, sizeof answer, "inline rc=%d", rc);
        return reply_text(answer);
    }
    if (strcmp(text, "close") == 0) {
        return none;
    }
    return reply_text("unknown command");
}

int main(int argc, char** argv)
{
    const char* id = argc > 1 ? argv[1] : "cam-1";
    char* host = argc > 2 ? argv[2] : (char*)"127.0.0.1";
    unsigned short port = argc > 3 ? (unsigned short)atoi(argv[3]) : 7600;
    unsigned service = argc > 4 ? (unsigned)atoi(argv[4]) : IV_AVT_P2P_DEFAULT_SERVICE;

    /* Signals are waited for by main only. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    set_id(id);
    void* ctx = pr_fogconnect_init();
    if (ctx == NULL) {
        fprintf(stderr, "camera: init failed: %s\n", pr_errno_mgs(NULL));
        return 1;
    }
    iv_p2p_parm_s parm;
    memset(&parm, 0, sizeof parm);
    parm.p2p_handle_send_init_cb = send_init;
    parm.p2p_handle_send_get_cb = send_get;
    parm.p2p_handle_send_stop_cb = send_stop;
    parm.p2p_handle_event_notify_cb = event_notify;
    parm.p2p_handle_recv_init_cb = recv_init;
    parm.p2p_handle_recv_voice_cb = recv_voice;
    parm.p2p_handle_command_cb = command;
    parm.p2p_keep_alive.time_inter_s = 1;
    parm.p2p_keep_alive.max_attempt_num = 3;
    if (iv_avt_p2p_attach(ctx, service) != IV_ERR_NONE || iv_avt_p2p_set_buf_watermark(64 * 1024, 128 * 1024, 256 * 1024) != IV_ERR_NONE
        || iv_avt_p2p_init(&parm) != IV_ERR_NONE) {
        fprintf(stderr, "camera: cannot serve streams: %s\n", pr_errno_mgs(NULL));
        pr_fogconnect_release(ctx);
        return 1;
    }
    struct pr_signal_server info = { port, ctx, host, (char*)"/ws", NULL, NULL };
    if (pr_init_signal(&info) != 0) {
        fprintf(stderr, "camera: not registered: %s\n", pr_errno_mgs(NULL));
        iv_avt_p2p_exit();
        pr_fogconnect_release(ctx);
        return 1;
    }
    printf("camera: registered as %s, streams on service %u\n", id, service);
    fflush(stdout);

    int signal_number = 0;
    sigwait(&stop, &signal_number);

    int rc = iv_avt_p2p_exit();
    pr_fogconnect_release(ctx);
    printf("camera: exit rc=%d streams started=%llu stopped=%llu buffers handed=%llu freed=%llu "
           "talk bytes=%llu ends=%llu\n",
           rc, (unsigned long long)atomic_load(&streams_started), (unsigned long long)atomic_load(&streams_stopped),
           (unsigned long long)atomic_load(&buffers_handed), (unsigned long long)atomic_load(&buffers_freed),
           (unsigned long long)atomic_load(&talk_bytes), (unsigned long long)atomic_load(&talk_ends));
    fflush(stdout);
    return 0;
}
