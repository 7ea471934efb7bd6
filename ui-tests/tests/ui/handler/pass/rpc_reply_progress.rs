// An RPC handler that sends progress frames, then its one reply.
use ws_kit::{Ctx, Message, Router, WsError, handler};

#[derive(Message)]
#[rpc(response = CountdownResult)]
struct Countdown {
    #[validate(range(min = 1, max = 100))]
    from: u32,
}

#[derive(Message)]
struct CountdownResult {
    n: u32,
    done: bool,
}

#[handler]
async fn countdown(ctx: Ctx<Countdown>) -> Result<(), WsError> {
    for n in (1..=ctx.payload.from).rev() {
        if !ctx.progress(&CountdownResult { n, done: false }) {
            return Ok(());
        }
    }
    if ctx.is_finished() {
        return Err(WsError::cancelled("aborted"));
    }
    ctx.reply(CountdownResult { n: 0, done: true });
    Ok(())
}

fn main() {
    assert_eq!(Countdown::TYPE, "COUNTDOWN");
    let _router = Router::new().rpc(countdown);
    let _ = countdown;
}
