// `#[payload(...)]` knows `rename_all` (container) and `rename` (fields) only.
use ws_kit::Payload;

#[derive(Payload)]
#[payload(type = "ITEM")]
struct Item {
    #[payload(meta)]
    text: String,
}

fn main() {}
