/*
 * iv_av_p2p.h: the raw P2P device API of the IoT Video SDK (the subset of
 * the original iv_av.h that streams media), served by fogconnect.
 *
 * The first part is the original API, unchanged in names, types, field
 * order and values: a camera program written against the original SDK
 * builds against this header beside fogconnect.h and links with
 * -lfogconnect (pkg-config fogconnect). The second part, headed
 * EXTENSIONS, goes beyond the original.
 *
 * Model
 * -----
 * The device serves streams on one service number of a fogconnect context
 * (bits 4..11 of the convention number; see fogconnect.h). Applications
 * connect to that service (fogconnect stream --peer ID --service N, a Rust
 * StreamSession, a browser's StreamSession) and ask for streams with
 * parameters such as "action=live" or "action=playback&...". For each
 * request the library calls p2p_handle_send_init_cb, then pulls the
 * stream's data with p2p_handle_send_get_cb every 10 ms while the stream's
 * send buffer is under its high watermark, and calls
 * p2p_handle_send_stop_cb exactly once when the stream ends (the
 * application stopped it or went away, the device ended it, or
 * iv_avt_p2p_exit / pr_fogconnect_release). Each buffer handed over is
 * delivered whole and in order.
 *
 * How it fits the context (fogconnect.h)
 * --------------------------------------
 * iv_avt_p2p_init carries no identity and no server: the device registers
 * with the pr_* calls of fogconnect.h (set_id, pr_fogconnect_init,
 * pr_init_signal), and iv_avt_p2p_init serves streams on that context:
 *   - the context named with iv_avt_p2p_attach (EXTENSIONS), else
 *   - the one live context of the process (none or several: the call
 *     fails with IV_ERR_P2P_NO_CONTEXT).
 * The service number is the one given to iv_avt_p2p_attach, else
 * IV_AVT_P2P_DEFAULT_SERVICE (2). iv_avt_p2p_init may come before
 * pr_init_signal (streams are then served from the moment the context
 * starts, and p2p_keep_alive and net_info apply) or after it (they are then
 * ignored: the context's own settings hold). The context's passive
 * callback (pr_fogconnect_set_callback) keeps the other service numbers.
 *
 * Threads and callbacks
 * ---------------------
 * Every callback of iv_p2p_parm_s runs on one thread of the library (not
 * the context's callback thread), one at a time. A callback should return
 * soon: while it runs, no stream is pulled. Inside a callback,
 * iv_avt_p2p_get_send_buf, iv_avt_p2p_get_send_status and
 * iv_avt_p2p_set_buf_watermark work; iv_avt_p2p_send_command and
 * iv_avt_p2p_exit fail with IV_ERR_P2P_IN_CALLBACK (they wait for the
 * thread that runs the callback). Every function may be called from any
 * other thread.
 *
 * Buffers
 * -------
 * The buf_free_fn of every iv_cm_memory_s the device hands over (a frame
 * from p2p_handle_send_get_cb, a reply from p2p_handle_command_cb) is
 * called exactly once with its buf and size, when the library is done with
 * the buffer: once it was copied into the stream's send buffer, which is
 * before the get callback's next call. A NULL buf_free_fn is never called
 * (the buffer is then the device's to keep). A NULL buf is never freed.
 *
 * Errors
 * ------
 * Functions returning int return IV_ERR_NONE (0) on success and a negative
 * iv_err_e value otherwise; pr_errno_mgs(NULL) on the same thread then
 * says why, in words.
 */
#ifndef IV_AV_P2P_H
#define IV_AV_P2P_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * The original API
 * --------------------------------------------------------------------- */

/*
 * Memory handed from the device to the library. buf NULL and size 0 mean
 * no data. buf_free_fn (may be NULL) is called exactly once with buf and
 * size when the library is done with the buffer.
 */
typedef struct {
    uint8_t *buf;
    size_t size;
    void (*buf_free_fn)(uint8_t *, size_t);
} iv_cm_memory_s;

/*
 * Events of p2p_handle_event_notify_cb. The handle argument is the stream
 * handle for the three WATERMARK events and NULL for the others.
 */
