//! A read adapter that holds buffered bytes only while there are some.
//!
//! tungstenite allocates its read buffer when a connection opens and keeps it for the connection's
//! life: 4 KiB for every idle connection. Underneath a small tungstenite buffer, this adapter reads
//! from the socket in large chunks (one syscall for many frames, as a big buffer would), hands
//! them on in whatever pieces tungstenite asks for, and frees its own buffer as soon as it is
//! drained. An idle connection then holds almost nothing for reading.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much one socket read may take.
const CHUNK: usize = 8 * 1024;

/// When the last bytes came off the socket: frames are stamped `received_at` from it, one clock
/// read per socket read instead of one per frame.
#[derive(Debug, Default)]
pub(crate) struct ReadClock {
    /// Nanoseconds since the Unix epoch; 0 before the first read.
    nanos: AtomicU64,
}

impl ReadClock {
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
}

pub(crate) struct LazyRead<S> {
    inner: S,
    clock: Arc<ReadClock>,
    /// Bytes read from the socket and not yet handed on; empty (unallocated) when drained.
    pending: Vec<u8>,
    pos: usize,
}

impl<S> LazyRead<S> {
    pub(crate) fn new(inner: S, clock: Arc<ReadClock>) -> Self {
        LazyRead {
            inner,
            clock,
            pending: Vec::new(),
            pos: 0,
        }
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
            if buf.filled().len() > before {
                this.clock.stamp();
            }
            return Poll::Ready(Ok(()));
        }
        // Not zeroed: `ReadBuf` tracks which bytes the read filled, and only those are read back.
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut chunk_buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf))?;
        let filled = chunk_buf.filled();
        if !filled.is_empty() {
            this.clock.stamp();
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
    async fn hands_on_every_byte_in_small_reads_and_frees_the_buffer() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let clock = Arc::new(ReadClock::default());
        let mut reader = LazyRead::new(&data[..], clock.clone());
        let mut out = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&small[..n]);
        }
        assert_eq!(out, data);
        assert_eq!(reader.pending.capacity(), 0);
        // Stamped by the socket reads (here: the slice), not by the small reads served from memory.
        let stamped = clock.last_read();
        assert!(stamped <= SystemTime::now());
        assert!(SystemTime::now().duration_since(stamped).unwrap() < Duration::from_secs(60));
    }
}
