//! [`TestConnection`]: a fake client connection, its requests ([`PendingRequest`],
//! [`RpcOutcome`]) and raw frames ([`IntoRawFrame`]).

use super::SILENCE;
use super::socket::{CapturedFrame, ConnShared};
use crate::connection::Connection;
use crate::error::WsError;
use crate::event::CloseInfo;
use crate::message::{Message, RpcMessage};
use crate::pubsub::ClientId;
use crate::wire::client_codec::{self, ClientMeta};
use serde_json::{Map, Value};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

/// A fake client connection: sends frames as a client would and reads what the server sent.
///
/// Frames from the server are captured in arrival order; the `recv` methods and requests read
/// them, each frame once. Dropping it is the client going away (the server sees 1006).
pub struct TestConnection<D = ()> {
    pub(super) tx: mpsc::UnboundedSender<WsMessage>,
    pub(super) shared: Arc<ConnShared>,
    pub(super) connection: Connection<D>,
    pub(super) timeout: Duration,
    pub(super) next_id: AtomicU64,
}

impl<D> fmt::Debug for TestConnection<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestConnection")
            .field("client_id", &self.connection.inner.id)
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> TestConnection<D> {
    /// The connection's id, as handlers see it (`ctx.client_id()`).
    pub fn client_id(&self) -> ClientId {
        self.connection.client_id()
    }

    /// The server side of this connection: its data (`data()`), topics, user id.
    pub fn connection(&self) -> &Connection<D> {
        &self.connection
    }

    /// Sends a message as a client does: `{"type","payload","meta"}` (`payload` only when the
    /// message has fields, `meta` only when it has some).
    pub fn send<M: Message>(&self, msg: &M) {
        self.send_with(msg, Value::Null);
    }

    /// Sends a message with envelope meta: `correlationId`, `timeoutMs`, `idempotencyKey`, or
    /// anything else (`null` or `{}` for none).
    ///
    /// # Panics
    ///
    /// If `meta` is not an object (or `null`), or its `correlationId` is not a string: send such
    /// frames with [`TestConnection::send_raw`].
    pub fn send_with<M: Message>(&self, msg: &M, meta: Value) {
        let frame = encode_request(msg, meta);
        self.send_frame(WsMessage::text(frame));
    }

    /// Sends a text frame as is: a `&str`/`String` verbatim, or a `serde_json::Value` encoded.
    pub fn send_raw(&self, frame: impl IntoRawFrame) {
        self.send_frame(WsMessage::text(frame.into_raw_frame()));
    }

    /// Sends any WebSocket frame (binary, ping, close...). Frames sent after the connection ended
    /// are dropped.
    pub fn send_frame(&self, frame: WsMessage) {
        let _ = self.tx.send(frame);
    }

    /// Sends a request with a fresh correlation id and waits for its terminal frame: the reply,
    /// or the `RPC_ERROR` as `Err`. Progress frames are read and dropped.
    ///
    /// # Panics
    ///
    /// If no terminal comes within the timeout, the connection closes first, or a frame for this
    /// request is neither progress, the response type nor an error.
    pub async fn request<M: RpcMessage>(&self, req: &M) -> Result<M::Response, WsError> {
        self.start_request(req, Value::Null).outcome().await.result
    }

    /// [`TestConnection::request`] with envelope meta (`timeoutMs`, say; a `correlationId` given
    /// here replaces the generated one).
    pub async fn request_with<M: RpcMessage>(
        &self,
        req: &M,
        meta: Value,
    ) -> Result<M::Response, WsError> {
        self.start_request(req, meta).outcome().await.result
    }

    /// [`TestConnection::request`], keeping the progress frames that came before the terminal.
    pub async fn request_with_progress<M: RpcMessage>(&self, req: &M) -> RpcOutcome<M::Response> {
        self.start_request(req, Value::Null).outcome().await
    }

    /// Sends a request and returns at once, to abort it or to interleave other frames; wait for
    /// its end with [`PendingRequest::outcome`]. The correlation id is generated unless `meta`
    /// has one.
    pub fn start_request<M: RpcMessage>(
        &self,
        req: &M,
        meta: Value,
    ) -> PendingRequest<M::Response> {
        let mut meta = match meta {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            other => panic!("meta must be a JSON object, not {other}"),
        };
        let correlation_id = match meta.get("correlationId") {
            Some(Value::String(id)) => id.clone(),
            Some(other) => panic!("correlationId must be a string, not {other}"),
            None => {
                let id = format!("test-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                meta.insert("correlationId".into(), Value::String(id.clone()));
                id
            }
        };
        self.send_with(req, Value::Object(meta));
        PendingRequest {
            correlation_id,
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            timeout: self.timeout,
            response: PhantomData,
        }
    }

    /// Sends `$ws:abort` for a request.
    pub fn abort(&self, correlation_id: &str) {
        self.send_raw(client_codec::abort_frame(correlation_id));
    }

    /// The next unread frame, parsed.
    ///
    /// # Panics
    ///
    /// If none comes within the timeout, or the connection closes first.
    pub async fn recv_json(&self) -> Value {
        self.next_frame("a frame").await.value
    }

    /// The next unread frame's text, byte for byte (to check key order, say).
    ///
    /// # Panics
    ///
    /// If none comes within the timeout, or the connection closes first.
    pub async fn recv_text(&self) -> String {
        self.next_frame("a frame").await.text
    }

    /// The next unread frame, decoded as message `M` (a `ctx.send`, a reply, a publication).
    ///
    /// # Panics
    ///
    /// If the next frame is of another type (the panic shows it), does not decode as `M`, or
    /// none comes within the timeout.
    pub async fn recv<M: Message>(&self) -> M {
        let frame = self.next_frame(M::TYPE).await;
        client_codec::decode_text::<M>(&frame.text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next unread frame, which must be an `ERROR` or `RPC_ERROR`, as a [`WsError`].
    ///
    /// # Panics
    ///
    /// If the next frame is something else, or none comes within the timeout.
    pub async fn recv_error(&self) -> WsError {
        let frame = self.next_frame("ERROR").await;
        let parsed =
            client_codec::parse_server_frame(&frame.text).unwrap_or_else(|e| panic!("{e}"));
        if parsed.ty != "ERROR" && parsed.ty != "RPC_ERROR" {
            panic!("expected an ERROR or RPC_ERROR frame, got: {}", frame.text);
        }
        client_codec::decode_error(&parsed).unwrap_or_else(|e| panic!("{e}: {}", frame.text))
    }

    /// Every frame the server sent so far, read or not, in order.
    pub fn frames(&self) -> Vec<Value> {
        self.shared
            .lock()
            .frames
            .iter()
            .map(|f| f.value.clone())
            .collect()
    }

    /// Asserts that nothing arrives within 100 ms (virtual time under a paused clock): no unread
    /// frame, no close.
    ///
    /// # Panics
    ///
    /// If a frame is unread or the server closed the connection.
    pub async fn expect_silence(&self) {
        self.expect_silence_for(SILENCE).await;
    }

    /// Asserts that nothing arrives within `duration`.
    ///
    /// # Panics
    ///
    /// If a frame is unread or the server closed the connection.
    pub async fn expect_silence_for(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
        let state = self.shared.lock();
        let unread: Vec<&str> = state
            .frames
            .iter()
            .filter(|f| !f.read)
            .map(|f| f.text.as_str())
            .collect();
        assert!(unread.is_empty(), "expected silence, got: {unread:#?}");
        assert!(
            state.close.is_none(),
            "expected silence, the server closed: {:?}",
            state.close
        );
    }

    /// Closes the connection from the client side with `code` and waits until the server is
    /// done with it (its `on_close` hooks have run and its subscriptions are gone).
    ///
    /// # Panics
    ///
    /// If the server is not done within the timeout.
    pub async fn close(&self, code: u16) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        self.send_frame(WsMessage::Close(Some(CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::default(),
        })));
        self.wait_ended().await;
    }

    /// Waits until the server closes the connection and is done with it (`on_close` ran), and
    /// returns its close frame (code and reason).
    ///
    /// # Panics
    ///
    /// If that does not happen within the timeout, or the connection ended without a close frame
    /// from the server.
    pub async fn closed(&self) -> CloseInfo {
        self.wait_ended().await;
        let state = self.shared.lock();
        match &state.close {
            Some(close) => close.clone(),
            None => panic!("the connection ended without a close frame from the server"),
        }
    }

    /// The server's close frame, if it sent one.
    pub fn close_frame(&self) -> Option<CloseInfo> {
        self.shared.lock().close.clone()
    }

    /// Whether the connection ended (the server's connection task returned).
    pub fn is_ended(&self) -> bool {
        self.shared.lock().ended
    }

    /// WebSocket pings the server sent so far (the heartbeat).
    pub fn pings(&self) -> usize {
        self.shared.lock().pings
    }

    /// Whether the fake client answers the server's pings with pongs, as browsers do (default
    /// true). A client that does not is closed with 4002 after the heartbeat timeout.
    pub fn answer_pings(&self, answer: bool) {
        self.shared.answer_pings.store(answer, Ordering::SeqCst);
    }

    async fn wait_ended(&self) {
        let ended = self.shared.wait(|s| s.ended.then_some(()));
        if tokio::time::timeout(self.timeout, ended).await.is_err() {
            panic!(
                "the connection did not end within {:?} (server close frame: {:?})",
                self.timeout,
                self.close_frame()
            );
        }
    }

    /// Takes the next unread frame; `what` names what the caller expected, for the panic.
    async fn next_frame(&self, what: &str) -> CapturedFrame {
        let next = self.shared.wait(|state| {
            if let Some(frame) = state.frames.iter_mut().find(|f| !f.read) {
                frame.read = true;
                return Some(Ok(frame.clone()));
            }
            state.ended.then(|| Err(state.close.clone()))
        });
        match tokio::time::timeout(self.timeout, next).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(close)) => panic!("waiting for {what}: the connection closed ({close:?})"),
            Err(_) => panic!(
                "waiting for {what}: nothing within {:?} (frames so far: {:#?})",
                self.timeout,
                self.frames()
            ),
        }
    }
}

