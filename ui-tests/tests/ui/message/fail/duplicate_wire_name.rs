#[derive(ws_kit::Message)]
struct JoinRoom {
    room_id: String,
    #[message(rename = "roomId")]
    room: String,
}

fn main() {}
