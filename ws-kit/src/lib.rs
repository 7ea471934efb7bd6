#![doc = include_str!("docs/crate.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The crate's own unit tests derive messages, whose expansion names `::ws_kit`.
#[cfg(test)]
extern crate self as ws_kit;

#[cfg(feature = "bench")]
#[doc(hidden)]
#[path = "bench.rs"]
pub mod __bench;
#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
mod app;
mod auth;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod close_code;
mod codec;
mod connection;
mod ctx;
mod dispatch;
mod error;
mod event;
mod field;
mod handler;
mod http_syntax;
mod lazy_read;
mod message;
mod metrics;
mod middleware;
mod outbound;
mod publisher;
pub mod pubsub;
pub mod rate_limit;
mod read_loop;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod router;
mod routes;
mod scan;
pub mod schema;
pub mod seal;
mod server;
mod task;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
pub mod typescript;
mod wire;

pub use auth::InBandAuth;
pub use connection::{Clients, Connection, TopicAction};
pub use ctx::Ctx;
pub use error::{
    Error, ErrorCode, Issue, MAX_ISSUE_MESSAGE, MAX_ISSUE_PATH, MAX_ISSUES, MAX_QUOTED, WsError,
};
pub use event::{CloseInfo, ErrorEvent, ErrorKind};
pub use handler::{Handler, IntoRoute, Reply, Route};
pub use message::{EventMessage, Message, Meta, RpcMessage};
pub use middleware::{Incoming, Middleware, Next};
pub use outbound::OverflowPolicy;
pub use publisher::{PublishFuture, Publisher};
pub use pubsub::{ClientId, PublishOptions, PublishResult};
pub use router::Router;
pub use routes::Routes;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use server::TlsConfig;
pub use server::{
    HttpResponse, IntoAuth, PayloadLimit, Rejection, ServeOptions, Server, Service, UpgradeRequest,
    query_param, serve,
};
pub use ws_kit_macros::{Message, Payload, handler, routes};

/// rustls, re-exported (feature `tls`) so an app builds the `RootCertStore` or `ServerConfig` it
/// hands to [`TlsConfig`] and the client with the very version ws-kit links.
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use rustls;
/// JSON values (`WsError::with_details`, user meta), re-exported so apps need no direct dependency.
pub use serde_json;
/// The WebSocket implementation underneath, part of the API (frames in the testing harness).
pub use tokio_tungstenite::tungstenite;
/// HTTP types of the upgrade request ([`UpgradeRequest`] is `http::Request<()>`).
pub use tokio_tungstenite::tungstenite::http;

/// The README's code samples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