/// Text a test sends with [`TestConnection::send_raw`]: a string verbatim, or a JSON value.
pub trait IntoRawFrame {
    /// The frame's text.
    fn into_raw_frame(self) -> String;
}

impl IntoRawFrame for &str {
    fn into_raw_frame(self) -> String {
        self.to_string()
    }
}

impl IntoRawFrame for String {
    fn into_raw_frame(self) -> String {
        self
    }
}

impl IntoRawFrame for Value {
    fn into_raw_frame(self) -> String {
        self.to_string()
    }
}

impl IntoRawFrame for &Value {
    fn into_raw_frame(self) -> String {
        self.to_string()
    }
}

/// A request sent with [`TestConnection::start_request`], whose terminal has not been read yet.
#[must_use = "a pending request does nothing unless its outcome is awaited"]
pub struct PendingRequest<R> {
    correlation_id: String,
    tx: mpsc::UnboundedSender<WsMessage>,
    shared: Arc<ConnShared>,
    timeout: Duration,
    response: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for PendingRequest<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingRequest")
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

impl<R: Message> PendingRequest<R> {
    /// The request's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Sends `$ws:abort` for this request.
    pub fn abort(&self) {
        let _ = self.tx.send(WsMessage::text(client_codec::abort_frame(
            &self.correlation_id,
        )));
    }

