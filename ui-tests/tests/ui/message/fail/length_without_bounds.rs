#[derive(ws_kit::Message)]
struct SignUp {
    #[validate(length)]
    username: String,
}

fn main() {}
