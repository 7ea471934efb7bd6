//! The in-memory engine.

use super::{
    Announce, ClientId, History, KeptTopics, LocalTopics, Position, PresenceEntry, PresenceHook,
    Presences, PubSub, PublishResult, Subscribed, Subscriber,
};
use crate::error::WsError;
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The in-memory engine: one process, exact counts, FIFO per subscriber, kept topics in rings.
/// Clones share one engine (keep one to look into it after handing the other to the router).
#[derive(Clone, Debug, Default)]
pub struct MemoryPubSub {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    local: LocalTopics,
    history: History,
    presence: Presences,
    /// Whether the task that forgets expired histories runs.
    sweeping: AtomicBool,
}

impl MemoryPubSub {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many publications a kept topic holds now.
    pub fn kept_len(&self, topic: &str) -> usize {
        self.inner.history.len(topic)
    }

    /// How many kept topics hold a history now.
    pub fn kept_topics(&self) -> usize {
        self.inner.history.topics()
    }

    /// Starts, once, the task that forgets histories whose every publication expired and whose
    /// topic has no subscriber (every second, while the engine lives).
    fn sweep_in_background(&self) {
        if self.inner.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(inner) = weak.upgrade() else { return };
                inner.history.sweep(&inner.local);
            }
        });
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
        self.inner.local.add(topic, subscriber);
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe<'a>(
        &'a self,
        topic: &'a str,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.inner.local.remove(topic, client);
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish(
        &self,
        topic: &str,
        frame: Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> BoxFuture<'static, PublishResult> {
        let inner = &self.inner;
        let matched = match inner.history.kept(topic) {
            Some(keep) => {
                self.sweep_in_background();
                inner
                    .history
                    .publish(keep, &inner.local, topic, &frame, exclude)
            }
            None => inner.local.deliver(topic, &frame, exclude),
        };
        Box::pin(std::future::ready(PublishResult::exact(matched)))
    }

    fn subscriber_count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Option<usize>> {
        Box::pin(std::future::ready(Some(self.inner.local.count(topic))))
    }

    fn local_members(&self, topic: &str) -> Option<Vec<ClientId>> {
        Some(self.inner.local.members(topic))
    }

    fn keep(&self, topics: KeptTopics) {
        self.inner.history.keep(topics);
    }

    fn presence_join<'a>(
        &'a self,
        topic: &'a str,
        entry: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.inner.presence.join(topic, entry);
        Box::pin(std::future::ready(Ok(())))
    }

    fn presence_leave<'a>(&'a self, topic: &'a str, client: ClientId) -> BoxFuture<'a, ()> {
        self.inner.presence.leave(topic, client);
        Box::pin(std::future::ready(()))
    }

    fn presence<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PresenceEntry>, WsError>> {
        Box::pin(std::future::ready(Ok(self.inner.presence.list(topic))))
    }

    fn on_presence(&self, hook: PresenceHook) {
        self.inner.presence.hooks.add(hook);
    }

    fn subscribe_from<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
        since: Position,
        announce: Announce,
    ) -> BoxFuture<'a, Result<Subscribed, WsError>> {
        let inner = &self.inner;
        let subscribed =
            inner
                .history
                .subscribe_from(&inner.local, topic, subscriber, &since, announce);
        Box::pin(std::future::ready(Ok(subscribed)))
    }
}
