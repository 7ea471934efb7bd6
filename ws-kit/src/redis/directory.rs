//! Direct sends without a channel per connection ([`DirectSends::Directory`]).
//!
//! Every instance subscribes one channel of its own, `#i:<instance>`. The directory says which
//! instances hold a connection or a user: `<prefix>d:{#client:<id>}` and `<prefix>d:{#user:<id>}`
//! are sets of instance ids, written while the instance has the connection (the user) and removed
//! when it has none. `<prefix>di:{<instance>}` lists what an instance put in the directory, so
//! that what a dead instance left behind can be removed; `<prefix>lease:{<instance>}` says it is
//! alive (renewed by its health loop, shared with presence), and `<prefix>instances` lists the
//! instances to watch.
//!
//! A send reads the target's set, then publishes `topic LF envelope` on the direct channel of
//! each instance in it but this one (which delivered during the call). Both happen in the
//! publish loop, in the order of the sends; a join's set addition is done before the join
//! returns (before a connection's read loop starts, for its own `#client` entry), so a send made
//! after it finds the instance.
//!
//! [`DirectSends::Directory`]: super::DirectSends::Directory

use super::Inner;
use super::conn::{Conn, slot};
use crate::error::WsError;
use redis::AsyncCommands;
use redis::cluster_routing::Slot;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// The directory entry of a connection's or user's topic.
pub(super) fn dir_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}d:{{{topic}}}")
}

/// What an instance put in the directory.
pub(super) fn index_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}di:{{{instance}}}")
}

/// An instance's own channel's topic: `#i:<instance>`.
pub(super) fn direct_topic(instance: impl std::fmt::Display) -> String {
    format!("#i:{instance}")
}

/// Whether the directory serves `topic` (a connection's or a user's) under `directory`.
pub(super) fn is_directed(directory: bool, topic: &str) -> bool {
    directory && (topic.starts_with("#client:") || topic.starts_with("#user:"))
}

