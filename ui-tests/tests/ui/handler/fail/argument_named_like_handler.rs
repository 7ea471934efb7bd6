// `#[handler]` turns `ping` into a unit struct, so an argument also named `ping` is a pattern
// matching that struct, not a new binding.
use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
struct Ping;

#[handler]
async fn ping(ping: Ctx<Ping>) {
    let _ = ping.message_type();
}

fn main() {}
