/*
 * fogconnect.h: the C API of fogconnect.
 *
 * The first part is the original API, unchanged in names, types, values
 * and order: a program written against the original library builds
 * against this header and links with -lfogconnect (pkg-config
 * fogconnect). The second part, headed EXTENSIONS, goes beyond the
 * original; a program that uses it no longer builds against the original.
 *
 * Model
 * -----
 * A context (pr_fogconnect_init) is one fogconnect node: its own UDP
 * socket, signaling session, NAT traversal and QUIC connections. It starts
 * when pr_init_signal joins a signaling server. Peers are reached by the id
 * they registered with (set_id); the certificate fingerprint signaling
 * vouches for is pinned, so neither signaling nor a relay can impersonate
 * a peer.
 *
 * Every connection carries a convention number fixed when it is made and
 * identical on both ends:
 *     bits 0..3   transport: enum transport_protocol (QUIC 5 is the one
 *                 offered; the others are refused "unsupported transport")
 *     bits 4..11  service number 0..255: selects the service that answers
 *     bits 12..31 zero
 * so pr_get_convention_number(c) & 0xf == PR_TRANSPORT_PROTOCOL_QUIC and
 * (pr_get_convention_number(c) >> 4) & 0xff is the service.
 *
 * Handles
 * -------
 * A context or connection handle (void *) is a number, never a pointer into
 * the library's memory: a stale, foreign or made-up handle makes a
 * function fail (-1, 0 or nothing, as each documents) and pr_errno_mgs say
 * "invalid connection" (or "invalid context"); it never crashes. A
 * connection handle is valid from the call that gives it (the passive
 * callback, pr_connect_peer's callback) until its final notification
 * returns.
 *
 * Threads and callbacks
 * ---------------------
 * The callbacks of one context run on one thread of the library, one at a
 * time, in order: for one connection CONNECTED first, then each message in
 * the order sent, then exactly one final notification. Every function may
 * be called from any thread, also from inside a callback (a callback that
 * sends, connects, closes or releases the context does not deadlock).
 * A callback should return soon: while it runs, the context's other
 * callbacks wait (network input is held back, not lost).
 *
 * Endings: every connection ends with exactly one notification:
 *   - the close callback set with pr_event_setcb, or, when none is set,
 *   - the connect callback with PR_EVENT_EOF (orderly end, either side
 *     closed), PR_EVENT_ERROR (failure, refusal) or PR_EVENT_TIMEOUT (the
 *     peer stopped answering).
 * A connect that fails (peer offline, service nobody serves, transport
 * not offered, timeout) calls the connect callback with PR_EVENT_ERROR or
 * PR_EVENT_TIMEOUT; pr_errno_mgs(handle) says why during that callback.
 *
 * Environment
 * -----------
 * FOGCONNECT_TOKEN   the signaling registration token for the id (from
 *                    `fogconnect signal token --id ID`), unless
 *                    pr_fogconnect_set_token gives one.
 * FOGCONNECT_LISTEN  default UDP listen address of new contexts
 *                    (default 0.0.0.0:0), unless pr_fogconnect_set_listen.
 * FOGCONNECT_STUN    default STUN server "host:port" of new contexts
 *                    (none), unless pr_fogconnect_set_stun.
 * FOGCONNECT_IDENTITY default identity file of new contexts (none: a new
 *                    key pair at every start), unless
 *                    pr_fogconnect_set_identity_file.
 * FOGCONNECT_LOG     what the library logs to stderr (default "warn";
 *                    e.g. "info", "fogconnect=debug").
 */
#ifndef FOGCONNECT_H
#define FOGCONNECT_H

#include <stdint.h>
#include <sys/types.h> /* ushort, as the original programs expect it */

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------
 * The original API
 * ------------------------------------------------------------------- */

/*
 * Transport of a connection: bits 0..3 of the convention number. Nodes
 * offer QUIC; a connect asking for another transport ends with
 * PR_EVENT_ERROR and "unsupported transport: ..." in pr_errno_mgs.
 */
