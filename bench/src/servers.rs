//! The servers under test, speaking the same frames (the third, WS-Kit on Bun, is
//! `bench/bun/server.ts`, run by `compare` under Bun, see [`Kind::Bun`]):
//! - `PING {text}` with `meta.correlationId` → `PONG {reply: "Got: <text>"}` with the id copied;
//! - `JOIN {topic}` (an RPC) → subscribes, then `JOINED {topic}`;
//! - `SAY {topic, text, sentUs, seq, from}` → `MSG {text, sentUs, seq, from}` to every subscriber
//!   of the topic, serialized once;
//! - on open, `WELCOME {message: "Connected"}`.

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use ws_kit::{Ctx, Message, Router, ServeOptions, Server, WsError, handler, routes};

/// Which server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The ws-kit server, written as a ws-kit user would.
    WsKit,
    /// The hand-written tokio-tungstenite + serde_json server.
    Baseline,
    /// The ws-kit router hosted on axum (`Service::axum_route`), for the idle-memory figure.
    WsKitAxum,
    /// WS-Kit 0.10 (TypeScript) on Bun: `bench/bun/server.ts`, not served by this binary;
    /// `compare` runs it with the Bun binary that `bench/bun`'s npm packages bring.
    Bun,
}

impl Kind {
    /// Parses `ws-kit` or `baseline`.
    pub(crate) fn parse(s: &str) -> Option<Kind> {
        match s {
            "ws-kit" | "wskit" => Some(Kind::WsKit),
            "baseline" => Some(Kind::Baseline),
            "ws-kit-axum" => Some(Kind::WsKitAxum),
            "ws-kit-bun" | "bun" => Some(Kind::Bun),
            _ => None,
        }
    }

    /// The name used on the command line and in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::WsKit => "ws-kit",
            Kind::Baseline => "baseline",
            Kind::WsKitAxum => "ws-kit-axum",
            Kind::Bun => "ws-kit-bun",
        }
    }
}

/// Binds `127.0.0.1:port` and returns the address and the serving future.
pub(crate) async fn bind(
    kind: Kind,
    port: u16,
) -> std::io::Result<(
    SocketAddr,
    std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
)> {
    match kind {
        Kind::WsKit => {
            // No connection limit of ws-kit's own: the baseline has none, and the idle run opens
            // as many sockets as the open-files limit allows (the default keeps a tenth back).
            let options = ServeOptions::new().port(port).max_connections(usize::MAX);
            let server = Server::bind(wskit_router(), options)
                .await
                .map_err(std::io::Error::other)?;
            let addr = server.local_addr();
            Ok((
                addr,
                Box::pin(async move {
                    let _ = server.run().await;
                }),
            ))
        }
        Kind::WsKitAxum => {
            let options = ServeOptions::new().max_connections(usize::MAX);
            let service = wskit_router()
                .into_service(options)
                .map_err(std::io::Error::other)?;
            let app = axum::Router::new().route("/", service.axum_route());
            let listener = TcpListener::bind(("127.0.0.1", port)).await?;
            let addr = listener.local_addr()?;
            Ok((
                addr,
                Box::pin(async move {
                    let make = app.into_make_service_with_connect_info::<SocketAddr>();
                    let _ = axum::serve(listener, make).await;
                }),
            ))
        }
        Kind::Baseline => {
            let listener = TcpListener::bind(("127.0.0.1", port)).await?;
            let addr = listener.local_addr()?;
            Ok((addr, Box::pin(baseline_serve(listener))))
        }
        Kind::Bun => Err(std::io::Error::other(format!(
            "ws-kit-bun runs under Bun: {} {} --port {port}",
            bun_binary().display(),
            bun_dir().join("server.ts").display()
        ))),
    }
}

/// `bench/bun`: the WS-Kit-on-Bun server and its npm packages, found from this crate's directory
/// at compile time, so the bench runs from any working directory.
pub(crate) fn bun_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bun")
}

/// The Bun binary that the npm package `bun` installs.
pub(crate) fn bun_binary() -> std::path::PathBuf {
    bun_dir().join("node_modules/.bin/bun")
}

// ---------------------------------------------------------------------------------------------
// ws-kit

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping {
    text: String,
}

#[derive(Message)]
struct Pong {
    reply: String,
}

#[derive(Message)]
#[rpc(response = Joined)]
struct Join {
    topic: String,
}

#[derive(Message)]
struct Joined {
    topic: String,
}

#[derive(Message)]
struct Say {
    topic: String,
    text: String,
    sent_us: u64,
    seq: u64,
    from: u32,
}

#[derive(Message)]
struct Msg {
    text: String,
    sent_us: u64,
    seq: u64,
    from: u32,
}

#[handler]
async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    Ok(Pong {
        reply: format!("Got: {}", ctx.payload.text),
    })
}

#[handler]
async fn join(ctx: Ctx<Join>) -> Result<Joined, WsError> {
    ctx.subscribe(&ctx.payload.topic).await?;
    Ok(Joined {
        topic: ctx.payload.topic.clone(),
    })
}

#[handler]
async fn say(ctx: Ctx<Say>) {
    let p = &ctx.payload;
    let msg = Msg {
        text: p.text.clone(),
        sent_us: p.sent_us,
        seq: p.seq,
        from: p.from,
    };
    ctx.publish(&p.topic, &msg).await;
}

#[derive(Message)]
struct Welcome {
    message: String,
}

/// What every server sends a connection when it opens; the idle measurement counts a
/// connection once this arrived.
pub(crate) const WELCOME: &str = "Connected";

