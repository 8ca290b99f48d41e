/*
 * The C echo service of the C API benchmark (host/benches/c_api.rs): a
 * device that echoes every message on every service, registered under
 * argv[1] at 127.0.0.1:argv[2] (token in FOGCONNECT_TOKEN). Prints "ready"
 * once registered and runs until SIGTERM or SIGINT.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "fogconnect.h"

static void echo(void* pr_connect, void* cbarg, void* buf, int size)
{
    (void)cbarg;
    if (pr_send_peer(pr_connect, buf, size) != size)
        fprintf(stderr, "echo_device: send: %s\n", pr_errno_mgs(pr_connect));
}

static void connected(void* pr_connect, short events, void* cbarg)
{
    (void)cbarg;
    if (events & PR_EVENT_CONNECTED)
        pr_event_setcb(pr_connect, echo, NULL);
}

int main(int argc, char** argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s ID PORT\n", argv[0]);
        return 2;
    }
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    /* Blocked before the library starts its threads, so they inherit it. */
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    set_id(argv[1]);
    void* ctx = pr_fogconnect_init();
    pr_fogconnect_set_callback(ctx, connected);
    struct pr_signal_server info = { (unsigned short)atoi(argv[2]), ctx, (char*)"127.0.0.1", (char*)"/ws", NULL, NULL };
    if (pr_init_signal(&info) != 0) {
        fprintf(stderr, "echo_device: %s\n", pr_errno_mgs(NULL));
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    int signal_number;
    sigwait(&stop, &signal_number);
    pr_fogconnect_release(ctx);
    return 0;
}
