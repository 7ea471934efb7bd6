//! Guarded connections over real sockets: authentication at upgrade (asynchronous hooks) and
//! in-band (docs/protocol.md 7), sealed delivery (7b), the `guarded` example as EXAMPLES.md
//! describes it, and the defaults of server-made errors (4).

mod support;

#[allow(dead_code)]
#[path = "../../examples/guarded.rs"]
mod guarded;

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Client, TestServer, bounded, bounded_multi_thread, refused, request, serve};
use ws_kit::rate_limit::{Bucket, RateLimit};
use ws_kit::seal::{KeyPair, SealKey};
use ws_kit::{
    Ctx, InBandAuth, Message, Rejection, Router, ServeOptions, WsError, close_code, handler,
    query_param, routes,
};

async fn guarded_server() -> TestServer<guarded::Session> {
    let limit = RateLimit::in_memory("guarded", Bucket::new(2, 1.0)).by_user();
    serve(guarded::router(limit), guarded::options(0)).await
}

fn unauthenticated(cid: Option<&str>) -> Value {
    unauthenticated_by("AUTHENTICATE", cid)
}

fn unauthenticated_by(tag: &str, cid: Option<&str>) -> Value {
    let (ty, meta) = match cid {
        Some(cid) => ("RPC_ERROR", json!({ "correlationId": cid })),
        None => ("ERROR", json!({})),
    };
    json!({"type": ty, "meta": meta, "payload": {
        "code": "UNAUTHENTICATED",
        "message": format!("not authenticated: send `{tag}` first"),
    }})
}

async fn authenticate(client: &mut Client, token: &str, cid: &str) -> Value {
    request(
        client,
        json!({"type": "AUTHENTICATE", "payload": {"token": token}}),
        cid,
    )
    .await
}

async fn whoami(client: &mut Client, cid: &str) -> Value {
    request(client, json!({"type": "WHOAMI"}), cid).await
}

#[test]
fn upgrade_with_a_token_is_authenticated_at_once() {
    bounded(async {
        let server = guarded_server().await;
        let url = format!("{}/?access_token=alice-token", server.url());
        let mut alice = Client::connect(&url).await;
        let client_id = alice.headers["x-client-id"].to_str().unwrap().to_string();
        assert_eq!(
            whoami(&mut alice, "w1").await,
            json!({"type": "WHOAMI_RESULT", "meta": {"correlationId": "w1"},
                   "payload": {"userId": "alice", "clientId": client_id}})
        );
        // A bearer subprotocol works the same way, and is echoed.
        let mut bob = Client::connect_with(
            &server.url(),
            &[("sec-websocket-protocol", "bearer.bob-token")],
        )
        .await
        .unwrap();
        assert_eq!(bob.headers["sec-websocket-protocol"], "bearer.bob-token");
        assert_eq!(whoami(&mut bob, "w2").await["payload"]["userId"], "bob");
        // Already authenticated: AUTHENTICATED again, without keys, nothing else changes.
        assert_eq!(
            authenticate(&mut bob, "alice-token", "a1").await,
            json!({"type": "AUTHENTICATED", "meta": {"correlationId": "a1"}, "payload": {"userId": "bob"}})
        );
        assert_eq!(whoami(&mut bob, "w3").await["payload"]["userId"], "bob");
        // A wrong token: 401, no upgrade.
        let wrong = format!("{}/?access_token=nope", server.url());
        assert_eq!(
            refused(&wrong, &[]).await,
            (401, "Unauthorized".to_string())
        );
        let (status, _) =
            refused(&server.url(), &[("sec-websocket-protocol", "bearer.nope")]).await;
        assert_eq!(status, 401);
    });
}

#[test]
fn in_band_authentication_gates_every_other_message() {
    bounded(async {
        let server = guarded_server().await;
        let mut client = server.client().await;
        // Before authentication: any other message, known or not, valid or not, gets
        // UNAUTHENTICATED before validation; the connection stays open.
        client
            .send(json!({"type": "WHOAMI", "meta": {"correlationId": "w1"}}))
            .await;
        assert_eq!(client.recv().await, unauthenticated(Some("w1")));
        client
            .send(json!({"type": "SEND_TO_USER", "payload": {"userId": "", "bogus": 1}}))
            .await;
        assert_eq!(client.recv().await, unauthenticated(None));
        client
            .send(json!({"type": "NO_SUCH_TYPE", "extra": true, "meta": {"correlationId": "n1"}}))
            .await;
        assert_eq!(client.recv().await, unauthenticated(Some("n1")));
        // `$ws:abort` is ignored; `__heartbeat` answered.
        client
            .send(json!({"type": "$ws:abort", "meta": {"correlationId": "w1"}}))
            .await;
        client.send(json!({"type": "__heartbeat"})).await;
        assert_eq!(client.recv().await["type"], "__heartbeat_ack");
        // Not an envelope (not JSON, a repeated or non-string type): INVALID_ARGUMENT, never
        // dispatched.
        for text in [
            "not json",
            r#"{"type":"WHOAMI","type":"WHOAMI","meta":{"correlationId":"x"}}"#,
            r#"{"type":5}"#,
            r#"["WHOAMI"]"#,
        ] {
            client.send_text(text).await;
            let reply = client.recv().await;
            assert_eq!(reply["type"], "ERROR", "{text}: {reply}");
            assert_eq!(
                reply["payload"]["code"], "INVALID_ARGUMENT",
                "{text}: {reply}"
            );
        }
        // A malformed authentication request: INVALID_ARGUMENT, and it may try again.
        client
            .send(json!({"type": "AUTHENTICATE", "payload": {}, "meta": {"correlationId": "a0"}}))
            .await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "RPC_ERROR");
        assert_eq!(reply["payload"]["code"], "INVALID_ARGUMENT");
        // Success: no key, so no serverPublicKey or salt (absent, not null).
        assert_eq!(
            authenticate(&mut client, "alice-token", "a1").await,
            json!({"type": "AUTHENTICATED", "meta": {"correlationId": "a1"}, "payload": {"userId": "alice"}})
        );
        assert_eq!(
            whoami(&mut client, "w2").await["payload"]["userId"],
            "alice"
        );
    });
}