    /// Reads this request's frames — progress, then the terminal — and returns them. Other
    /// frames stay unread for the `recv` methods.
    ///
    /// # Panics
    ///
    /// If no terminal comes within the timeout, the connection closes first, or a frame for this
    /// request is neither progress, `R` nor an error.
    pub async fn outcome(self) -> RpcOutcome<R> {
        let cid = self.correlation_id.as_str();
        let mut progress = Vec::new();
        let read_all = async {
            loop {
                let next = self.shared.wait(|state| {
                    let frame = state
                        .frames
                        .iter_mut()
                        .find(|f| !f.read && f.correlation_id.as_deref() == Some(cid));
                    if let Some(frame) = frame {
                        frame.read = true;
                        return Some(Ok(frame.text.clone()));
                    }
                    state.ended.then(|| Err(state.close.clone()))
                });
                let text = match next.await {
                    Ok(text) => text,
                    Err(close) => panic!(
                        "request `{cid}` ({}): the connection closed before its terminal ({close:?})",
                        R::TYPE
                    ),
                };
                let frame =
                    client_codec::parse_server_frame(&text).unwrap_or_else(|e| panic!("{e}"));
                match &*frame.ty {
                    "$ws:rpc-progress" => match client_codec::decode_frame::<R>(&frame) {
                        Ok(update) => progress.push(update),
                        Err(e) => panic!("progress of `{cid}` is not a `{}`: {e}: {text}", R::TYPE),
                    },
                    "RPC_ERROR" | "ERROR" => {
                        break Err(client_codec::decode_error(&frame)
                            .unwrap_or_else(|e| panic!("{e}: {text}")));
                    }
                    ty if ty == R::TYPE => {
                        break Ok(client_codec::decode_frame::<R>(&frame).unwrap_or_else(|e| {
                            panic!("reply to `{cid}` is not a valid `{ty}`: {e}: {text}")
                        }));
                    }
                    _ => panic!(
                        "request `{cid}`: expected progress, `{}` or an error, got: {text}",
                        R::TYPE
                    ),
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, read_all).await {
            Ok(result) => result,
            Err(_) => panic!(
                "request `{cid}` ({}): no terminal within {:?}",
                R::TYPE,
                self.timeout
            ),
        };
        RpcOutcome {
            correlation_id: self.correlation_id,
            progress,
            result,
        }
    }
}

/// What a request got: its progress updates in order, then its terminal.
#[derive(Debug)]
#[non_exhaustive]
pub struct RpcOutcome<R> {
    /// The request's correlation id.
    pub correlation_id: String,
    /// The `$ws:rpc-progress` payloads, in order.
    pub progress: Vec<R>,
    /// The reply, or the `RPC_ERROR`.
    pub result: Result<R, WsError>,
}

/// Encodes a client frame with the client codec: `type`, `payload`, then `meta` when there is
/// some.
fn encode_request<M: Message>(msg: &M, meta: Value) -> String {
    let meta = match meta {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        other => panic!("meta must be a JSON object, not {other}"),
    };
    let correlation_id = match meta.get("correlationId") {
        None => None,
        Some(Value::String(id)) => Some(id.as_str()),
        Some(other) => panic!("correlationId must be a string, not {other}; use send_raw"),
    };
    let meta = ClientMeta {
        correlation_id,
        extra: Some(&meta),
        ..ClientMeta::default()
    };
    client_codec::encode_client_frame(msg, meta)
        .unwrap_or_else(|e| panic!("could not encode a `{}`: {e}", M::TYPE))
}
