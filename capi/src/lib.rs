//! The original fogconnect C API (`include/fogconnect.h`) as a thin layer
//! over the fogconnect Rust API: a context is a [`fogconnect::Node`], its
//! passive callback a native default handler
//! ([`fogconnect::Node::incoming_default`]), its connections
//! [`fogconnect::Connection`]s.
//!
//! Layout:
//! - [`guard`]: no panic crosses into C; per-thread call errors.
//! - [`handles`]: the numbers C holds instead of pointers.
//! - [`context`]: a context's node, runtime, settings and release.
//! - [`connection`]: a connection's handle state and its event task.
//! - [`callbacks`]: the one thread per context that runs C callbacks.
//! - [`avt`]: the IoT Video SDK's stream API (`include/iv_av_p2p.h`) over
//!   a native stream service.
//! - [`logging`]: where the library's log goes.
//!
//! Every export below is documented in the header, which is the contract;
//! the doc comments here say only what the Rust side does.

mod avt;
mod callbacks;
mod connection;
mod context;
mod events;
mod guard;
mod handles;
mod logging;

use std::ffi::{c_char, c_int, c_uint, c_ushort, c_void};
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use fogconnect::{PathKind, Transport};

use connection::{CloseCallback, ConnectCallback, RecvCallback};
use context::{Context, DEFAULT_SIGNAL_PORT, SignalTarget};
use guard::{call_error, guard, hand_out, optional_text_arg, set_call_error, text_arg};
use handles::{CONNECTIONS, CONTEXTS, to_ptr};

/// What `pr_errno_mgs` says for a handle that is not a live connection.
const INVALID_CONNECTION: &str = "invalid connection";
/// The call error for a handle that is not a live context.
const INVALID_CONTEXT: &str = "invalid context";

/// `struct pr_signal_server`, field for field.
#[repr(C)]
pub struct PrSignalServer {
    /// TCP port; 0: 7600.
    pub port: c_ushort,
    /// The context.
    pub ctx: *mut c_void,
    /// Host, or a whole URL.
    pub url: *mut c_char,
    /// "/ws", "/wss" or a path.
    pub r#type: *mut c_char,
    /// PEM file of a CA to trust (TLS).
    pub certificate: *const c_char,
    /// Not used.
    pub privatekey: *const c_char,
}

/// `struct pr_connect_stats`, field for field.
#[repr(C)]
pub struct PrConnectStats {
    /// `enum pr_path`.
    pub path: c_int,
    /// Smoothed RTT in microseconds.
    pub rtt_us: u32,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
}

/// `struct pr_connect_datagram_stats`, field for field.
#[repr(C)]
pub struct PrConnectDatagramStats {
    /// The largest message one datagram carries on the path now.
    pub max_size: u32,
    /// Datagrams the peer sent that this side's application did not get.
    pub lost: u64,
}

fn init_logging() {
    logging::init();
}

/// Runs `body` with the context of `ctx`; -1 and "invalid context" when
/// it is none, -1 and the error when `body` fails.
fn with_context(ctx: *mut c_void, body: impl FnOnce(&std::sync::Arc<Context>) -> Result<(), String>) -> c_int {
    guard(-1, || {
        let Some(context) = CONTEXTS.get(ctx) else {
            set_call_error(INVALID_CONTEXT);
            return -1;
        };
        match body(&context) {
            Ok(()) => 0,
            Err(e) => {
                set_call_error(e);
                -1
            }
        }
    })
}

