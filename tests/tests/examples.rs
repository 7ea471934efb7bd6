//! The example servers behave as EXAMPLES.md says: their routers over real sockets, and the chat
//! example's real binary.

mod support;

#[allow(dead_code)]
#[path = "../../examples/chat.rs"]
mod chat;

#[allow(dead_code)]
#[path = "../../examples/rpc.rs"]
mod rpc;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::binary::{KillOnDrop, example_binary};
use support::{Client, TestServer, WAIT, bounded, serve};
use ws_kit::ServeOptions;

const ROOM: &str = "0190f3a4-8a4e-7cc0-9a3e-2f1f0d1c2b3a";
const ROOM2: &str = "0190f3a4-8a4e-7cc0-9a3e-2f1f0d1c2b3b";

// ---------------------------------------------------------------------------------------------
// chat

async fn chat_server() -> TestServer<chat::ChatData> {
    serve(chat::router(), ServeOptions::new()).await
}

/// Connects and checks the greeting.
async fn chat_client<D: Send + Sync + 'static>(server: &TestServer<D>) -> Client {
    let mut client = server.client().await;
    assert_eq!(
        client.recv().await,
        json!({"type": "WELCOME", "meta": {}, "payload": {"message": "Connected to chat server"}})
    );
    client
}

async fn join(client: &mut Client, room: &str, username: &str) {
    client
        .send(json!({"type": "JOIN_ROOM", "payload": {"roomId": room, "username": username}}))
        .await;
}

fn user_joined(username: &str, count: usize) -> Value {
    json!({"type": "USER_JOINED", "payload": {"username": username, "userCount": count}})
}

fn user_left(username: &str, count: usize) -> Value {
    json!({"type": "USER_LEFT", "payload": {"username": username, "userCount": count}})
}

fn new_message(username: &str, text: &str) -> Value {
    json!({"type": "NEW_MESSAGE", "payload": {"username": username, "text": text}})
}

/// Joins and waits for the joiner's own `USER_JOINED`.
async fn joined(client: &mut Client, room: &str, username: &str, count: usize) {
    join(client, room, username).await;
    assert_eq!(client.recv().await, user_joined(username, count));
}

/// A frame the server answers at once with an error (SEND_MESSAGE to a room never joined): every
/// frame queued for `client` before it arrives first. Asserts the error is the next frame.
async fn barrier(client: &mut Client) {
    const NOWHERE: &str = "0190f3a4-0000-7000-8000-000000000000";
    client
        .send(json!({"type": "SEND_MESSAGE", "payload": {"roomId": NOWHERE, "text": "?"}, "meta": {"correlationId": "barrier"}}))
        .await;
    let frame = client.recv().await;
    assert_eq!(
        frame["meta"]["correlationId"], "barrier",
        "expected no other frame, got {frame}"
    );
    assert_eq!(frame["payload"]["code"], "FAILED_PRECONDITION");
}

#[test]
fn chat_welcome_on_open() {
    bounded(async {
        let server = chat_server().await;
        chat_client(&server).await;
    });
}

/// JOIN_ROOM publishes USER_JOINED {username, userCount} to the room, the joiner included;
/// joining twice counts once; connections outside the room get nothing.
#[test]
fn chat_join_room() {
    bounded(async {
        let server = chat_server().await;
        let mut ada = chat_client(&server).await;
        let mut bob = chat_client(&server).await;
        let mut eve = chat_client(&server).await;

        joined(&mut ada, ROOM, "ada", 1).await;
        join(&mut bob, ROOM, "bob").await;
        assert_eq!(bob.recv().await, user_joined("bob", 2));
        assert_eq!(ada.recv().await, user_joined("bob", 2));

        join(&mut ada, ROOM, "ada").await;
        assert_eq!(ada.recv().await, user_joined("ada", 2));
        assert_eq!(bob.recv().await, user_joined("ada", 2));

        barrier(&mut eve).await;
    });
}

