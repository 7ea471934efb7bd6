//! What the macros' expansions name: re-exports and the small runtime pieces generated code
//! calls. Not public API (`ws_kit::__private`): it changes with the macros.

pub use crate::codec::{Codec, ReplyFrame};
pub use crate::field::{
    Nested, PickFlat, PickNested, PickNoRead, PickNoWrite, PickRead, PickWrite, assert_field,
};
pub use crate::handler::{CtxParts, IntoReply};
pub use crate::scan::{FastField, Pick, PickFast, PickNone, PickSerde, Scan};
pub use crate::schema::{PickDescribe, PickUndescribed};
pub use serde;
pub use serde_json::value::RawValue;
pub use validator;

use crate::error::{Issue, WsError};
use crate::handler::Handler;
use crate::message::Message;
use std::borrow::Cow;

pin_project_lite::pin_project! {
    /// A handler's future with its return value converted to `Result<R, WsError>`.
    pub struct HandlerFuture<F, R>
    where
        F: std::future::Future,
    {
        #[pin]
        future: F,
        convert: fn(F::Output) -> Result<R, WsError>,
    }
}

impl<F: std::future::Future, R> HandlerFuture<F, R> {
    /// Wraps the future of a `#[handler]` function: no extra state machine around it.
    /// `convert` is `IntoReply::into_reply`, named in the expansion at the function's return
    /// type, so an unsupported return type is reported there, once.
    pub fn new(future: F, convert: fn(F::Output) -> Result<R, WsError>) -> Self {
        HandlerFuture { future, convert }
    }
}

impl<F: std::future::Future, R> std::future::Future for HandlerFuture<F, R> {
    type Output = Result<R, WsError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        this.future.poll(cx).map(*this.convert)
    }
}

/// Decodes a payload object strictly; on failure, records issues with their paths.
pub fn decode_payload<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    issues: &mut Vec<Issue>,
) -> Option<T> {
    let Some(raw) = raw else {
        issues.push(Issue::new("payload", "required"));
        return None;
    };
    // A struct also deserializes from an array in serde; the wire wants an object.
    if !raw.get().trim_start().starts_with('{') {
        issues.push(Issue::new("payload", "must be an object"));
        return None;
    }
    match serde_json::from_str::<T>(raw.get()) {
        Ok(value) => Some(value),
        Err(_) => {
            // Decode again, only on failure, to learn where it failed.
            let mut de = serde_json::Deserializer::from_str(raw.get());
            match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Ok(value) => Some(value),
                Err(e) => {
                    let message = crate::wire::strip_position(e.inner());
                    let mut path = match e.path().to_string() {
                        p if p == "." => "payload".to_string(),
                        p => format!("payload.{p}"),
                    };
                    // serde reports a missing field at its parent; name the field itself.
                    if let Some(field) = message
                        .strip_prefix("missing field `")
                        .and_then(|rest| rest.strip_suffix('`'))
                    {
                        path = format!("{path}.{field}");
                    }
                    issues.push(Issue::new(path, message));
                    None
                }
            }
        }
    }
}

/// A message without payload fields must come without `payload`.
pub fn decode_no_payload(raw: Option<&RawValue>, issues: &mut Vec<Issue>) -> Option<()> {
    match raw {
        None => Some(()),
        Some(_) => {
            issues.push(Issue::new("payload", "this message takes no payload"));
            None
        }
    }
}

/// Rejects meta keys the message does not declare.
pub fn check_meta_keys(
    meta: &[(Cow<'_, str>, &RawValue)],
    declared: &[&str],
    issues: &mut Vec<Issue>,
) {
    for (key, _) in meta {
        if !declared.contains(&&**key) {
            issues.push(Issue::new(format!("meta.{key}"), "unknown key"));
        }
    }
}

/// The error text of a custom validation function, if it failed.
pub fn custom_error<R: CustomResult>(result: R) -> Option<String> {
    result.error_text()
}

/// What a `#[validate(custom(function = f))]` function returns.
#[diagnostic::on_unimplemented(
    message = "a `custom` validation function must return `Result<(), E>` where `E: Display`, not `{Self}`",
    label = "this function's return type"
)]
pub trait CustomResult {
    /// The failure's text, if it failed.
    fn error_text(self) -> Option<String>;
}

impl<E: std::fmt::Display> CustomResult for Result<(), E> {
    fn error_text(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// The type tag of a handler's message, in `const` context (the `match` of `routes!`).
pub const fn tag_of<H: Handler>(_: &H) -> &'static str {
    <H::Message as Message>::TYPE
}

/// A handler's future must be `Send` (tasks move between threads): this check names the handler
/// in the error, with the value held across an `.await` that makes it not `Send`.
pub fn handler_future_must_be_send<F: std::future::Future + Send>(_: &F) {}

/// A handler as a route without options (the root of a `routes!` entry).
pub fn route<H: Handler>(handler: H) -> crate::handler::Route<H> {
    crate::handler::Route::new(handler)
}

/// `a == b` for strings, in `const` context (duplicate type tags in `routes!`).
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The server's full decoding path for `M` and its validation, for `MessageSchema::check_payload`.
pub fn check_payload<M: Message>(payload: Option<&RawValue>) -> Result<(), Vec<Issue>> {
    let message = M::decode(payload, &[])?;
    let mut issues = Vec::new();
    message.validate(&mut issues);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(issues)
    }
}
