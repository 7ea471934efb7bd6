//! Shared test helpers: a server on `127.0.0.1:0` and a raw JSON WebSocket client.
#![allow(dead_code, missing_docs)]

pub(crate) mod binary;
pub(crate) mod proxy;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ws_kit::{Router, ServeOptions, Server, Service};

/// How long a test waits for a frame that should come.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// A running server; shut down (gracefully) when dropped.
pub(crate) struct TestServer<D: Send + Sync + 'static> {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) service: Service<D>,
    pub(crate) task: tokio::task::JoinHandle<Result<(), ws_kit::Error>>,
}

impl<D: Send + Sync + 'static> TestServer<D> {
    pub(crate) fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub(crate) async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }
}

impl<D: Send + Sync + 'static> Drop for TestServer<D> {
    fn drop(&mut self) {
        self.service.shutdown();
    }
}

/// Starts `router` on a free loopback port.
pub(crate) async fn serve<D: Send + Sync + 'static, S: Send + Sync + 'static>(
    router: Router<D, S>,
    options: ServeOptions<D>,
) -> TestServer<D> {
    let server = Server::bind(router, options.host("127.0.0.1").port(0))
        .await
        .expect("bind");
    let addr = server.local_addr();
    let service = server.service();
    let task = tokio::spawn(server.run());
    TestServer {
        addr,
        service,
        task,
    }
}

/// Starts `router` with default options (`D: Default`).
pub(crate) async fn serve_default<D: Default + Send + Sync + 'static>(
    router: Router<D>,
) -> TestServer<D> {
    serve(router, ServeOptions::new()).await
}

pub(crate) struct Client {
    pub(crate) ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub(crate) headers: tokio_tungstenite::tungstenite::http::HeaderMap,
}

/// What `Client::next_event` saw.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    Json(Value),
    Closed(Option<u16>, String),
}

impl Client {
    pub(crate) async fn connect(url: &str) -> Client {
        let (ws, response) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Client {
            ws,
            headers: response.headers().clone(),
        }
    }

    /// Connects from the loopback address `source` (127.0.0.2, say): another remote address as
    /// far as the server can tell.
    pub(crate) async fn connect_from(url: &str, source: std::net::IpAddr) -> Client {
        let target: std::net::SocketAddr = url
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .parse()
            .expect("a ws://ip:port URL");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::new(source, 0))
            .expect("bind the source address");
        let stream = socket.connect(target).await.expect("connect");
        let (ws, response) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
        Client {
            ws,
            headers: response.headers().clone(),
        }
    }

    /// Connects with extra request headers; returns the HTTP error on a refused upgrade.
    pub(crate) async fn connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request().unwrap();
        for (k, v) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client {
            ws,
            headers: response.headers().clone(),
        })
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text)).await.expect("send");
    }

    /// Sends `value` as WS-Kit clients write it: `type` first (`serde_json` would sort it last).
    pub(crate) async fn send(&mut self, value: Value) {
        self.send_text(&type_first(&value)).await;
    }

    /// The next JSON frame or the close; panics after `WAIT`.
    pub(crate) async fn next_event(&mut self) -> Event {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match frame {
                Some(Ok(WsMessage::Text(t))) => {
                    return Event::Json(serde_json::from_str(&t).expect("server sent JSON"));
                }
                Some(Ok(WsMessage::Close(f))) => {
                    return Event::Closed(
                        f.as_ref().map(|f| f.code.into()),
                        f.map(|f| f.reason.to_string()).unwrap_or_default(),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Event::Closed(None, e.to_string()),
                None => return Event::Closed(None, String::new()),
            }
        }
    }

    /// The next JSON frame; panics on close or after `WAIT`.
    pub(crate) async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Json(v) => v,
            Event::Closed(code, reason) => {
                panic!("connection closed ({code:?} {reason}) while waiting for a frame")
            }
        }
    }

    /// The next frame whose `type` is `ty`, skipping others.
    pub(crate) async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Asserts nothing arrives for `within`.
    pub(crate) async fn expect_silence(&mut self, within: Duration) {
        if let Ok(frame) = tokio::time::timeout(within, self.ws.next()).await {
            match frame {
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                other => panic!("expected no frame, got {other:?}"),
            }
        }
    }

    /// Waits for the server's close frame; returns its code.
    pub(crate) async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_event().await {
                Event::Closed(code, _) => return code,
                Event::Json(_) => continue,
            }
        }
    }

    pub(crate) async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }
}

