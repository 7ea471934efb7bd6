//! One frame's way from decoded text to a running handler: decode (the one-pass fast path, or the
//! full path with every issue named), validate, RPC bookkeeping (duplicate ids, the in-flight
//! limit, the deadline), the context, the middleware chain, and the task that runs it all
//! ([`crate::task`]).

use crate::codec::Codec;
use crate::connection::Connection;
use crate::connection::rpc::RpcSlot;
use crate::ctx::Ctx;
use crate::error::{Issue, WsError};
use crate::event::ErrorKind;
use crate::handler::{Handler, Route};
use crate::message::{Message, Meta};
use crate::metrics::{self, MessageType};
use crate::middleware::{Chain, Next};
use crate::task::{self, Task};
use crate::wire::{self, Envelope};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The one-pass decoder declined a frame: parse it in full instead.
#[derive(Debug)]
pub(crate) struct Declined;

/// Decodes a parsed envelope for handler `H` and builds the task that runs it. `None` when the
/// frame was answered or dropped on the spot.
pub(crate) fn dispatch<H: Handler>(
    route: &Route<H>,
    env: Envelope<'_>,
    received_at: SystemTime,
    conn: &Connection<H::Data>,
    global: &Chain<H::Data>,
) -> Option<Task> {
    let Envelope {
        payload,
        meta,
        meta_extra,
        mut issues,
        ..
    } = env;
    // A duplicate id is dropped by `launch`, before any issue found here is answered.
    let message = match H::Message::decode(payload, &meta_extra) {
        Ok(message) => Some(message),
        Err(mut found) => {
            issues.append(&mut found);
            None
        }
    };
    let message = message.filter(|m| {
        if issues.is_empty() {
            m.validate(&mut issues);
        }
        issues.is_empty()
    });
    launch(
        route,
        message.ok_or(issues),
        meta,
        received_at,
        conn,
        global,
    )
}

/// The fast path of [`dispatch`]: decodes the whole frame in one pass. `Err` when the frame is
/// not a plain, valid-looking envelope of this type (nothing was sent or reported); the caller
/// then parses it in full.
pub(crate) fn dispatch_direct<H: Handler>(
    route: &Route<H>,
    text: &str,
    received_at: SystemTime,
    conn: &Connection<H::Data>,
    global: &Chain<H::Data>,
) -> Result<Option<Task>, Declined> {
    let (message, meta) = wire::decode_direct::<H::Message>(text).ok_or(Declined)?;
    // Validated before the duplicate check; `launch` sends nothing for a duplicate either way.
    let mut issues = Vec::new();
    message.validate(&mut issues);
    let message = if issues.is_empty() {
        Ok(message)
    } else {
        Err(issues)
    };
    Ok(launch(route, message, meta, received_at, conn, global))
}

