//! The boundary: no panic crosses into C, and the last error of a call that
//! concerned no connection is kept per thread for `pr_errno_mgs(NULL)`.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    /// The last error of a call on this thread that concerned no connection.
    static CALL_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
    /// The text `pr_errno_mgs` last returned on this thread.
    static RETURNED: RefCell<CString> = RefCell::new(CString::default());
}

/// Runs `body`, turning a panic into `fallback` and its message into the
/// thread's call error.
pub(crate) fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_call_error(format!("internal error in fogconnect: {what}"));
            fallback
        }
    }
}

/// Records the error of a call that concerned no connection.
pub(crate) fn set_call_error(message: impl Into<String>) {
    let message = message.into();
    tracing::debug!("{message}");
    CALL_ERROR.with(|e| *e.borrow_mut() = message);
}

/// The thread's last call error.
pub(crate) fn call_error() -> String {
    CALL_ERROR.with(|e| e.borrow().clone())
}

/// Keeps `text` for the caller until this thread's next `pr_errno_mgs` and
/// returns it as a C string (interior NUL bytes are replaced).
pub(crate) fn hand_out(text: &str) -> *const c_char {
    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
    RETURNED.with(|r| {
        *r.borrow_mut() = text;
        r.borrow().as_ptr()
    })
}

/// Text from a C string argument.
///
/// # Safety
/// `text` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn text_arg(text: *const c_char, what: &str) -> Result<String, String> {
    if text.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str().map(str::to_owned).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// Optional text from a C string argument (NULL or empty: `None`).
///
/// # Safety
/// As [`text_arg`].
pub(crate) unsafe fn optional_text_arg(text: *const c_char, what: &str) -> Result<Option<String>, String> {
    if text.is_null() {
        return Ok(None);
    }
    // SAFETY: as text_arg.
    let text = unsafe { text_arg(text, what) }?;
    Ok(Some(text).filter(|t| !t.is_empty()))
}
