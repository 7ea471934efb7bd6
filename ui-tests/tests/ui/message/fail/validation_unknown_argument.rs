#[derive(ws_kit::Message)]
struct SignUp {
    #[validate(length(min = 1, maximum = 20))]
    username: String,
}

fn main() {}
