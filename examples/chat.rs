//! Chat rooms over WebSocket, with a page for people.
//!
//! Run: `cargo run --example chat` (PORT=3000 by default; PORT=0 picks a free port), then open
//! <http://127.0.0.1:3000/> in a browser or two: the page (`chat.html`, plain JS, no build step) is
//! served on the WebSocket port itself (`ServeOptions::pages`); upgrades work on every path.
//! Several instances sharing rooms through Redis:
//!   `REDIS_URL=redis://127.0.0.1:6379 PORT=3001 cargo run --example chat --features redis`
//!   `REDIS_URL=redis://127.0.0.1:6379 PORT=3002 cargo run --example chat --features redis`
//! Try, with any WebSocket client (e.g. `websocat ws://127.0.0.1:3000`):
//!   {"type":"JOIN_ROOM","payload":{"roomId":"0190f3a4-8a4e-7cc0-9a3e-2f1f0d1c2b3a","username":"ada"}}
//!   {"type":"SEND_MESSAGE","payload":{"roomId":"0190f3a4-8a4e-7cc0-9a3e-2f1f0d1c2b3a","text":"hi"}}
//!   {"type":"LEAVE_ROOM","payload":{"roomId":"0190f3a4-8a4e-7cc0-9a3e-2f1f0d1c2b3a"}}
//!
//! Requests (none yet; `WHO_IS_HERE` is to come) answer within `MAX_RPC_TIMEOUT` (10 s) or get
//! `RPC_ERROR DEADLINE_EXCEEDED`: the server's own cap (`ServeOptions::max_rpc_timeout`), so a
//! request whose client gave up (WS-Kit's TypeScript client sends no `$ws:abort` nor
//! `meta.timeoutMs`) cannot run for ever.
//!
//! `cargo run --example chat -- --emit-typescript web/chat.ts` writes the TypeScript module of
//! these messages (zod schemas for WS-Kit's client) and exits.

use std::time::Duration;
use uuid::Uuid;
use ws_kit::http::{HeaderValue, header};
use ws_kit::pubsub::{Keep, Position, PresenceStats};
use ws_kit::typescript::TypeScript;
use ws_kit::{
    Connection, Ctx, HttpResponse, Message, Payload, PublishOptions, Router, ServeOptions,
    UpgradeRequest, WsError, handler, routes,
};

/// What the server remembers about each connection.
#[derive(Default)]
pub(crate) struct ChatData {
    username: Option<String>,
}

#[derive(Message)]
struct JoinRoom {
    room_id: Uuid,
    #[validate(length(min = 1, max = 20))]
    username: String,
    /// Where the client left off: with it, the server answers `JOINED` and sends what it missed.
    since: Option<Position>,
}

/// Who is in a room, on every instance (presence).
#[derive(Message)]
#[rpc(response = Here)]
struct WhoIsHere {
    room_id: Uuid,
}

/// One member of a room.
#[derive(Payload)]
struct Member {
    username: String,
    client_id: String,
}

/// The answer to `WHO_IS_HERE`: members sorted by client id, and the counts.
#[derive(Message)]
struct Here {
    users: Vec<Member>,
    clients: usize,
    distinct_users: usize,
}

/// The answer to a join with `since`: whether what was missed follows, and the room's position.
#[derive(Message)]
struct Joined {
    room_id: Uuid,
    recovered: bool,
    offset: u64,
    epoch: String,
}

#[derive(Message)]
struct SendMessage {
    room_id: Uuid,
    #[validate(length(min = 1, max = 500))]
    text: String,
}

#[derive(Message)]
struct LeaveRoom {
    room_id: Uuid,
}

#[derive(Message)]
struct Welcome {
    message: String,
}

#[derive(Message)]
struct UserJoined {
    username: String,
    user_count: usize,
}

#[derive(Message)]
struct NewMessage {
    username: String,
    text: String,
}

#[derive(Message)]
struct UserLeft {
    username: String,
    user_count: usize,
}

fn topic(room_id: &Uuid) -> String {
    format!("room:{room_id}")
}

pub(crate) fn username(conn: &Connection<ChatData>) -> String {
    conn.data().username.clone().unwrap_or_default()
}

#[handler]
async fn join_room(ctx: Ctx<JoinRoom, ChatData>) -> Result<(), WsError> {
    let room = topic(&ctx.payload.room_id);
    ctx.assign(|data| data.username = Some(ctx.payload.username.clone()));
    match &ctx.payload.since {
        // JOINED first, then what was missed, then live frames, each with its position.
        Some(since) => {
            let room_id = ctx.payload.room_id;
            ctx.subscribe_from(&room, since.clone(), move |at| Joined {
                room_id,
                recovered: at.recovered,
                offset: at.position.offset,
                epoch: at.position.epoch.clone(),
            })
            .await?;
        }
        None => ctx.subscribe(&room).await?,
    }
    // Presence: distinct users are distinct usernames. A join works without it (an engine
    // without presence, Redis unreachable).
    let username = ctx.payload.username.clone();
    let info = serde_json::json!({ "username": username });
    let _ = ctx.set_presence(&room, Some(&username), info).await;
    let user_count = ctx.subscriber_count(&room).await.unwrap_or(0);
    ctx.publish(
        &room,
        &UserJoined {
            username: ctx.payload.username.clone(),
            user_count,
        },
    )
    .await;
    Ok(())
}

