//! A read adapter that holds buffered bytes only while there are some, and counts what a
//! connection holds of messages not yet complete against a budget shared by every connection.
//!
//! tungstenite allocates its read buffer when a connection opens and keeps it for the connection's
//! life: 4 KiB for every idle connection. Underneath a small tungstenite buffer, this adapter reads
//! from the socket in large chunks (one syscall for many frames, as a big buffer would), hands
//! them on in whatever pieces tungstenite asks for, and frees its own buffer as soon as it is
//! drained. An idle connection then holds almost nothing for reading.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much one socket read may take.
const CHUNK: usize = 8 * 1024;

/// Bytes of a message not yet complete that a connection holds without counting against the
/// [`InboundBudget`]: small messages never touch it.
pub(crate) const FREE_UNFINISHED: usize = 16 * 1024;

/// The bytes every connection of a service together may hold of messages not yet complete
/// (beyond [`FREE_UNFINISHED`] each): a large message arriving slowly parks its bytes here.
#[derive(Debug)]
pub(crate) struct InboundBudget {
    limit: usize,
    used: AtomicUsize,
}

impl InboundBudget {
    pub(crate) fn new(limit: usize) -> Self {
        InboundBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    fn reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes counted now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The read that would have taken the service over its [`InboundBudget`]; the read loop closes
/// the connection (1013).
#[derive(Debug)]
pub(crate) struct BudgetExhausted;

impl fmt::Display for BudgetExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("inbound budget for unfinished messages exhausted")
    }
}

impl std::error::Error for BudgetExhausted {}

impl BudgetExhausted {
    /// Whether a transport error is this one.
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref()
            .is_some_and(|inner| inner.is::<BudgetExhausted>())
    }
}

/// What the read loop and the adapter share about one connection's reads: when the last bytes
/// came off the socket (frames are stamped `received_at` from it, one clock read per socket read
/// instead of one per frame), and how many bytes of a message not yet complete it holds.
#[derive(Debug)]
pub(crate) struct ReadState {
    /// Nanoseconds since the Unix epoch; 0 before the first read.
    nanos: AtomicU64,
    /// Bytes read since the last complete message.
    unfinished: AtomicUsize,
    /// Of those, what counts against the budget now.
    charged: AtomicUsize,
    budget: Option<Arc<InboundBudget>>,
}

impl ReadState {
    /// The state of one connection, counting against `budget` if there is one.
    pub(crate) fn new(budget: Option<Arc<InboundBudget>>) -> Self {
        ReadState {
            nanos: AtomicU64::new(0),
            unfinished: AtomicUsize::new(0),
            charged: AtomicUsize::new(0),
            budget,
        }
    }

    fn stamp(&self) {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.nanos.store(nanos, Ordering::Relaxed);
    }

    /// The time of the last socket read (now, if there was none).
    pub(crate) fn last_read(&self) -> SystemTime {
        match self.nanos.load(Ordering::Relaxed) {
            0 => SystemTime::now(),
            nanos => UNIX_EPOCH + Duration::from_nanos(nanos),
        }
    }

