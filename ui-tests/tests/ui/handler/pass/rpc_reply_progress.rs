// An RPC handler that sends progress frames, then returns its one reply.
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
async fn countdown(ctx: Ctx<Countdown>) -> Result<CountdownResult, WsError> {
    for n in (1..=ctx.payload.from).rev() {
        if !ctx.progress(&CountdownResult { n, done: false }) {
            return Err(WsError::cancelled("nobody listens any more"));
        }
    }
    if ctx.is_finished() {
        return Err(WsError::cancelled("aborted"));
    }
    Ok(CountdownResult { n: 0, done: true })
}

fn main() {
    assert_eq!(Countdown::TYPE, "COUNTDOWN");
    let _router = Router::new().rpc(countdown);
    let _ = countdown;
}