/// SEND_MESSAGE publishes NEW_MESSAGE {username, text} to the room's members, the sender included.
#[test]
fn chat_send_message() {
    bounded(async {
        let server = chat_server().await;
        let mut ada = chat_client(&server).await;
        let mut bob = chat_client(&server).await;
        let mut eve = chat_client(&server).await;
        joined(&mut ada, ROOM, "ada", 1).await;
        joined(&mut bob, ROOM, "bob", 2).await;
        assert_eq!(ada.recv().await, user_joined("bob", 2));
        joined(&mut eve, ROOM2, "eve", 1).await;

        ada.send(json!({"type": "SEND_MESSAGE", "payload": {"roomId": ROOM, "text": "hello"}}))
            .await;
        assert_eq!(ada.recv().await, new_message("ada", "hello"));
        assert_eq!(bob.recv().await, new_message("ada", "hello"));
        barrier(&mut eve).await;
    });
}

/// SEND_MESSAGE to a room not joined is an ERROR FAILED_PRECONDITION, echoing the correlation id.
#[test]
fn chat_send_to_unjoined_room_fails() {
    bounded(async {
        let server = chat_server().await;
        let mut ada = chat_client(&server).await;
        joined(&mut ada, ROOM2, "ada", 1).await;

        ada.send(json!({"type": "SEND_MESSAGE", "payload": {"roomId": ROOM, "text": "hi"}, "meta": {"correlationId": "c9"}}))
            .await;
        let error = ada.recv().await;
        assert_eq!(error["type"], "ERROR");
        assert_eq!(error["meta"], json!({"correlationId": "c9"}));
        assert_eq!(error["payload"]["code"], "FAILED_PRECONDITION");

        ada.send(json!({"type": "SEND_MESSAGE", "payload": {"roomId": ROOM, "text": "hi"}}))
            .await;
        let error = ada.recv().await;
        assert_eq!(error["type"], "ERROR");
        assert_eq!(error["meta"], json!({}));
        assert_eq!(error["payload"]["code"], "FAILED_PRECONDITION");
    });
}

/// LEAVE_ROOM unsubscribes, then publishes USER_LEFT to the others; the leaver does not get it,
/// nor later messages of the room.
#[test]
fn chat_leave_room() {
    bounded(async {
        let server = chat_server().await;
        let mut ada = chat_client(&server).await;
        let mut bob = chat_client(&server).await;
        joined(&mut ada, ROOM, "ada", 1).await;
        joined(&mut bob, ROOM, "bob", 2).await;
        assert_eq!(ada.recv().await, user_joined("bob", 2));

        bob.send(json!({"type": "LEAVE_ROOM", "payload": {"roomId": ROOM}}))
            .await;
        assert_eq!(ada.recv().await, user_left("bob", 1));
        barrier(&mut bob).await;

        ada.send(json!({"type": "SEND_MESSAGE", "payload": {"roomId": ROOM, "text": "alone"}}))
            .await;
        assert_eq!(ada.recv().await, new_message("ada", "alone"));
        barrier(&mut bob).await;
    });
}

/// A closing connection's every room gets USER_LEFT (counted without it).
#[test]
fn chat_close_sends_user_left_to_every_room() {
    bounded(async {
        let server = chat_server().await;
        let mut ada = chat_client(&server).await;
        let mut bob = chat_client(&server).await;
        let mut eve = chat_client(&server).await;
        joined(&mut bob, ROOM, "bob", 1).await;
        joined(&mut eve, ROOM2, "eve", 1).await;
        joined(&mut ada, ROOM, "ada", 2).await;
        joined(&mut ada, ROOM2, "ada", 2).await;
        assert_eq!(bob.recv().await, user_joined("ada", 2));
        assert_eq!(eve.recv().await, user_joined("ada", 2));

        ada.close(1000).await;
        assert_eq!(bob.recv().await, user_left("ada", 1));
        assert_eq!(eve.recv().await, user_left("ada", 1));
        barrier(&mut bob).await;
        barrier(&mut eve).await;
    });
}