enum transport_protocol {
    PR_TRANSPORT_PROTOCOL_RTC = 0, /* WebRTC DataChannel (not offered yet) */
    PR_TRANSPORT_PROTOCOL_UDP,     /* 1: datagrams: encrypted, unreliable, unordered;
                                      each pr_send_peer one datagram, refused (-1)
                                      above pr_connect_get_datagram_stats' max_size */
    PR_TRANSPORT_PROTOCOL_UTP,     /* 2: uTP (not offered yet) */
    PR_TRANSPORT_PROTOCOL_KCP,     /* 3: KCP: reliable, ordered, encrypted; low-latency
                                      retransmission for lossy links */
    PR_TRANSPORT_PROTOCOL_SCTP,    /* 4: SCTP (not offered yet) */
    PR_TRANSPORT_PROTOCOL_QUIC     /* 5: QUIC: reliable, ordered, encrypted */
};
/* The original's other name for the WebRTC transport. */
#define PR_TRANSPORT_PROTOCOL_DATACHANNEL PR_TRANSPORT_PROTOCOL_RTC

/* Events given to a pr_callback_t (libevent's values, as the original). */
/* The connection ended in an orderly way (either side closed it). */
#define PR_EVENT_EOF 0x10
/* The connect failed or the connection failed; pr_errno_mgs says why. */
#define PR_EVENT_ERROR 0x20
/* The peer stopped answering (connect or keep-alive timeout). */
#define PR_EVENT_TIMEOUT 0x40
/* The connection is established: messages may be sent. */
#define PR_EVENT_CONNECTED 0x80

/*
 * Connect callback: told CONNECTED, and the ending when no close callback
 * is set. `pr_connect` is the connection handle, `events` one PR_EVENT_*
 * value, `cbarg` the connection's user data (pr_connect_set_userdata; for
 * an active connection initially pr_connect_peer's cbarg, for a passive
 * one NULL).
 */
typedef void pr_callback_t(void* pr_connect, short events, void* cbarg);

/*
 * Receive callback: one whole message, in order. `buf` holds `size` bytes
 * followed by a NUL byte not counted in `size` (text prints with %s); it
 * is valid until the callback returns. A message that arrives while no
 * receive callback is set is held until one is set.
 */
typedef void pr_recv_peer_t(void* pr_connect, void* cbarg, void* buf, int size);

/*
 * Close callback: the connection's one final notification, whichever side
 * ended it and why (pr_errno_mgs(pr_connect) says why during the call).
 */
typedef void pr_close_peer_t(void* pr_connect, void* cbarg);

/*
 * The signaling server to join.
 *   port        TCP port; 0 means 7600.
 *   ctx         the context (from pr_fogconnect_init) that joins.
 *   url         the server's host name or address (e.g. "127.0.0.1"), or a
 *               whole URL ("ws://host:port/ws", "wss://..."), used as given;
 *               or several of these separated by commas
 *               ("sig1.example,sig2.example"), servers of one signaling
 *               cluster: the context registers with the first that
 *               answers and moves to the next when its server is lost,
 *               without touching its P2P connections.
 *   type        "/ws" (NULL too): ws://url:port/ws; "/wss": TLS,
 *               wss://url:port/ws; another path starting with '/' is used
 *               as the path.
 *   certificate NULL, or the PEM file of a certificate authority (or the
 *               server's self-signed certificate) to trust; given, the
 *               connection uses TLS.
 *   privatekey  not used: a context's key pair is its own (its certificate
 *               fingerprint is what signaling vouches for). May be NULL.
 * The original struct has no credential: the registration token comes from
 * FOGCONNECT_TOKEN or pr_fogconnect_set_token.
 */
struct pr_signal_server {
    unsigned short port; /* ushort in the original header: the same type */
    void* ctx;
    char* url;
    char* type;
    const char* certificate;
    const char* privatekey;
};

