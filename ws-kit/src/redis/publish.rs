//! The way publications leave an instance: the envelope between instances and the loop that
//! sends them to Redis in call order (PUBLISH or SPUBLISH, the kept topics' script, or a direct
//! send through the directory).

use super::conn::{self, Conn};
use super::{directory, kept};
use crate::metrics::{self, Started};
use crate::pubsub::{ClientId, Keep, LocalTopics};
use bytes::Bytes;
use redis::cluster_routing::Slot;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The length of a hyphenated UUID.
const ID_LEN: usize = 36;

/// A publication on the wire between instances: the publishing instance's id, a space, the
/// excluded client id (or nothing), a newline, then the frame exactly as clients receive it.
pub(super) fn encode_envelope(
    origin: ClientId,
    frame: &Utf8Bytes,
    exclude: Option<ClientId>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 2 * ID_LEN + 2);
    let mut buffer = uuid::Uuid::encode_buffer();
    out.extend_from_slice(origin.hyphenated().encode_lower(&mut buffer).as_bytes());
    out.push(b' ');
    if let Some(id) = exclude {
        out.extend_from_slice(id.hyphenated().encode_lower(&mut buffer).as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(frame.as_bytes());
    out
}

/// A publication from Redis: its origin, the excluded client, the frame.
pub(super) type Envelope = (ClientId, Option<ClientId>, Utf8Bytes);

/// The head of an envelope before its frame: `origin SP exclude`.
pub(super) fn envelope_head(origin: ClientId, exclude: Option<ClientId>) -> String {
    match exclude {
        Some(id) => format!("{} {}", origin.hyphenated(), id.hyphenated()),
        None => format!("{} ", origin.hyphenated()),
    }
}

#[cfg(test)]
pub(super) fn decode_envelope(payload: Vec<u8>) -> Option<Envelope> {
    decode_kept_envelope(Bytes::from(payload))
        .and_then(|(envelope, position)| position.is_none().then_some(envelope))
}

/// Decodes an envelope, with the position a kept topic's publication carries
/// (`origin SP exclude SP offset SP epoch LF frame`, written by the publish script). The frame
/// is a slice of `payload`, not a copy.
pub(super) fn decode_kept_envelope(payload: Bytes) -> Option<(Envelope, Option<(u64, String)>)> {
    let newline = payload.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&payload[..newline]).ok()?;
    let mut parts = head.split(' ');
    let origin = parts.next()?.parse().ok()?;
    let exclude = match parts.next()? {
        "" => None,
        id => Some(id.parse().ok()?),
    };
    let position = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some(offset), Some(epoch), None) => Some((offset.parse().ok()?, epoch.to_string())),
        _ => return None,
    };
    let frame = Utf8Bytes::try_from(payload.slice(newline + 1..)).ok()?;
    Some(((origin, exclude, frame), position))
}

pub(super) struct PublishJob {
    pub(super) channel: String,
    pub(super) payload: Vec<u8>,
    /// A kept topic's publication: run through the publish script instead of PUBLISH.
    pub(super) kept: Option<KeptJob>,
    /// A send to a connection or user through the directory: its topic (`channel` is unused).
    pub(super) directed: Option<String>,
    pub(super) done: oneshot::Sender<redis::RedisResult<()>>,
    /// When `publish` queued it, for `ws_kit_redis_lag_seconds`.
    pub(super) queued: Started,
}

/// What a kept publication needs besides the channel, and what a failure needs to put right.
pub(super) struct KeptJob {
    pub(super) topic: String,
    pub(super) hash: String,
    pub(super) stream: String,
    pub(super) keep: Keep,
    pub(super) frame: Utf8Bytes,
    pub(super) exclude: Option<ClientId>,
}

/// Where the publish loop sends.
pub(super) struct Target {
    pub(super) conn: Conn,
    pub(super) prefix: String,
    /// This instance: a directed send skips it (it delivered during the call).
    pub(super) instance: String,
}

