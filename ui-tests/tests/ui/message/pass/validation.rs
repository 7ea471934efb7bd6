// Every `#[validate(...)]` rule (but `regex`, which needs the user's own regex crate), on the field
// types they are meant for, with and without a custom `message`.
//
// The issues are read back through the derive's hidden `__validate`: ws-kit has no public way to
// validate a message without a connection.
use ws_kit::Message;

mod checks {
    pub fn no_admin(value: &str) -> Result<(), String> {
        if value == "admin" { Err("`admin` is taken".to_string()) } else { Ok(()) }
    }
}

fn even(value: &u32) -> Result<(), &'static str> {
    if value % 2 == 0 { Ok(()) } else { Err("must be even") }
}

const MAX_NAME: u64 = 20;

#[derive(Message)]
struct SignUp {
    #[validate(length(min = 3, max = MAX_NAME), custom(function = checks::no_admin), non_control_character)]
    username: String,
    #[validate(email(message = "that is not an email address"))]
    email: String,
    #[validate(url)]
    homepage: Option<String>,
    #[validate(length(equal = 6))]
    pin: String,
    #[validate(range(min = 13, max = 130))]
    age: u8,
    #[validate(range(exclusive_min = 0.0, exclusive_max = 1.0))]
    ratio: f64,
    #[validate(custom(function = "even"))]
    seats: u32,
    #[validate(contains(pattern = "@"), does_not_contain(pattern = " ", message = "no spaces"))]
    handle: String,
    #[validate(length(max = 5))]
    tags: Vec<String>,
    #[validate(range(min = 1))]
    limit: Option<u32>,
}

fn main() {
    assert_eq!(SignUp::TYPE, "SIGN_UP");
    let valid = SignUp {
        username: "ada".into(),
        email: "ada@example.com".into(),
        homepage: Some("https://example.com".into()),
        pin: "123456".into(),
        age: 36,
        ratio: 0.5,
        seats: 2,
        handle: "@ada".into(),
        tags: vec!["x".into()],
        limit: Some(1),
    };
    let mut issues = Vec::new();
    ws_kit::__private::Codec::validate(&valid, &mut issues);
    assert_eq!(issues, []);

    let invalid = SignUp {
        username: "admin".into(),
        email: "nope".into(),
        homepage: Some("not a url".into()),
        pin: "12".into(),
        age: 7,
        ratio: 1.0,
        seats: 3,
        handle: "a b".into(),
        tags: vec![String::new(); 6],
        limit: Some(0),
    };
    let mut issues = Vec::new();
    ws_kit::__private::Codec::validate(&invalid, &mut issues);
    let found: Vec<(&str, &str)> = issues.iter().map(|i| (i.path.as_str(), i.message.as_str())).collect();
    assert_eq!(
        found,
        [
            ("payload.username", "`admin` is taken"),
            ("payload.email", "that is not an email address"),
            ("payload.homepage", "must be a valid URL"),
            ("payload.pin", "length must be exactly 6"),
            ("payload.age", "must be at least 13 and at most 130"),
            ("payload.ratio", "must be greater than 0 and less than 1"),
            ("payload.seats", "must be even"),
            ("payload.handle", "must contain `@`"),
            ("payload.handle", "no spaces"),
            ("payload.tags", "length must be at most 5"),
            ("payload.limit", "must be at least 1"),
        ]
    );
}
