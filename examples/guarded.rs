//! Authentication (at upgrade and in-band), rate limits and sealed delivery.
//!
//! Run: `cargo run --example guarded` (PORT=3000 by default; PORT=0 picks a free port). With
//! `REDIS_URL` set and `--features redis`, users and buckets are shared by every instance:
//!   `REDIS_URL=redis://127.0.0.1:6379 PORT=3001 cargo run --example guarded --features redis`
//!
//! Tokens: `alice-token` (user `alice`), `bob-token` (user `bob`). Connect with
//! `ws://127.0.0.1:3000/?access_token=alice-token` (or the subprotocol `bearer.alice-token`) to be
//! authenticated at once; a wrong token gets HTTP 401; without one, authenticate within 2 s:
//!   {"type":"AUTHENTICATE","payload":{"token":"alice-token"},"meta":{"correlationId":"a1"}}
//!   {"type":"WHOAMI","meta":{"correlationId":"w1"}}
//!   {"type":"SEND_TO_USER","payload":{"userId":"bob","text":"hi"}}
//!   {"type":"LIMITED","meta":{"correlationId":"l1"}}
//!   {"type":"COSTLY","meta":{"correlationId":"c1"}}
//! An `AUTHENTICATE` with `publicKey` (base64 of an uncompressed P-256 point) switches the
//! connection to sealed delivery after its reply (docs/protocol.md, "Sealed delivery").
//!
//! Every request answers within `MAX_RPC_TIMEOUT` (10 s) or gets `RPC_ERROR DEADLINE_EXCEEDED`:
//! the server's own cap (`ServeOptions::max_rpc_timeout`), so a request whose client gave up
//! (WS-Kit's TypeScript client sends no `$ws:abort` nor `meta.timeoutMs`) cannot run for ever.
//!
//! `cargo run --example guarded -- --emit-typescript web/guarded.ts` writes the TypeScript module
//! of these messages and exits.

use std::time::Duration;
use ws_kit::rate_limit::{Bucket, RateLimit};
use ws_kit::typescript::TypeScript;
use ws_kit::{
    Ctx, InBandAuth, Message, Rejection, Router, ServeOptions, UpgradeRequest, WsError, handler,
    query_param, routes,
};

/// What a connection knows about itself: its user, once authenticated.
#[derive(Debug, Default)]
pub(crate) struct Session {
    user: Option<String>,
}

#[derive(Message)]
#[rpc(response = Authenticated)]
struct Authenticate {
    token: String,
    public_key: Option<String>,
}

#[derive(Message)]
struct Authenticated {
    user_id: String,
    server_public_key: Option<String>,
    salt: Option<String>,
}

#[derive(Message)]
#[rpc(response = WhoamiResult)]
struct Whoami {}

#[derive(Message)]
struct WhoamiResult {
    user_id: String,
    client_id: String,
}

#[derive(Message)]
struct SendToUser {
    #[validate(length(min = 1, max = 100))]
    user_id: String,
    #[validate(length(min = 1, max = 1000))]
    text: String,
}

#[derive(Message)]
struct Direct {
    from: String,
    text: String,
}

#[derive(Message)]
#[rpc(response = LimitedOk)]
struct Limited {}

#[derive(Message)]
struct LimitedOk {}

#[derive(Message)]
#[rpc(response = CostlyOk)]
struct Costly {}

#[derive(Message)]
struct CostlyOk {}

/// The user a token stands for. A fixed table stands in for a store, and waits as one would.
async fn user_of(token: &str) -> Option<&'static str> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    match token {
        "alice-token" => Some("alice"),
        "bob-token" => Some("bob"),
        _ => None,
    }
}

/// The token of an upgrade request: `?access_token=` or a `bearer.<token>` subprotocol.
fn token_of(req: &UpgradeRequest) -> Option<String> {
    query_param(req, "access_token").or_else(|| {
        req.headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix("bearer.").map(str::to_string))
    })
}

