/*
 * An app in the original API's style: connects to a device by its id over
 * QUIC for service 1, says "I am fog data!", prints the answer, then echoes
 * a message through service 0 and closes both connections.
 *
 *   FOGCONNECT_TOKEN=$(fogconnect signal token --id app-1 ...) \
 *     ./app [app id] [device id] [signaling host] [port]
 */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fogconnect.h"

struct session {
    GMainLoop* loop;
    const char* greeting; /* what this connection sends */
    int ended;            /* notifications seen (exactly one per connection) */
    int ok;
};

static int sessions_running = 2;
static int exit_code = 1;

static gboolean quit(gpointer loop)
{
    g_main_loop_quit(loop);
    return G_SOURCE_REMOVE;
}

/* Called on the library's callback thread: the main loop is told through
 * an idle source, which runs even if the loop has not started yet. */
static void finish(struct session* s)
{
    s->ended++;
    if (--sessions_running == 0)
        g_idle_add(quit, s->loop);
}

static gboolean give_up(gpointer loop)
{
    printf("app: no answer within 30 s\n");
    g_main_loop_quit(loop);
    return G_SOURCE_REMOVE;
}

static void recv_peer(void* pr_connect, void* cbarg, void* buf, int size)
{
    struct session* s = cbarg;
    static const char* paths[] = { "LAN", "direct WAN", "relayed" };
    struct pr_connect_stats stats; /* an extension: not in the original API */
    printf("app: service %u answered (%d bytes): %s\n", (pr_get_convention_number(pr_connect) >> 4) & 0xff,
           size, (char*)buf);
    if (pr_connect_get_stats(pr_connect, &stats) == 0 && stats.path >= 0 && stats.path <= 2)
        printf("app: path %s, rtt %u us\n", paths[stats.path], stats.rtt_us);
    fflush(stdout);
    s->ok = 1;
    pr_connect_close(pr_connect);
}

static void close_peer(void* pr_connect, void* cbarg)
{
    printf("app: connection ended: %s\n", pr_errno_mgs(pr_connect));
    fflush(stdout);
    finish(cbarg);
}

static void connected(void* pr_connect, short events, void* cbarg)
{
    struct session* s = cbarg;
    if (events & PR_EVENT_CONNECTED) {
        unsigned int convention = pr_get_convention_number(pr_connect);
        printf("app: connected, convention 0x%x: transport %s, service %u\n", convention,
               (convention & 0xf) == PR_TRANSPORT_PROTOCOL_QUIC ? "QUIC" : "other", (convention >> 4) & 0xff);
        fflush(stdout);
        pr_event_setcb(pr_connect, recv_peer, close_peer);
        if (pr_send_peer(pr_connect, (void*)s->greeting, (int)strlen(s->greeting)) < 0)
            printf("app: send failed: %s\n", pr_errno_mgs(pr_connect));
        return;
    }
    printf("app: connect failed (%s): %s\n", events & PR_EVENT_TIMEOUT ? "timeout" : "error", pr_errno_mgs(pr_connect));
    fflush(stdout);
    finish(s);
}

int main(int argc, char** argv)
{
    const char* id = argc > 1 ? argv[1] : "app-1";
    const char* device = argc > 2 ? argv[2] : "ee:34:a1:44:2c:1c";
    char* host = argc > 3 ? argv[3] : (char*)"127.0.0.1";
    unsigned short port = argc > 4 ? (unsigned short)atoi(argv[4]) : 7600;

    set_id(id);
    void* ctx = pr_fogconnect_init();
    if (ctx == NULL) {
        fprintf(stderr, "app: init failed: %s\n", pr_errno_mgs(NULL));
        return 1;
    }
    struct pr_signal_server info = { port, ctx, host, (char*)"/ws", NULL, NULL };
    if (pr_init_signal(&info) != 0) {
        fprintf(stderr, "app: not registered: %s\n", pr_errno_mgs(NULL));
        pr_fogconnect_release(ctx);
        return 1;
    }

    GMainLoop* loop = g_main_loop_new(NULL, FALSE);
    struct session fog = { loop, "I am fog data!", 0, 0 };
    struct session echo = { loop, "hello, echo", 0, 0 };
    if (pr_connect_peer(ctx, device, PR_TRANSPORT_PROTOCOL_QUIC, 1, connected, &fog) != 0 ||
        pr_connect_peer(ctx, device, PR_TRANSPORT_PROTOCOL_QUIC, 0, connected, &echo) != 0) {
        fprintf(stderr, "app: connect: %s\n", pr_errno_mgs(NULL));
        pr_fogconnect_release(ctx);
        return 1;
    }
    g_timeout_add_seconds(30, give_up, loop);
    g_main_loop_run(loop);
    pr_fogconnect_release(ctx);
    g_main_loop_unref(loop);
    if (fog.ok && echo.ok && fog.ended == 1 && echo.ended == 1)
        exit_code = 0;
    printf("app: %s\n", exit_code == 0 ? "done" : "FAILED");
    return exit_code;
}
