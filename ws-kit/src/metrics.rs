//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): every
//! name, label and emitting function ws-kit has, in this one module. The app installs the
//! recorder (Prometheus, StatsD, ...); ws-kit only emits. Without the feature every function here
//! is an empty `#[inline]` body and every handle a zero-sized type: nothing is emitted and nothing
//! compiles in.
//!
//! | name | type | labels | emitted |
//! |---|---|---|---|
//! | `ws_kit_connections` | gauge | | open connections: +1 when the read loop starts, −1 when it ends (`read_loop::run`) |
//! | `ws_kit_upgrades_total` | counter | | upgrades accepted: the 101 sent (`server/service.rs`; axum's route calls [`upgraded`] too) |
//! | `ws_kit_upgrades_rejected_total` | counter | `reason` | upgrades refused, by [`reason`]: `malformed` (400), `version` (426), `path` (404), `origin` (403), `unauthorized` (`authenticate` refused), `full` / `full_per_ip` (503, admission), `timeout` (handshake or TLS handshake timeout), `tls` (TLS handshake failed) |
//! | `ws_kit_messages_total` | counter | `type`, `outcome` | every inbound message, once its outcome is known: `ok`, or the error code answered (`INVALID_ARGUMENT`, `UNIMPLEMENTED`, `CANCELLED`, ...) |
//! | `ws_kit_handler_duration_seconds` | histogram | `type` | from a handler's start to its task's end (reply, error, panic, abort, deadline) |
//! | `ws_kit_rpc_terminals_total` | counter | `code` | RPC terminal replies: `ok` for a reply, else the error code of the `RPC_ERROR` |
//! | `ws_kit_outbound_queued_bytes` | gauge | | bytes waiting in outbound queues, all connections: + when queued, − when the writer takes them, when dropped (overflow, `DropOldest`, a dead socket) and when the queue goes |
//! | `ws_kit_overflow_closes_total` | counter | | connections closed (1013) because their outbound queue overflowed |
//! | `ws_kit_publications_total` | counter | | publications handed to the engine (`publish`, `send_to_user`, `send_to_client`, `broadcast`) |
//! | `ws_kit_deliveries_total` | counter | | frames handed to this instance's subscribers (`LocalTopics::deliver`, every engine) |
//! | `ws_kit_redis_connected` | gauge | | Redis engine: 1 while the last contact with Redis succeeded, 0 once it failed |
//! | `ws_kit_redis_lag_seconds` | histogram | | Redis engine: from `publish` to Redis's reply to the pipeline that carried it |
//!
//! **Bounded labels.** A label value is never the client's text. `type` is a route's static tag
//! (`Message::TYPE`), or one of five fixed values for frames that reached no route: `unknown` (no
//! handler for the type), `reserved` (a reserved type other than the two below), `invalid` (not an
//! envelope, too large, or a sealed frame that could not be opened), `__heartbeat` and
//! `$ws:abort`. `outcome` and `code` are `ok` or one of the 13 standard codes; an application's
//! own code ([`ErrorCode::Custom`]) is its text when it was a `&'static str`, else `CUSTOM`.
//! `reason` is one of the nine values of [`reason`]. So the series are at most
//! routes × 14 + a few.
//!
//! **Cost.** The per-message metrics (`ws_kit_messages_total`, the handler histogram) use keys
//! built at compile time, one per route and outcome ([`MessageType::of`]): no allocation, no
//! hashing, two clock reads and one recorder lookup per message. The outbound queue's gauge is
//! registered once per connection and then only updated. Without a recorder installed the
//! facade's no-op recorder answers.
//!
//! **Redis lag.** Publications between instances carry no timestamp (the envelope is
//! `origin SP exclude LF frame`, docs in `redis.rs`), so the delivery time on another instance
//! cannot be measured there without changing that format. What is measured is the honest part
//! this instance controls: the time from `publish` (the publication queued for Redis) to Redis's
//! reply to the `PUBLISH` pipeline that carried it. Redis has handed the message to every
//! subscribed instance's connection by the time it replies, so this is how far behind the other
//! instances a publication leaves: the publish queue's wait plus the round trip. Only successful
//! publishes are recorded (a failure is a gap, not a lag).

#[cfg(feature = "metrics")]
use metrics::{Key, Label, Level, Metadata};
#[cfg(feature = "metrics")]
use std::time::Instant;

use crate::error::ErrorCode;

