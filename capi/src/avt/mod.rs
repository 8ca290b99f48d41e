//! The IoT Video SDK's raw P2P device API (`include/iv_av_p2p.h`) over a
//! native stream service ([`fogconnect::Node::serve_streams`]) of a
//! context: one per process, as in the original. The header is the
//! contract; the doc comments here say only what the Rust side does.

mod service;

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use fogconnect::PathKind;
use fogconnect::stream::watermark::Watermarks;
use fogconnect::stream::{CommandFailure, StreamHost, StreamServiceError, StreamServiceHandle};

pub(crate) use service::AvtService;
use service::{Callbacks, SharedHandles, with_current_host};

use crate::guard::{guard, optional_text_arg, set_call_error, text_arg};
use crate::handles::{CONTEXTS, to_ptr};

/// The service number served when none is attached.
const DEFAULT_SERVICE: u8 = 2;

/// `iv_err_e`.
mod err {
    use std::ffi::c_int;
    pub const NONE: c_int = 0;
    pub const INVALID_PARAM: c_int = -1;
    pub const NOT_INIT: c_int = -2;
    pub const ALREADY_INIT: c_int = -3;
    pub const NO_CONTEXT: c_int = -4;
    pub const SERVICE_TAKEN: c_int = -5;
    pub const PEER_NOT_FOUND: c_int = -6;
    pub const TIMEOUT: c_int = -7;
    pub const BUFFER_TOO_SMALL: c_int = -8;
    pub const IN_CALLBACK: c_int = -9;
    pub const REFUSED: c_int = -10;
    pub const CLOSED: c_int = -11;
    pub const TOO_LARGE: c_int = -12;
    pub const BUSY: c_int = -13;
    pub const INTERNAL: c_int = -14;
}

/// `iv_p2p_send_stats_s`, field for field.
#[repr(C)]
#[derive(Default)]
pub struct IvP2pSendStats {
    /// Bytes per second the path carries now.
    pub inst_net_rate: u32,
    /// Bytes per second handed to the transport over the last second.
    pub ave_sent_rate: u32,
    /// Bytes handed to the transport in all.
    pub sum_sent_acked: u64,
    /// 0 invalid, 1 direct, 2 relayed.
    pub link_mode: u32,
}

/// `p2p_keep_alive_s`.
#[repr(C)]
pub struct P2pKeepAlive {
    /// Seconds between probes.
    pub time_inter_s: u8,
    /// Unanswered probes before the peer is gone.
    pub max_attempt_num: u8,
}

/// `p2p_init_params_s`.
#[repr(C)]
pub struct P2pInitParams {
    /// 0 keep, 1 error .. 5 trace.
    pub log_level: c_int,
    /// A file to log to instead of standard error.
    pub log_file_path: *const c_char,
    /// Its size cap.
    pub log_file_size: usize,
}

/// `local_net_info_s`.
#[repr(C)]
pub struct LocalNetInfo {
    /// The address to bind.
    pub ip: *const c_char,
    /// The port to bind.
    pub port: u16,
}

/// `iv_p2p_parm_s`, field for field.
#[repr(C)]
pub struct IvP2pParm {
    send_init: Option<service::InitCallback>,
    send_get: Option<service::GetCallback>,
    send_stop: Option<service::StopCallback>,
    event: Option<service::EventCallback>,
    recv_init: Option<service::InitCallback>,
    recv_voice: Option<service::VoiceCallback>,
    command: Option<service::CommandCallback>,
    keep_alive: P2pKeepAlive,
    init_params: P2pInitParams,
    net_info: LocalNetInfo,
}

/// What the context applies when it starts after `iv_avt_p2p_init`.
pub(crate) struct PendingStreams {
    pub(crate) service: u8,
    pub(crate) implementation: AvtService,
    pub(crate) keep_alive: Option<(Duration, u32)>,
    pub(crate) listen: Option<SocketAddr>,
}

