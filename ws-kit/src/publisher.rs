//! Publishing from anywhere: [`Publisher`] (topics, users, single clients, broadcast) and the
//! [`PublishFuture`] each publication returns.

use crate::error::WsError;
use crate::message::Message;
use crate::pubsub::{ClientId, PubSub, PublishResult, internal, validate_topic};
use crate::wire::{self, Layout, OutMeta};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// Publishes to topics from anywhere (a background task, another service's callback).
#[derive(Clone)]
pub struct Publisher {
    pubsub: Arc<dyn PubSub>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher over any engine (the router's, or one made just to publish: see `Emitter`).
    pub fn new(engine: Arc<dyn PubSub>) -> Self {
        Publisher { pubsub: engine }
    }

    /// Publishes a message to a topic's subscribers.
    ///
    /// The publication is encoded and handed to the engine when this is called; the future only
    /// reports the outcome. So publications are delivered in call order, and a caller may make
    /// several before awaiting them.
    pub fn publish<M: Message>(&self, topic: &str, msg: &M) -> PublishFuture {
        self.publish_with(topic, msg, None, None)
    }

    pub(crate) fn publish_with<M: Message>(
        &self,
        topic: &str,
        msg: &M,
        meta: Option<&Map<String, Value>>,
        exclude: Option<ClientId>,
    ) -> PublishFuture {
        if let Err(e) = validate_topic(topic) {
            return PublishFuture::failed(e);
        }
        let meta = OutMeta {
            correlation_id: None,
            user: meta,
        };
        self.encode_and_publish(topic, msg, meta, Layout::Publication, exclude)
    }

    /// Sends a message to every session of a user (see `Connection::set_user_id`), on every
    /// instance. The frame is the one `send` writes: `{"type","meta":{},"payload"}`.
    pub fn send_to_user<M: Message>(&self, user_id: &str, msg: &M) -> PublishFuture {
        let topic = internal::user(user_id);
        self.encode_and_publish(&topic, msg, OutMeta::default(), Layout::Direct, None)
    }

    /// Sends a message to one connection, wherever it is.
    pub fn send_to_client<M: Message>(&self, client_id: ClientId, msg: &M) -> PublishFuture {
        let topic = internal::client(client_id);
        self.encode_and_publish(&topic, msg, OutMeta::default(), Layout::Direct, None)
    }

    /// Publishes a message to every connection, on every instance.
    pub fn broadcast<M: Message>(&self, msg: &M) -> PublishFuture {
        self.encode_and_publish(
            internal::ALL,
            msg,
            OutMeta::default(),
            Layout::Publication,
            None,
        )
    }

    fn encode_and_publish<M: Message>(
        &self,
        topic: &str,
        msg: &M,
        meta: OutMeta<'_>,
        layout: Layout,
        exclude: Option<ClientId>,
    ) -> PublishFuture {
        match wire::encode_message(msg, meta, layout) {
            Ok(frame) => {
                crate::metrics::published();
                PublishFuture(self.pubsub.publish(topic, frame, exclude))
            }
            Err(e) => PublishFuture::failed(e),
        }
    }

    /// How many connections subscribe to `topic`, when the engine knows.
    pub async fn subscriber_count(&self, topic: &str) -> Option<usize> {
        self.pubsub.subscriber_count(topic).await
    }
}

/// The outcome of a publication already handed to the engine. Awaiting it is optional: the
/// publication goes out whether or not it is awaited.
#[must_use = "the publication is already sent; await this to learn whether it succeeded"]
pub struct PublishFuture(BoxFuture<'static, PublishResult>);

impl fmt::Debug for PublishFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishFuture").finish_non_exhaustive()
    }
}

impl PublishFuture {
    pub(crate) fn failed(error: WsError) -> Self {
        PublishFuture(Box::pin(std::future::ready(PublishResult::failed(error))))
    }
}

impl Future for PublishFuture {
    type Output = PublishResult;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<PublishResult> {
        self.0.as_mut().poll(cx)
    }
}