/// The server's cap on a request's deadline. Every request here answers in milliseconds (the
/// user lookup waits ~10 ms, Redis calls are bounded), so 10 s only stops what went wrong.
const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Upgrade: a valid token authenticates at once, a wrong one gets 401, none leaves the
/// connection to authenticate in-band. Requests are capped at `MAX_RPC_TIMEOUT`.
pub(crate) fn options(port: u16) -> ServeOptions<Session> {
    ServeOptions::new()
        .port(port)
        .max_rpc_timeout(MAX_RPC_TIMEOUT)
        .authenticate_async(|req| async move {
            let Some(token) = token_of(&req) else {
                return Ok(Session::default());
            };
            match user_of(&token).await {
                Some(user) => Ok(Session {
                    user: Some(user.into()),
                }),
                None => Err(Rejection::unauthorized()),
            }
        })
}

#[handler]
async fn authenticate(ctx: Ctx<Authenticate, Session>) -> Result<Authenticated, WsError> {
    let known = ctx.data().user.clone();
    if let Some(user_id) = known.filter(|_| ctx.is_authenticated()) {
        // Already authenticated: the same answer, nothing else changes.
        return Ok(Authenticated {
            user_id,
            server_public_key: None,
            salt: None,
        });
    }
    let Some(user) = user_of(&ctx.payload.token).await else {
        return Err(WsError::unauthenticated("invalid token"));
    };
    // Every check comes before anything changes: a failed attempt leaves nothing behind.
    let offer = match &ctx.payload.public_key {
        Some(key) => Some(ctx.accept_sealing(key)?),
        None => None,
    };
    ctx.assign(|s| s.user = Some(user.into()));
    ctx.set_user_id(user).await?;
    let (server_public_key, salt) = offer.map(|o| (o.server_public_key, o.salt)).unzip();
    Ok(Authenticated {
        user_id: user.into(),
        server_public_key,
        salt,
    })
}

#[handler]
async fn whoami(ctx: Ctx<Whoami, Session>) -> Result<WhoamiResult, WsError> {
    Ok(WhoamiResult {
        user_id: ctx.user_id().unwrap_or_default(),
        client_id: ctx.client_id().to_string(),
    })
}

#[handler]
async fn send_to_user(ctx: Ctx<SendToUser, Session>) -> Result<(), WsError> {
    let direct = Direct {
        from: ctx.user_id().unwrap_or_default(),
        text: ctx.payload.text.clone(),
    };
    ctx.publisher()
        .send_to_user(&ctx.payload.user_id, &direct)
        .await
        .into_result()?;
    Ok(())
}

#[handler]
async fn limited(_ctx: Ctx<Limited, Session>) -> Result<LimitedOk, WsError> {
    Ok(LimitedOk {})
}

#[handler]
async fn costly(_ctx: Ctx<Costly, Session>) -> Result<CostlyOk, WsError> {
    Ok(CostlyOk {})
}

/// The router, with `limit` as the per-user bucket of `LIMITED` (cost 1) and `COSTLY` (cost 5).
pub(crate) fn router(limit: RateLimit<Session>) -> Router<Session> {
    Router::new()
        .user_id_from(|s: &Session| s.user.clone())
        .in_band_auth(
            authenticate,
            InBandAuth::new().timeout(Duration::from_secs(2)),
        )
        .routes(routes![
            whoami,
            send_to_user,
            limited.middleware(limit.clone()),
            costly.middleware(limit.cost(5)),
        ])
}

/// Capacity 2, one token a second, one bucket per user.
fn bucket() -> Bucket {
    Bucket::new(2, 1.0)
}

/// The TypeScript module of these messages: the requests with their replies, and `DIRECT`.
pub(crate) fn typescript() -> TypeScript {
    let limit = RateLimit::in_memory("guarded", bucket()).by_user();
    TypeScript::new()
        .title("the guarded example")
        .router(&router(limit))
        .message::<Direct>()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if ws_kit_examples::emit_typescript(typescript) {
        return Ok(());
    }
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        let store = ws_kit::rate_limit::RedisStore::connect(&url).await?;
        let limit = RateLimit::new("guarded", bucket(), store).by_user();
        let router = router(limit).pubsub(ws_kit::redis::RedisPubSub::connect(url).await?);
        ws_kit::serve(router, options(port)).await?;
        return Ok(());
    }
    let limit = RateLimit::in_memory("guarded", bucket()).by_user();
    ws_kit::serve(router(limit), options(port)).await?;
    Ok(())
}
