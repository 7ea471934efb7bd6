//! The in-memory transport of a fake connection ([`MemorySocket`]) and what it captures, and the
//! harness's append-only logs.

use crate::event::CloseInfo;
use crate::wire::client_codec;
use futures_util::{Sink, Stream};
use serde_json::Value;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsTransportError, Message as WsMessage};

/// The server's end of a fake connection: reads what the test sends, captures what the server
/// writes. Pings are answered and a close frame is echoed, as a WebSocket client does.
pub(super) struct MemorySocket {
    pub(super) inbound: mpsc::UnboundedReceiver<WsMessage>,
    /// Answers (pongs, the close echo) go back on the inbound channel; weak, so the stream ends
    /// when the test drops its connection.
    pub(super) echo: mpsc::WeakUnboundedSender<WsMessage>,
    pub(super) shared: Arc<ConnShared>,
    /// tungstenite's `max_message_size` on a real socket.
    pub(super) max_frame_bytes: usize,
}

/// No `LazyRead` underneath: each frame reads the clock.
impl crate::outbound::Socket for MemorySocket {}

impl Stream for MemorySocket {
    type Item = Result<WsMessage, WsTransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let max = self.max_frame_bytes;
        self.inbound.poll_recv(cx).map(|frame| {
            frame.map(|frame| match &frame {
                WsMessage::Text(_) | WsMessage::Binary(_) if frame.len() > max => {
                    Err(WsTransportError::Capacity(CapacityError::MessageTooLong {
                        size: frame.len(),
                        max_size: max,
                    }))
                }
                _ => Ok(frame),
            })
        })
    }
}

impl Sink<WsMessage> for MemorySocket {
    type Error = Infallible;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: WsMessage) -> Result<(), Infallible> {
        let answer = match frame {
            WsMessage::Text(text) => {
                let text = text.as_str().to_string();
                let value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let correlation_id = client_codec::parse_server_frame(&text)
                    .ok()
                    .and_then(|f| f.correlation_id);
                self.shared.update(|s| {
                    s.frames.push(CapturedFrame {
                        text,
                        value,
                        correlation_id,
                        read: false,
                    })
                });
                None
            }
            WsMessage::Ping(payload) => {
                self.shared.update(|s| s.pings += 1);
                self.shared
                    .answer_pings
                    .load(Ordering::SeqCst)
                    .then_some(WsMessage::Pong(payload))
            }
            WsMessage::Close(frame) => {
                let info = CloseInfo::from_frame(frame.as_ref());
                self.shared.update(|s| {
                    s.close.get_or_insert(info);
                });
                Some(WsMessage::Close(frame))
            }
            _ => None,
        };
        if let Some(answer) = answer.and_then(|a| self.echo.upgrade().map(|tx| (tx, a))) {
            let (tx, answer) = answer;
            let _ = tx.send(answer);
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
}

/// One connection's captures, shared by the transport and the test.
pub(super) struct ConnShared {
    pub(super) state: Mutex<ConnState>,
    pub(super) notify: Notify,
    pub(super) answer_pings: AtomicBool,
}

#[derive(Default)]
pub(super) struct ConnState {
    pub(super) frames: Vec<CapturedFrame>,
    /// The server's close frame.
    pub(super) close: Option<CloseInfo>,
    pub(super) pings: usize,
    /// The server's connection task returned.
    pub(super) ended: bool,
}

#[derive(Clone)]
pub(super) struct CapturedFrame {
    pub(super) text: String,
    pub(super) value: Value,
    pub(super) correlation_id: Option<String>,
    pub(super) read: bool,
}

impl ConnShared {
    pub(super) fn lock(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut ConnState)) {
        f(&mut self.lock());
        self.notify.notify_waiters();
    }

    /// Waits until `check` returns something (it runs under the lock, at once and after every
    /// change).
    pub(super) async fn wait<T>(&self, mut check: impl FnMut(&mut ConnState) -> Option<T>) -> T {
        loop {
            let changed = self.notify.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = check(&mut self.lock()) {
                return found;
            }
            changed.await;
        }
    }
}

/// Marks the connection ended however its task finishes (returns, panics, is aborted).
pub(super) struct EndGuard(pub(super) Arc<ConnShared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.update(|s| s.ended = true);
    }
}

/// An append-only log with a read cursor for `next`.
pub(super) struct Log<T> {
    pub(super) state: Mutex<(Vec<T>, usize)>,
    pub(super) notify: Notify,
}

impl<T: Clone> Log<T> {
    pub(super) fn new() -> Self {
        Log {
            state: Mutex::new((Vec::new(), 0)),
            notify: Notify::new(),
        }
    }

    pub(super) fn push(&self, item: T) {
        lock(&self.state).0.push(item);
        self.notify.notify_waiters();
    }

    pub(super) fn snapshot(&self) -> Vec<T> {
        lock(&self.state).0.clone()
    }

    pub(super) async fn next(&self, timeout: Duration) -> Option<T> {
        let next = async {
            loop {
                let changed = self.notify.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let mut state = lock(&self.state);
                    let (items, cursor) = &mut *state;
                    if let Some(item) = items.get(*cursor).cloned() {
                        *cursor += 1;
                        return item;
                    }
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, next).await.ok()
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