/*
 * Starts the context `info->ctx` (socket, NAT discovery, the services set
 * so far) and joins the signaling server with the id of set_id (a
 * generated one without). Blocks until registered: returns 0 once
 * registered; 1 when registration did not succeed: the server refused it
 * (e.g. a token not valid for the id), or it did not succeed within 10
 * seconds (the session keeps retrying in the background, as it does after
 * any loss: connects work once it succeeds); -1 when the arguments are not
 * valid or the context cannot start (no token, the listen address cannot
 * be bound, a plugin does not load). The reason is logged and
 * pr_errno_mgs(NULL) says it. Called again on a started context: waits
 * for the registration again (0 or 1).
 */
int pr_init_signal(struct pr_signal_server* info);

/*
 * Creates a context; NULL only if its threads cannot be started (then
 * pr_errno_mgs(NULL) says why). Free it with pr_fogconnect_release.
 */
void* pr_fogconnect_init(void);

/*
 * Closes every connection of the context (each gets its one final
 * notification, on the callback thread, before this returns), stops the
 * node and frees everything. Called from one of the context's callbacks it
 * returns at once; the remaining notifications follow that callback, then
 * the context's thread ends by itself. The handle is invalid afterwards.
 */
void pr_fogconnect_release(void* ctx);

/*
 * Sets the callback told of passive connections (peers connecting to this
 * context): called with PR_EVENT_CONNECTED and cbarg NULL, for every
 * service number that no plugin serves (read the service from
 * pr_get_convention_number). With NULL, no longer accepts passive
 * connections: peers are refused "no such service". May be called before
 * or after pr_init_signal.
 */
void pr_fogconnect_set_callback(void* ctx, pr_callback_t* callback);

/*
 * Connects to the peer registered as `peerID` for service `connect_server`
 * (0..255) over `protocol` (enum transport_protocol). Returns 0 when the
 * connect started: `callback` is then called exactly once with
 * PR_EVENT_CONNECTED (the connection is up; later its ending follows), or
 * with PR_EVENT_ERROR / PR_EVENT_TIMEOUT (it failed; pr_errno_mgs says why).
 * Returns -1 without calling back when the arguments are not valid (NULL
 * or invalid id, protocol outside the enum, service above 255, no
 * callback) or the context has not joined signaling; pr_errno_mgs(NULL)
 * says why.
 */
int pr_connect_peer(void* ctx, const char* peerID, int protocol, int connect_server, pr_callback_t* callback,
                     void* cbarg);

/*
 * Sets a connection's receive and close callbacks (either may be NULL).
 * Messages held for want of a receive callback are delivered next. Returns
 * 0, or -1 for an invalid handle.
 */
int pr_event_setcb(void* pr_connect, pr_recv_peer_t* recv, pr_close_peer_t* close);

/*
 * Queues one message of `size` bytes (0 .. 1 MiB); it arrives as one
 * message, in order. Never blocks: returns the number of bytes accepted
 * (`size`), or -1 with the reason in pr_errno_mgs (invalid handle, not
 * connected yet, closed, too large, send buffer full).
 */
int pr_send_peer(void* pr_connect, void* buf, int size);

/* 1 when the peer dialled (passive), 0 when this side did, -1 invalid. */
int pr_connect_is_passive(void* connect_info);

/* The connection's convention number; 0 for an invalid handle. */
unsigned int pr_get_convention_number(void* connect_info);

/*
 * Sets the `cbarg` that later callbacks of this connection receive. Does
 * nothing for an invalid handle (pr_errno_mgs says so).
 */
void pr_connect_set_userdata(void* connect_info, void* usrdata);

/*
 * Sets the id contexts register with (e.g. a MAC address: 1..255 bytes of
 * UTF-8 without control characters, not starting with "fp:", which names
 * certificates), for contexts that join signaling afterwards. The text is
 * copied. NULL clears it (a generated id is used). An id that is not valid
 * is logged and ignored (pr_errno_mgs(NULL) says why).
 */
void set_id(const char* ret_id);

/*
 * The last error of a connection, e.g. "refused by peer: no such service:
 * 7" or "connection closed"; "" when there was none. With NULL: the last
 * error of a call on this thread that concerned no connection (e.g. a
 * failed pr_connect_peer or pr_init_signal). "invalid connection" for a
 * handle that is not (or no longer) valid. Never NULL; the text stays
 * valid until this thread calls pr_errno_mgs again. (The original header
 * did not declare this function; its programs called it.)
 */
