#[derive(ws_kit::Message)]
struct SignUp {
    #[validate(phone)]
    phone: String,
}

fn main() {}
