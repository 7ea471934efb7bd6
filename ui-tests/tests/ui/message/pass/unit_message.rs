// A message with no payload: a unit struct, and an empty braced struct.
use ws_kit::Message;

#[derive(Message)]
struct Ping;

#[derive(Message)]
struct Heartbeat {}

#[derive(Message)]
#[rpc(response = Pong)]
struct GetStatus;

#[derive(Message)]
struct Pong;

fn main() {
    assert_eq!(Ping::TYPE, "PING");
    assert_eq!(Heartbeat::TYPE, "HEARTBEAT");
    assert_eq!(GetStatus::TYPE, "GET_STATUS");
    assert_eq!(Pong::TYPE, "PONG");
    let _ = (Ping, Heartbeat {}, GetStatus, Pong);
}