/// The WebSocket URL of a `pr_signal_server`.
///
/// # Safety
/// The string fields are NULL or NUL-terminated.
unsafe fn signal_target(info: &PrSignalServer) -> Result<SignalTarget, String> {
    // SAFETY (all three): the caller's contract on the fields.
    let host = unsafe { text_arg(info.url, "pr_signal_server.url") }?;
    let kind = unsafe { optional_text_arg(info.r#type, "pr_signal_server.type") }?;
    let ca = unsafe { optional_text_arg(info.certificate, "pr_signal_server.certificate") }?.map(PathBuf::from);
    let hosts: Vec<&str> = host.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err("pr_signal_server.url is empty".into());
    }
    let tls = kind.as_deref() == Some("/wss") || ca.is_some();
    let path = match kind.as_deref() {
        None | Some("/ws") | Some("/wss") => "/ws".to_string(),
        Some(path) if path.starts_with('/') => path.to_string(),
        Some(other) => return Err(format!("pr_signal_server.type {other:?} is neither \"/ws\", \"/wss\" nor a path")),
    };
    let port = if info.port == 0 { DEFAULT_SIGNAL_PORT } else { info.port };
    let scheme = if tls { "wss" } else { "ws" };
    // Several servers, separated by commas: the device moves to the next
    // when its server is lost.
    let urls: Vec<String> = hosts
        .into_iter()
        .map(|host| {
            if host.contains("://") {
                host.to_string()
            } else if host.contains(':') && !host.starts_with('[') {
                format!("{scheme}://[{host}]:{port}{path}")
            } else {
                format!("{scheme}://{host}:{port}{path}")
            }
        })
        .collect();
    Ok(SignalTarget { url: urls.join(","), ca })
}

/// `pr_init_signal`: starts the context's node and waits for the
/// registration.
///
/// # Safety
/// `info` is NULL or points to a `struct pr_signal_server` whose strings
/// are NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_init_signal(info: *mut PrSignalServer) -> c_int {
    guard(-1, || {
        // SAFETY: NULL or a valid struct, by the caller's contract.
        let Some(info) = (unsafe { info.as_ref() }) else {
            set_call_error("pr_init_signal: info is NULL");
            return -1;
        };
        let Some(context) = CONTEXTS.get(info.ctx) else {
            set_call_error(format!("pr_init_signal: {INVALID_CONTEXT} in info->ctx"));
            return -1;
        };
        // SAFETY: as above.
        let target = match unsafe { signal_target(info) } {
            Ok(target) => target,
            Err(e) => {
                set_call_error(e);
                return -1;
            }
        };
        match context.start(target) {
            Ok(None) => 0,
            Ok(Some(why)) => {
                set_call_error(why);
                1
            }
            Err(e) => {
                tracing::error!("pr_init_signal: {e}");
                set_call_error(e);
                -1
            }
        }
    })
}

/// `pr_fogconnect_init`: a new context.
#[unsafe(no_mangle)]
pub extern "C" fn pr_fogconnect_init() -> *mut c_void {
    guard(std::ptr::null_mut(), || {
        init_logging();
        match Context::create() {
            Ok(handle) => to_ptr(handle),
            Err(e) => {
                tracing::error!("pr_fogconnect_init: {e}");
                set_call_error(e);
                std::ptr::null_mut()
            }
        }
    })
}

/// `pr_fogconnect_release`.
#[unsafe(no_mangle)]
pub extern "C" fn pr_fogconnect_release(ctx: *mut c_void) {
    guard((), || match CONTEXTS.get(ctx) {
        Some(context) => context.release(),
        None => set_call_error(INVALID_CONTEXT),
    })
}

/// `pr_fogconnect_set_callback`.
#[unsafe(no_mangle)]
pub extern "C" fn pr_fogconnect_set_callback(ctx: *mut c_void, callback: Option<ConnectCallback>) {
    with_context(ctx, |context| context.set_passive_callback(callback));
}

/// `pr_connect_peer`: starts a connect by id.
///
/// # Safety
/// `peer_id` is NULL or NUL-terminated; `callback` is NULL or a function
/// of the `pr_callback_t` type.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_connect_peer(
    ctx: *mut c_void,
    peer_id: *const c_char,
    protocol: c_int,
    connect_server: c_int,
    callback: Option<ConnectCallback>,
    cbarg: *mut c_void,
) -> c_int {
    with_context(ctx, |context| {
        // SAFETY: the caller's contract.
        let peer = unsafe { text_arg(peer_id, "peerID") }?;
        if let Some(problem) = fogconnect::transport::wire::peer_id_problem(&peer) {
            return Err(format!("peerID {peer:?}: {problem}"));
        }
        let transport = u8::try_from(protocol)
            .ok()
            .and_then(|code| Transport::from_code(code).ok())
            .ok_or_else(|| format!("protocol {protocol} is not an enum transport_protocol value (0..5)"))?;
        let service = u8::try_from(connect_server)
            .map_err(|_| format!("connect_server {connect_server} is not a service number (0..255)"))?;
        let callback = callback.ok_or("pr_connect_peer needs a callback")?;
        context.connect(peer, transport, service, callback, cbarg as usize).map(drop)
    })
}

