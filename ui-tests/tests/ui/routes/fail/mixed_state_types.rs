// All handlers of one router share its state type.
use ws_kit::{Ctx, Message, Router, handler, routes};

struct Db;

#[derive(Message)]
struct Add;

#[derive(Message)]
struct List;

#[handler]
async fn add(ctx: Ctx<Add, (), Db>) {
    let _: &Db = ctx.state();
}

#[handler]
async fn list(ctx: Ctx<List>) {
    let _ = ctx.message_type();
}

fn main() {
    let _router = Router::with_state(Db).routes(routes![add, list]);
}
