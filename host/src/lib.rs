//! # Weft host
//!
//! Receives events, stores them durably, runs them through sandboxed
//! WebAssembly plugins and delivers them, at least once.
//! See `docs/ARCHITECTURE.md` for the data flow.

pub mod config;
pub mod event;
pub mod queue;
pub mod retry;
pub mod runtime;
