// `rename_all`, field `rename` and `type` overrides change the wire names.
//
// The wire names are read back through the derive's hidden items (`__serialize_payload`,
// `__META_KEYS`): ws-kit has no public way to encode a message without a connection.
use ws_kit::Message;

#[derive(Message)]
#[message(type = "join", rename_all = "snake_case")]
struct JoinRoom {
    room_id: String,
    #[message(rename = "user")]
    user_name: String,
    #[message(meta, rename = "x-trace")]
    trace_id: String,
}

#[derive(Message)]
#[message(rename_all = "SCREAMING_SNAKE_CASE")]
struct Shout {
    room_id: String,
    r#type: String,
}

#[derive(Message)]
struct Defaults {
    room_id: String,
    interval_ms: u64,
    #[message(meta)]
    trace_id: String,
}

// The derive's encoder (hidden API): what `ctx.send` writes as `payload`.
fn payload<M: Message>(message: &M) -> serde_json::Value {
    ws_kit::__private::Codec::serialize_payload(message, serde_json::value::Serializer)
        .expect("a payload serializes")
}

fn meta_keys<M: Message>() -> &'static [&'static str] {
    <M as ws_kit::__private::Codec>::META_KEYS
}

fn main() {
    assert_eq!(JoinRoom::TYPE, "join");
    let join = JoinRoom { room_id: "r".into(), user_name: "ada".into(), trace_id: "t".into() };
    assert_eq!(payload(&join), serde_json::json!({ "room_id": "r", "user": "ada" }));
    assert_eq!(meta_keys::<JoinRoom>(), ["x-trace"]);

    assert_eq!(Shout::TYPE, "SHOUT");
    let shout = Shout { room_id: "r".into(), r#type: "t".into() };
    assert_eq!(payload(&shout), serde_json::json!({ "ROOM_ID": "r", "TYPE": "t" }));

    let defaults = Defaults { room_id: "r".into(), interval_ms: 5, trace_id: "t".into() };
    assert_eq!(payload(&defaults), serde_json::json!({ "roomId": "r", "intervalMs": 5 }));
    assert_eq!(meta_keys::<Defaults>(), ["traceId"]);
}
