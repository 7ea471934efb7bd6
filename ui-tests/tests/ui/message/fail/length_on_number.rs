#[derive(ws_kit::Message)]
struct SetVolume {
    #[validate(length(max = 10))]
    level: u8,
}

fn main() {}
