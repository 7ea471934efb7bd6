//! What every connection of one router shares: the pub/sub engine, the limits, topic
//! authorization, error reporting, the user index and the application's state. Connections hold
//! this, not the whole router: routes and lifecycle hooks belong to the read loop.

use super::Connection;
use super::registry::{Clients, Registry};
use crate::error::{ErrorCode, WsError};
use crate::event::ErrorEvent;
use crate::outbound::OverflowPolicy;
use crate::publisher::Publisher;
use crate::pubsub::PubSub;
use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What a connection wants to do with a topic, for the `authorize_topics` hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicAction {
    /// `subscribe(topic)`.
    Subscribe,
    /// `publish(topic, ..)` from a handler or hook of this connection.
    Publish,
}

pub(crate) type ErrorHook = Arc<dyn Fn(&ErrorEvent) + Send + Sync>;
pub(crate) type UserIdFn<D> = Arc<dyn Fn(&D) -> Option<String> + Send + Sync>;
pub(crate) type AuthorizeHook<D> =
    Arc<dyn Fn(&Connection<D>, &str, TopicAction) -> bool + Send + Sync>;

/// Per-connection limits and wire settings, from `ServeOptions`.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) max_inflight_rpcs: usize,
    pub(crate) max_queued_bytes: usize,
    pub(crate) overflow: OverflowPolicy,
    pub(crate) max_topics_per_connection: usize,
    pub(crate) max_rpc_timeout: Option<Duration>,
    /// Progress frames also carry their value under `data`
    /// (`ServeOptions::progress_data_compat`, for the WS-Kit TypeScript client).
    pub(crate) progress_data_compat: bool,
}

impl Default for Limits {
    /// The defaults of `ServeOptions` (docs/protocol.md).
    fn default() -> Self {
        Limits {
            max_inflight_rpcs: 1000,
            max_queued_bytes: 1024 * 1024,
            overflow: OverflowPolicy::Close,
            max_topics_per_connection: 1000,
            max_rpc_timeout: None,
            progress_data_compat: false,
        }
    }
}

/// The shared part of a router's connections.
pub(crate) struct Shared<D> {
    pub(crate) pubsub: Arc<dyn PubSub>,
    pub(crate) limits: Limits,
    pub(crate) authorize: Vec<AuthorizeHook<D>>,
    pub(crate) on_error: Vec<ErrorHook>,
    /// Derives a connection's user id from its data when it opens (`Router::user_id_from`).
    pub(crate) user_id: Option<UserIdFn<D>>,
    /// The router's state (`Router::with_state`); `()` when it has none.
    pub(crate) state: Arc<dyn Any + Send + Sync>,
    /// Connections authenticate in-band (`Router::in_band_auth`): they start unauthenticated.
    pub(crate) in_band_auth: bool,
    /// The open connections of this instance.
    pub(crate) registry: Arc<Registry<D>>,
}

impl<D> fmt::Debug for Shared<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> Shared<D> {
    /// Tells `tracing` and the `on_error` hooks. Inside a message's span (a handler's task), the
    /// span's `outcome` becomes the error's code.
    pub(crate) fn report(&self, event: &ErrorEvent) {
        if tracing::dispatcher::has_been_set() {
            trace_error(event);
        }
        for hook in &self.on_error {
            hook(event);
        }
    }

    pub(crate) fn publisher(&self) -> Publisher {
        Publisher::new(self.pubsub.clone())
    }

    /// The read-only view of this instance's connections.
    pub(crate) fn clients(&self) -> Clients<D> {
        Clients {
            registry: self.registry.clone(),
            pubsub: self.pubsub.clone(),
        }
    }

    /// Runs the `authorize_topics` hooks.
    pub(crate) fn authorize(
        &self,
        conn: &Connection<D>,
        topic: &str,
        action: TopicAction,
    ) -> Result<(), WsError> {
        if self.authorize.iter().all(|hook| hook(conn, topic, action)) {
            Ok(())
        } else {
            let verb = match action {
                TopicAction::Subscribe => "subscribe to",
                TopicAction::Publish => "publish to",
            };
            Err(
                WsError::permission_denied(format!("not allowed to {verb} this topic"))
                    .with_details(serde_json::json!({ "topic": topic })),
            )
        }
    }
}

/// An error as `tracing` sees it: failures of the server (a panic, a frame it could not encode, a
/// hook) at `error`; a peer breaking the protocol or a limit at `warn`; what a request's answer
/// already tells its client (validation, unknown types, the application's errors, rate limits)
/// at `debug`, so a client cannot flood the logs.
fn trace_error(event: &ErrorEvent) {
    use crate::event::ErrorKind as K;
    let code = event.error.code().as_str();
    tracing::Span::current().record("outcome", code);
    let (client_id, kind, ty) = (&event.client_id, event.kind, event.message_type.as_deref());
    let error = &event.error;
    match event.kind {
        K::Panic | K::HookPanic | K::Encode | K::MissingTerminal | K::Open => {
            tracing::error!(%client_id, ?kind, r#type = ty, code, %error, "ws-kit error");
        }
        K::ProtocolViolation
        | K::Flood
        | K::InboundBudget
        | K::PayloadTooLarge
        | K::AuthTimeout
        | K::InflightLimit => {
            tracing::warn!(%client_id, ?kind, r#type = ty, code, %error, "ws-kit error");
        }
        K::Handler if matches!(error.code(), ErrorCode::Internal | ErrorCode::Unavailable) => {
            tracing::warn!(%client_id, ?kind, r#type = ty, code, %error, "ws-kit error");
        }
        _ => tracing::debug!(%client_id, ?kind, r#type = ty, code, %error, "ws-kit error"),
    }
}
