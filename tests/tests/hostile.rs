//! A hostile or unlucky network, over real sockets: malformed and slow upgrades, connection
//! limits, a process out of descriptors, RFC 6455 violations, ping floods, error replies that
//! would amplify their input, and unfinished messages parked by many connections at once.

mod support;

use ws_kit_tests::ping;

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{
    Client, RawClient, RawFrame, WAIT, bounded_multi_thread, http_exchange, raw_frame, serve,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ws_kit::{
    ErrorEvent, ErrorKind, Message, PayloadLimit, Router, ServeOptions, WsError, close_code,
    handler, routes,
};

#[derive(Message)]
struct Join {
    topic: String,
}

#[handler]
async fn join(ctx: ws_kit::Ctx<Join>) -> Result<(), WsError> {
    ctx.subscribe(&ctx.payload.topic).await
}

/// The router of these tests, with its `on_error` events.
fn router() -> (Router, Arc<Mutex<Vec<ErrorEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let router = Router::new()
        .routes(routes![ping, join])
        .on_error(move |e: &ErrorEvent| seen.lock().unwrap().push(e.clone()));
    (router, events)
}

/// A PING round trip works on this client: the connection is alive and served.
async fn assert_served(client: &mut Client, text: &str) {
    let reply = support::request(
        client,
        json!({"type": "PING", "payload": {"text": text}}),
        text,
    )
    .await;
    assert_eq!(reply["payload"]["reply"], text, "{reply}");
}

const UPGRADE: &str =
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

// ---------------------------------------------------------------------------------------------
// Upgrades

/// RFC 6455 4.2.1/4.4: a malformed upgrade gets `400 Bad Request`, another version `426 Upgrade
/// Required` with `Sec-WebSocket-Version: 13`, and offered subprotocols must be tokens; a good
/// upgrade still works, its subprotocol echoed.
#[test]
fn malformed_upgrades_get_400_and_other_versions_426() {
    bounded_multi_thread(async {
        let (router, _) = router();
        let server = serve(router, ServeOptions::new()).await;
        let head = |extra: &str| format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let cases = [
            (
                head("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"),
                400,
                "Sec-WebSocket-Key",
            ),
            (head(UPGRADE), 400, "Sec-WebSocket-Version"),
            (head(""), 400, "Not a WebSocket upgrade"),
            (
                head(&format!(
                    "{UPGRADE}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, a b\r\n"
                )),
                400,
                "Sec-WebSocket-Protocol",
            ),
            ("BREW / HTCPCP/1.0\r\n\r\n".to_string(), 400, "Malformed"),
            (
                head(&format!("{UPGRADE}Sec-WebSocket-Version: 8\r\n")),
                426,
                "13",
            ),
        ];
        for (request, status, says) in cases {
            let (got, response) = http_exchange(server.addr, &request).await;
            assert_eq!(got, status, "{request:?} → {response}");
            assert!(response.contains(says), "{request:?} → {response}");
            if status == 426 {
                assert!(
                    response.contains("\r\nSec-WebSocket-Version: 13\r\n"),
                    "{response}"
                );
            }
        }
        // A valid upgrade with a valid subprotocol offer is accepted and the offer echoed.
        let client = Client::connect_with(&server.url(), &[("sec-websocket-protocol", "chat.v1")])
            .await
            .expect("a valid upgrade is accepted");
        assert_eq!(client.headers["sec-websocket-protocol"], "chat.v1");
    });
}

/// Sockets that never finish their upgrade (silent, or a request head that never ends) are
/// closed after the handshake timeout, so they cannot hold file descriptors for good; meanwhile
/// the per-address limit refuses more of them with `503`, and real clients from elsewhere connect.
#[test]
fn stalled_handshakes_time_out_and_one_address_cannot_take_every_socket() {
    bounded_multi_thread(async {
        const PER_IP: usize = 20;
        let (router, _) = router();
        let options = ServeOptions::new()
            .handshake_timeout(Duration::from_millis(500))
            .max_connections_per_ip(PER_IP);
        let server = serve(router, options).await;
        let mut stalled = Vec::new();
        for i in 0..PER_IP {
            let mut stream = TcpStream::connect(server.addr).await.expect("connect");
            if i % 2 == 1 {
                // A head that never ends.
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .expect("write");
            }
            stalled.push(stream);
        }
        // One more from the same address: refused at once.
        let (status, response) =
            http_exchange(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 503, "{response}");
        assert!(
            response.contains("Too many connections from this address"),
            "{response}"
        );
        // Another address is not affected.
        let mut other = Client::connect_from(&server.url(), "127.0.0.2".parse().unwrap()).await;
        assert_served(&mut other, "other").await;

        // The stalled sockets are closed by the server once the handshake timeout passed.
        for mut stream in stalled {
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("the server closes a stalled handshake")
                .unwrap_or(0);
            assert_eq!(n, 0, "a stalled handshake got {:?}", &buf[..n]);
        }
        // And the address may connect again.
        let mut again = server.client().await;
        assert_served(&mut again, "again").await;
    });
}

/// A server process out of file descriptors (run under `ulimit -n 64`, no ws-kit limit, so the
/// kernel refuses with `EMFILE`) keeps serving the connections it has, does not spin on the
/// failing accept (under half a core while the backlog is full), and accepts again once
/// descriptors are free.
#[test]
fn out_of_descriptors_the_server_pauses_and_serves_on() {
    bounded_multi_thread(async {
        let server = std::process::Command::new("sh")
            .args(["-c", "ulimit -n 64 && exec \"$0\""])
            .arg(env!("CARGO_BIN_EXE_fd-starved-server"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut child = KillOnDrop(server);
        let url = {
            use std::io::BufRead;
            let stdout = child.0.stdout.take().expect("stdout");
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .expect("read the server's first line");
            line.trim()
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
                .to_string()
        };
        let addr: std::net::SocketAddr = url["ws://".len()..].parse().expect("address");
        let mut first = Client::connect(&url).await;
        assert_served(&mut first, "before").await;

        // More sockets than the process has descriptors; none of them upgrades.
        let mut hogs = Vec::new();
        for _ in 0..100 {
            hogs.push(
                TcpStream::connect(addr)
                    .await
                    .expect("connect (the backlog takes it)"),
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu_before = cpu_ticks(child.0.id());
        let measured = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ticks = cpu_ticks(child.0.id()) - cpu_before;
        let share = ticks as f64 / 100.0 / measured.elapsed().as_secs_f64();
        assert!(
            share < 0.5,
            "the server used {:.0}% of a core while out of descriptors: the accept loop spins",
            share * 100.0
        );
        assert_served(&mut first, "while starved").await;

        drop(hogs);
        let mut late = tokio::time::timeout(WAIT, Client::connect(&url))
            .await
            .expect("a new client gets in once descriptors are free");
        assert_served(&mut late, "after").await;
        assert_served(&mut first, "still").await;
    });
}

/// The CPU time (user + system, in clock ticks of 10 ms) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `max_connections`: past it a new socket gets `503 Too many connections`; once one closes, the
/// next one gets in.
#[test]
fn the_instance_holds_at_most_max_connections() {
    bounded_multi_thread(async {
        let (router, _) = router();
        let server = serve(router, ServeOptions::new().max_connections(3)).await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(server.client().await);
        }
        let (status, response) = http_exchange(
            server.addr,
            &format!("GET / HTTP/1.1\r\nHost: x\r\n{UPGRADE}Sec-WebSocket-Version: 13\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 503, "{response}");
        assert!(response.contains("Too many connections"), "{response}");
        assert!(response.contains("\r\nRetry-After: 1\r\n"), "{response}");
        assert_eq!(server.service.socket_count(), 3);

        let mut first = clients.remove(0);
        first.close(1000).await;
        drop(first);
        support::eventually("the closed socket to leave the count", || async {
            server.service.socket_count() == 2
        })
        .await;
        let mut next = server.client().await;
        assert_served(&mut next, "next").await;
        for client in &mut clients {
            assert_served(client, "still").await;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// RFC 6455 signalling

/// RFC 6455 5.1–5.5, 7.4.1, 8.1: a frame that breaks the protocol ends the connection with 1002,
/// a text message that is not UTF-8 with 1007; the frame is dropped (no reply to it).
#[test]
fn protocol_violations_close_with_1002_and_invalid_utf8_with_1007() {
    bounded_multi_thread(async {
        let (router, events) = router();
        let server = serve(router, ServeOptions::new()).await;
        let request = br#"{"type":"PING","payload":{"text":"x"},"meta":{"correlationId":"1"}}"#;
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            (
                "unmasked frame",
                raw_frame(0x81, request, false),
                close_code::PROTOCOL,
            ),
            (
                "RSV1 without an extension",
                raw_frame(0x81 | 0x40, request, true),
                close_code::PROTOCOL,
            ),
            (
                "reserved opcode 3",
                raw_frame(0x83, request, true),
                close_code::PROTOCOL,
            ),
            (
                "reserved control opcode 11",
                raw_frame(0x8B, b"", true),
                close_code::PROTOCOL,
            ),
            (
                "control frame over 125 bytes",
                raw_frame(0x89, &[b'p'; 126], true),
                close_code::PROTOCOL,
            ),
            (
                "fragmented ping",
                raw_frame(0x09, b"p", true),
                close_code::PROTOCOL,
            ),
            (
                "continuation of nothing",
                raw_frame(0x80, request, true),
                close_code::PROTOCOL,
            ),
            (
                "text frame of bad UTF-8",
                raw_frame(0x81, b"{\"type\":\"\xff\"}", true),
                close_code::INVALID,
            ),
        ];
        for (what, frame, code) in cases {
            let mut client = RawClient::connect(server.addr, None).await;
            client.send_bytes(&frame).await;
            loop {
                match client.read_frame().await {
                    Some(RawFrame::Close(got, reason)) => {
                        assert_eq!(got, Some(code), "{what}: closed {got:?} {reason}");
                        break;
                    }
                    Some(RawFrame::Text(text)) => panic!("{what}: the frame was answered: {text}"),
                    Some(_) => continue,
                    None => panic!("{what}: the stream ended without a close frame"),
                }
            }
        }
        let kinds: Vec<ErrorKind> = events.lock().unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![ErrorKind::ProtocolViolation; 8], "{kinds:?}");
        // The server goes on serving others.
        let mut client = server.client().await;
        assert_served(&mut client, "fine").await;
    });
}

// ---------------------------------------------------------------------------------------------
// Floods and what a peer can make the server hold

/// A peer that pings without reading makes tungstenite queue pongs for it: the connection is
/// closed with 1008 after too many pings in a heartbeat interval (and the pongs it could not take
/// are bounded by the write buffer meanwhile); other connections are not affected.
#[test]
fn a_ping_flood_is_closed_with_1008() {
    bounded_multi_thread(async {
        let (router, events) = router();
        let server = serve(router, ServeOptions::new()).await;
        let mut bystander = server.client().await;
        let mut flooder = RawClient::connect(server.addr, Some(4096)).await;
        let ping_frame = raw_frame(0x89, &[b'p'; 125], true);
        let mut sent = 0;
        // Written without reading, as long as the server takes them (bounded).
        while sent < 5_000 {
            let write = flooder.stream.write_all(&ping_frame);
            match tokio::time::timeout(Duration::from_millis(200), write).await {
                Ok(Ok(())) => sent += 1,
                _ => break,
            }
        }
        assert!(sent > 100, "only {sent} pings could be written");
        assert_eq!(flooder.close_code().await, Some(close_code::POLICY));
        assert!(
            events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.kind == ErrorKind::Flood),
            "no Flood event"
        );
        assert_served(&mut bystander, "calm").await;
    });
}

/// An error reply never amplifies its input: huge or many unknown keys (root, meta, payload), a
/// huge unknown type, a huge topic — each reply stays a few KB, and the sender's connection stays
/// open (an oversized reply would have overflowed its outbound queue: 1013).
#[test]
fn error_replies_stay_small_whatever_the_input() {
    bounded_multi_thread(async {
        let (router, _) = router();
        let options =
            ServeOptions::new().max_queued_bytes(64 * 1024, ws_kit::OverflowPolicy::Close);
        let server = serve(router, options).await;
        let mut client = server.client().await;
        let huge = "k".repeat(100_000);
        let mut many = serde_json::Map::new();
        for i in 0..2000 {
            many.insert(format!("unknown{i}"), json!(i));
        }
        let frames = [
            json!({"type": "PING", "payload": {"text": "x", huge.as_str(): 1}, "meta": {"correlationId": "a"}}),
            json!({"type": "PING", "payload": {"text": "x"}, "meta": {"correlationId": "b", huge.as_str(): 1}}),
            json!({"type": "PING", "payload": {"text": "x"}, "meta": {"correlationId": "c"}, huge.as_str(): 1}),
            json!({"type": "PING", "payload": Value::Object(many.clone()), "meta": {"correlationId": "d"}}),
            json!({"type": "PING", "payload": {"text": "x"}, "meta": Value::Object(many)}),
            json!({"type": huge.as_str(), "payload": {}}),
            json!({"type": format!("${huge}"), "payload": {}}),
            json!({"type": "PING", "payload": {"text": "x"}, "meta": huge.as_str()}),
            json!({"type": "PING", "payload": {"text": huge.as_str()}, "meta": {"correlationId": 1}}),
            json!({"type": "JOIN", "payload": {"topic": huge.as_str()}}),
            json!([huge.as_str()]),
        ];
        for frame in frames {
            let text = frame.to_string();
            client.send_text(&text).await;
            let reply = client.recv().await;
            let size = reply.to_string().len();
            assert!(
                reply["type"] == "ERROR" || reply["type"] == "RPC_ERROR",
                "{reply}"
            );
            assert!(
                size <= 8 * 1024,
                "a {} byte input got a {size} byte reply: {}",
                text.len(),
                &reply.to_string()[..200]
            );
            if let Some(issues) = reply["payload"]["details"]["issues"].as_array() {
                assert!(
                    issues.len() <= ws_kit::MAX_ISSUES,
                    "{} issues",
                    issues.len()
                );
            }
        }
        assert_served(&mut client, "still open").await;
    });
}

/// A global budget for unfinished messages: each connection holds up to 16 KiB of one for free;
/// beyond that, bytes count against a budget shared by every connection, and the connection whose
/// next read would go over it is closed with 1013 — the others, and the process, go on. Once a
/// message completes, its bytes are given back.
#[test]
fn unfinished_messages_share_one_budget() {
    bounded_multi_thread(async {
        const FREE: usize = 16 * 1024;
        let (router, events) = router();
        let options = ServeOptions::new()
            .max_payload_bytes(1024 * 1024, PayloadLimit::Close)
            .unfinished_message_budget(140_000);
        let server = serve(router, options).await;
        // A frame of 150 KB announced, 16 KiB + 80 KB of it sent: 80 KB of the budget (the whole
        // frame would take 134 KB of it).
        let body = format!(
            r#"{{"type":"PING","payload":{{"text":"{}"}},"meta":{{"correlationId":"big"}}}}"#,
            "a".repeat(150_000)
        );
        let frame = raw_frame(0x81, body.as_bytes(), true);
        let first_part = FREE + 80_000;
        let mut a = RawClient::connect(server.addr, None).await;
        a.send_bytes(&frame[..first_part]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // B parks as much: the budget cannot take it (and gives back what B held).
        let mut b = RawClient::connect(server.addr, None).await;
        b.send_bytes(&frame[..first_part]).await;
        assert_eq!(b.close_code().await, Some(close_code::AGAIN));
        assert!(
            events
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.kind == ErrorKind::InboundBudget),
            "no InboundBudget event"
        );
        // A finishes its message: it is served, and its bytes go back to the budget.
        a.send_bytes(&frame[first_part..]).await;
        match a.read_frame().await {
            Some(RawFrame::Text(text)) => assert!(text.contains("\"PONG\""), "{text}"),
            other => panic!("A got {other:?}"),
        }
        let mut c = RawClient::connect(server.addr, None).await;
        c.send_bytes(&frame).await;
        match c.read_frame().await {
            Some(RawFrame::Text(text)) => assert!(text.contains("\"PONG\""), "{text}"),
            other => panic!("C got {other:?}"),
        }
    });
}
