#![doc = include_str!("docs/crate.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The crate's own unit tests derive messages, whose expansion names `::ws_kit`.
#[cfg(test)]
extern crate self as ws_kit;

#[cfg(feature = "bench")]
#[doc(hidden)]
#[path = "bench.rs"]
pub mod __bench;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
mod connection;
mod context;
mod error;
mod handler;
mod lazy_read;
mod message;
mod middleware;
mod outbound;
mod pubsub;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod router;
mod scan;
mod server;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod wire;

pub use context::{Connection, Ctx};
pub use error::{Error, ErrorCode, Issue, WsError};
pub use handler::{Handler, IntoHandlerResult, Layered, Routes};
pub use message::{EventMessage, Message, Meta, RpcMessage};
pub use middleware::{Middleware, Next, Request};
pub use outbound::OverflowPolicy;
pub use pubsub::{
    Capability, ClientId, LocalTopics, MAX_TOPIC_LEN, MemoryPubSub, PubSub, PublishOptions,
    PublishResult, Subscriber, validate_topic,
};
pub use router::{CloseInfo, ErrorEvent, ErrorKind, PublishFuture, Publisher, Router, TopicAction};
pub use server::{
    IntoAuth, PayloadLimit, Rejection, ServeOptions, Server, Service, query_param, serve,
};
pub use ws_kit_macros::{Message, handler, routes};

/// The WebSocket implementation underneath, part of the API (`http::Request` in `authenticate`).
pub use tokio_tungstenite::tungstenite;
/// HTTP types of the upgrade request.
pub use tokio_tungstenite::tungstenite::http;

/// What the macros' expansions name. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::{CtxParts, DynRoute, IntoHandlerResult, RouteTable};
    pub use crate::scan::{FastField, Pick, PickFast, PickNone, PickSerde, Scan};
    pub use crate::wire::Envelope;
    pub use serde;
    pub use serde_json::value::RawValue;
    pub use validator;

    use crate::error::Issue;
    use std::borrow::Cow;

    pin_project_lite::pin_project! {
        /// A handler's future with its return value converted to `Result<(), WsError>`.
        pub struct HandlerFuture<F>
        where
            F: std::future::Future,
        {
            #[pin]
            future: F,
            convert: fn(F::Output) -> Result<(), crate::WsError>,
        }
    }

    impl<F: std::future::Future> HandlerFuture<F> {
        /// Wraps the future of a `#[handler]` function: no extra state machine around it.
        /// `convert` is `IntoHandlerResult::into_handler_result`, named in the expansion at the
        /// function's return type, so an unsupported return type is reported there, once.
        pub fn new(future: F, convert: fn(F::Output) -> Result<(), crate::WsError>) -> Self {
            HandlerFuture { future, convert }
        }
    }

    impl<F: std::future::Future> std::future::Future for HandlerFuture<F> {
        type Output = Result<(), crate::WsError>;

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

    /// Decodes one declared meta field; a missing key decodes from `null` (so `Option` fields may be absent).
    pub fn decode_meta_field<T: serde::de::DeserializeOwned>(
        meta: &[(Cow<'_, str>, &RawValue)],
        key: &str,
        issues: &mut Vec<Issue>,
    ) -> Option<T> {
        let raw = meta
            .iter()
            .find(|(k, _)| k == key)
            .map_or("null", |(_, v)| v.get());
        match serde_json::from_str(raw) {
            Ok(value) => Some(value),
            Err(_) if raw == "null" => {
                issues.push(Issue::new(format!("meta.{key}"), "required"));
                None
            }
            Err(e) => {
                issues.push(Issue::new(
                    format!("meta.{key}"),
                    crate::wire::strip_position(&e),
                ));
                None
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

    /// Compile-time check that a handler in `routes!` has the table's data type.
    pub fn same_data<D, H: crate::Handler<Data = D>>() {}

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
}

/// The README's code sample, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
