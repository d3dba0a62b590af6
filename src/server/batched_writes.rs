//! A connection's writes batched across the tasks that feed it: each write first waits one
//! turn of the scheduler, so that the frames other tasks queue meanwhile go out with it.
//!
//! hyper runs each HTTP/2 stream as a task of its own, and h2 writes a connection's queued
//! frames from the connection's task. When one event wakes 10,000 watch streams, each stream
//! task queues its DATA frame and wakes the connection task, which tokio runs next (its LIFO
//! slot): a system call per frame, ~10,000 sends of ~200 bytes for one event, each through the
//! kernel's loopback TCP path, and the connection task polled as often. Returning `Pending`
//! once before a write, having woken the task (tokio puts a task that woke itself at the back
//! of its run queue), lets the stream tasks already woken queue their frames first; the write
//! then carries them all, up to h2's 16 KiB buffer: 8× fewer sends, the server's CPU for the
//! fan-out halved (BENCHMARKS.md, watch). A write waits for the tasks that were ready before
//! it; on an idle server, for nothing.
//!
//! h2 sends a DATA frame of 256 bytes or more by a vectored write of its own when the transport
//! has them, one write per frame whatever the batching; this transport says it has none, so
//! that h2 copies frames under 1 KiB into its buffer (`CHAIN_THRESHOLD` in h2's
//! `framed_write.rs`); bigger ones cost a second write.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, whose every write first yields once to the scheduler.
pub struct BatchedWrites<IO> {
    inner: IO,
    /// This write has yielded once already: it goes through now.
    yielded: bool,
}

impl<IO> BatchedWrites<IO> {
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            yielded: false,
        }
    }

    /// Ready once the task has been round the scheduler's queue since the last write.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for BatchedWrites<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_turn(cx));
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if written.is_ready() {
            self.yielded = false;
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::Wake,
    };

    use super::*;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn each_write_first_yields_once_having_woken_its_task_then_goes_through() {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = BatchedWrites::new(Vec::<u8>::new());

        for (round, bytes) in [&b"first"[..], &b"second"[..]].into_iter().enumerate() {
            let before = io.inner.len();
            // The first try: nothing written, the task woken to come back after the others.
            assert!(Pin::new(&mut io).poll_write(&mut cx, bytes).is_pending());
            assert_eq!(io.inner.len(), before);
            assert_eq!(wakes.0.load(Ordering::Relaxed), round + 1);
            // The next: written, without another wake.
            match Pin::new(&mut io).poll_write(&mut cx, bytes) {
                Poll::Ready(Ok(n)) => assert_eq!(n, bytes.len()),
                other => panic!("the second try should write: {other:?}"),
            }
            assert_eq!(wakes.0.load(Ordering::Relaxed), round + 1);
        }
        assert_eq!(io.inner, b"firstsecond");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
    }

    #[test]
    fn says_it_has_no_vectored_writes_so_that_h2_copies_small_frames_into_one_buffer() {
        let io = BatchedWrites::new(Vec::<u8>::new());
        assert!(!io.is_write_vectored());
    }
}
