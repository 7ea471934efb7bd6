//! [`ClientBuilder`] and the client's options: token, headers and subprotocols, reconnect policy
//! ([`Reconnect`]), offline queue ([`QueuePolicy`]), timeouts, hooks, per-request options.

use super::error::{ClientError, ServerError};
use super::sealing::Sealing;
use super::session::run;
use super::shared::{DynHandler, Outbox, Shared, erase};
use super::{
    Client, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_PENDING, DEFAULT_QUEUE_CAPACITY,
    DEFAULT_REQUEST_TIMEOUT, Owner, State,
};
use crate::http_syntax::is_token;
use crate::message::Message;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

/// Builds a [`Client`]: `Client::builder(url)....connect().await`.
pub struct ClientBuilder {
    config: Config,
    handlers: Vec<(&'static str, Arc<DynHandler>)>,
    /// The first invalid header or subprotocol, reported by `connect`.
    invalid: Option<String>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

pub(super) type TokenFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;
pub(super) type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;
pub(super) type ReconnectHook = Arc<dyn Fn(&Client) + Send + Sync>;
pub(super) type ErrorHook = Arc<dyn Fn(&ServerError) + Send + Sync>;

pub(super) struct Config {
    pub(super) url: String,
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) protocols: Vec<String>,
    pub(super) token: Option<TokenProvider>,
    pub(super) token_placement: TokenPlacement,
    pub(super) reconnect: Reconnect,
    pub(super) queue_policy: QueuePolicy,
    pub(super) queue_capacity: usize,
    pub(super) request_timeout: Duration,
    pub(super) max_pending: usize,
    pub(super) heartbeat: Option<(Duration, Duration)>,
    pub(super) connect_timeout: Duration,
    pub(super) on_reconnect: Option<ReconnectHook>,
    pub(super) on_error: Option<ErrorHook>,
    /// Sealed delivery: the client's key pair, when it seals.
    pub(super) sealing: Option<Sealing>,
    /// `wss://` with these TLS settings instead of the system's roots.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ClientBuilder {
    /// A builder for `url` (`ws://host:port/path`), with the defaults of docs/protocol.md section 9.
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            config: Config {
                url: url.into(),
                headers: Vec::new(),
                protocols: Vec::new(),
                token: None,
                token_placement: TokenPlacement::default(),
                reconnect: Reconnect::default(),
                queue_policy: QueuePolicy::default(),
                queue_capacity: DEFAULT_QUEUE_CAPACITY,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                max_pending: DEFAULT_MAX_PENDING,
                heartbeat: None,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                on_reconnect: None,
                on_error: None,
                sealing: None,
                #[cfg(feature = "tls")]
                tls: None,
            },
            handlers: Vec::new(),
            invalid: None,
        }
    }

    /// A token provider, called before every connection attempt (so a refreshed token is used on
    /// reconnect). `None` connects without a token. Where it goes: [`ClientBuilder::token_placement`].
    pub fn token<F>(mut self, provider: F) -> Self
    where
        F: Fn() -> Option<String> + Send + Sync + 'static,
    {
        self.config.token = Some(Arc::new(move || {
            let token = provider();
            Box::pin(async move { token })
        }));
        self
    }

    /// An async token provider (e.g. one that refreshes the token over HTTP), awaited before every
    /// connection attempt, within the connect timeout.
    pub fn token_async<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        self.config.token = Some(Arc::new(move || Box::pin(provider())));
        self
    }

    /// Where the token goes: `?access_token=` (the default) or the `bearer.<token>` subprotocol.
    pub fn token_placement(mut self, placement: TokenPlacement) -> Self {
        self.config.token_placement = placement;
        self
    }

    /// Adds a header to the upgrade request.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => self.config.headers.push((name, value)),
            _ => {
                self.invalid
                    .get_or_insert_with(|| format!("invalid header `{name}`"));
            }
        }
        self
    }

    /// Offers a subprotocol (in the order added; the token's `bearer.<token>` comes after them).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        let protocol = protocol.into();
        if !is_token(&protocol) {
            self.invalid
                .get_or_insert_with(|| format!("invalid subprotocol `{protocol}`"));
        } else {
            self.config.protocols.push(protocol);
        }
        self
    }

    /// Reconnect policy (default: 300 ms doubling to 10 s, full jitter, unlimited attempts).
    /// `Reconnect::never()` turns reconnecting off.
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.config.reconnect = reconnect;
        self
    }

    /// The offline queue: what happens to frames sent while not connected, and how many wait
    /// (default: [`QueuePolicy::DropNewest`], 1000 frames).
    pub fn offline_queue(mut self, policy: QueuePolicy, capacity: usize) -> Self {
        self.config.queue_policy = policy;
        self.config.queue_capacity = capacity;
        self
    }

    /// The default request timeout (30 s), counted from the moment the request is written.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// How many requests may wait for replies at once (1000); more fail with
    /// [`RequestError::TooManyPending`](super::RequestError::TooManyPending).
    pub fn max_pending(mut self, max: usize) -> Self {
        self.config.max_pending = max;
        self
    }

    /// Sends `__heartbeat` every `interval` and drops (then reconnects) a connection from which
    /// nothing (`__heartbeat_ack` or any other frame) arrived for `timeout`. Off by default.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat = Some((interval, timeout));
        self
    }

    /// How long one connection attempt (token provider, TCP, upgrade) may take (10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// `wss://` trusting exactly these roots (a private CA, a test's certificate) instead of the
    /// system's, which a `wss://` URL uses by default (feature `tls`).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_roots(self, roots: rustls::RootCertStore) -> Self {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.tls_config(std::sync::Arc::new(config))
    }

    /// `wss://` with a ready rustls configuration (client certificates, custom verification).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.config.tls = Some(config);
        self
    }

    /// Sealed delivery (docs/protocol.md 7b): the client makes a P-256 key pair (kept across
    /// reconnects) whose public key, [`Client::public_key`], the app puts in its authentication
    /// request as `publicKey`:
    ///
    /// ```no_run
    /// # use ws_kit::Message;
    /// # use ws_kit::client::Client;
    /// #[derive(Message)]
    /// #[rpc(response = AuthOk)]
    /// struct Authenticate { token: String, public_key: String }
    ///
    /// #[derive(Message)]
    /// struct AuthOk { server_public_key: String, salt: String }
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Client::builder("ws://127.0.0.1:3000").sealed().connect().await?;
    /// let public_key = client.public_key().expect("built with sealed()");
    /// client.request(&Authenticate { token: "secret".into(), public_key }).await?;
    /// assert!(client.is_sealed()); // the server took the key: every frame is encrypted now
    /// # Ok(()) }
    /// ```
    ///
    /// On every connection, frames go in clear until a frame in clear whose payload has the
    /// string fields `serverPublicKey` and `salt` (the authentication reply) arrives. The client
    /// derives the connection's key before it hands that reply on, and from then on opens every
    /// `$ws:encrypted` frame before routing it (dropping, with a `tracing` warning, a frame in
    /// clear or one that does not open, as it drops frames that do not parse) and seals every
    /// frame it writes: requests, events, `__heartbeat`, `$ws:abort`. Frames the writer had
    /// already taken before the reply was read may still go in clear (a server takes frames in
    /// clear until the client's first sealed one). After a reconnect the new connection starts
    /// in clear again, with the same key pair and a new salt: the app authenticates again
    /// (from [`ClientBuilder::on_reconnect`], say) to seal it. A server that ignores `publicKey`
    /// leaves the connection in clear: [`Client::is_sealed`] says which.
    pub fn sealed(mut self) -> Self {
        if self.config.sealing.is_none() {
            self.config.sealing = Some(Sealing::generate());
        }
        self
    }

    /// Registers a handler before connecting, so it sees the first frames too ([`Client::on`]).
    pub fn on<M: Message>(mut self, handler: impl Fn(M) + Send + Sync + 'static) -> Self {
        self.handlers.push((M::TYPE, erase(handler)));
        self
    }

    /// Called after every successful reconnect (not the first connection), before the offline
    /// queue is flushed: frames it sends through the given client (re-joining rooms, say) go first.
    /// It runs on the client's task: send from it, do not block in it.
    pub fn on_reconnect(mut self, hook: impl Fn(&Client) + Send + Sync + 'static) -> Self {
        self.config.on_reconnect = Some(Arc::new(hook));
        self
    }

    /// Called with `ERROR` frames that answer no pending request (errors for sent events).
    pub fn on_error(mut self, hook: impl Fn(&ServerError) + Send + Sync + 'static) -> Self {
        self.config.on_error = Some(Arc::new(hook));
        self
    }

    /// Connects and waits until the connection is open. If this first attempt fails, the error is
    /// returned and nothing keeps trying (use [`ClientBuilder::connect_lazy`] to keep trying).
    pub async fn connect(self) -> Result<Client, ClientError> {
        let (first_tx, first_rx) = oneshot::channel();
        let client = self.start(Some(first_tx))?;
        match first_rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Returns at once and connects in the background, retrying with the reconnect policy from the
    /// first attempt on; frames sent meanwhile wait in the offline queue. Must be called within a
    /// Tokio runtime. Fails only on an invalid URL, header or subprotocol.
    pub fn connect_lazy(self) -> Result<Client, ClientError> {
        self.start(None)
    }

    fn start(
        self,
        first: Option<oneshot::Sender<Result<(), ClientError>>>,
    ) -> Result<Client, ClientError> {
        if let Some(invalid) = self.invalid {
            return Err(ClientError::InvalidRequest(invalid));
        }
        let url = &self.config.url;
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(ClientError::InvalidRequest(format!(
                "`{url}` is not a ws:// URL"
            )));
        }
        url.as_str()
            .into_client_request()
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        let mut handlers: HashMap<&'static str, Vec<Arc<DynHandler>>> = HashMap::new();
        for (ty, handler) in self.handlers {
            handlers.entry(ty).or_default().push(handler);
        }
        let shared = Arc::new(Shared {
            config: self.config,
            state: watch::Sender::new(State::Connecting),
            stop: watch::Sender::new(false),
            outbox: Mutex::new(Outbox::default()),
            writer: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            handlers: RwLock::new(handlers),
            next_id: AtomicU64::new(0),
            sealed: AtomicBool::new(false),
            positions: std::sync::Mutex::default(),
        });
        tokio::spawn(run(shared.clone(), first));
        Ok(Client {
            _owner: Some(Arc::new(Owner(shared.clone()))),
            shared,
            in_hook: false,
        })
    }
}

