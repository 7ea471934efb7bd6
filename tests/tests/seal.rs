//! Sealed delivery (docs/protocol.md 7b): `ws_kit::seal` against WebCrypto (Node's `crypto.subtle`,
//! the API a browser front end uses), and the Rust client against a hand-written sealing server.
//!
//! The WebCrypto test needs `node` on the PATH; without it, it prints
//! `<test>: skipped: node not found` to stderr and returns.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use ws_kit::seal::{self, KeyPair, SEALED_TYPE};

/// Frames with non-ASCII text, and one long enough for many AES blocks.
fn frames() -> Vec<String> {
    vec![
        json!({"type": "WELCOME", "meta": {}, "payload": {"message": "héllo ✓ 🌍"}}).to_string(),
        json!({"type": "PING", "meta": {"correlationId": "c1", "timestamp": 1}, "payload": {"text": "x".repeat(70_000)}})
            .to_string(),
        String::new(),
    ]
}

// ---------------------------------------------------------------------------------------------
// WebCrypto
// ---------------------------------------------------------------------------------------------

/// A browser's side, as a front end would write it: WebCrypto for ECDH, HKDF and AES-GCM,
/// `btoa` / `atob` for base64, `JSON.stringify` for the frame. Line-delimited JSON on stdin and
/// stdout: first as the client (it sends its key, opens what the Rust server sealed, seals
/// replies), then as the server (it answers a Rust client's key with its own and a salt, and
/// seals frames).
const BROWSER: &str = r#"
import readline from 'node:readline';
const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });
const b64 = (buf) => {
  const bytes = new Uint8Array(buf);
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
};
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const P256 = { name: 'ECDH', namedCurve: 'P-256' };

async function agree(privateKey, peerRaw, salt) {
  const peer = await subtle.importKey('raw', peerRaw, P256, false, []);
  const shared = await subtle.deriveBits({ name: 'ECDH', public: peer }, privateKey, 256);
  const ikm = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  return subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt, info: enc.encode('ws-kit e2e v1') },
    ikm, { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
}
async function seal(key, text) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const data = await subtle.encrypt({ name: 'AES-GCM', iv }, key, enc.encode(text));
  return JSON.stringify({ type: '$ws:encrypted', payload: { iv: b64(iv), data: b64(data) } });
}
async function open(key, frame) {
  const f = JSON.parse(frame);
  if (f.type !== '$ws:encrypted') throw new Error('not a sealed frame');
  const plain = await subtle.decrypt({ name: 'AES-GCM', iv: unb64(f.payload.iv) }, key, unb64(f.payload.data));
  return dec.decode(plain);
}

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async () => JSON.parse((await lines.next()).value);
const say = (value) => process.stdout.write(JSON.stringify(value) + '\n');

// As the client.
const mine = await subtle.generateKey(P256, false, ['deriveBits']);
say({ publicKey: b64(await subtle.exportKey('raw', mine.publicKey)) });
const offer = await next();
const key = await agree(mine.privateKey, unb64(offer.serverPublicKey), unb64(offer.salt));
const opened = [];
for (const frame of offer.frames) opened.push(await open(key, frame));
let tampered;
try {
  const f = JSON.parse(offer.frames[0]);
  const data = unb64(f.payload.data);
  data[0] ^= 1;
  f.payload.data = b64(data);
  await open(key, JSON.stringify(f));
  tampered = 'opened';
} catch (e) {
  tampered = 'refused';
}
const sealed = [];
for (const text of offer.replies) sealed.push(await seal(key, text));
say({ opened, tampered, sealed });

// As the server.
const request = await next();
const server = await subtle.generateKey(P256, false, ['deriveBits']);
const salt = crypto.getRandomValues(new Uint8Array(16));
const key2 = await agree(server.privateKey, unb64(request.publicKey), salt);
const sealed2 = [];
for (const text of request.frames) sealed2.push(await seal(key2, text));
say({ serverPublicKey: b64(await subtle.exportKey('raw', server.publicKey)), salt: b64(salt), sealed: sealed2 });
"#;

/// The browser script, running.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: std_mpsc::Receiver<String>,
}

