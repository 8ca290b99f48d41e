//! Handles: the `void *` values C holds are numbers looked up in tables,
//! never pointers to Rust objects. Numbers are never reused (a stale handle
//! cannot reach a newer object), contexts and connections draw from one
//! sequence (one kind passed as the other is simply unknown), and the
//! sequence starts high and odd-stepped so that small integers, NULL and
//! typical pointers are not handles either.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use crate::connection::ConnEntry;
use crate::context::Context;

/// Handle numbers: start and step (odd, so never pointer-aligned).
const FIRST_HANDLE: usize = 0x00F0_6001;
const HANDLE_STEP: usize = 2;

static NEXT: AtomicUsize = AtomicUsize::new(FIRST_HANDLE);

/// A fresh handle number.
pub(crate) fn next_handle() -> usize {
    NEXT.fetch_add(HANDLE_STEP, Ordering::Relaxed)
}

/// A handle as C sees it.
pub(crate) fn to_ptr(handle: usize) -> *mut c_void {
    handle as *mut c_void
}

/// One kind of object by handle.
pub(crate) struct Table<T> {
    entries: LazyLock<RwLock<HashMap<usize, Arc<T>>>>,
}

impl<T> Table<T> {
    const fn new() -> Self {
        Self { entries: LazyLock::new(|| RwLock::new(HashMap::new())) }
    }

    /// The object of `handle`, if it is one of this table's and still
    /// valid.
    pub(crate) fn get(&self, handle: *mut c_void) -> Option<Arc<T>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(&(handle as usize)).cloned()
    }

    pub(crate) fn insert(&self, handle: usize, value: Arc<T>) {
        self.entries.write().unwrap_or_else(|p| p.into_inner()).insert(handle, value);
    }

    /// The one object of the table; `None` when there are none or
    /// several.
    pub(crate) fn only(&self) -> Option<Arc<T>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        if entries.len() == 1 { entries.values().next().cloned() } else { None }
    }

    pub(crate) fn remove(&self, handle: usize) -> Option<Arc<T>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(&handle)
    }
}

/// Every live context.
pub(crate) static CONTEXTS: Table<Context> = Table::new();

/// Every live connection, of every context.
pub(crate) static CONNECTIONS: Table<ConnEntry> = Table::new();