/// The metric names.
#[cfg(feature = "metrics")]
mod name {
    pub(super) const CONNECTIONS: &str = "ws_kit_connections";
    pub(super) const UPGRADES: &str = "ws_kit_upgrades_total";
    pub(super) const UPGRADES_REJECTED: &str = "ws_kit_upgrades_rejected_total";
    pub(super) const MESSAGES: &str = "ws_kit_messages_total";
    pub(super) const HANDLER_DURATION: &str = "ws_kit_handler_duration_seconds";
    pub(super) const RPC_TERMINALS: &str = "ws_kit_rpc_terminals_total";
    pub(super) const OUTBOUND_QUEUED_BYTES: &str = "ws_kit_outbound_queued_bytes";
    pub(super) const OVERFLOW_CLOSES: &str = "ws_kit_overflow_closes_total";
    pub(super) const PUBLICATIONS: &str = "ws_kit_publications_total";
    pub(super) const DELIVERIES: &str = "ws_kit_deliveries_total";
    pub(super) const REDIS_CONNECTED: &str = "ws_kit_redis_connected";
    pub(super) const REDIS_LAG: &str = "ws_kit_redis_lag_seconds";
}

/// The values of `ws_kit_upgrades_rejected_total`'s `reason` label.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) mod reason {
    /// 400: not a well-formed WebSocket upgrade request (RFC 6455 4.2.1).
    pub(crate) const MALFORMED: &str = "malformed";
    /// 426: a WebSocket version other than 13.
    pub(crate) const VERSION: &str = "version";
    /// 404: not the service's path.
    pub(crate) const PATH: &str = "path";
    /// 403: an Origin not allowed.
    pub(crate) const ORIGIN: &str = "origin";
    /// `authenticate` refused (401 or the hook's own answer, 500 if it panicked).
    pub(crate) const UNAUTHORIZED: &str = "unauthorized";
    /// 503: the instance holds `max_connections` sockets.
    pub(crate) const FULL: &str = "full";
    /// 503: the address holds `max_connections_per_ip` sockets.
    pub(crate) const FULL_PER_IP: &str = "full_per_ip";
    /// No upgrade (or TLS handshake) within `handshake_timeout`.
    pub(crate) const TIMEOUT: &str = "timeout";
    /// The TLS handshake failed.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) const TLS: &str = "tls";
}

/// Where the facade's registrations say they come from.
#[cfg(feature = "metrics")]
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// `outcome` / `code` values, in the order of [`code_index`]: `ok`, then the standard codes.
#[cfg(feature = "metrics")]
const OUTCOMES: [&str; 14] = [
    "ok",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "UNIMPLEMENTED",
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "ABORTED",
    "INTERNAL",
];

/// A code's place in [`OUTCOMES`] (`None`: ok); `Err` with the label of an application's code.
#[cfg(feature = "metrics")]
fn code_index(code: Option<&ErrorCode>) -> Result<usize, &'static str> {
    Ok(match code {
        None => 0,
        Some(ErrorCode::Unauthenticated) => 1,
        Some(ErrorCode::PermissionDenied) => 2,
        Some(ErrorCode::InvalidArgument) => 3,
        Some(ErrorCode::FailedPrecondition) => 4,
        Some(ErrorCode::NotFound) => 5,
        Some(ErrorCode::AlreadyExists) => 6,
        Some(ErrorCode::Unimplemented) => 7,
        Some(ErrorCode::Cancelled) => 8,
        Some(ErrorCode::DeadlineExceeded) => 9,
        Some(ErrorCode::ResourceExhausted) => 10,
        Some(ErrorCode::Unavailable) => 11,
        Some(ErrorCode::Aborted) => 12,
        Some(ErrorCode::Internal) => 13,
        // The app's own code: its text only when the app wrote it in the source.
        Some(ErrorCode::Custom(std::borrow::Cow::Borrowed(code))) => return Err(code),
        Some(ErrorCode::Custom(_)) => return Err("CUSTOM"),
    })
}

/// One key per entry of [`OUTCOMES`], from a table of labels.
#[cfg(feature = "metrics")]
macro_rules! per_outcome {
    (|$i:ident| $e:expr) => {
        per_outcome!(@ |$i| $e; 0 1 2 3 4 5 6 7 8 9 10 11 12 13)
    };
    (@ |$i:ident| $e:expr; $($n:literal)*) => {
        [$({
            const $i: usize = $n;
            $e
        }),*]
    };
}

/// Where a `type` label comes from: a route's tag or a fixed value.
#[cfg(feature = "metrics")]
trait Tag {
    const TAG: &'static str;
}

