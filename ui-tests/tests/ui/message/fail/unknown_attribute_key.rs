#[derive(ws_kit::Message)]
#[message(tpye = "X")]
struct Typo;

fn main() {}