#[derive(Message)]
#[rpc(response = LoggedIn)]
struct SlowLogin {
    token: String,
}

#[derive(Message)]
struct LoggedIn {}

#[derive(Message)]
#[rpc(response = MeResult)]
struct Me {}

#[derive(Message)]
struct MeResult {
    user: String,
}

/// A token service that takes 300 ms.
#[handler]
async fn slow_login(ctx: Ctx<SlowLogin>) -> Result<LoggedIn, WsError> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    if ctx.payload.token != "ok" {
        return Err(WsError::unauthenticated("invalid token"));
    }
    ctx.set_user_id("u1").await?;
    Ok(LoggedIn {})
}

#[handler]
async fn me(ctx: Ctx<Me>) -> Result<MeResult, WsError> {
    Ok(MeResult {
        user: ctx.user_id().unwrap_or_default(),
    })
}

async fn slow_login_server(auth: InBandAuth) -> TestServer<()> {
    let router = Router::new()
        .in_band_auth(slow_login, auth)
        .routes(routes![me]);
    serve(router, ServeOptions::new()).await
}

fn slow_login_frame(token: &str, cid: &str) -> Value {
    json!({"type": "SLOW_LOGIN", "payload": {"token": token}, "meta": {"correlationId": cid}})
}

#[test]
fn messages_during_an_attempt_are_unauthenticated_and_attempts_take_turns() {
    bounded(async {
        let server = slow_login_server(InBandAuth::new()).await;
        let mut client = server.client().await;
        client.send(slow_login_frame("ok", "a1")).await;
        client.send(slow_login_frame("ok", "a2")).await;
        client
            .send(json!({"type": "ME", "meta": {"correlationId": "m1"}}))
            .await;
        // `$ws:abort` is ignored before authentication: a1 is not cancelled.
        client
            .send(json!({"type": "$ws:abort", "meta": {"correlationId": "a1"}}))
            .await;
        client.send(json!({"type": "__heartbeat"})).await;
        // The rule of docs/protocol.md 7: ME is not authenticated yet; the heartbeat is answered.
        assert_eq!(
            client.recv().await,
            unauthenticated_by("SLOW_LOGIN", Some("m1"))
        );
        assert_eq!(client.recv().await["type"], "__heartbeat_ack");
        // The second attempt waited for the first, then ran as an authenticated request.
        let first = client.recv().await;
        assert_eq!(
            (&first["type"], &first["meta"]["correlationId"]),
            (&json!("LOGGED_IN"), &json!("a1"))
        );
        let second = client.recv().await;
        assert_eq!(
            (&second["type"], &second["meta"]["correlationId"]),
            (&json!("LOGGED_IN"), &json!("a2"))
        );
        assert_eq!(
            request(&mut client, json!({"type": "ME"}), "m2").await["payload"]["user"],
            "u1"
        );
    });
}

#[test]
fn hold_until_authenticated_dispatches_what_waited_behind_the_attempt() {
    bounded(async {
        let server = slow_login_server(InBandAuth::new().hold_until_authenticated()).await;
        let mut client = server.client().await;
        client.send(slow_login_frame("ok", "a1")).await;
        client
            .send(json!({"type": "ME", "meta": {"correlationId": "m1"}}))
            .await;
        client.send(json!({"type": "__heartbeat"})).await;
        // The heartbeat is never held; ME waits for the attempt and runs authenticated.
        assert_eq!(client.recv().await["type"], "__heartbeat_ack");
        assert_eq!(client.recv().await["type"], "LOGGED_IN");
        let reply = client.recv().await;
        assert_eq!(
            (&reply["type"], &reply["payload"]["user"]),
            (&json!("ME_RESULT"), &json!("u1")),
            "{reply}"
        );
        // Behind a failing attempt, the held frame is never dispatched: 4003 comes first.
        let mut other = server.client().await;
        other.send(slow_login_frame("nope", "a2")).await;
        other
            .send(json!({"type": "ME", "meta": {"correlationId": "m2"}}))
            .await;
        assert_eq!(
            other.recv().await,
            json!({"type": "RPC_ERROR", "meta": {"correlationId": "a2"},
                   "payload": {"code": "UNAUTHENTICATED", "message": "invalid token"}})
        );
        assert_eq!(other.expect_close().await, Some(close_code::AUTH_FAILED));
    });
}