typedef enum {
    /* An application's connection to the service is up. */
    IV_AVT_EVENT_P2P_PEER_READY = 0,
    /* Not raised by this library: a failed connect is the application's
     * to see. */
    IV_AVT_EVENT_P2P_PEER_CONNECT_FAIL = 1,
    /* Not raised by this library: a connection that fails ends with
     * LINK_DISCONNECT. */
    IV_AVT_EVENT_P2P_PEER_ERROR = 2,
    /* An application's path moved (for example relayed to direct). */
    IV_AVT_EVENT_P2P_PEER_ADDR_CHANGED = 3,
    /* The stream's send buffer fell below the low mark after a WARN or
     * HIGH; pulling resumes if it was paused. Once per crossing. */
    IV_AVT_EVENT_P2P_WATERMARK_LOW = 4,
    /* The send buffer rose above the warn mark. Once per crossing. */
    IV_AVT_EVENT_P2P_WATERMARK_WARN = 5,
    /* The send buffer rose above the high mark: pulling is paused until
     * it falls below the low mark. Once per crossing. */
    IV_AVT_EVENT_P2P_WATERMARK_HIGH = 6,
    /* The service serves: raised once, first, when streams can be asked
     * for. */
    IV_AVT_EVENT_P2P_LOCAL_NET_READY = 7,
    /* An application's connection ended (after its streams stopped). */
    IV_AVT_EVENT_P2P_LINK_DISCONNECT = 8,
    /* An application stopped a stream; its send_stop follows. */
    IV_AVT_EVENT_P2P_CLI_SEND_CLOSE = 9,
    IV_AVT_EVENT_P2P_BUTT
} iv_avt_event_e;

/* How a stream's data is leaving the device. */
typedef struct {
    /* What the path carries now, in bytes per second (one congestion
     * window per round trip). */
    uint32_t inst_net_rate;
    /* Bytes per second of the stream handed to the transport over the last
     * second (which delivers them reliably). */
    uint32_t ave_sent_rate;
    /* Bytes of the stream handed to the transport in all. */
    uint64_t sum_sent_acked;
    /* 0 invalid (unknown handle), 1 direct, 2 relayed. */
    uint32_t link_mode;
} iv_p2p_send_stats_s;

/* Keep-alive of the context's connections: one probe every time_inter_s
 * seconds, the peer declared gone after max_attempt_num unanswered ones.
 * 0 keeps the context's default (5 s, 6 attempts). Applies when
 * iv_avt_p2p_init comes before pr_init_signal. */
typedef struct {
    uint8_t time_inter_s;
    uint8_t max_attempt_num;
} p2p_keep_alive_s;

/* The SDK's logging. The library logs to standard error as FOGCONNECT_LOG
 * says (see fogconnect.h); log_level, when not 0, raises or lowers it for
 * the whole process: 1 error, 2 warn, 3 info, 4 debug, 5 trace. log_file_path,
 * when not NULL, appends the log to that file instead, and log_file_size,
 * when not 0, caps it: at that size the file is renamed with ".1" and a new
 * one begins. Applies to the first iv_avt_p2p_init of the process. */
typedef struct {
    int log_level;
    const char *log_file_path;
    size_t log_file_size;
} p2p_init_params_s;

/* Optional LAN settings: the local address the context's UDP socket binds
 * ("ip", and port, 0 for any). NULL ip keeps the default. Applies when
 * iv_avt_p2p_init comes before pr_init_signal. */
typedef struct {
    const char *ip;
    uint16_t port;
} local_net_info_s;

typedef struct iv_p2p_parm_s {
    /* Required. An application asks for a stream with params (for example
     * "action=live" or "action=playback&..."); peer is its node id. Return
     * the stream's handle (any non-NULL value, unique among the device's
     * live send streams), or NULL to refuse the stream. */
    void *(*p2p_handle_send_init_cb)(const char *params, const char *peer);
    /* Required. Called every 10 ms per stream while its send buffer is
     * under its high mark. Return a buffer to send; buf NULL and size 0
     * for no data now; size (size_t)-1 for an error: the stream ends (the
     * application sees "the device failed the stream") and its send_stop
     * follows. */
    iv_cm_memory_s (*p2p_handle_send_get_cb)(void *handle);
    /* Required. The stream ended; exactly once per handle send_init
     * returned. The return value is not used. */
    int (*p2p_handle_send_stop_cb)(void *handle);
    /* Optional. Events: see iv_avt_event_e. */
    void (*p2p_handle_event_notify_cb)(iv_avt_event_e, void *handle);
    /* Optional (NULL: talk-back is refused). An application opens a
     * talk-back stream; return its handle (non-NULL, unique among the live
     * talk-back streams), or NULL to refuse it. */
    void *(*p2p_handle_recv_init_cb)(const char *params, const char *peer);
    /* Optional. Talk-back data, whole and in order; recv_buf NULL and
     * recv_len 0: the talk-back ended (the last call for the handle,
     * exactly once). */
    void (*p2p_handle_recv_voice_cb)(void *handle, uint8_t *recv_buf, size_t recv_len);
    /* Optional (NULL: commands are refused). A command from an application
     * (at most 16 KiB); return the reply (at most 16 KiB; larger is
     * refused). buf NULL or size 0: no reply; the command channel to that
     * application is closed (its connection ends). */
    iv_cm_memory_s (*p2p_handle_command_cb)(const char *command, size_t cmd_len, const char *peer);
    p2p_keep_alive_s p2p_keep_alive;
    p2p_init_params_s p2p_init_params;
    local_net_info_s net_info;
} iv_p2p_parm_s;

