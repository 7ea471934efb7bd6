#[derive(ws_kit::Message)]
struct Point(i32, i32);

fn main() {}