/// The ws-kit router: WELCOME on open, PING (RPC), JOIN (RPC), SAY (publish).
pub(crate) fn wskit_router() -> Router {
    Router::new()
        .on_open(|conn| async move {
            conn.send(&Welcome {
                message: WELCOME.into(),
            });
            Ok(())
        })
        .routes(routes![ping, join, say])
}

// ---------------------------------------------------------------------------------------------
// Baseline: plain tokio-tungstenite + serde_json.

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow)]
    meta: InMeta<'a>,
}

#[derive(Deserialize, Default)]
struct InMeta<'a> {
    #[serde(rename = "correlationId", borrow)]
    correlation_id: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PingIn<'a> {
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct JoinIn {
    topic: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SayIn<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
    sent_us: u64,
    seq: u64,
    from: u32,
}

#[derive(Serialize)]
struct Reply<'a, P> {
    #[serde(rename = "type")]
    ty: &'a str,
    meta: OutMeta<'a>,
    payload: P,
}

#[derive(Serialize)]
struct OutMeta<'a> {
    #[serde(rename = "correlationId", skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Publication<'a, P> {
    #[serde(rename = "type")]
    ty: &'a str,
    payload: P,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MsgOut<'a> {
    text: &'a str,
    sent_us: u64,
    seq: u64,
    from: u32,
}

#[derive(Serialize)]
struct PongOut<'a> {
    reply: &'a str,
}

#[derive(Serialize)]
struct JoinedOut<'a> {
    topic: &'a str,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    code: &'a str,
}

type Tx = mpsc::UnboundedSender<WsMessage>;

#[derive(Default)]
struct Topics {
    by_name: Mutex<HashMap<String, Vec<(u64, Tx)>>>,
    next_id: AtomicU64,
}

async fn baseline_serve(listener: TcpListener) {
    let topics = Arc::new(Topics::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(baseline_connection(stream, topics.clone()));
    }
}

async fn baseline_connection(stream: TcpStream, topics: Arc<Topics>) {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<WsMessage>();
    // The writer: takes everything queued, feeds it, flushes once per batch.
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Ok(next) = rx.try_recv() {
                if sink.feed(next).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let welcome =
        format!(r#"{{"type":"WELCOME","meta":{{}},"payload":{{"message":"{WELCOME}"}}}}"#);
    let _ = tx.send(WsMessage::Text(welcome.into()));
    let id = topics.next_id.fetch_add(1, Ordering::Relaxed);
    let mut joined: Vec<String> = Vec::new();
    while let Some(Ok(msg)) = stream.next().await {
        let text = match msg {
            WsMessage::Text(t) => t,
            WsMessage::Close(_) => break,
            _ => continue,
        };
        let Ok(env) = serde_json::from_str::<Envelope>(text.as_str()) else {
            let _ = tx.send(error_frame("INVALID_ARGUMENT", None));
            continue;
        };
        let cid = env.meta.correlation_id.as_deref();
        let payload = env.payload.map(RawValue::get).unwrap_or("{}");
        match env.ty {
            "PING" => match serde_json::from_str::<PingIn>(payload) {
                Ok(p) => {
                    let reply = format!("Got: {}", p.text);
                    let frame = Reply {
                        ty: "PONG",
                        meta: OutMeta {
                            correlation_id: cid,
                        },
                        payload: PongOut { reply: &reply },
                    };
                    let _ = tx.send(text_frame(&frame));
                }
                Err(_) => {
                    let _ = tx.send(error_frame("INVALID_ARGUMENT", cid));
                }
            },
            "JOIN" => match serde_json::from_str::<JoinIn>(payload) {
                Ok(p) => {
                    topics
                        .by_name
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(p.topic.clone())
                        .or_default()
                        .push((id, tx.clone()));
                    let frame = Reply {
                        ty: "JOINED",
                        meta: OutMeta {
                            correlation_id: cid,
                        },
                        payload: JoinedOut { topic: &p.topic },
                    };
                    let _ = tx.send(text_frame(&frame));
                    joined.push(p.topic);
                }
                Err(_) => {
                    let _ = tx.send(error_frame("INVALID_ARGUMENT", cid));
                }
            },
            "SAY" => match serde_json::from_str::<SayIn>(payload) {
                Ok(p) => {
                    // Serialize once, share the bytes.
                    let frame = Publication {
                        ty: "MSG",
                        payload: MsgOut {
                            text: &p.text,
                            sent_us: p.sent_us,
                            seq: p.seq,
                            from: p.from,
                        },
                    };
                    let bytes = Utf8Bytes::from(serde_json::to_string(&frame).unwrap_or_default());
                    let map = topics.by_name.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(subs) = map.get(p.topic.as_ref()) {
                        for (_, sub) in subs {
                            let _ = sub.send(WsMessage::Text(bytes.clone()));
                        }
                    }
                }
                Err(_) => {
                    let _ = tx.send(error_frame("INVALID_ARGUMENT", cid));
                }
            },
            _ => {
                let _ = tx.send(error_frame("UNIMPLEMENTED", cid));
            }
        }
    }
    {
        let mut map = topics.by_name.lock().unwrap_or_else(|e| e.into_inner());
        for topic in joined {
            if let Some(subs) = map.get_mut(&topic) {
                subs.retain(|(sub, _)| *sub != id);
                if subs.is_empty() {
                    map.remove(&topic);
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn text_frame<T: Serialize>(frame: &T) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(
        serde_json::to_string(frame).unwrap_or_default(),
    ))
}

fn error_frame(code: &str, cid: Option<&str>) -> WsMessage {
    let frame = Reply {
        ty: if cid.is_some() { "RPC_ERROR" } else { "ERROR" },
        meta: OutMeta {
            correlation_id: cid,
        },
        payload: ErrorOut { code },
    };
    text_frame(&frame)
}