/* Return codes. */
typedef enum {
    IV_ERR_NONE = 0,
    /* An argument is NULL, out of range or malformed. */
    IV_ERR_P2P_INVALID_PARAM = -1,
    /* iv_avt_p2p_init has not been called (or iv_avt_p2p_exit has). */
    IV_ERR_P2P_NOT_INIT = -2,
    /* iv_avt_p2p_init was called already. */
    IV_ERR_P2P_ALREADY_INIT = -3,
    /* No context to serve on (none, or several and none attached). */
    IV_ERR_P2P_NO_CONTEXT = -4,
    /* The service number is served already (plugin or handler). */
    IV_ERR_P2P_SERVICE_TAKEN = -5,
    /* No application of that id is connected. */
    IV_ERR_P2P_PEER_NOT_FOUND = -6,
    /* No reply within the timeout. */
    IV_ERR_P2P_TIMEOUT = -7,
    /* The reply is larger than the buffer; *recv_len is set to its size
     * and nothing is written. */
    IV_ERR_P2P_BUFFER_TOO_SMALL = -8,
    /* A call that waits made from inside a callback. */
    IV_ERR_P2P_IN_CALLBACK = -9,
    /* The application refused the command (no handler, or an error). */
    IV_ERR_P2P_REFUSED = -10,
    /* The connection ended before the reply came. */
    IV_ERR_P2P_CLOSED = -11,
    /* The command exceeds 16 KiB. */
    IV_ERR_P2P_TOO_LARGE = -12,
    /* Too many commands (256) wait for replies. */
    IV_ERR_P2P_BUSY = -13,
    /* Anything else; pr_errno_mgs(NULL) says what. */
    IV_ERR_P2P_INTERNAL = -14
} iv_err_e;

/* Starts serving streams with the callbacks in pstInitParm (copied; see
 * "How it fits the context"). Raises IV_AVT_EVENT_P2P_LOCAL_NET_READY once
 * when serving. */
int iv_avt_p2p_init(const iv_p2p_parm_s *pstInitParm);

/* Stops serving: every stream stops (send_stop once per handle, talk-back
 * ended), waiting commands fail, every application connection of the
 * service closes with "service stopped". Returns when all of that is done.
 * IV_ERR_P2P_IN_CALLBACK from inside a callback. */
int iv_avt_p2p_exit(void);

/* Sets the watermarks of every stream, current and future, in bytes of
 * each stream's send buffer: low <= warn <= high, or all 0 (no events, no
 * pause; the library still stops pulling a stream at 8 MiB buffered, so
 * nothing is dropped). Works before iv_avt_p2p_init too. */
int iv_avt_p2p_set_buf_watermark(size_t low_mark, size_t warn_mark, size_t high_mark);

/* Bytes of a send stream waiting in its send buffer; 0 for an unknown
 * handle (pr_errno_mgs(NULL) then says so). */
size_t iv_avt_p2p_get_send_buf(void *handle);

/* How a send stream's data is leaving; all zero (link_mode 0) for an
 * unknown handle. */
iv_p2p_send_stats_s iv_avt_p2p_get_send_status(void *handle);

/* Sends msg (msg_len bytes, at most 16 KiB) to the application peer (its
 * newest connection to the service) and waits for the reply, at most
 * timeout_ms (0: the default of 7,500 ms). *recv_len is the size of
 * recv_buf on the way in and the reply's size on the way out; a reply
 * larger than the buffer gives IV_ERR_P2P_BUFFER_TOO_SMALL, *recv_len set
 * to its size and nothing written to recv_buf. IV_ERR_P2P_IN_CALLBACK from
 * inside a callback. */
int iv_avt_p2p_send_command(const char *peer, const char *msg, size_t msg_len, unsigned char *recv_buf,
                            size_t *recv_len, uint32_t timeout_ms);

/* ------------------------------------------------------------------------
 * EXTENSIONS
 * --------------------------------------------------------------------- */

/* The service number iv_avt_p2p_init serves when none is attached. */
#define IV_AVT_P2P_DEFAULT_SERVICE 2

/* Names the context (from pr_fogconnect_init) and service number (0..255)
 * iv_avt_p2p_init serves on. Call before iv_avt_p2p_init. */
int iv_avt_p2p_attach(void *ctx, unsigned int service);

#ifdef __cplusplus
}
#endif

#endif /* IV_AV_P2P_H */