/// The one stream service of the process.
struct Avt {
    /// The context served on.
    context: usize,
    callbacks: Callbacks,
    handles: SharedHandles,
    /// `None` until the context starts.
    serving: Option<StreamServiceHandle>,
}

static AVT: Mutex<Option<Avt>> = Mutex::new(None);
/// `iv_avt_p2p_attach`'s context and service.
static ATTACHED: Mutex<Option<(usize, u8)>> = Mutex::new(None);
/// The watermarks of every stream, current and future (low, warn, high).
static MARKS: Mutex<(u64, u64, u64)> = Mutex::new((0, 0, 0));

/// The marks a new stream starts with.
fn marks() -> (u64, u64, u64) {
    *lock(&MARKS)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails with `code` and `message` for `pr_errno_mgs(NULL)`.
fn fail(code: c_int, message: impl Into<String>) -> c_int {
    set_call_error(message);
    code
}

/// The service of `context` serves: its handle goes into the state
/// `iv_avt_p2p_init` made, and LOCAL_NET_READY is raised.
pub(crate) fn started(context: usize, serving: StreamServiceHandle) {
    let mut avt = lock(&AVT);
    let Some(state) = avt.as_mut().filter(|a| a.context == context) else { return };
    let callbacks = state.callbacks;
    let _ = serving.post(move |host| service::local_net_ready(callbacks, host));
    state.serving = Some(serving);
}

/// Runs `f` with the stream host: the running callback's (inside one),
/// else on the service's thread.
fn with_host<R: Send + 'static>(f: impl FnOnce(&mut StreamHost<'_>) -> R + Send + 'static) -> Result<R, c_int> {
    let mut f = Some(f);
    if let Some(result) = with_current_host(|host| f.take().map(|f| f(host))) {
        return result.ok_or_else(|| fail(err::INTERNAL, "the call ran twice"));
    }
    let serving = lock(&AVT).as_ref().map(|a| a.serving.clone());
    let serving = match serving {
        None => return Err(fail(err::NOT_INIT, "iv_avt_p2p_init has not been called")),
        Some(None) => return Err(fail(err::NOT_INIT, "the context has not started yet (pr_init_signal)")),
        Some(Some(serving)) => serving,
    };
    let Some(f) = f.take() else { return Err(fail(err::INTERNAL, "the call ran twice")) };
    serving.call_blocking(f).map_err(|e| match e {
        StreamServiceError::InCallback => fail(err::IN_CALLBACK, e.to_string()),
        StreamServiceError::Stopped => {
            fail(err::NOT_INIT, "the stream service has stopped (iv_avt_p2p_exit, or the context was released)")
        }
    })
}

/// The library's handle of C's send stream handle.
fn stream_id(handle: *mut c_void) -> Result<u64, c_int> {
    let handles = lock(&AVT).as_ref().map(|a| a.handles.clone());
    let Some(handles) = handles else { return Err(fail(err::NOT_INIT, "iv_avt_p2p_init has not been called")) };
    let id = service::lock(&handles).send_id(handle as usize);
    id.ok_or_else(|| fail(err::INVALID_PARAM, format!("{handle:p} is not a live send stream's handle")))
}

/// `iv_avt_p2p_attach`.
#[unsafe(no_mangle)]
pub extern "C" fn iv_avt_p2p_attach(ctx: *mut c_void, service: c_uint) -> c_int {
    guard(err::INTERNAL, || {
        let Ok(service) = u8::try_from(service) else {
            return fail(err::INVALID_PARAM, format!("service {service} is not 0..255"));
        };
        let Some(context) = CONTEXTS.get(ctx) else { return fail(err::NO_CONTEXT, "invalid context") };
        if lock(&AVT).is_some() {
            return fail(err::ALREADY_INIT, "iv_avt_p2p_init was called already: attach before it");
        }
        *lock(&ATTACHED) = Some((context.handle, service));
        err::NONE
    })
}

