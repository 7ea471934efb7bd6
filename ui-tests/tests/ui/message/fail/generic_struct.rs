#[derive(ws_kit::Message)]
struct Envelope<T> {
    body: T,
}

fn main() {}
