// What a handler may return: nothing, `Result<(), WsError>`, or `Result<(), E>` with
// `E: Into<WsError>`; and the argument pattern may be anything (`_ctx`, `mut ctx`).
use ws_kit::{Ctx, ErrorCode, Message, Router, WsError, handler};

#[derive(Message)]
struct A;
#[derive(Message)]
struct B;
#[derive(Message)]
struct C;
#[derive(Message)]
struct D;
#[derive(Message)]
struct E {
    count: u32,
}

enum AppError {
    NoRoom,
}

impl From<AppError> for WsError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::NoRoom => WsError::not_found("no such room"),
        }
    }
}

#[handler]
async fn unit(_ctx: Ctx<A>) {}

#[handler]
async fn ws_error(ctx: Ctx<B>) -> Result<(), WsError> {
    ctx.subscribe("room").await?;
    Ok(())
}

#[handler]
async fn app_error(_ctx: Ctx<C>) -> Result<(), AppError> {
    Err(AppError::NoRoom)
}

#[handler]
async fn code(_ctx: Ctx<D>) -> Result<(), ErrorCode> {
    Err(ErrorCode::Unimplemented)
}

#[handler]
async fn mutable(mut ctx: Ctx<E>) -> std::result::Result<(), ws_kit::WsError> {
    ctx.payload.count += 1;
    Ok(())
}

fn main() {
    let _router = Router::new()
        .on(unit)
        .on(ws_error)
        .on(app_error)
        .on(code)
        .on(mutable);
}