/// What `iv_p2p_parm_s` sets: the callbacks, the keep-alive (interval,
/// attempts) and the address to bind, the last two for a context not yet
/// started.
type DeviceSettings = (Callbacks, Option<(Duration, u32)>, Option<SocketAddr>);

/// Reads the device's parameters.
///
/// # Safety
/// The strings of `parm` are NULL or NUL-terminated.
unsafe fn read_parm(parm: &IvP2pParm) -> Result<DeviceSettings, String> {
    let (Some(send_init), Some(send_get), Some(send_stop)) = (parm.send_init, parm.send_get, parm.send_stop) else {
        return Err("p2p_handle_send_init_cb, p2p_handle_send_get_cb and p2p_handle_send_stop_cb are required".into());
    };
    let callbacks = Callbacks {
        send_init,
        send_get,
        send_stop,
        event: parm.event,
        recv_init: parm.recv_init,
        recv_voice: parm.recv_voice,
        command: parm.command,
    };
    let keep_alive = (parm.keep_alive.time_inter_s != 0 || parm.keep_alive.max_attempt_num != 0).then(|| {
        let interval = if parm.keep_alive.time_inter_s == 0 { 5 } else { parm.keep_alive.time_inter_s };
        let attempts = if parm.keep_alive.max_attempt_num == 0 { 6 } else { parm.keep_alive.max_attempt_num };
        (Duration::from_secs(u64::from(interval)), u32::from(attempts))
    });
    // SAFETY: the caller's contract on the string.
    let ip = unsafe { optional_text_arg(parm.net_info.ip, "net_info.ip") }?;
    let listen = match ip {
        Some(ip) => {
            let ip: IpAddr = ip.parse().map_err(|_| format!("net_info.ip {ip:?} is not an IP address"))?;
            Some(SocketAddr::new(ip, parm.net_info.port))
        }
        None => None,
    };
    // SAFETY: as above.
    let log_file = unsafe { optional_text_arg(parm.init_params.log_file_path, "p2p_init_params.log_file_path") }?;
    crate::logging::configure(parm.init_params.log_level, log_file, parm.init_params.log_file_size)?;
    Ok((callbacks, keep_alive, listen))
}

/// `iv_avt_p2p_init`.
///
/// # Safety
/// `parm` is NULL or points to an `iv_p2p_parm_s` whose strings are NULL or
/// NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn iv_avt_p2p_init(parm: *const IvP2pParm) -> c_int {
    guard(err::INTERNAL, || {
        // SAFETY: NULL or a valid struct, by the caller's contract.
        let Some(parm) = (unsafe { parm.as_ref() }) else {
            return fail(err::INVALID_PARAM, "iv_avt_p2p_init: pstInitParm is NULL");
        };
        if lock(&AVT).is_some() {
            return fail(err::ALREADY_INIT, "iv_avt_p2p_init was called already (iv_avt_p2p_exit first)");
        }
        // SAFETY: the caller's contract on the strings.
        let (callbacks, keep_alive, listen) = match unsafe { read_parm(parm) } {
            Ok(read) => read,
            Err(e) => return fail(err::INVALID_PARAM, format!("iv_avt_p2p_init: {e}")),
        };
        let (context, service) = match *lock(&ATTACHED) {
            Some((handle, service)) => (CONTEXTS.get(to_ptr(handle)), service),
            None => (CONTEXTS.only(), DEFAULT_SERVICE),
        };
        let Some(context) = context else {
            return fail(
                err::NO_CONTEXT,
                "no context to serve streams on: create one with pr_fogconnect_init, or name one with iv_avt_p2p_attach when there are several",
            );
        };
        let handles = SharedHandles::default();
        // The state is in place before the context may start the service
        // (`started` fills it in), and AVT is not held while the context is
        // asked: a start on another thread takes the context's lock, then
        // AVT's.
        {
            let mut avt = lock(&AVT);
            if avt.is_some() {
                return fail(err::ALREADY_INIT, "iv_avt_p2p_init was called already (iv_avt_p2p_exit first)");
            }
            *avt = Some(Avt { context: context.handle, callbacks, handles: handles.clone(), serving: None });
        }
        let implementation = AvtService::new(callbacks, handles);
        let pending = PendingStreams { service, implementation, keep_alive, listen };
        match context.serve_streams(pending) {
            Ok(Some(serving)) => started(context.handle, serving),
            Ok(None) => {}
            Err((taken, message)) => {
                *lock(&AVT) = None;
                return fail(if taken { err::SERVICE_TAKEN } else { err::INTERNAL }, message);
            }
        }
        err::NONE
    })
}

