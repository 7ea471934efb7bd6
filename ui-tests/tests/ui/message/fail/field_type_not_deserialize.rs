struct Opaque;

#[derive(ws_kit::Message)]
struct Upload {
    blob: Opaque,
}

fn main() {}
