/*
 * A device in the original API's style: registers with the signaling
 * server under its id, accepts passive connections, answers "I know!" to
 * "I am fog data!" on service 1 and echoes everything on service 0.
 *
 *   FOGCONNECT_TOKEN=$(fogconnect signal token --id ee:34:a1:44:2c:1c ...) \
 *     ./device [id] [signaling host] [port]
 *
 * It runs until SIGINT or SIGTERM.
 */
#include <glib.h>
#include <glib-unix.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fogconnect.h"

static void recv_peer(void* pr_connect, void* cbarg, void* buf, int size)
{
    unsigned int service = (pr_get_convention_number(pr_connect) >> 4) & 0xff;
    (void)cbarg;
    printf("device: service %u received %d bytes: %s\n", service, size, (char*)buf);
    if (service == 1 && strcmp((char*)buf, "I am fog data!") == 0) {
        char answer[] = "I know!";
        pr_send_peer(pr_connect, answer, (int)strlen(answer));
    } else if (pr_send_peer(pr_connect, buf, size) < 0) {
        printf("device: echo failed: %s\n", pr_errno_mgs(pr_connect));
    }
    fflush(stdout);
}

static void close_peer(void* pr_connect, void* cbarg)
{
    (void)cbarg;
    printf("device: connection closed: %s\n", pr_errno_mgs(pr_connect));
    fflush(stdout);
}

static void passive_connect(void* pr_connect, short events, void* cbarg)
{
    (void)cbarg;
    if (events & PR_EVENT_CONNECTED) {
        unsigned int convention = pr_get_convention_number(pr_connect);
        printf("device: passive=%d connection, convention 0x%x (transport %u, service %u)\n",
               pr_connect_is_passive(pr_connect), convention, convention & 0xf, (convention >> 4) & 0xff);
        fflush(stdout);
        pr_event_setcb(pr_connect, recv_peer, close_peer);
    }
}

static gboolean quit(gpointer loop)
{
    g_main_loop_quit(loop);
    return G_SOURCE_REMOVE;
}

int main(int argc, char** argv)
{
    const char* id = argc > 1 ? argv[1] : "ee:34:a1:44:2c:1c";
    char* host = argc > 2 ? argv[2] : (char*)"127.0.0.1";
    unsigned short port = argc > 3 ? (unsigned short)atoi(argv[3]) : 7600;

    set_id(id);
    void* ctx = pr_fogconnect_init();
    if (ctx == NULL) {
        fprintf(stderr, "device: init failed: %s\n", pr_errno_mgs(NULL));
        return 1;
    }
    pr_fogconnect_set_callback(ctx, passive_connect);

    struct pr_signal_server info = { port, ctx, host, (char*)"/ws", NULL, NULL };
    if (pr_init_signal(&info) != 0) {
        fprintf(stderr, "device: not registered: %s\n", pr_errno_mgs(NULL));
        pr_fogconnect_release(ctx);
        return 1;
    }
    printf("device: registered as %s\n", id);
    fflush(stdout);

    GMainLoop* loop = g_main_loop_new(NULL, FALSE);
    g_unix_signal_add(SIGINT, quit, loop);
    g_unix_signal_add(SIGTERM, quit, loop);
    g_main_loop_run(loop);
    g_main_loop_unref(loop);

    pr_fogconnect_release(ctx);
    printf("device: released\n");
    return 0;
}
