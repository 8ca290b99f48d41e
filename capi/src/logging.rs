//! The library's log: to standard error at the level `FOGCONNECT_LOG`
//! says (default warn; a level, or `target=level` pairs separated by
//! commas, e.g. `warn,fogconnect::node=debug`), or as a device's `p2p_init_params` asks (another
//! level; a file, capped in size, instead of standard error). An
//! application that installed its own `tracing` subscriber keeps it (the
//! device's settings then do not apply).

use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, Once, OnceLock};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// A log file and its cap.
struct LogFile {
    path: PathBuf,
    file: File,
    written: u64,
    /// 0: no cap.
    cap: u64,
}

impl LogFile {
    /// At the cap, the file moves to `<path>.1` and a new one begins.
    fn rotate_for(&mut self, len: usize) {
        if self.cap == 0 || self.written + len as u64 <= self.cap || self.written == 0 {
            return;
        }
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let reopened = std::fs::rename(&self.path, &old)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&self.path));
        if let Ok(file) = reopened {
            self.file = file;
            self.written = 0;
        }
    }
}

static FILE: Mutex<Option<LogFile>> = Mutex::new(None);
static LEVEL: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// Where each log line goes: the file when there is one, else standard
/// error.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = FILE.lock().unwrap_or_else(|p| p.into_inner());
        match file.as_mut() {
            Some(log) => {
                log.rotate_for(buf.len());
                let written = log.file.write(buf)?;
                log.written += written as u64;
                Ok(written)
            }
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match FILE.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(log) => log.file.flush(),
            None => std::io::stderr().flush(),
        }
    }
}

/// Installs the library's subscriber (once per process).
pub(crate) fn init() {
    static LOGGING: Once = Once::new();
    LOGGING.call_once(|| {
        let filter = std::env::var("FOGCONNECT_LOG")
            .ok()
            .and_then(|value| value.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(tracing::Level::WARN));
        let (filter, level) = reload::Layer::new(filter);
        let lines = tracing_subscriber::fmt::layer().with_writer(|| Sink);
        if tracing_subscriber::registry().with(filter).with(lines).try_init().is_ok() {
            let _ = LEVEL.set(level);
        }
    });
}

/// Applies a device's logging settings: `level` 0 keeps the level, 1
/// error .. 5 trace; `path` logs to that file instead of standard error,
/// capped at `cap` bytes (0: no cap).
///
/// # Errors
/// A level out of range, a file that cannot be opened.
pub(crate) fn configure(level: c_int, path: Option<String>, cap: usize) -> Result<(), String> {
    init();
    let level = match level {
        0 => None,
        1 => Some(tracing::Level::ERROR),
        2 => Some(tracing::Level::WARN),
        3 => Some(tracing::Level::INFO),
        4 => Some(tracing::Level::DEBUG),
        5 => Some(tracing::Level::TRACE),
        other => return Err(format!("p2p_init_params.log_level {other} is not 0..5")),
    };
    if let Some(path) = path {
        let path = PathBuf::from(path);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("p2p_init_params.log_file_path {}: {e}", path.display()))?;
        let written = file.metadata().map_or(0, |m| m.len());
        *FILE.lock().unwrap_or_else(|p| p.into_inner()) = Some(LogFile { path, file, written, cap: cap as u64 });
    }
    if let (Some(level), Some(handle)) = (level, LEVEL.get()) {
        let filter = Targets::new().with_default(level);
        handle.reload(filter).map_err(|e| format!("cannot change the log level: {e}"))?;
    }
    Ok(())
}