#[cfg(feature = "metrics")]
struct Routed<M>(std::marker::PhantomData<M>);

#[cfg(feature = "metrics")]
impl<M: crate::message::Message> Tag for Routed<M> {
    const TAG: &'static str = M::TYPE;
}

#[cfg(feature = "metrics")]
macro_rules! fixed_tags {
    ($($marker:ident = $tag:literal),* $(,)?) => {$(
        struct $marker;
        impl Tag for $marker {
            const TAG: &'static str = $tag;
        }
    )*};
}

#[cfg(feature = "metrics")]
fixed_tags!(
    Unknown = "unknown",
    Reserved = "reserved",
    Invalid = "invalid",
    Heartbeat = "__heartbeat",
    Abort = "$ws:abort",
);

/// The keys of one `type`: its messages by outcome, its handler histogram. Built at compile time.
#[cfg(feature = "metrics")]
struct TypeKeys {
    tag: &'static str,
    messages: [Key; 14],
    duration: Key,
}

#[cfg(feature = "metrics")]
struct Keys<T>(std::marker::PhantomData<T>);

#[cfg(feature = "metrics")]
impl<T: Tag> Keys<T> {
    const LABELS: &'static [[Label; 2]; 14] = &per_outcome!(|I| [
        Label::from_static_parts("type", T::TAG),
        Label::from_static_parts("outcome", OUTCOMES[I]),
    ]);
    const TYPE: &'static [Label; 1] = &[Label::from_static_parts("type", T::TAG)];
    const KEYS: &'static TypeKeys = &TypeKeys {
        tag: T::TAG,
        messages: per_outcome!(|I| Key::from_static_parts(name::MESSAGES, &Self::LABELS[I])),
        duration: Key::from_static_parts(name::HANDLER_DURATION, Self::TYPE),
    };
}

/// `ws_kit_rpc_terminals_total`'s keys, by code.
#[cfg(feature = "metrics")]
static TERMINAL_KEYS: [Key; 14] = {
    const LABELS: &[[Label; 1]; 14] =
        &per_outcome!(|I| [Label::from_static_parts("code", OUTCOMES[I])]);
    per_outcome!(|I| Key::from_static_parts(name::RPC_TERMINALS, &LABELS[I]))
};

/// The `type` label of a message: a route's tag, or a fixed value for a frame that reached no
/// route. Copy, a pointer to keys built at compile time (nothing without the feature).
#[derive(Clone, Copy)]
pub(crate) struct MessageType {
    #[cfg(feature = "metrics")]
    keys: &'static TypeKeys,
}

impl MessageType {
    /// A route's messages, labelled with its tag. (`M` only names the keys: unused without the
    /// feature, and clippy does not see its use in a constant's path.)
    #[inline]
    #[allow(clippy::extra_unused_type_parameters)]
    pub(crate) fn of<M: crate::message::Message>() -> Self {
        MessageType {
            #[cfg(feature = "metrics")]
            keys: Keys::<Routed<M>>::KEYS,
        }
    }

    /// A type no route handles (`unknown`).
    pub(crate) const UNKNOWN: Self = MessageType {
        #[cfg(feature = "metrics")]
        keys: Keys::<Unknown>::KEYS,
    };
    /// A reserved type the framework does not handle (`reserved`).
    pub(crate) const RESERVED: Self = MessageType {
        #[cfg(feature = "metrics")]
        keys: Keys::<Reserved>::KEYS,
    };
    /// Not an envelope, too large, or a sealed frame that could not be opened (`invalid`).
    pub(crate) const INVALID: Self = MessageType {
        #[cfg(feature = "metrics")]
        keys: Keys::<Invalid>::KEYS,
    };
    /// `__heartbeat`.
    pub(crate) const HEARTBEAT: Self = MessageType {
        #[cfg(feature = "metrics")]
        keys: Keys::<Heartbeat>::KEYS,
    };
    /// `$ws:abort`.
    pub(crate) const ABORT: Self = MessageType {
        #[cfg(feature = "metrics")]
        keys: Keys::<Abort>::KEYS,
    };
}

/// When a handler started, for `ws_kit_handler_duration_seconds` (and when a publication was
/// queued, for the Redis lag). Nothing without the feature: no clock is read.
#[derive(Clone, Copy)]
pub(crate) struct Started {
    #[cfg(feature = "metrics")]
    at: Instant,
}

impl Started {
    /// Now.
    #[inline]
    pub(crate) fn now() -> Self {
        Started {
            #[cfg(feature = "metrics")]
            at: Instant::now(),
        }
    }
}

