//! Generated code is lint clean: messages, handlers and routes under strict lints.
#![deny(missing_docs, unused_qualifications, warnings)]
#![deny(
    trivial_casts,
    trivial_numeric_casts,
    unused_results,
    unreachable_pub,
    single_use_lifetimes,
    unused_lifetimes,
    elided_lifetimes_in_paths
)]
#![forbid(unsafe_code)]

use ws_kit::{Ctx, Message, Router, WsError, handler, routes};

/// Joins a room.
#[derive(Message)]
pub struct JoinRoom {
    /// The room.
    #[validate(length(min = 1, max = 64))]
    pub room_id: String,
    /// A bounded count.
    #[validate(range(min = 1u32, max = 5))]
    pub count: u32,
    /// A trace id carried in meta.
    #[message(meta)]
    pub trace_id: Option<String>,
}

/// Asks for a pong.
#[derive(Message)]
#[rpc(response = Pong)]
pub struct Ping {
    /// Echoed back.
    #[validate(length(max = 100), custom(function = checks::not_blank))]
    pub text: String,
}

/// The reply to [`Ping`].
#[derive(Message)]
pub struct Pong {
    /// The echo.
    pub text: String,
}

/// A message without payload.
#[derive(Message)]
pub struct Heartbeat;

/// Validation helpers.
pub mod checks {
    /// Rejects blank text.
    pub fn not_blank(value: &str) -> Result<(), String> {
        if value.trim().is_empty() { Err("blank".into()) } else { Ok(()) }
    }
}

/// Joins the room.
#[handler]
pub async fn join_room(ctx: Ctx<JoinRoom>) -> Result<(), WsError> {
    ctx.subscribe(&ctx.payload.room_id).await
}

/// Answers a ping.
#[handler]
pub async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    Ok(Pong { text: ctx.payload.text.clone() })
}

// No doc comment: `#[handler]` documents the struct it generates.
#[handler]
pub async fn heartbeat(_ctx: Ctx<Heartbeat>) {}

/// The app's router.
pub fn router() -> Router {
    Router::new().routes(routes![join_room, ping, heartbeat])
}

fn main() {
    let _ = router();
    let join = JoinRoom { room_id: String::new(), count: 1, trace_id: None };
    drop((join.room_id, join.count, join.trace_id));
}