/// Where the token goes in the upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenPlacement {
    /// A query parameter with this name: `?access_token=<token>` (the default), percent-encoded.
    Query(String),
    /// The subprotocol `bearer.<token>`, offered after the others ([`ClientBuilder::protocol`]).
    /// The token must be made of HTTP token characters.
    Subprotocol,
}

impl Default for TokenPlacement {
    fn default() -> Self {
        TokenPlacement::Query("access_token".to_string())
    }
}

/// What happens to a frame sent while the connection is not open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueuePolicy {
    /// Queue it; when the queue is full, refuse the new frame ([`ClientError::QueueFull`]). The default.
    #[default]
    DropNewest,
    /// Queue it; when the queue is full, drop the oldest queued frame (a dropped request fails
    /// with [`ClientError::QueueFull`]).
    DropOldest,
    /// Do not queue: [`ClientError::Offline`].
    Off,
}

/// Reconnect policy: exponential backoff with full jitter.
///
/// The delay before retry `n` (0 for the first retry after a drop) is drawn uniformly from
/// `[0, min(max, initial × 2ⁿ)]`; the count starts again at 0 once a connection opens.
///
/// ```
/// use std::time::Duration;
/// use ws_kit::client::Reconnect;
/// let policy = Reconnect::new().delays(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(policy.ceiling(0), Duration::from_millis(100));
/// assert_eq!(policy.ceiling(3), Duration::from_millis(800));
/// assert_eq!(policy.ceiling(4), Duration::from_secs(1));
/// assert!(policy.delay(3) <= Duration::from_millis(800));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconnect {
    initial: Duration,
    max: Duration,
    pub(super) max_attempts: Option<u32>,
    jitter: bool,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_millis(300),
            max: Duration::from_secs(10),
            max_attempts: None,
            jitter: true,
        }
    }
}

