/*
 * The device of the stream benchmark (host/benches/c_streams.rs). It
 * registers as ID with the signaling server on 127.0.0.1:PORT and serves
 * streams on service 5, either
 *   iv           natively, through iv_avt_p2p_* (iv_av_p2p.h), or
 *   plugin PATH  from the Wasm stream plugin at PATH, loaded into the same
 *                context (pr_fogconnect_load_plugin),
 * so both ways run in the same kind of process. Native streams send one
 * frame of "frame=" bytes (default 160) per pull, as the adaptive-source
 * plugin does with the same parameter. Prints "ready", runs until SIGTERM.
 *
 *   FOGCONNECT_TOKEN=... stream_device ID PORT iv|plugin [PATH]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fogconnect.h"
#include "iv_av_p2p.h"

#define SERVICE 5

struct stream {
    size_t frame;
    unsigned long long next;
};

static void free_frame(uint8_t* buf, size_t size)
{
    (void)size;
    free(buf);
}

static void* send_init(const char* params, const char* peer)
{
    (void)peer;
    struct stream* s = calloc(1, sizeof *s);
    if (s == NULL) {
        return NULL;
    }
    const char* frame = strstr(params, "frame=");
    s->frame = frame != NULL ? (size_t)strtoul(frame + 6, NULL, 10) : 160;
    if (s->frame < 8) {
        s->frame = 8;
    }
    return s;
}

static iv_cm_memory_s send_get(void* handle)
{
    struct stream* s = handle;
    iv_cm_memory_s frame = { malloc(s->frame), s->frame, free_frame };
    if (frame.buf == NULL) {
        frame.size = 0;
        return frame;
    }
    for (int i = 0; i < 8; i++) {
        frame.buf[i] = (uint8_t)(s->next >> (56 - 8 * i));
    }
    memset(frame.buf + 8, 0xAB, s->frame - 8);
    s->next++;
    return frame;
}

static int send_stop(void* handle)
{
    free(handle);
    return 0;
}

int main(int argc, char** argv)
{
    if (argc < 4 || (strcmp(argv[3], "plugin") == 0 && argc < 5)) {
        fprintf(stderr, "usage: stream_device ID PORT iv|plugin [PATH]\n");
        return 2;
    }
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigprocmask(SIG_BLOCK, &stop, NULL);

    set_id(argv[1]);
    void* ctx = pr_fogconnect_init();
    if (ctx == NULL) {
        fprintf(stderr, "stream_device: %s\n", pr_errno_mgs(NULL));
        return 1;
    }
    int rc;
    if (strcmp(argv[3], "plugin") == 0) {
        rc = pr_fogconnect_load_plugin(ctx, SERVICE, argv[4]);
    } else {
        iv_p2p_parm_s parm;
        memset(&parm, 0, sizeof parm);
        parm.p2p_handle_send_init_cb = send_init;
        parm.p2p_handle_send_get_cb = send_get;
        parm.p2p_handle_send_stop_cb = send_stop;
        rc = iv_avt_p2p_attach(ctx, SERVICE);
        if (rc == IV_ERR_NONE) {
            rc = iv_avt_p2p_init(&parm);
        }
    }
    if (rc != 0) {
        fprintf(stderr, "stream_device: cannot serve: %s\n", pr_errno_mgs(NULL));
        pr_fogconnect_release(ctx);
        return 1;
    }
    struct pr_signal_server info = { (unsigned short)atoi(argv[2]), ctx, (char*)"127.0.0.1", (char*)"/ws", NULL, NULL };
    if (pr_init_signal(&info) != 0) {
        fprintf(stderr, "stream_device: not registered: %s\n", pr_errno_mgs(NULL));
        pr_fogconnect_release(ctx);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    int signal_number = 0;
    sigwait(&stop, &signal_number);
    if (strcmp(argv[3], "iv") == 0) {
        iv_avt_p2p_exit();
    }
    pr_fogconnect_release(ctx);
    return 0;
}
