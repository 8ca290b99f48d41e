//! State handoff across a live swap (see `wit/handoff`).
//!
//! A plugin that keeps state worth more than a fresh start (counters,
//! sessions, per-connection data) implements [`Handoff`] and exports it with
//! `export_service!(Type, handoff)` (or `export_stream!(Type, handoff)` for
//! a stream plugin). When an operator swaps the plugin for a new build, the
//! node calls [`Handoff::snapshot`] on the instance serving and
//! [`Handoff::restore`] on the new one before the new one sees any
//! connection. Connection and stream handles stay the same across a swap,
//! so state keyed by handle carries over as it is; a stream plugin's
//! streams go on without a break.
//!
//! ```ignore
//! use fogconnect_guest::handoff::Handoff;
//! use fogconnect_guest::{export_service, Connection, Service};
//!
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl Service for Counter {
//!     fn on_recv(&mut self, conn: Connection, _data: Vec<u8>) {
//!         self.0 += 1;
//!         let _ = conn.send(self.0.to_string().as_bytes());
//!     }
//! }
//!
//! impl Handoff for Counter {
//!     fn snapshot(&mut self) -> Vec<u8> {
//!         self.0.to_le_bytes().to_vec()
//!     }
//!     fn restore(&mut self, state: Vec<u8>) -> Result<(), String> {
//!         let bytes: [u8; 8] = state.try_into().map_err(|_| "not a counter state".to_string())?;
//!         self.0 = u64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! export_service!(Counter, handoff);
//! ```

/// Generated bindings of the `fogconnect:handoff/handoff` world. Plugins do
/// not need them directly; they are public for the
/// [`export_service!`](crate::export_service) macro.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "handoff",
        path: "../wit/handoff",
        pub_export_macro: true,
        export_macro_name: "__export_handoff_world",
        default_bindings_module: "fogconnect_guest::handoff::bindings",
    });
}

/// A plugin whose state moves to its next generation on a live swap.
pub trait Handoff: Default + 'static {
    /// Everything the next generation needs to carry on, in a format of the
    /// plugin's own (tag it with a version so a later build can tell).
    fn snapshot(&mut self) -> Vec<u8>;

    /// Takes over what [`Handoff::snapshot`] of the previous generation
    /// returned. Called on a fresh instance (built with [`Default`]) before
    /// any `on_connect`.
    ///
    /// # Errors
    /// A reason when the state cannot be taken over (e.g. an unknown
    /// format): the node then rejects the swap and the previous generation
    /// keeps serving.
    fn restore(&mut self, state: Vec<u8>) -> Result<(), String>;
}

/// Exports the [`Handoff`] implementation of the plugin held in the
/// thread-local `$instance` from the export type `$export`. Used by
/// [`export_service!`](crate::export_service) and the other export macros.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_handoff {
    ($export:ident, $instance:ident) => {
        impl $crate::handoff::bindings::exports::fogconnect::handoff::state::Guest for $export {
            fn snapshot() -> ::std::vec::Vec<u8> {
                $instance.with(|p| $crate::handoff::Handoff::snapshot(&mut *p.borrow_mut()))
            }
            fn restore(state: ::std::vec::Vec<u8>) -> ::core::result::Result<(), ::std::string::String> {
                $instance.with(|p| $crate::handoff::Handoff::restore(&mut *p.borrow_mut(), state))
            }
        }

        $crate::handoff::bindings::__export_handoff_world!($export with_types_in $crate::handoff::bindings);
    };
}
