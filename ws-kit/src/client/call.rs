//! [`Call`]: a request in flight — its reply, its progress updates, its timeout, its abort.

use super::error::{ClientError, RequestError, ServerError};
use super::shared::{Reply, Shared};
use crate::message::Message;
use crate::wire::client_codec::{self, abort_frame};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Sleep;

/// A request in flight: `.await` it for the reply; read progress with [`Call::progress`]; cancel
/// with [`Call::abort`] or by dropping it (both send `$ws:abort` once the request was written).
#[must_use = "a request is cancelled (`$ws:abort`) when its `Call` is dropped"]
pub struct Call<T> {
    shared: Arc<Shared>,
    cid: Arc<str>,
    rx: mpsc::UnboundedReceiver<Reply>,
    timeout: Duration,
    /// Runs from the moment the frame was written.
    timer: Option<Pin<Box<Sleep>>>,
    /// The result, once known and not yet returned.
    outcome: Option<Result<T, RequestError>>,
    /// No longer registered: answered, failed, timed out or cancelled.
    done: bool,
    /// `$ws:abort` was sent.
    aborted: bool,
}

// `T` is only ever moved out of `outcome`, never pinned.
impl<T> Unpin for Call<T> {}

impl<T> fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("correlation_id", &self.cid)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

enum Step<T> {
    Progress(T),
    Done(Result<T, RequestError>),
}

impl<T> Call<T> {
    /// The request's `meta.correlationId`.
    pub fn correlation_id(&self) -> &str {
        &self.cid
    }

    /// Asks the server to cancel the request. If it was written, `$ws:abort` goes out and the call
    /// then ends with the server's answer (normally [`ErrorCode::Cancelled`](crate::ErrorCode::Cancelled)); if it was still
    /// queued, it is removed and the call ends with [`RequestError::Aborted`].
    pub fn abort(&mut self) {
        if self.done || self.aborted {
            return;
        }
        self.aborted = true;
        let mut pending = self.shared.pending();
        match pending.get(&*self.cid).map(|p| p.in_socket) {
            Some(true) => {
                drop(pending);
                self.shared.push_control(abort_frame(&self.cid));
            }
            Some(false) => {
                pending.remove(&*self.cid);
                drop(pending);
                self.shared.unqueue(&self.cid);
                self.done = true;
                self.outcome = Some(Err(RequestError::Aborted));
            }
            // The terminal (or a failure) is already on its way.
            None => {}
        }
    }

    pub(super) fn new(
        shared: Arc<Shared>,
        cid: Arc<str>,
        rx: mpsc::UnboundedReceiver<Reply>,
        timeout: Duration,
    ) -> Self {
        Call {
            shared,
            cid,
            rx,
            timeout,
            timer: None,
            outcome: None,
            done: false,
            aborted: false,
        }
    }

    pub(super) fn failed(mut self, err: RequestError) -> Self {
        self.done = true;
        self.outcome = Some(Err(err));
        self
    }

    /// Unregisters the request; tells the server if it was written.
    fn cancel(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let removed = self.shared.pending().remove(&*self.cid);
        match removed {
            Some(p) if !p.in_socket => self.shared.unqueue(&self.cid),
            // Written: tell the server, unless `abort()` already did.
            Some(_) if !self.aborted => self.shared.push_control(abort_frame(&self.cid)),
            _ => {}
        }
    }
}

impl<T: Message> Call<T> {
    /// The next progress update (`$ws:rpc-progress`, payload of the response type), or `None` once
    /// the request has ended (then await the call for its result). Progress does not extend the
    /// timeout. Updates nobody reads are discarded when the call is awaited.
    pub async fn progress(&mut self) -> Option<T> {
        if self.done {
            return None;
        }
        std::future::poll_fn(|cx| match self.poll_step(cx) {
            Poll::Ready(Step::Progress(update)) => Poll::Ready(Some(update)),
            Poll::Ready(Step::Done(result)) => {
                self.outcome = Some(result);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step<T>> {
        if let Some(outcome) = self.outcome.take() {
            return Poll::Ready(Step::Done(outcome));
        }
        if self.done {
            // Polled again after it returned.
            return Poll::Ready(Step::Done(Err(RequestError::Client(ClientError::Closed))));
        }
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Reply::Written(at))) => {
                    self.timer = Some(Box::pin(tokio::time::sleep_until(at + self.timeout)));
                }
                Poll::Ready(Some(Reply::Progress(text))) => {
                    let update = client_codec::parse_server_frame(&text)
                        .and_then(|frame| client_codec::decode_frame::<T>(&frame));
                    return Poll::Ready(match update {
                        Ok(update) => Step::Progress(update),
                        Err(e) => {
                            self.cancel();
                            Step::Done(Err(RequestError::Decode(format!("progress: {e}"))))
                        }
                    });
                }
                Poll::Ready(Some(Reply::Terminal(text))) => {
                    self.done = true;
                    return Poll::Ready(Step::Done(terminal::<T>(&text)));
                }
                Poll::Ready(Some(Reply::Failed(e))) => {
                    self.done = true;
                    return Poll::Ready(Step::Done(Err(e)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Step::Done(Err(RequestError::ConnectionClosed)));
                }
                Poll::Pending => break,
            }
        }
        if let Some(timer) = self.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            self.cancel();
            return Poll::Ready(Step::Done(Err(RequestError::Timeout)));
        }
        Poll::Pending
    }
}

impl<T: Message> Future for Call<T> {
    type Output = Result<T, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match ready!(this.poll_step(cx)) {
                Step::Progress(_) => continue,
                Step::Done(result) => return Poll::Ready(result),
            }
        }
    }
}

impl<T> Drop for Call<T> {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A request's terminal frame: the reply, or the server's error.
fn terminal<T: Message>(text: &str) -> Result<T, RequestError> {
    let frame = client_codec::parse_server_frame(text).map_err(RequestError::Decode)?;
    match &*frame.ty {
        "RPC_ERROR" | "ERROR" => Err(match client_codec::decode_error(&frame) {
            Ok(e) => RequestError::Server(ServerError::from(e)),
            Err(e) => RequestError::Decode(e),
        }),
        ty if ty == T::TYPE => {
            client_codec::decode_frame::<T>(&frame).map_err(RequestError::Decode)
        }
        other => Err(RequestError::Decode(format!(
            "expected a `{}` reply, got `{other}`",
            T::TYPE
        ))),
    }
}

/// Whole milliseconds, rounded up, at least 1 (`meta.timeoutMs` must be positive).
pub(super) fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_ms_rounds_up_and_is_positive() {
        assert_eq!(millis_ceil(Duration::from_millis(250)), 250);
        assert_eq!(millis_ceil(Duration::from_micros(250_001)), 251);
        assert_eq!(millis_ceil(Duration::ZERO), 1);
    }
}