/// Validation: roomId must be a UUID, username 1..=20 chars, text 1..=500 chars; failures are
/// ERROR INVALID_ARGUMENT with the issue's path.
#[test]
fn chat_validation() {
    bounded(async {
        let server = chat_server().await;
        let mut ada = chat_client(&server).await;

        let cases = [
            (
                json!({"type": "JOIN_ROOM", "payload": {"roomId": "not-a-uuid", "username": "ada"}}),
                "payload.roomId",
            ),
            (
                json!({"type": "JOIN_ROOM", "payload": {"roomId": ROOM, "username": "u".repeat(21)}}),
                "payload.username",
            ),
            (
                json!({"type": "JOIN_ROOM", "payload": {"roomId": ROOM, "username": ""}}),
                "payload.username",
            ),
            (
                json!({"type": "SEND_MESSAGE", "payload": {"roomId": "42", "text": "x"}}),
                "payload.roomId",
            ),
            (
                json!({"type": "SEND_MESSAGE", "payload": {"roomId": ROOM, "text": "t".repeat(501)}}),
                "payload.text",
            ),
            (
                json!({"type": "LEAVE_ROOM", "payload": {"roomId": "room-1"}}),
                "payload.roomId",
            ),
        ];
        for (i, (mut frame, path)) in cases.into_iter().enumerate() {
            let cid = format!("v{i}");
            frame["meta"] = json!({"correlationId": cid});
            ada.send(frame.clone()).await;
            let error = ada.recv().await;
            assert_eq!(error["type"], "ERROR", "{frame} gave {error}");
            assert_eq!(error["meta"], json!({"correlationId": cid}));
            assert_eq!(error["payload"]["code"], "INVALID_ARGUMENT", "{frame}");
            let issues = error["payload"]["details"]["issues"]
                .as_array()
                .expect("details.issues");
            let paths: Vec<_> = issues.iter().map(|i| i["path"].clone()).collect();
            assert_eq!(paths, vec![json!(path)], "{frame}");
        }

        // The limits are inclusive.
        joined(&mut ada, ROOM, &"u".repeat(20), 1).await;
        ada.send(
            json!({"type": "SEND_MESSAGE", "payload": {"roomId": ROOM, "text": "t".repeat(500)}}),
        )
        .await;
        assert_eq!(
            ada.recv().await,
            new_message(&"u".repeat(20), &"t".repeat(500))
        );
    });
}

// ---------------------------------------------------------------------------------------------
// rpc

async fn rpc_client() -> (TestServer<()>, Client) {
    let server = serve(rpc::router(), ServeOptions::new()).await;
    let client = server.client().await;
    (server, client)
}

fn with_cid(mut frame: Value, cid: &str) -> Value {
    frame["meta"]["correlationId"] = json!(cid);
    frame
}

#[test]
fn rpc_ping() {
    bounded(async {
        let (_server, mut client) = rpc_client().await;
        client
            .send(with_cid(
                json!({"type": "PING", "payload": {"text": "hello"}}),
                "c1",
            ))
            .await;
        assert_eq!(
            client.recv().await,
            json!({"type": "PONG", "meta": {"correlationId": "c1"}, "payload": {"reply": "Got: hello"}})
        );
    });
}

/// GET_USER 1 and 2 are Alice and Bob; any other id is RPC_ERROR NOT_FOUND with details {id}.
#[test]
fn rpc_get_user() {
    bounded(async {
        let (_server, mut client) = rpc_client().await;
        let users = [
            ("1", "Alice", "alice@example.com"),
            ("2", "Bob", "bob@example.com"),
        ];
        for (id, name, email) in users {
            client
                .send(with_cid(
                    json!({"type": "GET_USER", "payload": {"id": id}}),
                    id,
                ))
                .await;
            assert_eq!(
                client.recv().await,
                json!({"type": "USER_DATA", "meta": {"correlationId": id}, "payload": {"name": name, "email": email}})
            );
        }
        client
            .send(with_cid(
                json!({"type": "GET_USER", "payload": {"id": "3"}}),
                "u3",
            ))
            .await;
        let error = client.recv().await;
        assert_eq!(error["type"], "RPC_ERROR");
        assert_eq!(error["meta"], json!({"correlationId": "u3"}));
        assert_eq!(error["payload"]["code"], "NOT_FOUND");
        assert_eq!(error["payload"]["details"], json!({"id": "3"}));
    });
}

fn progress(cid: &str, n: u32) -> Value {
    json!({"type": "$ws:rpc-progress", "meta": {"correlationId": cid}, "payload": {"n": n, "done": false}})
}