const char* pr_errno_mgs(void* pr_connect);

/* ---------------------------------------------------------------------
 * EXTENSIONS: not in the original API
 * ------------------------------------------------------------------- */

/*
 * Sets the signaling registration token of the context (instead of
 * FOGCONNECT_TOKEN). Before pr_init_signal. Returns 0, or -1 (invalid
 * context, NULL, or the context has started).
 */
int pr_fogconnect_set_token(void* ctx, const char* token);

/*
 * Sets the UDP address the context binds, "ip:port" (e.g. "0.0.0.0:7700",
 * "127.0.0.1:0"). Before pr_init_signal. Returns 0, or -1.
 */
int pr_fogconnect_set_listen(void* ctx, const char* addr);

/*
 * Uses the STUN server "host:port" to learn the public address and
 * classify the NAT (needed for hole punching across NATs). Before
 * pr_init_signal. Returns 0, or -1.
 */
int pr_fogconnect_set_stun(void* ctx, const char* server);

/*
 * Network events. The original component reports every network signal as
 * an event; its device SDK (iv_avt_event_e) defines PEER_ADDR_CHANGED 3,
 * LOCAL_NET_READY 7 and LINK_DISCONNECT 8, kept here with their values.
 * The others are extensions, from 0x100.
 *
 * Connection events (conn is the connection's handle, in order with its
 * messages, never after its final notification):
 *   PR_NET_EVENT_PEER_ADDR_CHANGED  its packets travel another way: the
 *                                   peer's new address (its NAT rebound,
 *                                   it moved), relayed <-> direct
 *   PR_NET_EVENT_LINK_DISCONNECT    nothing arrived from the peer for a
 *                                   while although this side sent: the node
 *                                   looks for a new path; the connection
 *                                   ends with PR_EVENT_TIMEOUT if the
 *                                   keep-alive gives up first
 *   PR_NET_EVENT_LINK_RECOVERED     packets arrive again
 * Node events (conn NULL):
 *   PR_NET_EVENT_LOCAL_NET_READY    the host's addresses changed; the node
 *                                   classified its NAT again, registers
 *                                   with signaling again and looks for
 *                                   paths for its connections
 *   PR_NET_EVENT_SIGNAL_UP          registered with signaling (also again
 *                                   after a lost session)
 *   PR_NET_EVENT_SIGNAL_LOST        the signaling session was lost (the
 *                                   node reconnects; connections go on)
 *   PR_NET_EVENT_NAT_CLASSIFIED     the NAT was classified (again)
 *   PR_NET_EVENT_RELAY_ALLOCATED    a TURN relay allocation was made
 *   PR_NET_EVENT_RELAY_LOST         the allocation failed or was lost (the
 *                                   node retries)
 */
#define PR_NET_EVENT_PEER_ADDR_CHANGED 3
#define PR_NET_EVENT_LOCAL_NET_READY 7
#define PR_NET_EVENT_LINK_DISCONNECT 8
#define PR_NET_EVENT_LINK_RECOVERED 0x100
#define PR_NET_EVENT_SIGNAL_UP 0x101
#define PR_NET_EVENT_SIGNAL_LOST 0x102
#define PR_NET_EVENT_NAT_CLASSIFIED 0x103
#define PR_NET_EVENT_RELAY_ALLOCATED 0x104
#define PR_NET_EVENT_RELAY_LOST 0x105

/*
 * A network event callback: `ctx` the context, `conn` the connection it
 * concerns or NULL, `event` a PR_NET_EVENT_* code, `detail` what happened
 * in words (NUL-terminated, valid until the callback returns), `cbarg` as
 * given to pr_fogconnect_set_event_callback. Runs on the context's
 * callback thread like every other callback.
 */
typedef void pr_net_event_cb_t(void* ctx, void* conn, int event, const char* detail, void* cbarg);

/*
 * Sets (or, with NULL, removes) the context's network event callback.
 * Set it before pr_init_signal to see the first registration. Returns 0,
 * or -1 (invalid context).
 */
