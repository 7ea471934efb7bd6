// `Payload` is for structs; enums take serde's derives.
use ws_kit::Payload;

#[derive(Payload)]
enum Status {
    Open,
    Done,
}

fn main() {}