/// COUNTDOWN sends progress n = from..=1, then the terminal COUNTDOWN_RESULT {n: 0, done: true}.
#[test]
fn rpc_countdown() {
    bounded(async {
        let (_server, mut client) = rpc_client().await;
        client
            .send(with_cid(
                json!({"type": "COUNTDOWN", "payload": {"from": 3, "intervalMs": 10}}),
                "cd",
            ))
            .await;
        for n in (1..=3).rev() {
            assert_eq!(client.recv().await, progress("cd", n));
        }
        assert_eq!(
            client.recv().await,
            json!({"type": "COUNTDOWN_RESULT", "meta": {"correlationId": "cd"}, "payload": {"n": 0, "done": true}})
        );
        client.expect_silence(Duration::from_millis(100)).await;
    });
}

/// Reads progress frames (descending from `next`) until the terminal; returns it.
async fn progress_until_terminal(client: &mut Client, cid: &str, mut next: u32) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["type"] != "$ws:rpc-progress" {
            return frame;
        }
        assert_eq!(frame, progress(cid, next));
        next -= 1;
    }
}

/// `$ws:abort` mid-countdown: the terminal is RPC_ERROR CANCELLED and nothing follows it.
#[test]
fn rpc_countdown_abort() {
    bounded(async {
        let (_server, mut client) = rpc_client().await;
        client
            .send(with_cid(
                json!({"type": "COUNTDOWN", "payload": {"from": 100, "intervalMs": 20}}),
                "cd",
            ))
            .await;
        assert_eq!(client.recv().await, progress("cd", 100));
        assert_eq!(client.recv().await, progress("cd", 99));
        client
            .send(json!({"type": "$ws:abort", "meta": {"correlationId": "cd"}}))
            .await;

        let terminal = progress_until_terminal(&mut client, "cd", 98).await;
        assert_eq!(terminal["type"], "RPC_ERROR", "{terminal}");
        assert_eq!(terminal["meta"], json!({"correlationId": "cd"}));
        assert_eq!(terminal["payload"]["code"], "CANCELLED");
        // Several intervals pass without another frame for the request.
        client.expect_silence(Duration::from_millis(150)).await;

        client
            .send(with_cid(
                json!({"type": "PING", "payload": {"text": "still here"}}),
                "p",
            ))
            .await;
        assert_eq!(client.recv().await["payload"]["reply"], "Got: still here");
    });
}

/// `meta.timeoutMs` bounds the countdown: the terminal is RPC_ERROR DEADLINE_EXCEEDED.
#[test]
fn rpc_countdown_deadline() {
    bounded(async {
        let (_server, mut client) = rpc_client().await;
        let started = Instant::now();
        client
            .send(json!({
                "type": "COUNTDOWN",
                "payload": {"from": 100, "intervalMs": 30},
                "meta": {"correlationId": "cd", "timeoutMs": 100}
            }))
            .await;
        let terminal = progress_until_terminal(&mut client, "cd", 100).await;
        let elapsed = started.elapsed();
        assert_eq!(terminal["type"], "RPC_ERROR", "{terminal}");
        assert_eq!(terminal["meta"], json!({"correlationId": "cd"}));
        assert_eq!(terminal["payload"]["code"], "DEADLINE_EXCEEDED");
        assert!(
            elapsed >= Duration::from_millis(90),
            "deadline hit after only {elapsed:?}"
        );
        client.expect_silence(Duration::from_millis(150)).await;
    });
}

// ---------------------------------------------------------------------------------------------
// The real binary.

/// `PORT=0 chat` prints exactly one line `listening on ws://127.0.0.1:<port>` and greets a client.
#[test]
fn chat_binary_listens_and_welcomes() {
    use std::io::BufRead;
    let binary = example_binary("chat", &[]);
    let child = std::process::Command::new(&binary)
        .env("PORT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the chat example");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let line = lines
        .recv_timeout(WAIT * 2)
        .expect("the example printed no line");
    let port: u16 = line
        .strip_prefix("listening on ws://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert_ne!(port, 0);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = tokio::time::timeout(WAIT, Client::connect(&format!("ws://127.0.0.1:{port}/any/path")))
            .await
            .expect("connect timed out");
        assert_eq!(
            client.recv().await,
            json!({"type": "WELCOME", "meta": {}, "payload": {"message": "Connected to chat server"}})
        );
    });

    drop(child); // kill it: stdout ends
    reader.join().expect("stdout reader");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(rest.is_empty(), "more than one line on stdout: {rest:?}");
}
