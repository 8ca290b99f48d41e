//! The device's callbacks as a native stream service: each C callback
//! called from [`fogconnect::stream::StreamService`], with the handles C
//! chose mapped to the library's stream handles, C buffers freed exactly
//! once, and the callback's [`StreamHost`] at hand for the functions C
//! calls from inside a callback.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use fogconnect::NetworkEvent;
use fogconnect::stream::{Pull, StreamHost, StreamService, StreamServiceEvent, WatermarkEvent};

use crate::guard::guard;

/// `iv_cm_memory_s`, field for field.
#[repr(C)]
pub struct IvCmMemory {
    /// The bytes.
    pub buf: *mut u8,
    /// Their count; `usize::MAX` from the get callback is an error.
    pub size: usize,
    /// Called once with `buf` and `size` when the library is done.
    pub buf_free_fn: Option<unsafe extern "C" fn(*mut u8, usize)>,
}

/// `p2p_handle_send_init_cb` and `p2p_handle_recv_init_cb`.
pub type InitCallback = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_void;
/// `p2p_handle_send_get_cb`.
pub type GetCallback = unsafe extern "C" fn(*mut c_void) -> IvCmMemory;
/// `p2p_handle_send_stop_cb`.
pub type StopCallback = unsafe extern "C" fn(*mut c_void) -> c_int;
/// `p2p_handle_event_notify_cb`.
pub type EventCallback = unsafe extern "C" fn(c_int, *mut c_void);
/// `p2p_handle_recv_voice_cb`.
pub type VoiceCallback = unsafe extern "C" fn(*mut c_void, *mut u8, usize);
/// `p2p_handle_command_cb`.
pub type CommandCallback = unsafe extern "C" fn(*const c_char, usize, *const c_char) -> IvCmMemory;

/// `iv_avt_event_e` values.
pub mod event {
    use std::ffi::c_int;
    /// An application's connection is up.
    pub const PEER_READY: c_int = 0;
    /// A path moved.
    pub const PEER_ADDR_CHANGED: c_int = 3;
    /// Below the low mark again.
    pub const WATERMARK_LOW: c_int = 4;
    /// Above the warn mark.
    pub const WATERMARK_WARN: c_int = 5;
    /// Above the high mark.
    pub const WATERMARK_HIGH: c_int = 6;
    /// The service serves.
    pub const LOCAL_NET_READY: c_int = 7;
    /// An application's connection ended.
    pub const LINK_DISCONNECT: c_int = 8;
    /// An application stopped a stream.
    pub const CLI_SEND_CLOSE: c_int = 9;
}

/// The device's callbacks, copied from its `iv_p2p_parm_s`.
#[derive(Clone, Copy)]
pub struct Callbacks {
    pub(crate) send_init: InitCallback,
    pub(crate) send_get: GetCallback,
    pub(crate) send_stop: StopCallback,
    pub(crate) event: Option<EventCallback>,
    pub(crate) recv_init: Option<InitCallback>,
    pub(crate) recv_voice: Option<VoiceCallback>,
    pub(crate) command: Option<CommandCallback>,
}

/// The C handles of the live streams, by the library's stream handle and
/// back (send streams only: those are what C passes to the functions).
#[derive(Default)]
pub struct Handles {
    next: u64,
    send: HashMap<u64, usize>,
    send_ids: HashMap<usize, u64>,
    talk: HashMap<u64, usize>,
}

impl Handles {
    /// The library's handle of C's send stream handle.
    pub fn send_id(&self, c_handle: usize) -> Option<u64> {
        self.send_ids.get(&c_handle).copied()
    }

    /// Every live send stream's library handle.
    pub fn send_streams(&self) -> Vec<u64> {
        self.send.keys().copied().collect()
    }
}

/// The handle maps, shared with the exported functions.
pub type SharedHandles = Arc<Mutex<Handles>>;

pub(crate) fn lock(handles: &SharedHandles) -> MutexGuard<'_, Handles> {
    handles.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// The host of the callback running on this thread, while C runs.
    static CURRENT_HOST: Cell<*mut c_void> = const { Cell::new(std::ptr::null_mut()) };
}