impl Reconnect {
    /// The defaults: 300 ms doubling to 10 s, full jitter, unlimited attempts.
    pub fn new() -> Self {
        Reconnect::default()
    }

    /// Never reconnect: a dropped connection closes the client.
    pub fn never() -> Self {
        Reconnect::default().max_attempts(0)
    }

    /// The first delay and the largest.
    pub fn delays(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max.max(initial);
        self
    }

    /// Gives up (and closes the client) after this many failed attempts in a row.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Full jitter on (the default) or off (each delay is exactly its ceiling).
    pub fn jitter(mut self, full: bool) -> Self {
        self.jitter = full;
        self
    }

    /// The largest delay before retry `attempt`: `min(max, initial × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.initial
            .checked_mul(1u32 << attempt.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A delay before retry `attempt`: uniform in `[0, ceiling(attempt)]` with jitter, else the
    /// ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }

    fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        if self.jitter {
            ceiling.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            ceiling
        }
    }
}

/// Options of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestOptions {
    pub(super) timeout: Option<Duration>,
}

impl RequestOptions {
    /// No options: the client's default timeout, no `meta.timeoutMs`.
    pub fn new() -> Self {
        RequestOptions::default()
    }

    /// A timeout for this request (counted from the moment its frame is written), also sent as
    /// `meta.timeoutMs` so the server cancels the handler at the same deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter() {
        let policy = Reconnect::new();
        let ceilings: Vec<u64> = (0..8)
            .map(|n| policy.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [300, 600, 1200, 2400, 4800, 9600, 10_000, 10_000]);
        assert_eq!(policy.ceiling(1000), Duration::from_secs(10));
        assert_eq!(policy.delay_with(2, 0.0), Duration::ZERO);
        assert_eq!(policy.delay_with(2, 0.5), Duration::from_millis(600));
        assert_eq!(policy.delay_with(2, 1.0), Duration::from_millis(1200));
        for n in 0..20 {
            assert!(policy.delay(n) <= policy.ceiling(n));
        }
        let fixed = Reconnect::new().jitter(false);
        assert_eq!(fixed.delay(3), Duration::from_millis(2400));
        assert_eq!(Reconnect::never().max_attempts, Some(0));
    }
}