/// `iv_avt_p2p_exit`.
#[unsafe(no_mangle)]
pub extern "C" fn iv_avt_p2p_exit() -> c_int {
    guard(err::INTERNAL, || {
        if with_current_host(|_| ()).is_some() {
            return fail(
                err::IN_CALLBACK,
                "iv_avt_p2p_exit called from inside a callback, which would wait for itself",
            );
        }
        let Some(avt) = lock(&AVT).take() else { return fail(err::NOT_INIT, "iv_avt_p2p_init has not been called") };
        *lock(&ATTACHED) = None;
        match avt.serving {
            Some(serving) => {
                if serving.stop_blocking().is_err() {
                    return fail(err::IN_CALLBACK, "iv_avt_p2p_exit called from inside a callback");
                }
            }
            None => {
                if let Some(context) = CONTEXTS.get(to_ptr(avt.context)) {
                    context.drop_pending_streams();
                }
            }
        }
        err::NONE
    })
}

/// `iv_avt_p2p_set_buf_watermark`.
#[unsafe(no_mangle)]
pub extern "C" fn iv_avt_p2p_set_buf_watermark(low: usize, warn: usize, high: usize) -> c_int {
    guard(err::INTERNAL, || {
        let (low, warn, high) = (low as u64, warn as u64, high as u64);
        if let Err(e) = Watermarks::new(low, warn, high) {
            return fail(err::INVALID_PARAM, format!("iv_avt_p2p_set_buf_watermark: {e}"));
        }
        *lock(&MARKS) = (low, warn, high);
        let handles = lock(&AVT).as_ref().filter(|a| a.serving.is_some()).map(|a| a.handles.clone());
        let Some(handles) = handles else { return err::NONE };
        let applied = with_host(move |host| {
            for id in service::lock(&handles).send_streams() {
                let _ = host.set_watermarks(id, low, warn, high);
            }
        });
        match applied {
            Ok(()) => err::NONE,
            // Kept for the streams to come.
            Err(err::NOT_INIT) => err::NONE,
            Err(code) => code,
        }
    })
}

/// `iv_avt_p2p_get_send_buf`.
#[unsafe(no_mangle)]
pub extern "C" fn iv_avt_p2p_get_send_buf(handle: *mut c_void) -> usize {
    guard(0, || {
        let Ok(id) = stream_id(handle) else { return 0 };
        match with_host(move |host| host.buffered(id)) {
            Ok(Ok(buffered)) => usize::try_from(buffered).unwrap_or(usize::MAX),
            Ok(Err(e)) => {
                set_call_error(e.to_string());
                0
            }
            Err(_) => 0,
        }
    })
}

/// `iv_avt_p2p_get_send_status`.
#[unsafe(no_mangle)]
pub extern "C" fn iv_avt_p2p_get_send_status(handle: *mut c_void) -> IvP2pSendStats {
    guard(IvP2pSendStats::default(), || {
        let Ok(id) = stream_id(handle) else { return IvP2pSendStats::default() };
        match with_host(move |host| host.send_status(id)) {
            Ok(Ok(status)) => IvP2pSendStats {
                inst_net_rate: u32::try_from(status.path_rate()).unwrap_or(u32::MAX),
                ave_sent_rate: u32::try_from(status.rate_bytes_per_second).unwrap_or(u32::MAX),
                sum_sent_acked: status.bytes_sent,
                link_mode: match status.path {
                    Some(PathKind::Relayed) => 2,
                    Some(_) => 1,
                    None => 0,
                },
            },
            Ok(Err(e)) => {
                set_call_error(e.to_string());
                IvP2pSendStats::default()
            }
            Err(_) => IvP2pSendStats::default(),
        }
    })
}