/// Runs `f` with the host of the callback running on this thread, if one
/// is (a C function called from inside a callback).
pub fn with_current_host<R>(f: impl FnOnce(&mut StreamHost<'_>) -> R) -> Option<R> {
    let host = CURRENT_HOST.with(Cell::get);
    if host.is_null() {
        return None;
    }
    // SAFETY: set by `call_c` from a `&mut StreamHost` that outlives the C
    // call this function is reached from (on this same thread); the
    // callback's own reference is not used while C runs.
    Some(f(unsafe { &mut *host.cast::<StreamHost<'_>>() }))
}

/// Calls into C with `host` reachable from the functions C calls back.
pub fn call_c<R>(host: &mut StreamHost<'_>, f: impl FnOnce() -> R) -> R {
    struct Restore(*mut c_void);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT_HOST.with(|c| c.set(self.0));
        }
    }
    let previous = CURRENT_HOST.with(|c| c.replace((host as *mut StreamHost<'_>).cast()));
    let _restore = Restore(previous);
    f()
}

/// A buffer C handed over: freed (once) when dropped.
struct CBuffer {
    memory: IvCmMemory,
}

// SAFETY: the device hands the buffer over until buf_free_fn; nothing else
// touches it meanwhile, from any thread.
unsafe impl Send for CBuffer {}

impl AsRef<[u8]> for CBuffer {
    fn as_ref(&self) -> &[u8] {
        if self.memory.buf.is_null() || self.memory.size == 0 || self.memory.size == usize::MAX {
            return &[];
        }
        // SAFETY: the device's contract: `size` readable bytes at `buf`
        // until buf_free_fn.
        unsafe { std::slice::from_raw_parts(self.memory.buf, self.memory.size) }
    }
}

impl Drop for CBuffer {
    fn drop(&mut self) {
        if let Some(free) = self.memory.buf_free_fn
            && !self.memory.buf.is_null()
        {
            let (buf, size) = (self.memory.buf, self.memory.size);
            // SAFETY: the device's function for its own buffer, once.
            guard((), || unsafe { free(buf, size) });
        }
    }
}

/// Text for C: `None` when it holds a NUL byte.
fn c_text(text: &str) -> Option<CString> {
    CString::new(text).ok()
}

/// The device's callbacks serving streams.
pub struct AvtService {
    callbacks: Callbacks,
    handles: SharedHandles,
    /// Talk-back data is copied here: C gets a writable buffer.
    scratch: Vec<u8>,
}

impl AvtService {
    pub fn new(callbacks: Callbacks, handles: SharedHandles) -> Self {
        Self { callbacks, handles, scratch: Vec::new() }
    }

    fn event(&self, host: &mut StreamHost<'_>, code: c_int, handle: *mut c_void) {
        if let Some(callback) = self.callbacks.event {
            // SAFETY: the device's callback, with its own handle or NULL.
            call_c(host, || unsafe { callback(code, handle) });
        }
    }

    /// `init` for `conn`: the C handle, or the refusal.
    fn init(
        host: &mut StreamHost<'_>,
        callback: InitCallback,
        conn: u64,
        params: &str,
        what: &str,
    ) -> Result<usize, String> {
        let peer = host.peer_id(conn).unwrap_or_default().to_string();
        let (Some(params), Some(peer)) = (c_text(params), c_text(&peer)) else {
            return Err("the parameters hold a NUL byte".into());
        };
        // SAFETY: the device's callback with two NUL-terminated strings
        // that live through the call.
        let handle = call_c(host, || unsafe { callback(params.as_ptr(), peer.as_ptr()) });
        if handle.is_null() { Err(format!("the device refused the {what}")) } else { Ok(handle as usize) }
    }
}

/// The event callback code of a watermark event.
fn mark_code(event: WatermarkEvent) -> c_int {
    match event {
        WatermarkEvent::Low => event::WATERMARK_LOW,
        WatermarkEvent::Warn => event::WATERMARK_WARN,
        WatermarkEvent::High => event::WATERMARK_HIGH,
    }
}

impl StreamService for AvtService {
    fn send_init(&mut self, host: &mut StreamHost<'_>, conn: u64, params: &str) -> Result<u64, String> {
        let c_handle = Self::init(host, self.callbacks.send_init, conn, params, "stream")?;
        let mut handles = lock(&self.handles);
        if handles.send_ids.contains_key(&c_handle) {
            return Err(format!("device error: stream handle {c_handle:#x} is already in use"));
        }
        handles.next += 1;
        let id = handles.next;
        handles.send.insert(id, c_handle);
        handles.send_ids.insert(c_handle, id);
        drop(handles);
        let (low, warn, high) = super::marks();
        // Checked when set: the marks are in order.
        let _ = host.set_watermarks(id, low, warn, high);
        Ok(id)
    }

    fn send_get(&mut self, host: &mut StreamHost<'_>, handle: u64) -> Pull {
        let Some(c_handle) = lock(&self.handles).send.get(&handle).copied() else { return Pull::NOTHING };
        let get = self.callbacks.send_get;
        // SAFETY: the device's callback with its own handle.
        let memory = call_c(host, || unsafe { get(c_handle as *mut c_void) });
        let (null, size) = (memory.buf.is_null(), memory.size);
        let buffer = CBuffer { memory };
        match (null, size) {
            (_, usize::MAX) => Pull::Failed("the device failed the stream".into()),
            (_, 0) => Pull::NOTHING,
            (true, size) => Pull::Failed(format!("the device handed over NULL with a size of {size}")),
            (false, _) => Pull::Data(Bytes::from_owner(buffer)),
        }
    }

    fn send_stop(&mut self, host: &mut StreamHost<'_>, handle: u64) {
        let c_handle = {
            let mut handles = lock(&self.handles);
            let Some(c_handle) = handles.send.remove(&handle) else { return };
            handles.send_ids.remove(&c_handle);
            c_handle
        };
        let stop = self.callbacks.send_stop;
        // SAFETY: the device's callback with its own handle, once.
        call_c(host, || unsafe { stop(c_handle as *mut c_void) });
    }

    fn on_watermark(&mut self, host: &mut StreamHost<'_>, handle: u64, event: WatermarkEvent) {
        let Some(c_handle) = lock(&self.handles).send.get(&handle).copied() else { return };
        self.event(host, mark_code(event), c_handle as *mut c_void);
    }

    fn recv_init(&mut self, host: &mut StreamHost<'_>, conn: u64, params: &str) -> Result<u64, String> {
        let (Some(init), Some(_)) = (self.callbacks.recv_init, self.callbacks.recv_voice) else {
            return Err("this device takes no talk-back".into());
        };
        let c_handle = Self::init(host, init, conn, params, "talk-back")?;
        let mut handles = lock(&self.handles);
        if handles.talk.values().any(|&h| h == c_handle) {
            return Err(format!("device error: talk-back handle {c_handle:#x} is already in use"));
        }
        handles.next += 1;
        let id = handles.next;
        handles.talk.insert(id, c_handle);
        Ok(id)
    }

    fn recv_data(&mut self, host: &mut StreamHost<'_>, handle: u64, data: &[u8]) {
        let Some(voice) = self.callbacks.recv_voice else { return };
        let c_handle = {
            let mut handles = lock(&self.handles);
            let found = handles.talk.get(&handle).copied();
            if data.is_empty() {
                handles.talk.remove(&handle);
            }
            match found {
                Some(c_handle) => c_handle,
                None => return,
            }
        };
        if data.is_empty() {
            // SAFETY: the device's callback: its handle, the end marker.
            call_c(host, || unsafe { voice(c_handle as *mut c_void, std::ptr::null_mut(), 0) });
            return;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(data);
        let (buf, len) = (self.scratch.as_mut_ptr(), self.scratch.len());
        // SAFETY: the device's callback with `len` bytes at `buf`, ours,
        // alive through the call.
        call_c(host, || unsafe { voice(c_handle as *mut c_void, buf, len) });
    }

    fn on_command(&mut self, host: &mut StreamHost<'_>, conn: u64, message: &[u8]) -> Result<Vec<u8>, String> {
        let Some(command) = self.callbacks.command else {
            return Err("this device takes no commands".into());
        };
        let Some(peer) = c_text(host.peer_id(conn).unwrap_or_default()) else {
            return Err("the peer id holds a NUL byte".into());
        };
        // The command with a NUL after it, for devices that read it as a
        // string; cmd_len excludes it.
        let mut text = Vec::with_capacity(message.len() + 1);
        text.extend_from_slice(message);
        text.push(0);
        let len = message.len();
        // SAFETY: the device's callback with `len` bytes (NUL-terminated)
        // and a NUL-terminated peer id, alive through the call.
        let memory = call_c(host, || unsafe { command(text.as_ptr().cast(), len, peer.as_ptr()) });
        let reply = CBuffer { memory };
        let data = reply.as_ref().to_vec();
        drop(reply);
        if data.is_empty() {
            let reason = "the device closed the command channel";
            host.close(conn, reason);
            return Err(reason.into());
        }
        Ok(data)
    }

    fn on_event(&mut self, host: &mut StreamHost<'_>, event: StreamServiceEvent<'_>) {
        let code = match event {
            StreamServiceEvent::Connected(_) => event::PEER_READY,
            StreamServiceEvent::Network(_, NetworkEvent::PathChanged { .. }) => event::PEER_ADDR_CHANGED,
            StreamServiceEvent::Network(..) => return,
            StreamServiceEvent::StreamStopped(_) => event::CLI_SEND_CLOSE,
            StreamServiceEvent::Disconnected(_) => event::LINK_DISCONNECT,
        };
        self.event(host, code, std::ptr::null_mut());
    }
}

/// Raises `LOCAL_NET_READY` (on the service's thread).
pub fn local_net_ready(callbacks: Callbacks, host: &mut StreamHost<'_>) {
    if let Some(callback) = callbacks.event {
        // SAFETY: the device's callback, NULL handle.
        call_c(host, || unsafe { callback(event::LOCAL_NET_READY, std::ptr::null_mut()) });
    }
}