/// Sends `request` and returns the next frame (tests keep one request in flight at a time).
/// The JSON text of `value` with a root `type` key written first, as `JSON.stringify` writes a
/// WS-Kit envelope; the other keys keep `serde_json`'s (sorted) order.
pub(crate) fn type_first(value: &Value) -> String {
    let Some(map) = value.as_object().filter(|m| m.contains_key("type")) else {
        return value.to_string();
    };
    let mut text = format!("{{\"type\":{}", map["type"]);
    for (key, value) in map.iter().filter(|(k, _)| *k != "type") {
        text.push_str(&format!(",{}:{}", Value::String(key.clone()), value));
    }
    text.push('}');
    text
}

/// The JSON text of `value` with a root `type` key written last: the server cannot read the type
/// before parsing the whole frame.
pub(crate) fn type_last(value: &Value) -> String {
    let Some(map) = value.as_object().filter(|m| m.contains_key("type")) else {
        return value.to_string();
    };
    let mut text = String::from("{");
    for (key, value) in map.iter().filter(|(k, _)| *k != "type") {
        text.push_str(&format!("{}:{},", Value::String(key.clone()), value));
    }
    text.push_str(&format!("\"type\":{}}}", map["type"]));
    text
}

pub(crate) async fn roundtrip(client: &mut Client, request: Value) -> Value {
    client.send(request).await;
    client.recv().await
}

// ---------------------------------------------------------------------------------------------
// Additions for server.rs / pubsub.rs / examples.rs.

/// Reads frames for `within`, answering pings (tungstenite does so while it is polled); panics on
/// any text frame or close. Unlike `expect_silence`, it keeps reading for the whole duration.
pub(crate) async fn stay_open_for(client: &mut Client, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, client.ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => {}
            Ok(other) => panic!("expected the connection to stay open and quiet, got {other:?}"),
        }
    }
}

/// Sends `request` with `meta.correlationId = cid` and returns the frame carrying that id,
/// skipping frames for other correlation ids and uncorrelated frames (pub/sub deliveries).
pub(crate) async fn request(client: &mut Client, mut request: Value, cid: &str) -> Value {
    request["meta"]["correlationId"] = Value::from(cid);
    client.send(request).await;
    loop {
        let v = client.recv().await;
        if v["meta"]["correlationId"] == cid {
            return v;
        }
    }
}

/// Waits until `check` returns true, re-checking every few milliseconds; panics after `WAIT`.
/// Only for state no frame announces (e.g. cleanup that runs after the last frame was sent).
pub(crate) async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(WAIT, what, check).await;
}

/// The HTTP status and body of a refused upgrade; panics if the upgrade succeeded or failed otherwise.
pub(crate) async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match Client::connect_with(url, headers).await {
        Ok(_) => panic!("upgrade to {url} was accepted; expected an HTTP refusal"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned());
            (response.status().as_u16(), body.unwrap_or_default())
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// One frame read by a [`RawClient`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawFrame {
    Text(String),
    Ping,
    Pong,
    /// Close code (None when the close frame had no body) and reason.
    Close(Option<u16>, String),
    Other(u8),
}

/// A WebSocket client on a bare TCP socket: it never answers pings and reads only when asked,
/// so it can play a dead peer (heartbeat) or a slow consumer (outbound queue overflow).
pub(crate) struct RawClient {
    pub(crate) stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects and upgrades on `/`. `recv_buffer` shrinks the socket's receive buffer (set before
    /// connecting, so the advertised window stays small) to keep the kernel from absorbing much.
    pub(crate) async fn connect(addr: std::net::SocketAddr, recv_buffer: Option<u32>) -> RawClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write upgrade request");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("upgrade timed out")
                .expect("read");
            assert!(n > 0, "server closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buf.drain(..end);
        RawClient { stream, buf }
    }