#[test]
fn a_rejected_attempt_closes_with_4003_and_silence_with_4001() {
    bounded(async {
        let server = guarded_server().await;
        let mut client = server.client().await;
        assert_eq!(
            authenticate(&mut client, "wrong", "a1").await,
            json!({"type": "RPC_ERROR", "meta": {"correlationId": "a1"},
                   "payload": {"code": "UNAUTHENTICATED", "message": "invalid token"}})
        );
        match client.next_event().await {
            support::Event::Closed(code, reason) => {
                assert_eq!(code, Some(4003));
                assert_eq!(reason, "Authentication failed");
            }
            other => panic!("expected the close, got {other:?}"),
        }
        // 2 s from the open, not extended by traffic (heartbeats keep coming).
        let mut silent = server.client().await;
        let opened = Instant::now();
        for _ in 0..3 {
            silent.send(json!({"type": "__heartbeat"})).await;
            assert_eq!(silent.recv().await["type"], "__heartbeat_ack");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match silent.next_event().await {
            support::Event::Closed(code, reason) => {
                assert_eq!(code, Some(4001));
                assert_eq!(reason, "Authentication timeout");
            }
            other => panic!("expected the close, got {other:?}"),
        }
        let after = opened.elapsed();
        assert!(
            after >= Duration::from_millis(1900) && after < Duration::from_secs(4),
            "closed after {after:?}"
        );
    });
}

#[test]
fn direct_messages_reach_every_session_of_a_user() {
    bounded(async {
        let server = guarded_server().await;
        let url = |token: &str| format!("{}/?access_token={token}", server.url());
        let mut alice1 = Client::connect(&url("alice-token")).await;
        let mut alice2 = server.client().await;
        assert_eq!(
            authenticate(&mut alice2, "alice-token", "a1").await["type"],
            "AUTHENTICATED"
        );
        let mut bob = Client::connect(&url("bob-token")).await;
        bob.send(json!({"type": "SEND_TO_USER", "payload": {"userId": "alice", "text": "hi"}}))
            .await;
        let direct =
            json!({"type": "DIRECT", "meta": {}, "payload": {"from": "bob", "text": "hi"}});
        assert_eq!(alice1.recv().await, direct);
        assert_eq!(alice2.recv().await, direct);
        // To oneself: every own session, the sender's included.
        alice1
            .send(json!({"type": "SEND_TO_USER", "payload": {"userId": "alice", "text": "me"}}))
            .await;
        let own = json!({"type": "DIRECT", "meta": {}, "payload": {"from": "alice", "text": "me"}});
        assert_eq!(alice1.recv().await, own);
        assert_eq!(alice2.recv().await, own);
        bob.expect_silence(Duration::from_millis(100)).await;
    });
}

#[test]
fn limited_per_user_shared_by_sessions_not_by_users() {
    bounded(async {
        let server = guarded_server().await;
        let url = |token: &str| format!("{}/?access_token={token}", server.url());
        let mut alice1 = Client::connect(&url("alice-token")).await;
        let mut alice2 = Client::connect(&url("alice-token")).await;
        let mut bob = Client::connect(&url("bob-token")).await;
        let limited = || json!({"type": "LIMITED"});
        assert_eq!(
            request(&mut alice1, limited(), "l1").await["type"],
            "LIMITED_OK"
        );
        assert_eq!(
            request(&mut alice2, limited(), "l2").await["type"],
            "LIMITED_OK"
        );
        let refused = request(&mut alice1, limited(), "l3").await;
        assert_eq!(refused["type"], "RPC_ERROR");
        let payload = &refused["payload"];
        assert_eq!(payload["code"], "RESOURCE_EXHAUSTED");
        assert_eq!(
            payload["details"],
            json!({"cost": 1, "capacity": 2, "remaining": 0})
        );
        let retry = payload["retryAfterMs"].as_u64().expect("retryAfterMs");
        assert!(retry > 0 && retry <= 1000, "retryAfterMs {retry}");
        // Bob's bucket is his own.
        assert_eq!(
            request(&mut bob, limited(), "l4").await["type"],
            "LIMITED_OK"
        );
        // COSTLY costs 5 against a capacity of 2: never.
        let costly = request(&mut bob, json!({"type": "COSTLY"}), "c1").await;
        assert_eq!(costly["payload"]["code"], "FAILED_PRECONDITION", "{costly}");
        assert_eq!(costly["payload"]["details"]["cost"], 5);
        assert_eq!(costly["payload"]["details"]["capacity"], 2);
        // A refused message spends nothing: after the retry delay, one token is back.
        tokio::time::sleep(Duration::from_millis(retry + 20)).await;
        assert_eq!(
            request(&mut alice2, limited(), "l5").await["type"],
            "LIMITED_OK"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Sealed delivery (docs/protocol.md 7b).

/// Authenticates with a fresh key pair; returns the session key the reply's keys give.
async fn authenticate_sealed(client: &mut Client, keys: &KeyPair) -> SealKey {
    let reply = request(
        client,
        json!({"type": "AUTHENTICATE", "payload": {"token": "alice-token", "publicKey": keys.public_key_base64()}}),
        "a1",
    )
    .await;
    // The reply itself is in clear.
    assert_eq!(reply["type"], "AUTHENTICATED", "{reply}");
    assert_eq!(reply["payload"]["userId"], "alice");
    let server_key = reply["payload"]["serverPublicKey"].as_str().unwrap();
    let salt = reply["payload"]["salt"].as_str().unwrap();
    keys.agree(server_key, salt)
        .expect("the server's key agrees")
}

/// The next frame, which must be sealed; opened.
async fn recv_sealed(client: &mut Client, key: &SealKey) -> Value {
    let frame = client.recv().await;
    assert_eq!(
        frame["type"], "$ws:encrypted",
        "expected a sealed frame, got {frame}"
    );
    assert_eq!(
        frame.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["payload", "type"]
    );
    let text = key.open(&frame.to_string()).expect("the frame opens");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn sealed_delivery_both_directions() {
    bounded(async {
        let server = guarded_server().await;
        let mut client = server.client().await;
        let keys = KeyPair::generate();
        let key = authenticate_sealed(&mut client, &keys).await;
        // Clear requests are accepted until the client seals one; replies are sealed.
        client
            .send(json!({"type": "WHOAMI", "meta": {"correlationId": "w1"}}))
            .await;
        let who = recv_sealed(&mut client, &key).await;
        assert_eq!(who["type"], "WHOAMI_RESULT");
        assert_eq!(who["meta"]["correlationId"], "w1");
        // Every server frame: errors and heartbeat acks too; each with its own IV.
        client.send(json!({"type": "__heartbeat"})).await;
        assert_eq!(
            recv_sealed(&mut client, &key).await["type"],
            "__heartbeat_ack"
        );
        let mut ivs = std::collections::HashSet::new();
        for i in 0..5 {
            let envelope = json!({"type": "WHOAMI", "meta": {"correlationId": format!("s{i}")}});
            client.send_text(&key.seal(&envelope.to_string())).await;
            let frame = client.recv().await;
            assert!(ivs.insert(frame["payload"]["iv"].as_str().unwrap().to_string()));
            let text = key.open(&frame.to_string()).unwrap();
            let reply: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(reply["meta"]["correlationId"], format!("s{i}"));
        }
        // Publications to a sealed subscriber are sealed for it (DIRECT to itself).
        let direct = json!({"type": "SEND_TO_USER", "payload": {"userId": "alice", "text": "x"}});
        client.send_text(&key.seal(&direct.to_string())).await;
        assert_eq!(recv_sealed(&mut client, &key).await["type"], "DIRECT");
        // A tampered frame: INVALID_ARGUMENT (no correlation id), dropped, the connection lives.
        let mut tampered: Value = serde_json::from_str(
            &key.seal(&json!({"type": "WHOAMI", "meta": {"correlationId": "t1"}}).to_string()),
        )
        .unwrap();
        let data = tampered["payload"]["data"].as_str().unwrap().to_string();
        let flipped = if data.starts_with('A') { "B" } else { "A" };
        tampered["payload"]["data"] = Value::from(format!("{flipped}{}", &data[1..]));
        client.send_text(&tampered.to_string()).await;
        let err = recv_sealed(&mut client, &key).await;
        assert_eq!(err["type"], "ERROR");
        assert_eq!(err["payload"]["code"], "INVALID_ARGUMENT");
        assert!(err["meta"].get("correlationId").is_none(), "{err}");
        // After a sealed frame, a clear one is rejected the same way.
        client
            .send(json!({"type": "WHOAMI", "meta": {"correlationId": "c1"}}))
            .await;
        let err = recv_sealed(&mut client, &key).await;
        assert_eq!(err["payload"]["code"], "INVALID_ARGUMENT");
        let envelope = json!({"type": "WHOAMI", "meta": {"correlationId": "ok"}});
        client.send_text(&key.seal(&envelope.to_string())).await;
        assert_eq!(
            recv_sealed(&mut client, &key).await["meta"]["correlationId"],
            "ok"
        );
    });
}

#[test]
fn sealed_and_clear_subscribers_of_one_publication() {
    bounded(async {
        let server = guarded_server().await;
        let mut sealed = server.client().await;
        let keys = KeyPair::generate();
        let key = authenticate_sealed(&mut sealed, &keys).await;
        let url = format!("{}/?access_token=alice-token", server.url());
        let mut clear = Client::connect(&url).await;
        let mut bob = Client::connect(&format!("{}/?access_token=bob-token", server.url())).await;
        bob.send(json!({"type": "SEND_TO_USER", "payload": {"userId": "alice", "text": "both"}}))
            .await;
        let direct =
            json!({"type": "DIRECT", "meta": {}, "payload": {"from": "bob", "text": "both"}});
        assert_eq!(clear.recv().await, direct);
        assert_eq!(recv_sealed(&mut sealed, &key).await, direct);
    });
}

#[test]
fn an_invalid_public_key_fails_the_attempt_without_closing() {
    bounded(async {
        let server = guarded_server().await;
        let mut client = server.client().await;
        let reply = request(
            &mut client,
            json!({"type": "AUTHENTICATE", "payload": {"token": "alice-token", "publicKey": "bm90IGEga2V5"}}),
            "a1",
        )
        .await;
        assert_eq!(reply["payload"]["code"], "INVALID_ARGUMENT", "{reply}");
        // Nothing changed: still not authenticated, and still in clear.
        client
            .send(json!({"type": "WHOAMI", "meta": {"correlationId": "w1"}}))
            .await;
        assert_eq!(client.recv().await, unauthenticated(Some("w1")));
        assert_eq!(
            authenticate(&mut client, "alice-token", "a2").await["type"],
            "AUTHENTICATED"
        );
    });
}

#[derive(Message)]
#[rpc(response = Welcome)]
struct Login {
    public_key: Option<String>,
}

#[derive(Message)]
struct Welcome {
    server_public_key: Option<String>,
    salt: Option<String>,
}

#[handler]
async fn login(ctx: Ctx<Login>) -> Result<Welcome, WsError> {
    let offer = match &ctx.payload.public_key {
        Some(key) => Some(ctx.accept_sealing(key)?),
        None => None,
    };
    let (server_public_key, salt) = offer.map(|o| (o.server_public_key, o.salt)).unzip();
    Ok(Welcome {
        server_public_key,
        salt,
    })
}

#[test]
fn require_encryption_closes_4004_without_a_key() {
    bounded(async {
        let router = Router::new().in_band_auth(login, InBandAuth::new().require_encryption());
        let server = serve(router, ServeOptions::new()).await;
        let mut client = server.client().await;
        let reply = request(&mut client, json!({"type": "LOGIN", "payload": {}}), "l1").await;
        assert_eq!(reply["type"], "RPC_ERROR");
        assert_eq!(reply["payload"]["code"], "UNAUTHENTICATED");
        assert_eq!(
            client.expect_close().await,
            Some(close_code::ENCRYPTION_REQUIRED)
        );
        // With a key it passes.
        let mut client = server.client().await;
        let keys = KeyPair::generate();
        let reply = request(
            &mut client,
            json!({"type": "LOGIN", "payload": {"publicKey": keys.public_key_base64()}}),
            "l2",
        )
        .await;
        assert_eq!(reply["type"], "WELCOME", "{reply}");
        let key = keys
            .agree(
                reply["payload"]["serverPublicKey"].as_str().unwrap(),
                reply["payload"]["salt"].as_str().unwrap(),
            )
            .unwrap();
        client.send(json!({"type": "__heartbeat"})).await;
        assert_eq!(
            recv_sealed(&mut client, &key).await["type"],
            "__heartbeat_ack"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Asynchronous authentication at upgrade.

#[test]
fn a_slow_hook_delays_only_its_own_connection() {
    bounded_multi_thread(async {
        let lookups = Arc::new(AtomicUsize::new(0));
        let counted = lookups.clone();
        let options = ServeOptions::<String>::with_authenticate_async(move |req| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                // A token store that takes 200 ms per lookup.
                tokio::time::sleep(Duration::from_millis(200)).await;
                query_param(&req, "user").ok_or_else(Rejection::unauthorized)
            }
        });
        let server = serve(Router::<String>::new(), options).await;
        let started = Instant::now();
        let mut clients = Vec::new();
        for i in 0..100 {
            let url = format!("{}/?user=u{i}", server.url());
            clients.push(tokio::spawn(async move { Client::connect(&url).await }));
        }
        let mut open = Vec::new();
        for client in clients {
            open.push(client.await.unwrap());
        }
        let took = started.elapsed();
        assert_eq!(lookups.load(Ordering::SeqCst), 100);
        // One after the other they would take 20 s.
        assert!(took < Duration::from_secs(3), "100 upgrades took {took:?}");
        println!("100 upgrades with a 200 ms lookup each: {took:?}");
        support::eventually("all 100 connections open", || async {
            server.service.connection_count() == 100
        })
        .await;
    });
}

#[test]
fn an_async_hook_answers_with_its_rejection() {
    bounded(async {
        let options = ServeOptions::<String>::with_authenticate_async(|req| async move {
            match query_param(&req, "user").as_deref() {
                Some("banned") => Err(Rejection {
                    status: 403,
                    body: "Banned".into(),
                }),
                Some(user) => Ok(user.to_string()),
                None => Err(Rejection::unauthorized()),
            }
        });
        let server = serve(Router::<String>::new(), options).await;
        let banned = format!("{}/?user=banned", server.url());
        assert_eq!(refused(&banned, &[]).await, (403, "Banned".to_string()));
        assert_eq!(
            refused(&server.url(), &[]).await,
            (401, "Unauthorized".to_string())
        );
        Client::connect(&format!("{}/?user=ann", server.url())).await;
    });
}

#[test]
fn a_panicking_hook_answers_500_and_the_server_goes_on() {
    bounded(async {
        let options = ServeOptions::<String>::with_authenticate_async(|req| async move {
            if query_param(&req, "boom").is_some() {
                panic!("the store exploded");
            }
            Some("ok".to_string())
        });
        let server = serve(Router::<String>::new(), options).await;
        let url = format!("{}/?boom=1", server.url());
        assert_eq!(refused(&url, &[]).await.0, 500);
        Client::connect(&server.url()).await;
    });
}

// ---------------------------------------------------------------------------------------------
// docs/protocol.md 4: errors the server makes carry their code's default retryAfterMs.

#[derive(Message)]
#[rpc(response = Done)]
struct Slow {}

#[derive(Message)]
struct Done {}

#[handler]
async fn slow(_ctx: Ctx<Slow>) -> Result<Done, WsError> {
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(Done {})
}

#[derive(Message)]
#[rpc(response = Done)]
struct Boom {}

#[handler]
async fn boom(_ctx: Ctx<Boom>) -> Result<Done, WsError> {
    panic!("boom")
}

#[derive(Message)]
#[rpc(response = Done)]
struct Join {
    topic: String,
}

#[handler]
async fn join(ctx: Ctx<Join>) -> Result<Done, WsError> {
    ctx.subscribe(&ctx.payload.topic).await?;
    Ok(Done {})
}

#[test]
fn server_made_errors_carry_default_retry_hints() {
    bounded(async {
        let router = Router::new().routes(routes![slow, boom, join]);
        let options = ServeOptions::new()
            .max_inflight_rpcs(1)
            .max_topics_per_connection(1)
            .max_payload_bytes(128, ws_kit::PayloadLimit::Reject);
        let server = serve(router, options).await;
        let mut client = server.client().await;
        let retry = |v: &Value| v["payload"]["retryAfterMs"].clone();
        // Deadline: 50.
        client
            .send(json!({"type": "SLOW", "meta": {"correlationId": "d1", "timeoutMs": 20}}))
            .await;
        let v = client.recv().await;
        assert_eq!(
            (v["payload"]["code"].clone(), retry(&v)),
            (json!("DEADLINE_EXCEEDED"), json!(50))
        );
        // In-flight limit: 100.
        client
            .send(json!({"type": "SLOW", "meta": {"correlationId": "s1"}}))
            .await;
        client
            .send(json!({"type": "SLOW", "meta": {"correlationId": "s2"}}))
            .await;
        let v = client.recv().await;
        assert_eq!(
            (v["payload"]["code"].clone(), retry(&v)),
            (json!("RESOURCE_EXHAUSTED"), json!(100))
        );
        client
            .send(json!({"type": "$ws:abort", "meta": {"correlationId": "s1"}}))
            .await;
        assert_eq!(client.recv().await["payload"]["code"], "CANCELLED");
        // A panic: INTERNAL, 200.
        let v = request(&mut client, json!({"type": "BOOM"}), "b1").await;
        assert_eq!(
            (v["payload"]["code"].clone(), retry(&v)),
            (json!("INTERNAL"), json!(200))
        );
        // Topic limit: 100.
        assert_eq!(
            request(
                &mut client,
                json!({"type": "JOIN", "payload": {"topic": "a"}}),
                "j1"
            )
            .await["type"],
            "DONE"
        );
        let v = request(
            &mut client,
            json!({"type": "JOIN", "payload": {"topic": "b"}}),
            "j2",
        )
        .await;
        assert_eq!(
            (v["payload"]["code"].clone(), retry(&v)),
            (json!("RESOURCE_EXHAUSTED"), json!(100))
        );
        // Payload over the limit in Reject mode: 100.
        client
            .send_text(&format!(
                "{{\"type\":\"JOIN\",\"payload\":{{\"topic\":\"{}\"}}}}",
                "x".repeat(200)
            ))
            .await;
        let v = client.recv().await;
        assert_eq!(
            (v["payload"]["code"].clone(), retry(&v)),
            (json!("RESOURCE_EXHAUSTED"), json!(100))
        );
        // Codes without a default carry none.
        let v = request(&mut client, json!({"type": "NOPE"}), "n1").await;
        assert_eq!(v["payload"]["code"], "UNIMPLEMENTED");
        assert!(v["payload"].get("retryAfterMs").is_none(), "{v}");
    });
}

// ---------------------------------------------------------------------------------------------
// Introspection: this instance's connections, a user's, a topic's.

fn ids<D: Send + Sync + 'static>(connections: &[ws_kit::Connection<D>]) -> Vec<String> {
    connections
        .iter()
        .map(|c| c.client_id().to_string())
        .collect()
}

fn header_id(client: &Client) -> String {
    client.headers["x-client-id"].to_str().unwrap().to_string()
}

#[test]
fn clients_of_the_instance_of_a_user_and_of_a_topic() {
    bounded(async {
        let server = guarded_server().await;
        let url = |token: &str| format!("{}/?access_token={token}", server.url());
        let alice1 = Client::connect(&url("alice-token")).await;
        let alice2 = Client::connect(&url("alice-token")).await;
        let mut bob = Client::connect(&url("bob-token")).await;
        let clients = server.service.clients();
        support::eventually("three connections listed", || async {
            clients.count() == 3
        })
        .await;
        let mut alice = vec![header_id(&alice1), header_id(&alice2)];
        alice.sort();
        assert_eq!(ids(&clients.of_user("alice")), alice);
        assert_eq!(ids(&clients.of_user("bob")), [header_id(&bob)]);
        assert!(clients.of_user("carol").is_empty());
        let bob_conn = clients
            .get(header_id(&bob).parse().unwrap())
            .expect("bob's connection");
        assert_eq!(bob_conn.user_id().as_deref(), Some("bob"));
        assert_eq!(ids(&clients.all()).len(), 3);
        bob.close(1000).await;
        drop(bob);
        support::eventually("bob's connection gone", || async {
            clients.of_user("bob").is_empty() && clients.count() == 2
        })
        .await;

        // Topics.
        let server = serve(Router::new().routes(routes![join]), ServeOptions::new()).await;
        let mut a = server.client().await;
        let mut b = server.client().await;
        let _c = server.client().await;
        for client in [&mut a, &mut b] {
            let reply = request(
                client,
                json!({"type": "JOIN", "payload": {"topic": "room"}}),
                "j",
            )
            .await;
            assert_eq!(reply["type"], "DONE");
        }
        let mut members = vec![header_id(&a), header_id(&b)];
        members.sort();
        let clients = server.service.clients();
        assert_eq!(ids(&clients.in_topic("room")), members);
        assert!(clients.in_topic("elsewhere").is_empty());
        support::eventually("three connections listed", || async {
            clients.count() == 3
        })
        .await;
    });
}

// ---------------------------------------------------------------------------------------------
// Two Rust programs, sealed end to end: the Rust client against the guarded example.

mod wire {
    use ws_kit::Message;

    #[derive(Message)]
    #[rpc(response = Authenticated)]
    pub(crate) struct Authenticate {
        pub(crate) token: String,
        pub(crate) public_key: Option<String>,
    }

    #[derive(Message, Debug)]
    pub(crate) struct Authenticated {
        pub(crate) user_id: String,
        pub(crate) server_public_key: Option<String>,
        pub(crate) salt: Option<String>,
    }

    #[derive(Message)]
    #[rpc(response = WhoamiResult)]
    pub(crate) struct Whoami {}

    #[derive(Message, Debug)]
    pub(crate) struct WhoamiResult {
        pub(crate) user_id: String,
        pub(crate) client_id: String,
    }
}

#[test]
fn the_rust_client_talks_sealed_end_to_end() {
    bounded_multi_thread(async {
        let server = guarded_server().await;
        let client = ws_kit::client::Client::builder(server.url())
            .sealed()
            .connect()
            .await
            .unwrap();
        let public_key = client.public_key().expect("a sealed client has a key");
        let reply = client
            .request(&wire::Authenticate {
                token: "alice-token".into(),
                public_key: Some(public_key),
            })
            .await
            .unwrap();
        assert_eq!(reply.user_id, "alice");
        assert!(reply.server_public_key.is_some() && reply.salt.is_some());
        assert!(client.is_sealed());
        let who = client.request(&wire::Whoami {}).await.unwrap();
        assert_eq!(who.user_id, "alice");
        // The server sees a sealed connection (that the client seals its own frames is pinned
        // by tests/tests/seal.rs against a server that checks each frame).
        let conn = server
            .service
            .clients()
            .get(who.client_id.parse().unwrap())
            .expect("the connection");
        assert!(conn.is_sealed());
        client.close().await;
    });
}

// ---------------------------------------------------------------------------------------------
// With Redis: two instances of the guarded example share users and buckets.

#[test]
fn two_instances_share_users_and_buckets_through_redis() {
    let Some(url) = support::redis_url() else {
        return;
    };
    bounded_multi_thread(async move {
        use ws_kit::rate_limit::RedisStore;
        use ws_kit::redis::RedisOptions;
        let prefix = format!("t:{}:", uuid::Uuid::now_v7());
        let mut servers = Vec::new();
        for _ in 0..2 {
            let store = RedisStore::connect(&url)
                .await
                .unwrap()
                .prefix(format!("{prefix}rl:"));
            let limit = RateLimit::new("guarded", Bucket::new(2, 1.0), store).by_user();
            let engine = RedisOptions::new(url.as_str())
                .prefix(&prefix)
                .connect()
                .await
                .unwrap();
            servers.push(serve(guarded::router(limit).pubsub(engine), guarded::options(0)).await);
        }
        let at = |i: usize, token: &str| format!("{}/?access_token={token}", servers[i].url());
        let mut alice_a = Client::connect(&at(0, "alice-token")).await;
        let mut alice_b = Client::connect(&at(1, "alice-token")).await;
        let mut bob_b = Client::connect(&at(1, "bob-token")).await;
        // Direct messages reach alice's sessions on both instances.
        bob_b
            .send(json!({"type": "SEND_TO_USER", "payload": {"userId": "alice", "text": "hi"}}))
            .await;
        let direct =
            json!({"type": "DIRECT", "meta": {}, "payload": {"from": "bob", "text": "hi"}});
        assert_eq!(alice_a.recv().await, direct);
        assert_eq!(alice_b.recv().await, direct);
        // Alice's bucket is one, whichever instance she talks to.
        let limited = || json!({"type": "LIMITED"});
        assert_eq!(
            request(&mut alice_a, limited(), "l1").await["type"],
            "LIMITED_OK"
        );
        assert_eq!(
            request(&mut alice_b, limited(), "l2").await["type"],
            "LIMITED_OK"
        );
        let refused = request(&mut alice_a, limited(), "l3").await;
        assert_eq!(
            refused["payload"]["code"], "RESOURCE_EXHAUSTED",
            "{refused}"
        );
        assert_eq!(
            refused["payload"]["details"],
            json!({"cost": 1, "capacity": 2, "remaining": 0})
        );
        let refused = request(&mut alice_b, limited(), "l4").await;
        assert_eq!(
            refused["payload"]["code"], "RESOURCE_EXHAUSTED",
            "{refused}"
        );
        // Bob's is his own.
        assert_eq!(
            request(&mut bob_b, limited(), "l5").await["type"],
            "LIMITED_OK"
        );
    });
}

#[test]
fn the_hook_and_the_connection_know_the_peer_address() {
    bounded(async {
        let options = ServeOptions::<String>::with_authenticate_async(|req| async move {
            let peer = req.extensions().get::<std::net::SocketAddr>()?;
            Some(peer.ip().to_string())
        });
        let server = serve(Router::<String>::new(), options).await;
        let client = Client::connect_from(&server.url(), "127.0.0.2".parse().unwrap()).await;
        let id = header_id(&client).parse().unwrap();
        let clients = server.service.clients();
        support::eventually("the connection is listed", || async {
            clients.get(id).is_some()
        })
        .await;
        let conn = clients.get(id).unwrap();
        assert_eq!(*conn.data(), "127.0.0.2");
        assert_eq!(
            conn.remote_addr().map(|a| a.ip().to_string()).as_deref(),
            Some("127.0.0.2")
        );
    });
}

// ---------------------------------------------------------------------------------------------
// The race at the switch: publications racing the authentication reply never leave in clear
// after it, nor sealed before it (ARCHITECTURE.md, "Sealing starts exactly after the reply").

#[derive(Message)]
#[rpc(response = Welcome)]
struct JoinSealed {
    public_key: String,
}

#[derive(Message)]
struct News {
    n: u64,
}

#[handler]
async fn join_sealed(ctx: Ctx<JoinSealed>) -> Result<Welcome, WsError> {
    // Subscribed before the reply: publications race it from another task.
    ctx.subscribe("news").await?;
    let offer = ctx.accept_sealing(&ctx.payload.public_key)?;
    // Long enough for publications to reach the queue before the reply, on another thread.
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(Welcome {
        server_public_key: Some(offer.server_public_key),
        salt: Some(offer.salt),
    })
}

#[test]
fn publications_racing_the_switch_are_clear_before_and_sealed_after() {
    bounded_multi_thread(async {
        let router = Router::new().in_band_auth(join_sealed, InBandAuth::new());
        let server = serve(router, ServeOptions::new()).await;
        let publisher = server.service.publisher();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // About 8,000 publications a second (bounded in count too): enough to race every switch,
        // slow enough for the test's client to keep its queue short.
        let publishing = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                    n += 1;
                    // Handed to the engine in the call; the outcome is not needed.
                    drop(publisher.publish("news", &News { n }));
                    if n % 8 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        };
        let mut raced = 0;
        for round in 0..40 {
            let mut client = server.client().await;
            let keys = KeyPair::generate();
            client
                .send(json!({"type": "JOIN_SEALED", "payload": {"publicKey": keys.public_key_base64()}, "meta": {"correlationId": "j"}}))
                .await;
            // Clear frames (publications, in order) up to the reply, which is clear too.
            let mut last = 0;
            let reply = loop {
                let frame = client.recv().await;
                match frame["type"].as_str() {
                    Some("NEWS") => {
                        let n = frame["payload"]["n"].as_u64().unwrap();
                        assert!(n > last, "round {round}: out of order {n} after {last}");
                        last = n;
                    }
                    Some("WELCOME") => {
                        raced += usize::from(last > 0);
                        break frame;
                    }
                    _ => panic!("round {round}: before the reply, a frame in clear: {frame}"),
                }
            };
            let key = keys
                .agree(
                    reply["payload"]["serverPublicKey"].as_str().unwrap(),
                    reply["payload"]["salt"].as_str().unwrap(),
                )
                .unwrap();
            // Every frame after it is sealed, and the order goes on across the switch.
            for _ in 0..20 {
                let news = recv_sealed(&mut client, &key).await;
                let n = news["payload"]["n"].as_u64().unwrap();
                assert!(n > last, "round {round}: out of order {n} after {last}");
                last = n;
            }
        }
        stop.store(true, Ordering::Relaxed);
        publishing.await.unwrap();
        // The race was run: publications reached connections before their reply.
        assert!(raced > 0, "no round saw a publication before its reply");
    });
}