impl Browser {
    /// Starts it, or `None` when `node` is not on the PATH.
    fn start() -> Option<Browser> {
        let spawned = Command::new("node")
            .args(["--input-type=module", "-e", BROWSER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("could not run node: {e}"),
        };
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Some(Browser {
            child,
            stdin,
            lines,
        })
    }

    fn say(&mut self, value: Value) {
        writeln!(self.stdin, "{value}").expect("write to node");
        self.stdin.flush().expect("flush to node");
    }

    fn hear(&mut self) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => serde_json::from_str(&line).expect("node printed JSON"),
            Err(e) => {
                let _ = self.child.kill();
                panic!("no answer from node ({e}); its stderr is above");
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Says the test is skipped, on stderr itself (the harness captures `eprintln!`), in the form CI
/// looks for.
fn skipped(why: &str) {
    let test = std::thread::current().name().unwrap_or("seal").to_string();
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

/// WebCrypto derives the same key from the same exchange, in both roles: it opens what
/// `ws_kit::seal` sealed and `ws_kit::seal` opens what it sealed; a tampered frame does not open.
#[test]
fn webcrypto_speaks_the_same_sealed_frames() {
    let Some(mut browser) = Browser::start() else {
        skipped("node not found");
        return;
    };

    // The browser as the client, ws-kit as the server.
    let hello = browser.hear();
    let client_public = hello["publicKey"].as_str().expect("publicKey");
    let (server_key, offer) = seal::accept(client_public).expect("the browser's key is valid");
    let frames = frames();
    let replies: Vec<String> = frames.iter().rev().cloned().collect();
    browser.say(json!({
        "serverPublicKey": offer.server_public_key,
        "salt": offer.salt,
        "frames": frames.iter().map(|f| server_key.seal(f)).collect::<Vec<_>>(),
        "replies": replies,
    }));
    let answer = browser.hear();
    let opened: Vec<String> = serde_json::from_value(answer["opened"].clone()).expect("opened");
    assert_eq!(opened, frames, "what WebCrypto opened");
    assert_eq!(answer["tampered"], "refused");
    let sealed: Vec<String> = serde_json::from_value(answer["sealed"].clone()).expect("sealed");
    assert_eq!(sealed.len(), replies.len());
    for (frame, expected) in sealed.iter().zip(&replies) {
        assert!(seal::is_sealed_frame(frame), "{frame}");
        assert!(
            frame.starts_with(&format!(r#"{{"type":"{SEALED_TYPE}","payload":{{"iv":""#)),
            "JSON.stringify writes the same layout: {frame}"
        );
        assert_eq!(&server_key.open(frame).expect("opens"), expected);
    }

    // The browser as the server, ws-kit as the client.
    let client = KeyPair::generate();
    browser.say(json!({"publicKey": client.public_key_base64(), "frames": frames}));
    let answer = browser.hear();
    let key = client
        .agree(
            answer["serverPublicKey"].as_str().expect("serverPublicKey"),
            answer["salt"].as_str().expect("salt"),
        )
        .expect("the browser's offer is valid");
    let sealed: Vec<String> = serde_json::from_value(answer["sealed"].clone()).expect("sealed");
    let opened: Vec<String> = sealed.iter().map(|f| key.open(f).expect("opens")).collect();
    assert_eq!(opened, frames);
}

// ---------------------------------------------------------------------------------------------
// The Rust client against a sealing server
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "client")]
mod client {
    use super::support::{WAIT, bounded_multi_thread};
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use ws_kit::Message;
    use ws_kit::client::{Client, Reconnect};
    use ws_kit::seal::{self, SealKey};
    use ws_kit_tests::{Ping, Pong};

    /// The app's authentication request, carrying the client's key.
    #[derive(Message)]
    #[rpc(response = AuthOk)]
    struct Authenticate {
        token: String,
        public_key: String,
    }

    /// Its reply, carrying the server's key and the salt.
    #[derive(Message, Debug)]
    struct AuthOk {
        server_public_key: String,
        salt: String,
    }

    #[derive(Message)]
    struct Welcome {
        message: String,
    }

    type Ws = WebSocketStream<TcpStream>;

    async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(WAIT, future)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    async fn next_text(ws: &mut Ws) -> String {
        loop {
            match within("a frame from the client", ws.next()).await {
                Some(Ok(WsMessage::Text(text))) => return text.to_string(),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn send(ws: &mut Ws, text: String) {
        ws.send(WsMessage::text(text)).await.expect("send");
    }

    fn welcome(message: &str) -> String {
        json!({"type": Welcome::TYPE, "meta": {}, "payload": {"message": message}}).to_string()
    }

    /// The server's side of the authentication: reads frames (all in clear) up to the
    /// AUTHENTICATE request, answers it in clear with a fresh key and salt, and returns the
    /// connection's key, the salt and the client's public key.
    async fn authenticate(ws: &mut Ws) -> (SealKey, String, String) {
        loop {
            let text = next_text(ws).await;
            assert!(
                !seal::is_sealed_frame(&text),
                "a new connection starts in clear: {text}"
            );
            let frame: Value = serde_json::from_str(&text).expect("JSON");
            if frame["type"] == "__heartbeat" {
                continue;
            }
            assert_eq!(frame["type"], Authenticate::TYPE, "{text}");
            assert_eq!(frame["payload"]["token"], "secret");
            let public_key = frame["payload"]["publicKey"]
                .as_str()
                .expect("publicKey")
                .to_string();
            let (key, offer) = seal::accept(&public_key).expect("the client's key is valid");
            let reply = json!({
                "type": AuthOk::TYPE,
                "meta": {"correlationId": frame["meta"]["correlationId"]},
                "payload": {"serverPublicKey": offer.server_public_key, "salt": offer.salt},
            });
            send(ws, reply.to_string()).await;
            return (key, offer.salt, public_key);
        }
    }

    /// Client frames after the authentication reply, opened: the server's rule (docs/protocol.md
    /// 7b) is that frames in clear are taken until the first sealed one, none after it.
    struct Inbound {
        key: SealKey,
        sealing: bool,
    }

    impl Inbound {
        /// The next frame the client sent after its first sealed one, opened, as JSON.
        async fn next(&mut self, ws: &mut Ws) -> Value {
            loop {
                let text = next_text(ws).await;
                if seal::is_sealed_frame(&text) {
                    self.sealing = true;
                    let plain = self.key.open(&text).expect("a sealed frame opens");
                    return serde_json::from_str(&plain).expect("JSON inside");
                }
                assert!(!self.sealing, "a frame in clear after a sealed one: {text}");
            }
        }
    }

    /// Sealing starts with the authentication reply, both ways: the client opens the server's
    /// sealed frames (a request's reply too), drops one in clear, and seals what it writes
    /// (requests and heartbeats). A reconnect starts in clear with the same key pair and a new
    /// salt, and sealing starts again with the next authentication.
    #[test]
    fn the_client_seals_after_the_authentication_reply() {
        bounded_multi_thread(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("ws://{}", listener.local_addr().unwrap());
            let (report, mut reports) = mpsc::unbounded_channel::<String>();

            let server = tokio::spawn(async move {
                // First connection.
                let (tcp, _) = listener.accept().await.expect("accept");
                let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
                let (key, salt1, public_key) = authenticate(&mut ws).await;
                report.send(format!("key:{public_key}")).unwrap();
                send(&mut ws, key.seal(&welcome("sealed hello"))).await;
                send(&mut ws, welcome("in clear: dropped")).await;
                send(&mut ws, key.seal(&welcome("sealed again"))).await;

                let mut inbound = Inbound {
                    key: key.clone(),
                    sealing: false,
                };
                let (mut pinged, mut heartbeats) = (false, 0);
                while !pinged || heartbeats < 2 {
                    let frame = inbound.next(&mut ws).await;
                    match frame["type"].as_str() {
                        Some("__heartbeat") => heartbeats += 1,
                        Some(ty) if ty == Ping::TYPE => {
                            pinged = true;
                            let reply = json!({
                                "type": Pong::TYPE,
                                "meta": {"correlationId": frame["meta"]["correlationId"]},
                                "payload": {"reply": format!("sealed: {}", frame["payload"]["text"].as_str().unwrap())},
                            });
                            send(&mut ws, key.seal(&reply.to_string())).await;
                        }
                        _ => panic!("unexpected frame {frame}"),
                    }
                }
                assert!(inbound.sealing);
                report.send("first done".into()).unwrap();
                drop(ws); // the client reconnects

                // Second connection: clear again until the new reply.
                let (tcp, _) = listener.accept().await.expect("accept");
                let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
                report.send("reconnected".into()).unwrap();
                let (key2, salt2, public_key2) = authenticate(&mut ws).await;
                assert_eq!(
                    public_key2, public_key,
                    "one key pair for the client's life"
                );
                assert_ne!(salt2, salt1, "a new salt per connection");
                send(&mut ws, key2.seal(&welcome("second connection"))).await;
                let mut inbound = Inbound {
                    key: key2.clone(),
                    sealing: false,
                };
                loop {
                    let frame = inbound.next(&mut ws).await;
                    if frame["type"] == Ping::TYPE {
                        let reply = json!({
                            "type": Pong::TYPE,
                            "meta": {"correlationId": frame["meta"]["correlationId"]},
                            "payload": {"reply": "second"},
                        });
                        send(&mut ws, key2.seal(&reply.to_string())).await;
                        break;
                    }
                }
                // The old key does not open the new connection's frames.
                let text = next_text(&mut ws).await;
                assert!(seal::is_sealed_frame(&text));
                assert!(key.open(&text).is_err());
                assert!(key2.open(&text).is_ok());
                report.send("second done".into()).unwrap();
            });

            let (welcome_tx, mut welcomes) = mpsc::unbounded_channel();
            let client = Client::builder(url)
                .sealed()
                .heartbeat(Duration::from_millis(50), Duration::from_secs(5))
                .reconnect(
                    Reconnect::new().delays(Duration::from_millis(10), Duration::from_millis(40)),
                )
                .on(move |w: Welcome| {
                    let _ = welcome_tx.send(w.message);
                })
                .connect()
                .await
                .expect("connect");
            let public_key = client.public_key().expect("a sealed client has a key");
            assert!(!client.is_sealed());
            assert!(
                Client::builder("ws://127.0.0.1:1")
                    .connect_lazy()
                    .unwrap()
                    .public_key()
                    .is_none()
            );

            let auth = Authenticate {
                token: "secret".into(),
                public_key: public_key.clone(),
            };
            let ok = within("the authentication reply", client.request(&auth))
                .await
                .expect("authenticated");
            assert!(!ok.salt.is_empty() && !ok.server_public_key.is_empty());
            assert!(
                client.is_sealed(),
                "sealed by the time the reply is handed on"
            );
            assert_eq!(
                within("the server's report", reports.recv()).await.unwrap(),
                format!("key:{public_key}")
            );
            assert_eq!(
                within("a welcome", welcomes.recv()).await.unwrap(),
                "sealed hello"
            );
            assert_eq!(
                within("a welcome", welcomes.recv()).await.unwrap(),
                "sealed again"
            );

            let pong = within("the pong", client.request(&Ping { text: "hi".into() }))
                .await
                .expect("pong");
            assert_eq!(pong.reply, "sealed: hi");
            assert_eq!(
                within("the server's report", reports.recv()).await.unwrap(),
                "first done"
            );

            // The server dropped the connection; the client reconnects, in clear.
            assert_eq!(
                within("the server's report", reports.recv()).await.unwrap(),
                "reconnected"
            );
            within("reopened", client.wait_open()).await.expect("open");
            assert!(!client.is_sealed());
            assert_eq!(client.public_key().as_deref(), Some(public_key.as_str()));
            within("the second authentication reply", client.request(&auth))
                .await
                .expect("authenticated again");
            assert!(client.is_sealed());
            assert_eq!(
                within("a welcome", welcomes.recv()).await.unwrap(),
                "second connection"
            );
            let pong = within(
                "the second pong",
                client.request(&Ping {
                    text: "again".into(),
                }),
            )
            .await
            .expect("pong");
            assert_eq!(pong.reply, "second");
            assert_eq!(
                within("the server's report", reports.recv()).await.unwrap(),
                "second done"
            );
            within("the server task", server)
                .await
                .expect("server checks");
            assert!(
                welcomes.try_recv().is_err(),
                "the frame in clear was dropped"
            );
            client.close().await;
        });
    }
}