/// The payload of a direct send: the topic, a newline, the envelope.
pub(super) fn directed_payload(topic: &str, envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(topic.len() + 1 + envelope.len());
    out.extend_from_slice(topic.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(envelope);
    out
}

/// Runs commands as one pipeline per slot on a cluster (a cluster pipeline may not cross
/// slots), one pipeline in all on a single node; the groups run concurrently, each in the order
/// given. Returns, per group, its result and the indexes of its commands.
pub(super) async fn pipelined(
    conn: &Conn,
    commands: Vec<(Slot, redis::Cmd)>,
) -> Vec<(redis::RedisResult<Vec<redis::Value>>, Vec<usize>)> {
    let mut groups: Vec<(redis::Pipeline, Vec<usize>)> = Vec::new();
    let mut by_slot: HashMap<Slot, usize> = HashMap::new();
    let cluster = conn.is_cluster();
    for (i, (slot, cmd)) in commands.into_iter().enumerate() {
        let group = if cluster {
            *by_slot.entry(slot).or_insert_with(|| {
                groups.push((redis::pipe(), Vec::new()));
                groups.len() - 1
            })
        } else {
            if groups.is_empty() {
                groups.push((redis::pipe(), Vec::new()));
            }
            0
        };
        groups[group].0.add_command(cmd);
        groups[group].1.push(i);
    }
    let runs = groups.into_iter().map(|(pipe, indexes)| {
        let mut conn = conn.clone();
        async move {
            let result = pipe.query_async::<Vec<redis::Value>>(&mut conn).await;
            (result, indexes)
        }
    });
    futures_util::future::join_all(runs).await
}

/// One join's or leave's change to the directory, made by [`writer`].
pub(super) struct Write {
    topic: String,
    add: bool,
    done: oneshot::Sender<redis::RedisResult<()>>,
}

/// Makes the directory changes of joins and leaves in batches, as the publish loop sends
/// publications: whatever is queued goes out together, the next batch after it. Connections that
/// open at once cost a few round trips in all, not one each.
///
/// Order: the index first on the way in and last on the way out, so whatever the directory
/// holds for this instance, its index lists (what a cleaner of a dead instance reads). A batch is
/// two steps: (1) the index additions (one SADD) and the entry removals, (2) the entry additions
/// and the index removals (one SREM). On a single node both steps are one pipeline, in that
/// order; on a cluster each step is a pipeline per slot, and step 2 waits for step 1. One topic
/// has at most one change in a batch: its changes are made under its stripe lock, which is held
/// until the change is done.
pub(super) async fn writer(
    mut queue: mpsc::Receiver<Write>,
    conn: Conn,
    prefix: String,
    instance: String,
) {
    /// Whom a command serves: one write, or all adds (all removals) through the index's one
    /// SADD (SREM).
    #[derive(Clone, Copy)]
    enum Serves {
        One(usize),
        All { adds: bool },
    }
    let index = index_key(&prefix, &instance);
    let mut batch: Vec<Write> = Vec::new();
    while queue.recv_many(&mut batch, 1024).await > 0 {
        let mut steps: [Vec<(Slot, redis::Cmd, Serves)>; 2] = [Vec::new(), Vec::new()];
        let adds: Vec<&str> = batch.iter().filter(|w| w.add).map(|w| &*w.topic).collect();
        let removals: Vec<&str> = batch.iter().filter(|w| !w.add).map(|w| &*w.topic).collect();
        if !adds.is_empty() {
            let mut add = redis::cmd("SADD");
            add.arg(&index).arg(&adds);
            steps[0].push((slot(&index), add, Serves::All { adds: true }));
        }
        for (i, w) in batch.iter().enumerate() {
            let entry = dir_key(&prefix, &w.topic);
            let mut change = redis::cmd(if w.add { "SADD" } else { "SREM" });
            change.arg(&entry).arg(&instance);
            steps[usize::from(w.add)].push((slot(&entry), change, Serves::One(i)));
        }
        if !removals.is_empty() {
            let mut remove = redis::cmd("SREM");
            remove.arg(&index).arg(&removals);
            steps[1].push((slot(&index), remove, Serves::All { adds: false }));
        }
        let [first, second] = steps;
        let run = if conn.is_cluster() {
            vec![first, second]
        } else {
            vec![first.into_iter().chain(second).collect()]
        };
        let mut failed: Vec<Option<redis::RedisError>> = vec![None; batch.len()];
        for step in run {
            let serves: Vec<Serves> = step.iter().map(|(_, _, serves)| *serves).collect();
            let commands = step.into_iter().map(|(slot, cmd, _)| (slot, cmd)).collect();
            for (result, indexes) in pipelined(&conn, commands).await {
                let Err(e) = result else { continue };
                for command in indexes {
                    for (i, w) in batch.iter().enumerate() {
                        let hit = match serves[command] {
                            Serves::One(one) => one == i,
                            Serves::All { adds } => w.add == adds,
                        };
                        if hit {
                            failed[i].get_or_insert_with(|| e.clone());
                        }
                    }
                }
            }
        }
        for (w, failed) in batch.drain(..).zip(failed) {
            let _ = w.done.send(failed.map_or(Ok(()), Err));
        }
    }
}

impl Inner {
    /// Adds or removes this instance in the topic's directory entry so it matches whether the
    /// topic has local subscribers. Under the topic's stripe lock, like channels.
    pub(super) async fn sync_directory(&self, topic: &str) -> Result<(), WsError> {
        let _guard = self.stripes[super::stripe_of(topic)].lock().await;
        let wanted = self.local.contains(topic);
        let have = self
            .listed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic);
        if wanted == have {
            return Ok(());
        }
        self.write_directory(topic, wanted)
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut listed = self.listed.lock().unwrap_or_else(|e| e.into_inner());
        if wanted {
            listed.insert(topic.to_string());
        } else {
            listed.remove(topic);
        }
        Ok(())
    }

    /// Has the directory writer make the change and waits for it.
    async fn write_directory(&self, topic: &str, add: bool) -> redis::RedisResult<()> {
        let (done, result) = oneshot::channel();
        let write = Write {
            topic: topic.to_string(),
            add,
            done,
        };
        let gone = || redis::RedisError::from((redis::ErrorKind::Io, "directory writer gone"));
        self.directory_writes
            .send(write)
            .await
            .map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    /// After an outage (Redis may have restarted empty): every directory entry this instance
    /// should have, written again, in pipelines; and the ones it should not, removed.
    pub(super) async fn reconcile_directory(&self) {
        if !self.directory {
            return;
        }
        let me = self.instance.to_string();
        let index = index_key(&self.prefix, &me);
        let wanted: Vec<String> = self
            .local
            .topics()
            .iter()
            .filter(|t| super::directory::is_directed(true, t))
            .map(|t| t.to_string())
            .collect();
        // On a single node, an index that still lists exactly what this instance holds means
        // Redis kept its data (a connection blip, not a restart): nothing to write again. On a
        // cluster a restarted shard may have lost entries whose index lives on another: always.
        let mut conn = self.conn.clone();
        let lost = self
            .lease_lost
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if !self.cluster && !lost {
            let listed = self.listed.lock().unwrap_or_else(|e| e.into_inner()).len();
            if listed == wanted.len() && conn.scard::<_, usize>(&index).await.ok() == Some(listed) {
                return;
            }
        }
        let mut commands = Vec::new();
        for chunk in wanted.chunks(1000) {
            let mut add = redis::cmd("SADD");
            add.arg(&index).arg(chunk);
            commands.push((slot(&index), add));
        }
        for topic in &wanted {
            let mut add = redis::cmd("SADD");
            let key = dir_key(&self.prefix, topic);
            add.arg(&key).arg(&me);
            commands.push((slot(&key), add));
        }
        let ok = pipelined(&self.conn, commands)
            .await
            .iter()
            .all(|(r, _)| r.is_ok());
        if ok {
            *self.listed.lock().unwrap_or_else(|e| e.into_inner()) =
                wanted.iter().cloned().collect();
        } else {
            // A shard not ready yet: the next healthy ping reconciles again.
            self.out_of_step
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        // Entries of topics left during the outage.
        let Ok(indexed) = conn.smembers::<_, Vec<String>>(&index).await else {
            return;
        };
        for topic in indexed.iter().filter(|t| !self.local.contains(t)) {
            // Under the topic's lock, like every change of its entry: a join racing this
            // removal is decided before or after it, never in the same batch.
            let _guard = self.stripes[super::stripe_of(topic)].lock().await;
            if !self.local.contains(topic) && self.write_directory(topic, false).await.is_ok() {
                self.listed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(topic);
            }
        }
    }

    /// Removes what a dead instance (its lease gone) left in the directory.
    pub(super) async fn clean_directory(&self, dead: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let index = index_key(&self.prefix, dead);
        let topics: Vec<String> = conn.smembers(&index).await?;
        let commands = topics
            .iter()
            .map(|topic| {
                let key = dir_key(&self.prefix, topic);
                let mut remove = redis::cmd("SREM");
                remove.arg(&key).arg(dead);
                (slot(&key), remove)
            })
            .collect();
        for (result, _) in pipelined(&self.conn, commands).await {
            result?;
        }
        conn.del::<_, i64>(&index).await?;
        Ok(())
    }
}
