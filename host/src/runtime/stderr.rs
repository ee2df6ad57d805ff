//! A plugin's stderr as the host keeps it: the last few KiB of the current
//! call, quoted when the call fails (a Rust panic message lands there).
//!
//! Why it exists: wasmtime-wasi's `MemoryOutputPipe` has a fixed capacity.
//! Once it is full, a write traps and the stream reports itself closed, so a
//! guest that writes more than that fails its call (Rust's `eprintln!`
//! panics), a reused instance fails every call after its first few KiB, and
//! the pipe keeps the *first* bytes, not the panic message at the end.
//! [`StderrTail`] never refuses a write, keeps the *last* bytes, and is
//! emptied at the start of every call.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes a guest may write per `write` call (the stream's permit); what is
/// kept is bounded by the capacity, not by this.
const PERMIT: usize = 64 * 1024;

/// The last `capacity` bytes written (see the module docs). Clones share the
/// buffer.
#[derive(Clone)]
pub struct StderrTail {
    capacity: usize,
    buffer: Arc<Mutex<VecDeque<u8>>>,
}

impl StderrTail {
    /// An empty tail keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> StderrTail {
        StderrTail {
            capacity,
            buffer: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets what was written (a new call begins).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// What is kept, oldest byte first.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().iter().copied().collect()
    }

    fn push(&self, bytes: &[u8]) {
        let mut buffer = self.lock();
        let bytes = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let over = (buffer.len() + bytes.len()).saturating_sub(self.capacity);
        buffer.drain(..over);
        buffer.extend(bytes);
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_and_never_refuses_a_write() {
        let mut tail = StderrTail::new(8);
        for chunk in [&b"abc"[..], b"defgh", b"ij"] {
            tail.write(Bytes::copy_from_slice(chunk)).unwrap();
            assert_eq!(tail.check_write().unwrap(), PERMIT);
        }
        assert_eq!(tail.contents(), b"cdefghij");
        // One write larger than the capacity keeps its own end.
        tail.write(Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!(tail.contents(), b"23456789");
        tail.clear();
        assert!(tail.contents().is_empty());
        tail.write(Bytes::from_static(b"x")).unwrap();
        assert_eq!(tail.contents(), b"x");
    }
}