/// Builds the task for a decoded message, or answers its validation issues: in-flight
/// bookkeeping of an RPC (duplicate ids dropped, the in-flight limit), its deadline, the context,
/// the middleware chain. The in-flight table is locked once here.
fn launch<H: Handler>(
    route: &Route<H>,
    message: Result<H::Message, Vec<Issue>>,
    meta: Meta,
    received_at: SystemTime,
    conn: &Connection<H::Data>,
    global: &Chain<H::Data>,
) -> Option<Task> {
    let ty = H::Message::TYPE;
    let metric = MessageType::of::<H::Message>();
    let rpc = H::Message::IS_RPC;
    let limits = &conn.inner.shared.limits;
    let cid = meta.correlation_id.clone();
    let slot = match (&message, &cid) {
        _ if !rpc => None,
        (Ok(_), None) => Some(Arc::new(RpcSlot::new(None))),
        (Err(_), None) => None,
        (message, Some(id)) => {
            enum Verdict {
                Accepted,
                Duplicate,
                Invalid,
                Full,
            }
            let inflight = conn
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let verdict = if inflight.contains_key(id) {
                Verdict::Duplicate
            } else if message.is_err() {
                Verdict::Invalid
            } else if inflight.len() >= limits.max_inflight_rpcs {
                Verdict::Full
            } else {
                Verdict::Accepted
            };
            drop(inflight);
            match verdict {
                // Entered in the table only if its handler waits (see `RpcTask`): a request
                // answered within its first poll is never seen by another frame.
                Verdict::Accepted => Some(Arc::new(RpcSlot::new(cid.clone()))),
                Verdict::Invalid => None,
                // Nothing is sent for a duplicate: any frame would carry the first request's id.
                Verdict::Duplicate => {
                    let err = WsError::already_exists(format!(
                        "correlation id `{id}` is already in flight"
                    ));
                    metrics::message_answered(metric, Some(err.code()));
                    conn.report(ErrorKind::DuplicateCorrelation, Some(ty), Some(id), err);
                    return None;
                }
                Verdict::Full => {
                    let err = WsError::resource_exhausted(format!(
                        "at most {} requests in flight per connection",
                        limits.max_inflight_rpcs
                    ))
                    .with_default_retry();
                    conn.push(wire::encode_error(true, &err, Some(id)));
                    metrics::message_answered(metric, Some(err.code()));
                    metrics::rpc_terminal(Some(err.code()));
                    conn.report(ErrorKind::InflightLimit, Some(ty), Some(id), err);
                    return None;
                }
            }
        }
    };
    let message = match message {
        Ok(message) => message,
        Err(issues) => {
            reject(conn, (ty, metric), rpc, cid.as_deref(), issues);
            return None;
        }
    };

    // The monotonic clock is read only for a request that has a deadline.
    let budget = match (
        rpc,
        meta.timeout_ms.map(Duration::from_millis),
        limits.max_rpc_timeout,
    ) {
        (false, _, _) => None,
        (true, Some(hint), Some(max)) => Some(hint.min(max)),
        (true, hint, max) => hint.or(max),
    };
    // `received_at + budget`, on the monotonic clock: the time since the frame was read counts.
    let deadline = budget.map(|budget| {
        let since_read = SystemTime::now()
            .duration_since(received_at)
            .unwrap_or_default();
        tokio::time::Instant::now().into_std() + budget.saturating_sub(since_read)
    });

    let span = task::message_span(ty, cid.as_deref());
    let ctx = Ctx::new(
        message,
        conn.clone(),
        meta,
        received_at,
        deadline,
        slot.clone(),
    );
    let conn = conn.clone();
    if global.is_empty() && route.middleware.is_empty() {
        // One allocation per frame: the handler's future lives inside the task's.
        Some(task::wrap(
            route.handler.call(ctx),
            conn,
            (ty, metric),
            cid,
            slot,
            deadline,
            span,
        ))
    } else {
        // The chain ends in the handler, whose reply becomes the terminal right there; the
        // chain's own result is then `()`, and the task reports an RPC whose middleware
        // returned without running the handler.
        let incoming = ctx.incoming();
        let call = route.handler.call(ctx);
        let (reply_conn, reply_slot, reply_cid) = (conn.clone(), slot.clone(), cid.clone());
        let endpoint = Box::pin(async move {
            let reply = call.await?;
            if let Some(slot) = reply_slot {
                task::send_reply(&reply_conn, &slot, ty, reply_cid.as_deref(), &reply)?;
            }
            Ok(())
        });
        let chain = Next::new(global.clone(), route.middleware.clone(), incoming, endpoint).run();
        Some(task::wrap(
            chain,
            conn,
            (ty, metric),
            cid,
            slot,
            deadline,
            span,
        ))
    }
}

/// Replies `INVALID_ARGUMENT` with `details.issues`.
fn reject<D: Send + Sync + 'static>(
    conn: &Connection<D>,
    (ty, metric): (&'static str, MessageType),
    rpc: bool,
    cid: Option<&str>,
    issues: Vec<Issue>,
) {
    let err = WsError::validation(issues);
    conn.push(wire::encode_error(rpc, &err, cid));
    metrics::message_answered(metric, Some(err.code()));
    if rpc {
        metrics::rpc_terminal(Some(err.code()));
    }
    conn.report(ErrorKind::Validation, Some(ty), cid, err);
}
