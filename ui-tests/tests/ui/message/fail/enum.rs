#[derive(ws_kit::Message)]
enum Command {
    Start,
    Stop,
}

fn main() {}