int pr_fogconnect_set_event_callback(void* ctx, pr_net_event_cb_t* cb, void* cbarg);

/*
 * Keeps the context's key pair and certificate in the file `path`, so its
 * certificate fingerprint (which peers pin) survives restarts: read when
 * the file exists, else created readable by its owner only. A file others
 * may read, or one that holds no matching key and certificate, makes
 * pr_init_signal fail (-1; pr_errno_mgs(NULL) says why). Before
 * pr_init_signal. Returns 0, or -1. `fogconnect id --identity FILE`
 * prints the file's fingerprint.
 */
int pr_fogconnect_set_identity_file(void* ctx, const char* path);

/*
 * Adds a TURN relay (e.g. "turn:relay.example:3478") with long-term
 * credentials, for peers no direct path reaches; may be called again for
 * fallbacks. Without any, the relays signaling hands out are used. Before
 * pr_init_signal. Returns 0, or -1 (e.g. not a TURN URL).
 */
int pr_fogconnect_add_relay(void* ctx, const char* url, const char* username, const char* password);

/*
 * Serves `service` (0..255) with the sandboxed WebAssembly plugin in the
 * file `path` (its manifest `*.toml` beside it, if any), beside the
 * context's own callbacks: connections for that service go to the plugin,
 * never to the passive callback. Before pr_init_signal the plugin loads
 * when the context starts (a failure then makes pr_init_signal return
 * -1); afterwards it loads now. Returns 0, or -1 (the service is taken,
 * the file does not load; pr_errno_mgs(NULL) says why).
 */
int pr_fogconnect_load_plugin(void* ctx, unsigned int service, const char* path);

/*
 * Closes a connection: queued messages are delivered first, then the peer
 * sees the end (PR_EVENT_EOF). This side gets its one final notification
 * too (close callback, or the connect callback with PR_EVENT_EOF). Returns
 * 0, or -1 for an invalid handle.
 */
int pr_connect_close(void* pr_connect);

/* Which way a connection's packets travel. */
enum pr_path {
    PR_PATH_LAN = 0,    /* loopback, private or link-local addresses */
    PR_PATH_DIRECT = 1, /* public addresses, peer to peer */
    PR_PATH_RELAYED = 2 /* through a TURN relay */
};

/* Counters and measurements of a connection. */
struct pr_connect_stats {
    int path;                          /* enum pr_path */
    uint32_t rtt_us;                   /* smoothed round-trip time, microseconds */
    uint64_t bytes_sent;               /* payload bytes sent */
    uint64_t bytes_received;           /* payload bytes received */
    uint64_t messages_sent;            /* messages sent */
    uint64_t messages_received;        /* messages received */
};

/*
 * Fills `stats` for an established connection. Returns 0, or -1 (invalid
 * handle, NULL, not connected yet).
 */
int pr_connect_get_stats(void* pr_connect, struct pr_connect_stats* stats);

/* The datagram side of a PR_TRANSPORT_PROTOCOL_UDP connection. */
struct pr_connect_datagram_stats {
    uint32_t max_size; /* the largest message one datagram carries on the
                          path now; pr_send_peer refuses larger ones */
    uint64_t lost;     /* datagrams the peer sent that this side's
                          application did not get (never arrived, or
                          arrived while its queue was full) */
};

/*
 * Fills `stats` for an established connection of the UDP transport.
 * Returns 0, or -1 (invalid handle, NULL, not connected yet, or another
 * transport; pr_errno_mgs(pr_connect) says which).
 */
int pr_connect_get_datagram_stats(void* pr_connect, struct pr_connect_datagram_stats* stats);

/*
 * Copies the peer's id, NUL-terminated, into `buf` of `size` bytes (256
 * always suffice). Returns 1 when signaling vouched for that id with the
 * certificate the peer presented, 0 when it is not vouched for (then it
 * reads "fp:" and the certificate fingerprint), -1 on an invalid handle or
 * a buffer too small.
 */
int pr_connect_get_peer_id(void* pr_connect, char* buf, int size);

#ifdef __cplusplus
}
#endif

#endif /* FOGCONNECT_H */
