// A route table of events and RPCs (handlers from other modules too), plus routes with
// per-message middleware (outside `routes!`, `Handler` must be in scope for `.middleware`),
// checked for duplicate type tags when built.
use ws_kit::{Ctx, Handler, Incoming, Message, Next, Router, ServeOptions, WsError, handler, routes};

#[derive(Default)]
struct Session {
    user: Option<String>,
}

#[derive(Message)]
struct JoinRoom {
    room_id: String,
}

#[derive(Message)]
struct SendMessage {
    text: String,
}

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping;

#[derive(Message)]
struct Pong;

#[handler]
async fn join_room(ctx: Ctx<JoinRoom, Session>) -> Result<(), WsError> {
    ctx.subscribe(&ctx.payload.room_id).await
}

#[handler]
async fn send_message(ctx: Ctx<SendMessage, Session>) {
    let _ = &ctx.payload.text;
}

#[handler]
async fn ping(_ctx: Ctx<Ping, Session>) -> Result<Pong, WsError> {
    Ok(Pong)
}

#[derive(Message)]
#[rpc(response = Time)]
struct GetTime;

#[derive(Message)]
struct Time {
    unix_ms: u64,
}

#[handler]
async fn get_time(_ctx: Ctx<GetTime, Session>) -> Result<Time, WsError> {
    Ok(Time { unix_ms: 0 })
}

async fn require_login(req: Incoming<Session>, next: Next<Session>) -> Result<(), WsError> {
    if req.data().user.is_none() {
        return Err(WsError::unauthenticated("log in first"));
    }
    next.run().await
}

async fn audit(req: Incoming<Session>, next: Next<Session>) -> Result<(), WsError> {
    let _ = req.message_type();
    next.run().await
}

mod more {
    use super::*;

    #[derive(Message)]
    #[message(type = "LEAVE")]
    pub struct Leave;

    #[handler]
    pub(crate) async fn leave(ctx: Ctx<Leave, Session>) {
        let _ = ctx.message_type();
    }
}

fn main() {
    let router = Router::<Session>::new()
        .middleware(audit)
        .routes(routes![join_room, ping, more::leave])
        .on(send_message.middleware(require_login))
        .rpc(get_time.middleware(audit).middleware(require_login));
    let _service = router
        .into_service(ServeOptions::new())
        .expect("no duplicate type tags");
}