/// `pr_event_setcb`.
#[unsafe(no_mangle)]
pub extern "C" fn pr_event_setcb(
    pr_connect: *mut c_void,
    recv: Option<RecvCallback>,
    close: Option<CloseCallback>,
) -> c_int {
    guard(-1, || {
        let Some(entry) = CONNECTIONS.get(pr_connect) else { return -1 };
        let has_held = {
            let mut state = entry.state();
            state.on_recv = recv;
            state.on_close = close;
            recv.is_some() && !state.held.is_empty()
        };
        if has_held && let Some(context) = CONTEXTS.get(to_ptr(entry.context)) {
            context.flush(entry);
        }
        0
    })
}

/// `pr_send_peer`: queues one message, never blocks.
///
/// # Safety
/// `buf` is NULL or points to `size` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_send_peer(pr_connect: *mut c_void, buf: *mut c_void, size: c_int) -> c_int {
    guard(-1, || {
        let Some(entry) = CONNECTIONS.get(pr_connect) else { return -1 };
        let Ok(len) = usize::try_from(size) else {
            entry.fail(format!("negative size {size}"));
            return -1;
        };
        if buf.is_null() && len > 0 {
            entry.fail("buf is NULL");
            return -1;
        }
        let sender = {
            let state = entry.state();
            match &state.sender {
                Some(sender) if !state.ended && !entry.close.is_cancelled() => sender.clone(),
                Some(_) => {
                    drop(state);
                    entry.fail("connection closed");
                    return -1;
                }
                None => {
                    drop(state);
                    entry.fail("not connected yet: wait for PR_EVENT_CONNECTED");
                    return -1;
                }
            }
        };
        let data = if len == 0 {
            Bytes::new()
        } else {
            // SAFETY: non-NULL and `len` readable bytes, by the caller's
            // contract; copied before returning.
            Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) })
        };
        match sender.send(data) {
            Ok(()) => size,
            Err(e) => {
                entry.fail(e.to_string());
                -1
            }
        }
    })
}

/// `pr_connect_is_passive`.
#[unsafe(no_mangle)]
pub extern "C" fn pr_connect_is_passive(connect_info: *mut c_void) -> c_int {
    guard(-1, || CONNECTIONS.get(connect_info).map_or(-1, |entry| c_int::from(entry.passive)))
}

/// `pr_get_convention_number`.
#[unsafe(no_mangle)]
pub extern "C" fn pr_get_convention_number(connect_info: *mut c_void) -> c_uint {
    guard(0, || CONNECTIONS.get(connect_info).map_or(0, |entry| entry.state().convention))
}

/// `pr_connect_set_userdata`.
#[unsafe(no_mangle)]
pub extern "C" fn pr_connect_set_userdata(connect_info: *mut c_void, usrdata: *mut c_void) {
    guard((), || {
        if let Some(entry) = CONNECTIONS.get(connect_info) {
            entry.state().cbarg = usrdata as usize;
        }
    })
}

/// `set_id`: copies the id for contexts that start afterwards.
///
/// # Safety
/// `ret_id` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn set_id(ret_id: *const c_char) {
    guard((), || {
        if ret_id.is_null() {
            context::set_node_id(None);
            return;
        }
        // SAFETY: the caller's contract.
        match unsafe { text_arg(ret_id, "set_id") } {
            Ok(id) => match fogconnect::transport::wire::peer_id_problem(&id) {
                None => context::set_node_id(Some(id)),
                Some(problem) => {
                    tracing::error!("set_id({id:?}): {problem}; the id is not changed");
                    set_call_error(format!("set_id: {problem}"));
                }
            },
            Err(e) => {
                tracing::error!("{e}; the id is not changed");
                set_call_error(e);
            }
        }
    })
}

/// `pr_errno_mgs`: never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn pr_errno_mgs(pr_connect: *mut c_void) -> *const c_char {
    guard(c"internal error in fogconnect".as_ptr(), || {
        if pr_connect.is_null() {
            return hand_out(&call_error());
        }
        match CONNECTIONS.get(pr_connect) {
            Some(entry) => {
                let error = entry.state().error.clone();
                hand_out(&error)
            }
            None => hand_out(INVALID_CONNECTION),
        }
    })
}

/// Extension `pr_fogconnect_set_token`.
///
/// # Safety
/// `token` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_fogconnect_set_token(ctx: *mut c_void, token: *const c_char) -> c_int {
    with_context(ctx, |context| {
        // SAFETY: the caller's contract.
        let token = unsafe { text_arg(token, "token") }?;
        context.set_token(token)
    })
}