    /// `n` more bytes came off the socket. `Err` when what the connection would then hold of an
    /// unfinished message takes the service over its budget.
    fn read(&self, n: usize) -> io::Result<()> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        // Only this connection's task reads or completes messages: no race between the steps.
        let unfinished = self.unfinished.fetch_add(n, Ordering::Relaxed) + n;
        let excess = unfinished.saturating_sub(FREE_UNFINISHED);
        let charged = self.charged.load(Ordering::Relaxed);
        if excess > charged {
            if !budget.reserve(excess - charged) {
                return Err(io::Error::other(BudgetExhausted));
            }
            self.charged.store(excess, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A control frame of `n` bytes (on the wire) was handled: its bytes no longer count. Not a
    /// reset: a control frame may arrive between the fragments of a message still unfinished.
    pub(crate) fn control_done(&self, n: usize) {
        let Some(budget) = &self.budget else {
            return;
        };
        let unfinished = self.unfinished.load(Ordering::Relaxed).saturating_sub(n);
        self.unfinished.store(unfinished, Ordering::Relaxed);
        let excess = unfinished.saturating_sub(FREE_UNFINISHED);
        let charged = self.charged.load(Ordering::Relaxed);
        if charged > excess {
            self.charged.store(excess, Ordering::Relaxed);
            budget.release(charged - excess);
        }
    }

    /// A message (text, binary or close) was completed: the bytes read for it no longer count.
    pub(crate) fn message_done(&self) {
        self.unfinished.store(0, Ordering::Relaxed);
        let charged = self.charged.swap(0, Ordering::Relaxed);
        if let Some(budget) = self.budget.as_ref().filter(|_| charged > 0) {
            budget.release(charged);
        }
    }
}

impl Drop for ReadState {
    fn drop(&mut self) {
        self.message_done();
    }
}

pub(crate) struct LazyRead<S> {
    inner: S,
    /// Kept here, in the socket: the read loop reaches it through [`LazyRead::state`].
    state: ReadState,
    /// Bytes read from the socket and not yet handed on; empty (unallocated) when drained.
    pending: Vec<u8>,
    pos: usize,
}

impl<S> LazyRead<S> {
    /// The adapter over `inner`, with `read_ahead` (bytes already read from it: the upgrade
    /// request's head and whatever followed) handed on first.
    pub(crate) fn new(inner: S, state: ReadState, read_ahead: Vec<u8>) -> Self {
        LazyRead {
            inner,
            state,
            pending: read_ahead,
            pos: 0,
        }
    }

    /// What the read loop and this adapter share about the connection's reads.
    pub(crate) fn state(&self) -> &ReadState {
        &self.state
    }

    /// Copies pending bytes into `buf`; frees the buffer once drained.
    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.pending.len() - self.pos).min(buf.remaining());
        buf.put_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.pending.len() {
            self.pending = Vec::new();
            self.pos = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LazyRead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.pending.len() {
            this.drain_into(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= CHUNK {
            // The caller's buffer is big enough: read straight into it.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let n = buf.filled().len() - before;
            if n > 0 {
                this.state.stamp();
                this.state.read(n)?;
            }
            return Poll::Ready(Ok(()));
        }
        // Not zeroed: `ReadBuf` tracks which bytes the read filled, and only those are read back.
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut chunk_buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf))?;
        let filled = chunk_buf.filled();
        if !filled.is_empty() {
            this.state.stamp();
            this.state.read(filled.len())?;
        }
        let n = filled.len().min(buf.remaining());
        buf.put_slice(&filled[..n]);
        if n < filled.len() {
            this.pending = filled[n..].to_vec();
            this.pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LazyRead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn unfinished_messages_count_against_the_budget_past_the_free_part() {
        let budget = Arc::new(InboundBudget::new(100_000));
        let a = ReadState::new(Some(budget.clone()));
        let b = ReadState::new(Some(budget.clone()));
        a.read(FREE_UNFINISHED).unwrap();
        assert_eq!(budget.used(), 0);
        a.read(60_000).unwrap();
        assert_eq!(budget.used(), 60_000);
        b.read(FREE_UNFINISHED + 40_000).unwrap();
        assert_eq!(budget.used(), 100_000);
        let refused = b.read(1).unwrap_err();
        assert!(BudgetExhausted::is(&refused), "{refused}");
        a.message_done();
        assert_eq!(budget.used(), 40_000);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn control_frames_leave_the_count_but_do_not_reset_it() {
        let budget = Arc::new(InboundBudget::new(100_000));
        let state = ReadState::new(Some(budget.clone()));
        // Pongs alone, far more than the free part: nothing is held, nothing is charged.
        for _ in 0..10_000 {
            state.read(131).unwrap();
            state.control_done(131);
        }
        assert_eq!(budget.used(), 0);
        // Fragments of a message with pings between them: the fragments still count.
        for _ in 0..10 {
            state.read(10_000).unwrap();
            state.read(131).unwrap();
            state.control_done(131);
        }
        assert_eq!(budget.used(), 100_000 - FREE_UNFINISHED);
        state.message_done();
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn hands_on_every_byte_in_small_reads_and_frees_the_buffer() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = LazyRead::new(&data[..], ReadState::new(None), b"ahead".to_vec());
        let mut out = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&small[..n]);
        }
        assert_eq!(&out[..5], b"ahead");
        assert_eq!(out[5..], data);
        assert_eq!(reader.pending.capacity(), 0);
        // Stamped by the socket reads (here: the slice), not by the small reads served from memory.
        let stamped = reader.state().last_read();
        assert!(stamped <= SystemTime::now());
        assert!(SystemTime::now().duration_since(stamped).unwrap() < Duration::from_secs(60));
    }
}
