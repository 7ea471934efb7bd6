#[derive(ws_kit::Message)]
struct SignUp {
    #[validate(custom(function = is_lowercase))]
    username: String,
}

fn is_lowercase(value: &str) -> bool {
    value.chars().all(char::is_lowercase)
}

fn main() {}
