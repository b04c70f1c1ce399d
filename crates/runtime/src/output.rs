//! Guest stdout and stderr, captured per call and turned into structured
//! log records attributed to the function and the request (T07). Output
//! past the cap is counted and dropped, never an error: a guest cannot flood
//! the log, nor trap itself by writing too much.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tracing::{info, warn};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::data::Redactions;

/// Bytes kept from one stream of one call.
const CAPTURE_BYTES: usize = 64 * 1024;
/// Log records made from one stream of one call.
const MAX_LINES: usize = 100;
/// Characters kept of one line.
const MAX_LINE_CHARS: usize = 2048;

#[derive(Clone)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<Captured>>,
    /// Secret values read by the call, replaced before anything is logged (T15).
    redactions: Redactions,
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: u64,
}

impl GuestOutput {
    pub fn new(redactions: Redactions) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured::default())),
            redactions,
        }
    }

    /// Log what the guest wrote, one record per line, and forget it.
    pub fn flush_to_log(&self, function: &str, correlation_id: &str, stream: &'static str) {
        let captured = match self.inner.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        let raw = String::from_utf8_lossy(&captured.bytes);
        // Cut at the cap, the text may end inside a secret (T15).
        let text = if captured.dropped > 0 {
            self.redactions.apply_cut(&raw)
        } else {
            self.redactions.apply(&raw)
        };
        let mut lines = text.lines();
        for line in lines.by_ref().take(MAX_LINES) {
            let line: String = line.chars().take(MAX_LINE_CHARS).collect();
            info!(target: "bulkhead::guest", function, correlation_id, stream, line = %line, "guest output");
        }
        let skipped_lines = lines.count();
        if skipped_lines > 0 || captured.dropped > 0 {
            warn!(
                target: "bulkhead::guest",
                function,
                correlation_id,
                stream,
                skipped_lines,
                dropped_bytes = captured.dropped,
                "guest output over the cap was dropped"
            );
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut captured = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let room = CAPTURE_BYTES.saturating_sub(captured.bytes.len());
        let kept = buf.len().min(room);
        captured.bytes.extend_from_slice(&buf[..kept]);
        captured.dropped += (buf.len() - kept) as u64;
        // Report everything as written: dropping is our business, not the guest's.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