#[handler]
async fn who_is_here(ctx: Ctx<WhoIsHere, ChatData>) -> Result<Here, WsError> {
    let entries = ctx.presence(&topic(&ctx.payload.room_id)).await?;
    let stats = PresenceStats::of(&entries);
    let users = entries
        .into_iter()
        .map(|e| Member {
            username: e.info["username"].as_str().unwrap_or_default().to_string(),
            client_id: e.client_id.to_string(),
        })
        .collect();
    Ok(Here {
        users,
        clients: stats.clients,
        distinct_users: stats.users,
    })
}

#[handler]
async fn send_message(ctx: Ctx<SendMessage, ChatData>) -> Result<(), WsError> {
    let room = topic(&ctx.payload.room_id);
    if !ctx.is_subscribed(&room) {
        return Err(WsError::failed_precondition(
            "join the room before sending to it",
        ));
    }
    let message = NewMessage {
        username: username(&ctx),
        text: ctx.payload.text.clone(),
    };
    ctx.publish(&room, &message).await;
    Ok(())
}

#[handler]
async fn leave_room(ctx: Ctx<LeaveRoom, ChatData>) -> Result<(), WsError> {
    let room = topic(&ctx.payload.room_id);
    if !ctx.is_subscribed(&room) {
        return Err(WsError::failed_precondition("not in this room"));
    }
    ctx.unsubscribe(&room).await?;
    let user_count = ctx.subscriber_count(&room).await.unwrap_or(0);
    ctx.publish(
        &room,
        &UserLeft {
            username: username(&ctx),
            user_count,
        },
    )
    .await;
    Ok(())
}

/// The chat router, also used by the integration tests.
pub(crate) fn router() -> Router<ChatData> {
    // Rooms keep their last 100 publications for 5 minutes: a client that comes back with
    // `since` gets what it missed (docs/protocol.md 8a).
    router_keeping(Keep::last(100).for_at_most(Duration::from_secs(300)))
}

/// The chat router with rooms kept as `rooms` says (tests use other sizes).
pub(crate) fn router_keeping(rooms: Keep) -> Router<ChatData> {
    Router::new()
        .routes(routes![join_room, send_message, leave_room, who_is_here])
        .keep("room:*", rooms)
        .on_open(|conn: Connection<ChatData>| async move {
            conn.send(&Welcome {
                message: "Connected to chat server".into(),
            });
            Ok(())
        })
        .on_close(|conn: Connection<ChatData>, _| async move {
            // Subscriptions are still in place here, so the leaver is counted and then excluded.
            for room in conn.topics() {
                let user_count = conn
                    .subscriber_count(&room)
                    .await
                    .unwrap_or(1)
                    .saturating_sub(1);
                let left = UserLeft {
                    username: username(&conn),
                    user_count,
                };
                conn.publish_with(&room, &left, PublishOptions::new().exclude_self())
                    .await;
            }
        })
}

/// The chat page, compiled into the binary.
const PAGE: &str = include_str!("chat.html");

/// Plain HTTP `GET`s on the WebSocket port: the page at `/` and `/index.html`; any other path gets
/// the usual `400` (`None`).
pub(crate) fn page(req: &UpgradeRequest) -> Option<HttpResponse> {
    if !matches!(req.uri().path(), "/" | "/index.html") {
        return None;
    }
    let mut response = HttpResponse::new(PAGE.as_bytes().to_vec());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}

/// The server's cap on a request's deadline: chat requests read local or Redis state, well under
/// a second even across instances.
const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The TypeScript module of the chat: what the server receives, and what it sends.
pub(crate) fn typescript() -> TypeScript {
    TypeScript::new()
        .title("the chat example")
        .router(&router())
        .message::<Welcome>()
        .message::<Joined>()
        .message::<UserJoined>()
        .message::<NewMessage>()
        .message::<UserLeft>()
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
    let router = router();
    #[cfg(feature = "redis")]
    let router = match std::env::var("REDIS_URL") {
        Ok(url) => router.pubsub(ws_kit::redis::RedisPubSub::connect(url).await?),
        Err(_) => router,
    };
    let options = ServeOptions::new()
        .port(port)
        .pages(page)
        .max_rpc_timeout(MAX_RPC_TIMEOUT);
    ws_kit::serve(router, options).await
}
