//! The client's one task: connect, run a session (reader, writer, heartbeat), back off,
//! reconnect.

use super::error::ClientError;
use super::sealing::SessionSeal;
use super::shared::{Reply, Shared, Socket};
use super::{CLOSE_GRACE, State, now_ms};
use crate::wire::client_codec::heartbeat_frame;
use futures_util::{Sink, SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

/// Marks the client closed however the task ends (returned, or dropped with its runtime).
struct FinishOnDrop(Arc<Shared>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The client's one task: connect, run the connection, back off, reconnect.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut first: Option<oneshot::Sender<Result<(), ClientError>>>,
) {
    let _finish = FinishOnDrop(shared.clone());
    let mut stop = shared.stop.subscribe();
    let reconnect = shared.config.reconnect.clone();
    let mut retries: u32 = 0;
    let mut opened_before = false;
    loop {
        let attempt = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            attempt = shared.connect_once() => attempt,
        };
        match attempt {
            Ok(socket) => {
                retries = 0;
                let end = session(&shared, socket, opened_before, &mut first, &mut stop).await;
                opened_before = true;
                shared.connection_lost();
                if end == End::Stopped {
                    return;
                }
            }
            Err(e) => {
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                    return;
                }
                tracing::debug!("ws-kit client: connection attempt failed: {e}");
            }
        }
        if reconnect.max_attempts.is_some_and(|max| retries >= max) {
            return;
        }
        shared.set_state(State::Reconnecting);
        let delay = reconnect.delay(retries);
        retries = retries.saturating_add(1);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Transport error, end of stream, or the heartbeat timeout.
    Dropped,
    /// The server sent a close frame.
    ClosedByServer,
    /// `close()` or the last owner's drop.
    Stopped,
}

/// One open connection: reader, writer and heartbeat until it drops or the client stops.
async fn session(
    shared: &Arc<Shared>,
    socket: Socket,
    reconnected: bool,
    first: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let (mut sink, mut stream) = socket.split();
    // Clear until the authentication reply brings the server's key (docs/protocol.md 7b). The
    // reader sets the key, the writer seals with it; both below, on this task.
    let seal = SessionSeal::new(shared.config.sealing.as_ref(), &shared.sealed);
    shared.opened(reconnected);
    if let Some(first) = first.take() {
        let _ = first.send(Ok(()));
    }
    let heartbeat = shared.config.heartbeat;
    let (interval, silence) = heartbeat.unwrap_or((Duration::from_secs(3600), Duration::MAX));
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let far = Duration::from_secs(86_400 * 365);
    let dead = tokio::time::sleep(silence.min(far));
    tokio::pin!(dead);

    let end = {
        let writer = write_loop(shared, &seal, &mut sink);
        tokio::pin!(writer);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break End::Stopped,
                result = &mut writer => {
                    if let Err(e) = result {
                        tracing::debug!("ws-kit client: write failed: {e}");
                    }
                    break End::Dropped;
                }
                frame = stream.next() => {
                    if heartbeat.is_some() {
                        dead.as_mut().reset(Instant::now() + silence);
                    }
                    match frame {
                        Some(Ok(WsMessage::Text(text))) => receive(shared, &seal, text.as_str()),
                        Some(Ok(WsMessage::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                            Ok(text) => receive(shared, &seal, text),
                            Err(_) => tracing::warn!("ws-kit client: ignoring a binary frame that is not UTF-8"),
                        },
                        Some(Ok(WsMessage::Close(_))) => break End::ClosedByServer,
                        Some(Err(_)) | None => break End::Dropped,
                        Some(Ok(_)) => {} // ping, pong: liveness only
                    }
                }
                _ = tick.tick(), if heartbeat.is_some() => shared.push_control(heartbeat_frame(now_ms())),
                () = &mut dead, if heartbeat.is_some() => {
                    tracing::debug!("ws-kit client: no frame within the heartbeat timeout; reconnecting");
                    break End::Dropped;
                }
            }
        }
    };

    if end == End::ClosedByServer {
        // tungstenite queued the close reply when it read the server's close frame: send it, so
        // the server need not wait for it.
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    }
    if end == End::Stopped {
        shared.set_state(State::Closing);
        let batch = shared.take_batch();
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            for text in batch.frames {
                sink.feed(WsMessage::text(seal.outbound(text))).await?;
            }
            sink.send(WsMessage::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await?;
            while let Some(Ok(frame)) = stream.next().await {
                if matches!(frame, WsMessage::Close(_)) {
                    break;
                }
            }
            Ok::<(), tungstenite::Error>(())
        })
        .await;
    }
    end
}

/// One frame from the server: opened when the session is sealed (dropped when it must be), then
/// routed.
fn receive(shared: &Shared, seal: &SessionSeal<'_>, text: &str) {
    match seal.inbound(text) {
        Ok(text) => shared.dispatch(&text),
        Err(rejected) => tracing::warn!("ws-kit client: ignoring a frame: {rejected}"),
    }
}

/// The writer: takes whatever is queued, writes it as one batch (each frame sealed once the
/// session is), flushes, and starts the timeouts of the requests in it.
async fn write_loop<S>(
    shared: &Shared,
    seal: &SessionSeal<'_>,
    sink: &mut S,
) -> Result<(), tungstenite::Error>
where
    S: Sink<WsMessage, Error = tungstenite::Error> + Unpin,
{
    loop {
        let batch = shared.take_batch();
        if batch.frames.is_empty() {
            shared.writer.notified().await;
            continue;
        }
        for text in batch.frames {
            // Sealed frame by frame: the key may come while a batch is being written; from then
            // on nothing goes in clear.
            sink.feed(WsMessage::text(seal.outbound(text))).await?;
        }
        sink.flush().await?;
        let now = Instant::now();
        for tx in batch.written {
            let _ = tx.send(Reply::Written(now));
        }
    }
}
