//! Guest stdout/stderr, captured in memory with a size cap.
//!
//! Unlike a pipe that reports "closed" when full (which makes Rust's `print!` panic in the
//! guest), output past the cap is accepted and dropped, and the number of dropped bytes is
//! kept so the ledger can say the log was truncated.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

#[derive(Default)]
struct Buffer {
    kept: Vec<u8>,
    dropped: u64,
}

/// A capped in-memory output stream; clones share one buffer.
#[derive(Clone)]
pub struct CappedOutput {
    cap: usize,
    buffer: Arc<Mutex<Buffer>>,
}

impl CappedOutput {
    pub fn new(cap: usize) -> CappedOutput {
        CappedOutput {
            cap,
            buffer: Arc::new(Mutex::new(Buffer::default())),
        }
    }

    /// What was kept (lossy UTF-8) and how many bytes were dropped past the cap.
    pub fn contents(&self) -> (String, u64) {
        let buffer = self.buffer.lock();
        (
            String::from_utf8_lossy(&buffer.kept).into_owned(),
            buffer.dropped,
        )
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut buffer = self.buffer.lock();
        let room = self.cap.saturating_sub(buffer.kept.len());
        let keep = room.min(buf.len());
        buffer.kept.extend_from_slice(&buf[..keep]);
        buffer.dropped += (buf.len() - keep) as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
