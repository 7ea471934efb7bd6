// A chat app's messages: validated payload fields and a custom meta field.
use ws_kit::Message;

#[derive(Message)]
struct JoinRoom {
    #[validate(length(min = 1, max = 20))]
    username: String,
    #[validate(length(min = 1, max = 64), does_not_contain(pattern = "/"))]
    room_id: String,
    #[message(meta)]
    #[validate(length(max = 64))]
    trace_id: Option<String>,
}

#[derive(Message)]
struct SendMessage {
    #[validate(length(min = 1, max = 1000, message = "say something (at most 1000 characters)"))]
    text: String,
    #[message(meta)]
    locale: String,
}

#[derive(Message)]
struct NewMessage {
    room_id: String,
    username: String,
    text: String,
    sent_at: u64,
}

#[derive(Message)]
struct UserLeft {
    username: String,
}

fn main() {
    assert_eq!(JoinRoom::TYPE, "JOIN_ROOM");
    assert_eq!(SendMessage::TYPE, "SEND_MESSAGE");
    assert_eq!(NewMessage::TYPE, "NEW_MESSAGE");
    assert_eq!(UserLeft::TYPE, "USER_LEFT");

    // The struct is still an ordinary struct.
    let join = JoinRoom {
        username: "ada".into(),
        room_id: "general".into(),
        trace_id: None,
    };
    let _ = (join.username, join.room_id, join.trace_id);
    let send = SendMessage { text: "hi".into(), locale: "en".into() };
    let _ = (send.text, send.locale);
    let new = NewMessage { room_id: String::new(), username: String::new(), text: String::new(), sent_at: 0 };
    let _ = (new.room_id, new.username, new.text, new.sent_at);
    let left = UserLeft { username: String::new() };
    let _ = left.username;
}
