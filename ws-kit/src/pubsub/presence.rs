//! Presence (docs/protocol.md 8b): who is in a topic, on every instance. [`PresenceEntry`] (a
//! subscription's client, user and the app's info), [`PresenceStats`], [`PresenceEvent`] (joins
//! and leaves, observed on every instance), and [`Presences`], the in-memory registry.

use super::ClientId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// One subscription's presence: its connection, its user, and a small JSON value from the app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEntry {
    /// The connection.
    pub client_id: ClientId,
    /// Its user, if the app gave one (distinct users are distinct ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// What the app attached (`{"username": "ada"}`).
    #[serde(default)]
    pub info: serde_json::Value,
}

/// How many are present in a topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Connections.
    pub clients: usize,
    /// Distinct users (a connection without a user counts as one).
    pub users: usize,
}

impl PresenceStats {
    /// The numbers of `entries`.
    pub fn of(entries: &[PresenceEntry]) -> Self {
        let users: BTreeSet<_> = entries
            .iter()
            .map(|e| e.user_id.clone().ok_or(e.client_id))
            .collect();
        PresenceStats {
            clients: entries.len(),
            users: users.len(),
        }
    }
}

/// A join or a leave, observed on every instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum PresenceEvent {
    /// A subscription gained presence.
    Join {
        /// The topic.
        topic: String,
        /// Who.
        entry: PresenceEntry,
    },
    /// It left: unsubscribed, closed, or its instance died (after the lease).
    Leave {
        /// The topic.
        topic: String,
        /// Who.
        entry: PresenceEntry,
    },
}

/// What the app runs on each join and leave (`Router::on_presence`).
pub type PresenceHook = Arc<dyn Fn(&PresenceEvent) + Send + Sync>;

/// The hooks an engine calls.
#[derive(Default)]
pub struct PresenceHooks {
    hooks: RwLock<Vec<PresenceHook>>,
}

impl std::fmt::Debug for PresenceHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceHooks").finish_non_exhaustive()
    }
}

impl PresenceHooks {
    /// Adds a hook.
    pub fn add(&self, hook: PresenceHook) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Whether no hook is registered.
    pub fn is_empty(&self) -> bool {
        self.hooks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Runs every hook on `event`; a hook that panics is contained.
    pub fn emit(&self, event: &PresenceEvent) {
        let hooks = self.hooks.read().unwrap_or_else(|e| e.into_inner()).clone();
        for hook in hooks {
            let run = std::panic::AssertUnwindSafe(|| hook(event));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!("a presence hook panicked");
            }
        }
    }
}

/// Presence in one process: topic → client → entry.
#[derive(Debug, Default)]
pub struct Presences {
    topics: Mutex<HashMap<String, BTreeMap<ClientId, PresenceEntry>>>,
    /// The app's hooks.
    pub hooks: PresenceHooks,
}

impl Presences {
    /// Records `entry` in `topic` (replacing the connection's earlier one) and tells the hooks.
    pub fn join(&self, topic: &str, entry: PresenceEntry) {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(topic.to_string())
            .or_default()
            .insert(entry.client_id, entry.clone());
        self.hooks.emit(&PresenceEvent::Join {
            topic: topic.to_string(),
            entry,
        });
    }

    /// Removes `client` from `topic` and tells the hooks, if it was there.
    pub fn leave(&self, topic: &str, client: ClientId) {
        let removed = {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            let removed = topics.get_mut(topic).and_then(|m| m.remove(&client));
            if topics.get(topic).is_some_and(BTreeMap::is_empty) {
                topics.remove(topic);
            }
            removed
        };
        if let Some(entry) = removed {
            self.hooks.emit(&PresenceEvent::Leave {
                topic: topic.to_string(),
                entry,
            });
        }
    }

    /// The entries of `topic`, by client id.
    pub fn list(&self, topic: &str) -> Vec<PresenceEntry> {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}
