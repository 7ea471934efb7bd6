//! The testing harness drives authentication — the upgrade hook with a request the test makes,
//! and in-band — and rate limits, all under a paused clock (no real waiting).

#[allow(dead_code)]
#[path = "../../examples/guarded.rs"]
mod guarded;

use serde_json::{Value, json};
use std::time::Duration;
use ws_kit::http::Request;
use ws_kit::rate_limit::{Bucket, RateLimit};
use ws_kit::testing::{TestConnection, TestServer};
use ws_kit::{Ctx, InBandAuth, Message, Router, WsError, close_code, handler};

fn guarded_server() -> TestServer<guarded::Session> {
    let limit = RateLimit::in_memory("guarded", Bucket::new(2, 1.0)).by_user();
    TestServer::with_options(guarded::router(limit), guarded::options(0))
}

fn upgrade(uri: &str) -> ws_kit::UpgradeRequest {
    Request::builder().uri(uri).body(()).unwrap()
}

async fn rpc(conn: &TestConnection<guarded::Session>, ty: &str, cid: &str) -> Value {
    conn.send_raw(json!({"type": ty, "meta": {"correlationId": cid}}));
    conn.recv_json().await
}

#[tokio::test(start_paused = true)]
async fn the_upgrade_hook_sees_the_fake_request() {
    let server = guarded_server();
    let alice = server
        .connect_upgrade(upgrade("/?access_token=alice-token"))
        .await
        .unwrap();
    assert!(alice.connection().is_authenticated());
    assert_eq!(alice.connection().user_id().as_deref(), Some("alice"));
    assert_eq!(
        rpc(&alice, "WHOAMI", "w1").await["payload"]["userId"],
        "alice"
    );

    let request = Request::builder()
        .uri("/chat")
        .header("sec-websocket-protocol", "bearer.bob-token")
        .body(())
        .unwrap();
    let bob = server.connect_upgrade(request).await.unwrap();
    assert_eq!(bob.connection().user_id().as_deref(), Some("bob"));

    let refused = server
        .connect_upgrade(upgrade("/?access_token=stolen"))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (401, "Unauthorized")
    );

    // No token: open, but gated until it authenticates in-band.
    let anonymous = server.connect_upgrade(upgrade("/")).await.unwrap();
    assert!(!anonymous.connection().is_authenticated());
    let err = rpc(&anonymous, "WHOAMI", "w2").await;
    assert_eq!(err["payload"]["code"], "UNAUTHENTICATED");
}

#[tokio::test(start_paused = true)]
async fn auth_timeout_closes_4001_in_virtual_time() {
    let server = guarded_server();
    let conn = server.connect_upgrade(upgrade("/")).await.unwrap();
    let opened = tokio::time::Instant::now();
    let close = conn.closed().await;
    assert_eq!(close.code, close_code::AUTH_TIMEOUT);
    assert_eq!(close.reason, "Authentication timeout");
    assert_eq!(opened.elapsed(), Duration::from_secs(2));
    let error = server.next_error().await;
    assert_eq!(error.kind, ws_kit::ErrorKind::AuthTimeout);
}

#[tokio::test(start_paused = true)]
async fn in_band_authentication_through_the_harness() {
    let server = guarded_server();
    let conn = server.connect(guarded::Session::default()).await;
    conn.send_raw(json!({"type": "AUTHENTICATE", "payload": {"token": "alice-token"}, "meta": {"correlationId": "a1"}}));
    assert_eq!(
        conn.recv_json().await,
        json!({"type": "AUTHENTICATED", "meta": {"correlationId": "a1"}, "payload": {"userId": "alice"}})
    );
    assert!(conn.connection().is_authenticated());
    assert_eq!(
        rpc(&conn, "WHOAMI", "w1").await["payload"]["userId"],
        "alice"
    );

    let other = server.connect(guarded::Session::default()).await;
    other.send_raw(json!({"type": "AUTHENTICATE", "payload": {"token": "nope"}, "meta": {"correlationId": "a2"}}));
    assert_eq!(
        other.recv_error().await.code(),
        &ws_kit::ErrorCode::Unauthenticated
    );
    assert_eq!(other.closed().await.code, close_code::AUTH_FAILED);
}