/// Describes every metric to the recorder installed now (help text and unit) and registers the
/// unlabeled ones at 0, so a scrape lists them before any traffic. Called when a service is built:
/// install the recorder before building the router into a service.
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_gauge!(
            name::CONNECTIONS,
            Unit::Count,
            "Open WebSocket connections."
        );
        describe_counter!(name::UPGRADES, Unit::Count, "WebSocket upgrades accepted.");
        describe_counter!(
            name::UPGRADES_REJECTED,
            Unit::Count,
            "WebSocket upgrades refused, by reason."
        );
        describe_counter!(
            name::MESSAGES,
            Unit::Count,
            "Inbound messages, by type and outcome (ok or the error code)."
        );
        describe_histogram!(
            name::HANDLER_DURATION,
            Unit::Seconds,
            "Handler run time, from its start to its task's end, by type."
        );
        describe_counter!(
            name::RPC_TERMINALS,
            Unit::Count,
            "RPC terminal replies, by code (ok or the error code)."
        );
        describe_gauge!(
            name::OUTBOUND_QUEUED_BYTES,
            Unit::Bytes,
            "Bytes waiting in outbound queues, all connections."
        );
        describe_counter!(
            name::OVERFLOW_CLOSES,
            Unit::Count,
            "Connections closed because their outbound queue overflowed."
        );
        describe_counter!(
            name::PUBLICATIONS,
            Unit::Count,
            "Publications handed to the engine."
        );
        describe_counter!(
            name::DELIVERIES,
            Unit::Count,
            "Frames handed to this instance's subscribers."
        );
        describe_gauge!(
            name::REDIS_CONNECTED,
            "Redis engine: 1 while Redis answers, 0 once it failed."
        );
        describe_histogram!(
            name::REDIS_LAG,
            Unit::Seconds,
            "Redis engine: from publish to Redis's reply to the pipeline that carried it."
        );
        metrics::gauge!(name::CONNECTIONS).increment(0.0);
        metrics::gauge!(name::OUTBOUND_QUEUED_BYTES).increment(0.0);
        for counter in [
            name::UPGRADES,
            name::OVERFLOW_CLOSES,
            name::PUBLICATIONS,
            name::DELIVERIES,
        ] {
            metrics::counter!(counter).increment(0);
        }
    }
}

/// `ws_kit_connections` +1: a connection's read loop started.
#[inline]
pub(crate) fn connection_opened() {
    #[cfg(feature = "metrics")]
    metrics::gauge!(name::CONNECTIONS).increment(1.0);
}

/// `ws_kit_connections` −1: a connection's read loop ended.
#[inline]
pub(crate) fn connection_closed() {
    #[cfg(feature = "metrics")]
    metrics::gauge!(name::CONNECTIONS).decrement(1.0);
}

/// `ws_kit_upgrades_total`: an upgrade was accepted (the 101 is sent). For every host: the accept
/// loop's `serve_stream`, and axum's route.
#[inline]
pub(crate) fn upgraded() {
    #[cfg(feature = "metrics")]
    metrics::counter!(name::UPGRADES).increment(1);
}

