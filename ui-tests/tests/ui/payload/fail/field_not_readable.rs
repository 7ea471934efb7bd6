// A field type that is neither a `Payload` nor serde-readable: one error, at the field.
use ws_kit::Message;

struct Item {
    text: String,
}

#[derive(Message)]
struct SaveBoard {
    items: Vec<Item>,
}

fn main() {}
