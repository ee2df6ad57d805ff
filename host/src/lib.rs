//! # Weft host
//!
//! Receives events, stores them durably, runs them through sandboxed
//! WebAssembly plugins and delivers them, at least once.
//! See `docs/ARCHITECTURE.md` for the data flow.

pub mod admin;
pub mod app;
pub mod breaker;
pub mod cli;
pub mod clients;
pub mod config;
pub mod demo;
pub mod event;
pub mod harness;
pub mod headroom;
pub mod ingress;
pub mod metrics;
pub mod pauses;
pub mod queue;
pub mod rate;
pub mod retry;
pub mod router;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod shares;
pub mod timers;
pub mod tls;
pub mod toolchain;

/// The allocator the `weft` binaries install (`#[global_allocator]`):
/// mimalloc, which measurably beats glibc malloc on the event path (see
/// docs/BENCHMARKS.md).
pub use mimalloc::MiMalloc as Allocator;