/// Sends publications in the order they were made: whatever is queued goes out as one pipeline
/// (on a cluster, one per slot, concurrently: one topic's publications share a slot, so they
/// keep their order), and the next batch only after it. Under load that is one round trip per
/// batch, two when the batch holds direct sends (their directory entries are read first).
pub(super) async fn publish_loop(
    mut queue: mpsc::Receiver<PublishJob>,
    target: Target,
    timeout: Duration,
    local: Arc<LocalTopics>,
    dirty: Arc<Mutex<HashSet<String>>>,
) {
    let script = redis::Script::new(kept::PUBLISH_SCRIPT);
    let command = target.conn.publish_command();
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 1024).await > 0 {
        let sent = async {
            let holders = read_directory(&target, &batch).await?;
            let mut commands: Vec<(Slot, redis::Cmd)> = Vec::new();
            // Per job, the indexes of its commands.
            let mut owners: Vec<Vec<usize>> = Vec::with_capacity(batch.len());
            let mut loads: HashSet<Slot> = HashSet::new();
            for (job, holders) in batch.iter().zip(holders) {
                let mut mine = Vec::new();
                match (&job.kept, &job.directed) {
                    (Some(k), _) => {
                        let slot = conn::slot(&k.hash);
                        if loads.insert(slot) {
                            let mut load = redis::cmd("SCRIPT");
                            load.arg("LOAD").arg(kept::PUBLISH_SCRIPT);
                            commands.push((slot, load));
                        }
                        let mut eval = redis::cmd("EVALSHA");
                        eval.arg(script.get_hash())
                            .arg(2)
                            .arg(&k.hash)
                            .arg(&k.stream)
                            .arg(&job.channel)
                            .arg(k.frame.as_str())
                            .arg(k.keep.size())
                            .arg(k.keep.ttl().as_millis().max(1) as u64)
                            .arg(crate::pubsub::new_epoch())
                            .arg(&job.payload[..])
                            .arg(command);
                        mine.push(commands.len());
                        commands.push((slot, eval));
                    }
                    (None, Some(topic)) => {
                        let payload = directory::directed_payload(topic, &job.payload);
                        for instance in holders.iter().filter(|i| **i != target.instance) {
                            let channel = conn::channel(
                                &target.prefix,
                                &directory::direct_topic(instance),
                                target.conn.is_cluster(),
                            );
                            let mut publish = redis::cmd(command);
                            publish.arg(&channel).arg(&payload[..]);
                            mine.push(commands.len());
                            commands.push((conn::slot(&channel), publish));
                        }
                    }
                    (None, None) => {
                        let mut publish = redis::cmd(command);
                        publish.arg(&job.channel).arg(&job.payload[..]);
                        mine.push(commands.len());
                        commands.push((conn::slot(&job.channel), publish));
                    }
                }
                owners.push(mine);
            }
            let mut failed: Vec<Option<redis::RedisError>> = vec![None; commands.len()];
            for (result, indexes) in directory::pipelined(&target.conn, commands).await {
                if let Err(e) = result {
                    for i in indexes {
                        failed[i] = Some(e.clone());
                    }
                }
            }
            Ok::<_, redis::RedisError>(
                owners
                    .into_iter()
                    .map(|mine| match mine.iter().find_map(|&i| failed[i].clone()) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let results = match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => vec![Err(e); batch.len()],
            Err(_) => vec![
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "publish timed out",
                )));
                batch.len()
            ],
        };
        for (job, result) in batch.drain(..).zip(results) {
            if result.is_ok() {
                metrics::redis_published(job.queued);
            } else if let Some(k) = &job.kept {
                // Its positioned subscribers here were waiting for the echo, which may never
                // come: they get the plain frame now, and the topic's history starts a new
                // epoch once Redis is back (so nobody believes it recovered around this).
                local.deliver_positioned(&k.topic, &k.frame, k.exclude);
                dirty
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(k.topic.clone());
            }
            let _ = job.done.send(result);
        }
    }
}

/// The instances holding each directed job's target (empty for the other jobs), read in one
/// pipeline per slot.
async fn read_directory(
    target: &Target,
    batch: &[PublishJob],
) -> redis::RedisResult<Vec<Vec<String>>> {
    let mut holders = vec![Vec::new(); batch.len()];
    let mut commands = Vec::new();
    let mut jobs = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        if let (None, Some(topic)) = (&job.kept, &job.directed) {
            let key = directory::dir_key(&target.prefix, topic);
            let mut read = redis::cmd("SMEMBERS");
            read.arg(&key);
            commands.push((conn::slot(&key), read));
            jobs.push(i);
        }
    }
    if commands.is_empty() {
        return Ok(holders);
    }
    for (result, indexes) in directory::pipelined(&target.conn, commands).await {
        for (value, index) in result?.into_iter().zip(indexes) {
            holders[jobs[index]] = redis::from_redis_value(value)?;
        }
    }
    Ok(holders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip() {
        let frame = Utf8Bytes::from_static("{\"type\":\"X\",\"payload\":{\"a\":\"é\"}}");
        let (origin, id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        assert_eq!(
            decode_envelope(encode_envelope(origin, &frame, Some(id))),
            Some((origin, Some(id), frame.clone()))
        );
        assert_eq!(
            decode_envelope(encode_envelope(origin, &frame, None)),
            Some((origin, None, frame))
        );
        assert_eq!(decode_envelope(b"no newline".to_vec()), None);
        assert_eq!(decode_envelope(b"not-a-uuid \n{}".to_vec()), None);
        assert_eq!(
            decode_envelope(format!("{origin}\n{{}}").into_bytes()),
            None
        );
    }
}
