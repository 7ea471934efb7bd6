// Default type tags (the struct name in SCREAMING_SNAKE_CASE) and explicit overrides.
use ws_kit::Message;

#[derive(Message)]
struct HTTPRequest;

#[derive(Message)]
struct Room2Msg;

#[derive(Message)]
#[message(type = "chat.join")]
struct Join;

#[derive(Message)]
#[message(type = "ws:custom")]
struct Custom;

#[derive(Message)]
#[message(type = "ERRORS")]
struct NotReserved;

#[derive(Message)]
#[message(type = "_single_underscore")]
struct SingleUnderscore;

fn main() {
    assert_eq!(HTTPRequest::TYPE, "HTTP_REQUEST");
    assert_eq!(Room2Msg::TYPE, "ROOM2_MSG");
    assert_eq!(Join::TYPE, "chat.join");
    assert_eq!(Custom::TYPE, "ws:custom");
    assert_eq!(NotReserved::TYPE, "ERRORS");
    assert_eq!(SingleUnderscore::TYPE, "_single_underscore");
    let _ = (HTTPRequest, Room2Msg, Join, Custom, NotReserved, SingleUnderscore);
}
