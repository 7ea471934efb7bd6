//! Request/response over WebSocket: replies, errors, progress, cancellation and deadlines.
//!
//! Run: `cargo run --example rpc` (PORT=3000 by default; PORT=0 picks a free port).
//! Try:
//!   {"type":"PING","payload":{"text":"hello"},"meta":{"correlationId":"c1"}}
//!   {"type":"GET_USER","payload":{"id":"3"},"meta":{"correlationId":"c2"}}
//!   {"type":"COUNTDOWN","payload":{"from":5,"intervalMs":500},"meta":{"correlationId":"c3"}}
//!   {"type":"$ws:abort","meta":{"correlationId":"c3"}}
//!
//! A request ends by `MAX_RPC_TIMEOUT` (17 minutes, just over the longest COUNTDOWN) at the latest,
//! whatever `meta.timeoutMs` says or when it says nothing: a client that gave up on a request
//! without a `$ws:abort` (the WS-Kit TypeScript client sends none, nor `timeoutMs`) cannot leave
//! its handler running for ever.
//!
//! `WSKIT_CLIENT_COMPAT=1` turns on `ServeOptions::progress_data_compat`: COUNTDOWN's progress
//! frames then carry their value under `data` too, beside `payload`, which is where the WS-Kit
//! TypeScript client (0.10) reads it for `onProgress`:
//!   `WSKIT_CLIENT_COMPAT=1 cargo run --example rpc`
//!
//! `cargo run --example rpc -- --emit-typescript web/rpc.ts` writes the TypeScript module of
//! these messages (zod schemas and `rpc(..)` definitions for WS-Kit's client) and exits.
//!   {"type":"$ws:rpc-progress","meta":{"correlationId":"c3"},"payload":{"n":5,"done":false},"data":{"n":5,"done":false}}

use std::time::Duration;
use ws_kit::typescript::TypeScript;
use ws_kit::{Ctx, Message, Router, ServeOptions, WsError, handler, routes};

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping {
    #[validate(length(max = 1000))]
    text: String,
}

#[derive(Message)]
struct Pong {
    reply: String,
}

#[derive(Message)]
#[rpc(response = UserData)]
struct GetUser {
    id: String,
}

#[derive(Message)]
struct UserData {
    name: String,
    email: String,
}

#[derive(Message)]
#[rpc(response = CountdownResult)]
struct Countdown {
    #[validate(range(min = 1, max = 100))]
    from: u32,
    #[validate(range(min = 1, max = 10_000))]
    interval_ms: u64,
}

#[derive(Message)]
struct CountdownResult {
    n: u32,
    done: bool,
}

#[handler]
async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    Ok(Pong {
        reply: format!("Got: {}", ctx.payload.text),
    })
}

#[handler]
async fn get_user(ctx: Ctx<GetUser>) -> Result<UserData, WsError> {
    let (name, email) = match ctx.payload.id.as_str() {
        "1" => ("Alice", "alice@example.com"),
        "2" => ("Bob", "bob@example.com"),
        id => {
            return Err(
                WsError::not_found("user not found").with_details(serde_json::json!({ "id": id }))
            );
        }
    };
    Ok(UserData {
        name: name.into(),
        email: email.into(),
    })
}

#[handler]
async fn countdown(ctx: Ctx<Countdown>) -> Result<CountdownResult, WsError> {
    let interval = Duration::from_millis(ctx.payload.interval_ms);
    for n in (1..=ctx.payload.from).rev() {
        ctx.progress(&CountdownResult { n, done: false });
        tokio::time::sleep(interval).await;
    }
    Ok(CountdownResult { n: 0, done: true })
}

/// The RPC router, also used by the integration tests.
pub(crate) fn router() -> Router {
    Router::new().routes(routes![ping, get_user, countdown])
}

/// The server's cap on every request's deadline. The longest valid COUNTDOWN (from 100, every
/// 10 s) takes 1000 s; the cap leaves it room, so every request EXAMPLES.md allows still finishes,
/// and no request outlives it.
const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(17 * 60);

/// The TypeScript module of these requests and their replies.
pub(crate) fn typescript() -> TypeScript {
    TypeScript::new().title("the rpc example").router(&router())
}

#[tokio::main]
async fn main() -> Result<(), ws_kit::Error> {
    if ws_kit_examples::emit_typescript(typescript) {
        return Ok(());
    }
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let mut options = ServeOptions::new()
        .port(port)
        .max_rpc_timeout(MAX_RPC_TIMEOUT);
    if std::env::var("WSKIT_CLIENT_COMPAT").as_deref() == Ok("1") {
        options = options.progress_data_compat();
    }
    ws_kit::serve(router(), options).await
}
