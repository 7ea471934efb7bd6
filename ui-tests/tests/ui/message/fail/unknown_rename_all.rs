#[derive(ws_kit::Message)]
#[message(rename_all = "Title Case")]
struct JoinRoom {
    room_id: String,
}

fn main() {}