/// `ws_kit_upgrades_rejected_total{reason}`: an upgrade was refused; `reason` is one of
/// [`reason`]. For every host, axum's route included.
#[inline]
pub(crate) fn upgrade_rejected(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(name::UPGRADES_REJECTED, "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// The `reason` of an upgrade refused by the request checks of RFC 6455 (`upgrade.rs`), by the
/// status they answer with: `426` is `version`, anything else (400) `malformed`.
#[inline]
pub(crate) fn check_reason(status: u16) -> &'static str {
    if status == 426 {
        reason::VERSION
    } else {
        reason::MALFORMED
    }
}

/// `ws_kit_messages_total{type, outcome}` and `ws_kit_handler_duration_seconds{type}`: a handler's
/// task ended, with `code` (`None`: ok).
#[inline]
pub(crate) fn message_handled(ty: MessageType, code: Option<&ErrorCode>, started: Started) {
    #[cfg(feature = "metrics")]
    {
        let elapsed = started.at.elapsed();
        let keys = ty.keys;
        match code_index(code) {
            Ok(i) => metrics::with_recorder(|r| {
                r.register_counter(&keys.messages[i], &METADATA)
                    .increment(1);
                r.register_histogram(&keys.duration, &METADATA)
                    .record(elapsed);
            }),
            Err(custom) => {
                custom_outcome(keys.tag, custom);
                metrics::with_recorder(|r| {
                    r.register_histogram(&keys.duration, &METADATA)
                        .record(elapsed);
                });
            }
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (ty, code, started);
}

/// `ws_kit_messages_total{type, outcome}`: a message answered without running a handler
/// (validation, the in-flight limit, a duplicate id, no route, ...), with `code` (`None`: ok, for
/// the control frames).
#[inline]
pub(crate) fn message_answered(ty: MessageType, code: Option<&ErrorCode>) {
    #[cfg(feature = "metrics")]
    match code_index(code) {
        Ok(i) => metrics::with_recorder(|r| {
            r.register_counter(&ty.keys.messages[i], &METADATA)
                .increment(1);
        }),
        Err(custom) => custom_outcome(ty.keys.tag, custom),
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (ty, code);
}

/// An application's own code as an outcome: a key made at run time (rare, and not per message of
/// any framework path).
#[cfg(feature = "metrics")]
#[cold]
fn custom_outcome(tag: &'static str, code: &'static str) {
    metrics::counter!(name::MESSAGES, "type" => tag, "outcome" => code).increment(1);
}

/// `ws_kit_rpc_terminals_total{code}`: a request's terminal frame was queued, a reply (`None`)
/// or an `RPC_ERROR` with `code`.
#[inline]
pub(crate) fn rpc_terminal(code: Option<&ErrorCode>) {
    #[cfg(feature = "metrics")]
    match code_index(code) {
        Ok(i) => metrics::with_recorder(|r| {
            r.register_counter(&TERMINAL_KEYS[i], &METADATA)
                .increment(1);
        }),
        Err(custom) => metrics::counter!(name::RPC_TERMINALS, "code" => custom).increment(1),
    }
    #[cfg(not(feature = "metrics"))]
    let _ = code;
}

/// `ws_kit_outbound_queued_bytes`, one connection's share: registered when its queue is made,
/// then only updated (an atomic add on the recorder's gauge).
pub(crate) struct QueuedBytes {
    #[cfg(feature = "metrics")]
    gauge: metrics::Gauge,
}

impl QueuedBytes {
    /// The gauge, registered with the recorder installed now.
    #[inline]
    pub(crate) fn new() -> Self {
        QueuedBytes {
            #[cfg(feature = "metrics")]
            gauge: metrics::gauge!(name::OUTBOUND_QUEUED_BYTES),
        }
    }

    /// `bytes` were queued.
    #[inline]
    pub(crate) fn add(&self, bytes: usize) {
        #[cfg(feature = "metrics")]
        self.gauge.increment(bytes as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = bytes;
    }

    /// `bytes` left the queue (written, dropped, or the queue went).
    #[inline]
    pub(crate) fn sub(&self, bytes: usize) {
        #[cfg(feature = "metrics")]
        if bytes > 0 {
            self.gauge.decrement(bytes as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = bytes;
    }
}

/// `ws_kit_overflow_closes_total`: a connection is closing (1013) because its outbound queue
/// overflowed.
#[inline]
pub(crate) fn overflow_closed() {
    #[cfg(feature = "metrics")]
    metrics::counter!(name::OVERFLOW_CLOSES).increment(1);
}

/// `ws_kit_publications_total`: a publication was handed to the engine.
#[inline]
pub(crate) fn published() {
    #[cfg(feature = "metrics")]
    metrics::counter!(name::PUBLICATIONS).increment(1);
}

/// `ws_kit_deliveries_total`: `frames` were queued on this instance's subscribers.
#[inline]
pub(crate) fn delivered(frames: usize) {
    #[cfg(feature = "metrics")]
    if frames > 0 {
        metrics::counter!(name::DELIVERIES).increment(frames as u64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = frames;
}

/// `ws_kit_redis_connected`: 1 when the last contact with Redis succeeded, 0 when it failed.
#[cfg(feature = "redis")]
#[inline]
pub(crate) fn redis_connected(up: bool) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(name::REDIS_CONNECTED).set(if up { 1.0 } else { 0.0 });
    #[cfg(not(feature = "metrics"))]
    let _ = up;
}

/// `ws_kit_redis_lag_seconds`: a publication queued at `queued` was taken by Redis now.
#[cfg(feature = "redis")]
#[inline]
pub(crate) fn redis_published(queued: Started) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(name::REDIS_LAG).record(queued.at.elapsed());
    #[cfg(not(feature = "metrics"))]
    let _ = queued;
}