/// Extension `pr_fogconnect_set_listen`.
///
/// # Safety
/// `addr` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_fogconnect_set_listen(ctx: *mut c_void, addr: *const c_char) -> c_int {
    with_context(ctx, |context| {
        // SAFETY: the caller's contract.
        let text = unsafe { text_arg(addr, "addr") }?;
        let listen: SocketAddr = text.parse().map_err(|_| format!("{text:?} is not an ip:port address"))?;
        context.set_listen(listen)
    })
}

/// Extension `pr_fogconnect_set_stun`.
///
/// # Safety
/// `server` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_fogconnect_set_stun(ctx: *mut c_void, server: *const c_char) -> c_int {
    with_context(ctx, |context| {
        // SAFETY: the caller's contract.
        let server = unsafe { text_arg(server, "server") }?;
        context.set_stun(server)
    })
}

/// Extension `pr_fogconnect_set_event_callback`.
///
/// # Safety
/// `callback` is NULL or a function of the documented signature.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_fogconnect_set_event_callback(
    ctx: *mut c_void,
    callback: Option<events::EventCallback>,
    cbarg: *mut c_void,
) -> c_int {
    let cbarg = cbarg as usize;
    with_context(ctx, |context| {
        context.set_event_callback(callback.map(|callback| (callback, cbarg)));
        Ok(())
    })
}

/// Extension `pr_fogconnect_set_identity_file`.
///
/// # Safety
/// `path` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_fogconnect_set_identity_file(ctx: *mut c_void, path: *const c_char) -> c_int {
    with_context(ctx, |context| {
        // SAFETY: the caller's contract.
        let path = unsafe { text_arg(path, "path") }?;
        context.set_identity_file(PathBuf::from(path))
    })
}

/// Extension `pr_fogconnect_add_relay`.
///
/// # Safety
/// The strings are NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_fogconnect_add_relay(
    ctx: *mut c_void,
    url: *const c_char,
    username: *const c_char,
    password: *const c_char,
) -> c_int {
    with_context(ctx, |context| {
        // SAFETY (all three): the caller's contract.
        let url = unsafe { text_arg(url, "url") }?;
        let username = unsafe { text_arg(username, "username") }?;
        let password = unsafe { text_arg(password, "password") }?;
        context.add_relay(url, username, password)
    })
}

/// Extension `pr_fogconnect_load_plugin`.
///
/// # Safety
/// `path` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_fogconnect_load_plugin(ctx: *mut c_void, service: c_uint, path: *const c_char) -> c_int {
    with_context(ctx, |context| {
        // SAFETY: the caller's contract.
        let path = unsafe { text_arg(path, "path") }?;
        let service = u8::try_from(service).map_err(|_| format!("service {service} is not 0..255"))?;
        #[cfg(feature = "plugins")]
        return context.load_plugin(service, PathBuf::from(path));
        #[cfg(not(feature = "plugins"))]
        {
            let _ = (context, service);
            Err(format!(
                "{path}: this library is the device build, without the WebAssembly plugin runtime; serve the service natively (pr_event_setcb, iv_avt_p2p_init) or use the full build"
            ))
        }
    })
}

/// Extension `pr_connect_close`.
#[unsafe(no_mangle)]
pub extern "C" fn pr_connect_close(pr_connect: *mut c_void) -> c_int {
    guard(-1, || match CONNECTIONS.get(pr_connect) {
        Some(entry) => {
            entry.end_here(connection::EVENT_EOF, "closed by the application");
            0
        }
        None => -1,
    })
}

/// The counters of the established connection `pr_connect`, for a call
/// whose out-pointer is NULL when `out_is_null`; `None` (with the reason
/// set on the connection) for an invalid handle, one not connected yet or
/// a NULL out-pointer.
fn connected_stats(
    pr_connect: *mut c_void,
    out_is_null: bool,
) -> Option<(std::sync::Arc<connection::ConnEntry>, fogconnect::ConnStats)> {
    let entry = CONNECTIONS.get(pr_connect)?;
    let Some(sender) = entry.state().sender.clone() else {
        entry.fail("not connected yet: wait for PR_EVENT_CONNECTED");
        return None;
    };
    if out_is_null {
        entry.fail("stats is NULL");
        return None;
    }
    let stats = sender.stats();
    Some((entry, stats))
}