    async fn fill(&mut self, need: usize, deadline: tokio::time::Instant) -> bool {
        use tokio::io::AsyncReadExt;
        while self.buf.len() < need {
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("timed out reading from the server"),
                Ok(Err(_)) | Ok(Ok(0)) => return false,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// The next frame, or None at end of stream; panics after `WAIT`.
    pub(crate) async fn read_frame(&mut self) -> Option<RawFrame> {
        let deadline = tokio::time::Instant::now() + WAIT;
        if !self.fill(2, deadline).await {
            return None;
        }
        let opcode = self.buf[0] & 0x0f;
        assert_eq!(self.buf[1] & 0x80, 0, "server frames must not be masked");
        let (len, header) = match self.buf[1] & 0x7f {
            126 => {
                if !self.fill(4, deadline).await {
                    return None;
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                if !self.fill(10, deadline).await {
                    return None;
                }
                (
                    u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    10,
                )
            }
            n => (n as usize, 2),
        };
        if !self.fill(header + len, deadline).await {
            return None;
        }
        let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
        Some(match opcode {
            0x1 => RawFrame::Text(String::from_utf8(payload).expect("text frame is UTF-8")),
            0x8 if payload.len() >= 2 => RawFrame::Close(
                Some(u16::from_be_bytes([payload[0], payload[1]])),
                String::from_utf8_lossy(&payload[2..]).into_owned(),
            ),
            0x8 => RawFrame::Close(None, String::new()),
            0x9 => RawFrame::Ping,
            0xA => RawFrame::Pong,
            other => RawFrame::Other(other),
        })
    }

    /// Sends a masked text frame.
    pub(crate) async fn send_text(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let bytes = text.as_bytes();
        let mut frame = vec![0x81u8];
        match bytes.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(bytes.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        tokio::time::timeout(WAIT, self.stream.write_all(&frame))
            .await
            .expect("write timed out")
            .expect("write");
    }
}

/// How long one test may run in all under [`bounded`].
pub(crate) const TEST_LIMIT: Duration = Duration::from_secs(30);

/// Runs a test body on a current-thread runtime of its own thread and fails the test if it has not
/// finished within [`TEST_LIMIT`]. A server task that never yields starves the runtime it shares
/// with the test, and then no tokio timeout can fire: this bound still holds (the starved thread is
/// left behind and ends with the test process).
pub(crate) fn bounded<F: std::future::Future<Output = ()> + Send + 'static>(test: F) {
    bounded_on(false, test);
}

/// [`bounded`] on a two-worker multi-thread runtime.
pub(crate) fn bounded_multi_thread<F: std::future::Future<Output = ()> + Send + 'static>(test: F) {
    bounded_on(true, test);
}

fn bounded_on<F: std::future::Future<Output = ()> + Send + 'static>(multi_thread: bool, test: F) {
    #[derive(Debug)]
    enum Step {
        BodyDone,
        RuntimeDropped,
    }
    let (steps_tx, steps) = std::sync::mpsc::channel::<Step>();
    let thread = std::thread::Builder::new()
        .name("bounded-test".into())
        .spawn(move || {
            let mut builder = if multi_thread {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            let runtime = builder.enable_all().build().expect("runtime");
            runtime.block_on(test);
            let _ = steps_tx.send(Step::BodyDone);
            drop(runtime);
            let _ = steps_tx.send(Step::RuntimeDropped);
        })
        .expect("spawn the test thread");
    let deadline = std::time::Instant::now() + TEST_LIMIT;
    let mut body_done = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match steps.recv_timeout(left) {
            Ok(Step::BodyDone) => body_done = true,
            Ok(Step::RuntimeDropped) => return thread.join().expect("test thread"),
            // The sender is gone without a message: the test panicked; re-raise its panic.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("the test thread ended without reporting"),
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if body_done => panic!(
                "the test body passed, but its runtime did not shut down within {TEST_LIMIT:?}: \
                 a server task never yields"
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                "the test did not finish within {TEST_LIMIT:?} (its runtime is starved by a task \
                 that never yields, or a wait is unbounded)"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Additions for redis.rs.

/// [`eventually`] with a bound of its own (for example a reconnection that takes seconds).
pub(crate) async fn eventually_within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`bounded_multi_thread`] with a bound of its own instead of [`TEST_LIMIT`] (load tests,
/// reconnection). Same guarantees: the bound holds even if the runtime is starved.
pub(crate) fn bounded_multi_thread_within<F: std::future::Future<Output = ()> + Send + 'static>(
    limit: Duration,
    test: F,
) {
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("bounded-test".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(test);
            // Tasks left behind (servers shutting down) get a moment, not forever.
            runtime.shutdown_timeout(Duration::from_secs(5));
            let _ = done_tx.send(());
        })
        .expect("spawn the test thread");
    match done.recv_timeout(limit) {
        Ok(()) => thread.join().expect("test thread"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the test thread ended without reporting"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
            "the test did not finish within {limit:?} (a wait is unbounded, or the runtime is \
             starved by a task that never yields)"
        ),
    }
}

impl RawClient {
    /// Sends bytes as they are (a frame built by the test, broken on purpose or not).
    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Reads frames until the close; its code (None for a close without a code, or the end of
    /// the stream without a close frame). Other frames are skipped.
    pub(crate) async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.read_frame().await {
                Some(RawFrame::Close(code, _)) => return code,
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// The socket and the bytes already read from it but not yet parsed, for a reader of one's own.
    pub(crate) fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }
}

// ---------------------------------------------------------------------------------------------
// Additions for client.rs.

/// Starts `router` on a given loopback address: a server "restarted" on the port of one that was
/// shut down. Waits (bounded) for the port while the old listener is going away.
pub(crate) async fn serve_at<D: Send + Sync + 'static>(
    router: Router<D>,
    options: ServeOptions<D>,
    addr: std::net::SocketAddr,
) -> TestServer<D> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(e) = std::net::TcpListener::bind(addr) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "could not bind {addr} again: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let options = options.host(addr.ip().to_string()).port(addr.port());
    let server = Server::bind(router, options).await.expect("bind");
    let addr = server.local_addr();
    let service = server.service();
    let task = tokio::spawn(server.run());
    TestServer {
        addr,
        service,
        task,
    }
}

/// A loopback address nothing listens on (a port that was free a moment ago).
pub(crate) fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local_addr")
}

/// A client frame as the bytes on the wire: `first` is the first byte (FIN, RSV bits, opcode),
/// masked (as clients must) unless `masked` is false.
pub(crate) fn raw_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first];
    let bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(bit | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// Sends `request` on a new TCP connection and returns the status code and the response head and
/// body, as the server wrote them before closing.
pub(crate) async fn http_exchange(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, text)
}

/// `REDIS_URL`, or None after saying the test is skipped. Written to stderr itself rather than
/// with `eprintln!`, which the test harness captures: the skip shows in every run, in the
/// `<test>: skipped: <why>` form `.ci/run` fails on.
/// The Redis Cluster's seed nodes, comma-separated (`.ci/redis-cluster start` prints them).
#[allow(dead_code)]
pub(crate) fn redis_cluster_url() -> Option<String> {
    match std::env::var("REDIS_CLUSTER_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            use std::io::Write;
            let test = std::thread::current().name().unwrap_or("redis").to_string();
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: REDIS_CLUSTER_URL not set (its Redis Cluster half did not run)"
            );
            None
        }
    }
}

/// A single node's URL and a cluster's, those that are set: the cross-instance tests run on
/// both.
#[allow(dead_code)]
pub(crate) fn redis_urls() -> Vec<String> {
    [redis_url(), redis_cluster_url()]
        .into_iter()
        .flatten()
        .collect()
}

pub(crate) fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            use std::io::Write;
            let test = std::thread::current().name().unwrap_or("redis").to_string();
            let _ = writeln!(std::io::stderr(), "{test}: skipped: REDIS_URL not set");
            None
        }
    }
}
