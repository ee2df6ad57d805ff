//! Weft's end-to-end tests, one module per concern, linked into one test
//! binary.
//!
//! Every test here runs real parts: HTTP over loopback, sled stores in
//! temporary directories, components built from `plugins/` and
//! `tests/plugins/`, and the `weft` binary as a separate process where a
//! test needs to SIGKILL it. They share one binary on purpose: each test
//! binary links all of wasmtime, so nine of them cost nine links and
//! several gigabytes of disk for no gain in isolation.

mod cache;
mod cli;
mod contract;
mod crash;
mod delivery;
mod pipeline;
mod plugin_tools;
mod reuse;
mod sandbox;
mod tls;