/// Extension `pr_connect_get_stats`.
///
/// # Safety
/// `stats` is NULL or points to a writable `struct pr_connect_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_connect_get_stats(pr_connect: *mut c_void, stats: *mut PrConnectStats) -> c_int {
    guard(-1, || {
        let Some((_, s)) = connected_stats(pr_connect, stats.is_null()) else { return -1 };
        let filled = PrConnectStats {
            path: match s.path {
                PathKind::Lan => 0,
                PathKind::Direct => 1,
                PathKind::Relayed => 2,
            },
            rtt_us: u32::try_from(s.rtt.as_micros()).unwrap_or(u32::MAX),
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            messages_sent: s.messages_sent,
            messages_received: s.messages_received,
        };
        // SAFETY: non-NULL and writable, by the caller's contract.
        unsafe { stats.write(filled) };
        0
    })
}

/// Extension `pr_connect_get_datagram_stats`.
///
/// # Safety
/// `stats` is NULL or points to a writable `struct pr_connect_datagram_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_connect_get_datagram_stats(
    pr_connect: *mut c_void,
    stats: *mut PrConnectDatagramStats,
) -> c_int {
    guard(-1, || {
        let Some((entry, s)) = connected_stats(pr_connect, stats.is_null()) else { return -1 };
        let Some(max) = s.max_datagram else {
            entry.fail("not a connection of the UDP transport: it has no datagrams");
            return -1;
        };
        let filled =
            PrConnectDatagramStats { max_size: u32::try_from(max).unwrap_or(u32::MAX), lost: s.datagrams_lost };
        // SAFETY: non-NULL and writable, by the caller's contract.
        unsafe { stats.write(filled) };
        0
    })
}

/// Extension `pr_connect_get_peer_id`.
///
/// # Safety
/// `buf` is NULL or points to `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_connect_get_peer_id(pr_connect: *mut c_void, buf: *mut c_char, size: c_int) -> c_int {
    guard(-1, || {
        let Some(entry) = CONNECTIONS.get(pr_connect) else { return -1 };
        let Some((peer, verified)) = entry.state().peer.clone() else {
            entry.fail("not connected yet: wait for PR_EVENT_CONNECTED");
            return -1;
        };
        let capacity = usize::try_from(size).unwrap_or(0);
        if buf.is_null() || capacity < peer.len() + 1 {
            entry.fail(format!("the buffer cannot hold the peer id ({} bytes and a NUL)", peer.len()));
            return -1;
        }
        // SAFETY: `buf` holds `capacity` > peer.len() writable bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(peer.as_ptr(), buf.cast::<u8>(), peer.len());
            buf.add(peer.len()).write(0);
        }
        c_int::from(verified)
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    /// The URL(s) a `pr_signal_server` names.
    fn target(host: &str, kind: Option<&str>, port: u16) -> Result<String, String> {
        let host = CString::new(host).map_err(|e| e.to_string())?;
        let kind = kind.map(|k| CString::new(k).map_err(|e| e.to_string())).transpose()?;
        let info = PrSignalServer {
            port,
            ctx: std::ptr::null_mut(),
            url: host.as_ptr().cast_mut(),
            r#type: kind.as_ref().map_or(std::ptr::null_mut(), |k| k.as_ptr().cast_mut()),
            certificate: std::ptr::null(),
            privatekey: std::ptr::null(),
        };
        // SAFETY: the strings are NUL-terminated and outlive the call.
        unsafe { signal_target(&info) }.map(|t| t.url)
    }

    #[test]
    fn one_or_several_signaling_servers() {
        assert_eq!(target("127.0.0.1", None, 0).as_deref(), Ok("ws://127.0.0.1:7600/ws"));
        assert_eq!(
            target("sig1.example, sig2.example,::1", Some("/wss"), 7601).as_deref(),
            Ok("wss://sig1.example:7601/ws,wss://sig2.example:7601/ws,wss://[::1]:7601/ws")
        );
        assert_eq!(
            target("ws://10.0.0.1:1/ws,10.0.0.2", None, 7602).as_deref(),
            Ok("ws://10.0.0.1:1/ws,ws://10.0.0.2:7602/ws")
        );
        assert!(target(" , ", None, 0).is_err());
    }
}
