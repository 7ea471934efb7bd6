// Types nested in a message's payload: camelCase, strict and validated like the message itself.
use std::collections::BTreeMap;
use ws_kit::{Message, Payload};

#[derive(Payload, Debug, PartialEq)]
struct Item {
    #[validate(length(min = 1, max = 100))]
    text: String,
    is_done: bool,
    tags: Option<Vec<String>>,
}

#[derive(Payload, Debug, PartialEq)]
#[payload(rename_all = "snake_case")]
struct Owner {
    #[validate(email)]
    email_address: String,
    #[payload(rename = "n")]
    count: u32,
}

#[derive(Payload, Debug, PartialEq)]
struct Empty {}

#[derive(Message)]
struct SaveBoard {
    items: Vec<Item>,
    owner: Option<Owner>,
    by_id: BTreeMap<String, Item>,
    nothing: Empty,
}

fn main() {
    assert_eq!(SaveBoard::TYPE, "SAVE_BOARD");
}