/// The `iv_err_e` of a command failure.
fn command_code(failure: &CommandFailure) -> c_int {
    match failure {
        CommandFailure::UnknownConnection => err::PEER_NOT_FOUND,
        CommandFailure::Timeout => err::TIMEOUT,
        CommandFailure::Closed => err::CLOSED,
        CommandFailure::TooLarge(_) => err::TOO_LARGE,
        CommandFailure::TooMany(_) => err::BUSY,
        CommandFailure::Refused(_) => err::REFUSED,
    }
}

/// `iv_avt_p2p_send_command`.
///
/// # Safety
/// `peer` is NULL or NUL-terminated; `msg` is NULL or `msg_len` readable
/// bytes; `recv_len` is NULL or points to the size of `recv_buf`, which is
/// NULL or that many writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn iv_avt_p2p_send_command(
    peer: *const c_char,
    msg: *const c_char,
    msg_len: usize,
    recv_buf: *mut u8,
    recv_len: *mut usize,
    timeout_ms: u32,
) -> c_int {
    guard(err::INTERNAL, || {
        if with_current_host(|_| ()).is_some() {
            return fail(
                err::IN_CALLBACK,
                "iv_avt_p2p_send_command called from inside a callback, which would wait for itself",
            );
        }
        // SAFETY: the caller's contract.
        let peer = match unsafe { text_arg(peer, "peer") } {
            Ok(peer) => peer,
            Err(e) => return fail(err::INVALID_PARAM, format!("iv_avt_p2p_send_command: {e}")),
        };
        if msg.is_null() || recv_len.is_null() {
            return fail(err::INVALID_PARAM, "iv_avt_p2p_send_command: msg and recv_len must not be NULL");
        }
        // SAFETY: `msg_len` readable bytes at `msg`, by the contract.
        let message = Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), msg_len) });
        // SAFETY: readable, by the contract.
        let room = unsafe { *recv_len };
        if recv_buf.is_null() && room > 0 {
            return fail(err::INVALID_PARAM, "iv_avt_p2p_send_command: recv_buf is NULL but *recv_len is not 0");
        }
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let sent = with_host(move |host| {
            let conn = host.latest_connection_of(&peer).ok_or(CommandFailure::UnknownConnection)?;
            host.send_command_awaiting(conn, message, timeout)
        });
        let waiting = match sent {
            Ok(Ok(waiting)) => waiting,
            Ok(Err(failure)) => return fail(command_code(&failure), format!("iv_avt_p2p_send_command: {failure}")),
            Err(code) => return code,
        };
        let reply = match waiting.blocking_recv() {
            Ok(Ok(reply)) => reply,
            Ok(Err(failure)) => return fail(command_code(&failure), format!("iv_avt_p2p_send_command: {failure}")),
            Err(_) => return fail(err::CLOSED, "iv_avt_p2p_send_command: the stream service stopped"),
        };
        // SAFETY: writable, by the contract.
        unsafe { *recv_len = reply.len() };
        if reply.len() > room {
            return fail(
                err::BUFFER_TOO_SMALL,
                format!("iv_avt_p2p_send_command: the reply of {} bytes exceeds the buffer of {room}", reply.len()),
            );
        }
        if !reply.is_empty() {
            // SAFETY: `room` >= reply.len() writable bytes at recv_buf.
            unsafe { std::ptr::copy_nonoverlapping(reply.as_ptr(), recv_buf, reply.len()) };
        }
        err::NONE
    })
}
