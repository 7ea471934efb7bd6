#[derive(ws_kit::Message)]
struct JoinRoom {
    #[message(renmae = "room")]
    room_id: String,
}

fn main() {}
