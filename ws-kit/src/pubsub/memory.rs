//! The in-memory engine.

use super::{ClientId, LocalTopics, PubSub, PublishResult, Subscriber};
use crate::error::WsError;
use futures_util::future::BoxFuture;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The in-memory engine: one process, exact counts, FIFO per subscriber.
#[derive(Debug, Default)]
pub struct MemoryPubSub {
    local: LocalTopics,
}

impl MemoryPubSub {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

// Every future below is ready at once: the work happens in the call, which keeps publications in
// the order handlers made them.
impl PubSub for MemoryPubSub {
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.local.add(topic, subscriber);
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe<'a>(
        &'a self,
        topic: &'a str,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.local.remove(topic, client);
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish(
        &self,
        topic: &str,
        frame: Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> BoxFuture<'static, PublishResult> {
        let matched = self.local.deliver(topic, &frame, exclude);
        Box::pin(std::future::ready(PublishResult::exact(matched)))
    }

    fn subscriber_count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Option<usize>> {
        Box::pin(std::future::ready(Some(self.local.count(topic))))
    }

    fn local_members(&self, topic: &str) -> Option<Vec<ClientId>> {
        Some(self.local.members(topic))
    }
}
