use ws_kit::handler;

#[handler]
async fn ping() {}

fn main() {}