#[derive(Message)]
#[rpc(response = Welcome)]
struct Login {}

#[derive(Message, Debug)]
struct Welcome {}

#[handler]
async fn login(ctx: Ctx<Login>) -> Result<Welcome, WsError> {
    // A token service that takes a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctx.set_user_id("u1").await?;
    Ok(Welcome {})
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_answered_while_an_attempt_runs() {
    let router = Router::new().in_band_auth(login, InBandAuth::new().hold_until_authenticated());
    let server = TestServer::new(router);
    let conn = server.connect(()).await;
    let started = tokio::time::Instant::now();
    conn.send_raw(json!({"type": "LOGIN", "meta": {"correlationId": "l1"}}));
    conn.send_raw(json!({"type": "NOT_YET", "meta": {"correlationId": "n1"}}));
    conn.send_raw(json!({"type": "__heartbeat"}));
    assert_eq!(conn.recv_json().await["type"], "__heartbeat_ack");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(conn.recv_json().await["type"], "WELCOME");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    // The frame held behind the attempt is dispatched after it, as an authenticated message:
    // no route, so UNIMPLEMENTED (not UNAUTHENTICATED).
    assert_eq!(conn.recv_json().await["payload"]["code"], "UNIMPLEMENTED");
}

#[tokio::test(start_paused = true)]
async fn without_hold_messages_during_an_attempt_are_unauthenticated() {
    let router = Router::new().in_band_auth(login, InBandAuth::new());
    let server = TestServer::new(router);
    let conn = server.connect(()).await;
    conn.send_raw(json!({"type": "LOGIN", "meta": {"correlationId": "l1"}}));
    conn.send_raw(json!({"type": "NOT_YET", "meta": {"correlationId": "n1"}}));
    let err = conn.recv_json().await;
    assert_eq!(err["payload"]["code"], "UNAUTHENTICATED", "{err}");
    assert_eq!(conn.recv_json().await["type"], "WELCOME");
}

#[tokio::test(start_paused = true)]
async fn rate_limits_refill_in_virtual_time() {
    let server = guarded_server();
    let conn = server
        .connect_upgrade(upgrade("/?access_token=alice-token"))
        .await
        .unwrap();
    assert_eq!(rpc(&conn, "LIMITED", "l1").await["type"], "LIMITED_OK");
    assert_eq!(rpc(&conn, "LIMITED", "l2").await["type"], "LIMITED_OK");
    let refused = rpc(&conn, "LIMITED", "l3").await;
    assert_eq!(
        refused,
        json!({"type": "RPC_ERROR", "meta": {"correlationId": "l3"}, "payload": {
            "code": "RESOURCE_EXHAUSTED",
            "message": "Rate limit exceeded",
            "details": {"cost": 1, "capacity": 2, "remaining": 0},
            "retryAfterMs": 1000,
        }})
    );
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(rpc(&conn, "LIMITED", "l4").await["type"], "RPC_ERROR");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(rpc(&conn, "LIMITED", "l5").await["type"], "LIMITED_OK");
}

#[derive(Message)]
#[rpc(response = Welcome)]
struct SealLater {
    public_key: String,
}

#[handler]
async fn seal_later(ctx: Ctx<SealLater>) -> Result<Welcome, WsError> {
    ctx.accept_sealing(&ctx.payload.public_key)?;
    Ok(Welcome {})
}

#[tokio::test(start_paused = true)]
async fn sealing_starts_only_from_the_authentication_request() {
    let router = Router::new().routes(ws_kit::routes![seal_later]);
    let server = TestServer::new(router);
    let conn = server.connect(()).await;
    let key = ws_kit::seal::KeyPair::generate().public_key_base64();
    let err = conn
        .request(&SealLater { public_key: key })
        .await
        .unwrap_err();
    assert_eq!(err.code(), &ws_kit::ErrorCode::FailedPrecondition);
    assert!(!conn.connection().is_sealed());
}
