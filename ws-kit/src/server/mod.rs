//! Serving: the listening [`Server`] (accept loop, graceful shutdown) and [`serve`]; the
//! [`Service`] it drives, the handshake and the options live in the submodules.

mod admission;
#[cfg(feature = "axum")]
mod axum;
mod handshake;
mod options;
mod service;
#[cfg(feature = "tls")]
mod tls;
mod upgrade;

pub use handshake::{HttpResponse, IntoAuth, Rejection, UpgradeRequest, query_param};
pub use options::{PayloadLimit, ServeOptions};
pub use service::Service;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::TlsConfig;

use crate::error::Error;
use crate::router::Router;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The first pause after an accept error, and the longest.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Refused sockets that may be answered (`503`) at once; past that, more are closed unanswered,
/// so a flood of refused connections cannot hold descriptors of its own.
const MAX_REFUSING: usize = 64;

/// A listening server: binds, accepts, and shuts down gracefully.
///
/// ```no_run
/// # async fn run() -> Result<(), ws_kit::Error> {
/// let router = ws_kit::Router::<()>::new();
/// let server = ws_kit::Server::bind(router, ws_kit::ServeOptions::new().port(0)).await?;
/// println!("listening on ws://{}", server.local_addr());
/// server.run().await
/// # }
/// ```
pub struct Server<D> {
    listener: TcpListener,
    service: Service<D>,
    /// Refused sockets being answered now.
    refusing: Arc<AtomicUsize>,
}

impl<D> fmt::Debug for Server<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("service", &self.service)
            .finish()
    }
}

impl<D: Send + Sync + 'static> Server<D> {
    /// Builds the router and binds `host:port` from the options.
    pub async fn bind<S: Send + Sync + 'static>(
        router: Router<D, S>,
        options: ServeOptions<D>,
    ) -> Result<Self, Error> {
        let addr = format!("{}:{}", options.host, options.port);
        let service = router.into_service(options)?;
        let listener = TcpListener::bind(addr).await?;
        Ok(Server {
            listener,
            service,
            refusing: Arc::default(),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address to connect to: `ws://host:port`, or `wss://host:port` with TLS.
    pub fn url(&self) -> String {
        #[cfg(feature = "tls")]
        if self.service.tls().is_some() {
            return format!("wss://{}", self.local_addr());
        }
        format!("ws://{}", self.local_addr())
    }

    /// The service: publish, count connections, shut down.
    pub fn service(&self) -> Service<D> {
        self.service.clone()
    }

    /// Accepts connections until [`Service::shutdown`], then closes them all (1001) and returns
    /// once their close hooks ran (or `shutdown_timeout` passed).
    pub async fn run(self) -> Result<(), Error> {
        let mut shutdown = self.service.shutdown_started();
        let mut connections = JoinSet::new();
        // After an accept error that is about this process (out of file descriptors, out of
        // memory), the loop pauses before it tries again, doubling the pause up to a second:
        // the open connections go on meanwhile, in their own tasks.
        let pause = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(pause);
        let mut paused = false;
        let mut backoff = MIN_BACKOFF;
        loop {
            tokio::select! {
                accepted = self.listener.accept(), if !paused => match accepted {
                    Ok((stream, peer)) => {
                        backoff = MIN_BACKOFF;
                        self.admit(stream, peer, &mut connections);
                    }
                    // The peer gave up between its SYN and our accept: nothing to wait for.
                    Err(e) if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                    Err(e) => {
                        if backoff == MIN_BACKOFF {
                            tracing::warn!(error = %e, "accept failed; pausing new connections");
                        }
                        pause.as_mut().reset(tokio::time::Instant::now() + backoff);
                        paused = true;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                },
                () = &mut pause, if paused => paused = false,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            }
        }
        drop(self.listener);
        let timeout = self.service.shutdown_timeout();
        let drained = tokio::time::timeout(timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
        Ok(())
    }

    /// Counts an accepted socket and serves it, or answers `503` when the instance or the address
    /// holds as many sockets as it may.
    fn admit(&self, stream: TcpStream, peer: SocketAddr, connections: &mut JoinSet<()>) {
        let _ = stream.set_nodelay(true);
        match self.service.admission().admit(peer.ip()) {
            Ok(permit) => {
                let service = self.service.clone();
                #[cfg(feature = "tls")]
                if let Some(tls) = self.service.tls() {
                    let acceptor = tls.acceptor.clone();
                    connections.spawn(async move {
                        let _permit = permit;
                        // Boxed: the TLS handshake's state is gone once it is done.
                        let handshake = Box::pin(acceptor.accept(stream));
                        let timeout = service.handshake_timeout();
                        let stream = match tokio::time::timeout(timeout, handshake).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                crate::metrics::upgrade_rejected(crate::metrics::reason::TLS);
                                return tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            }
                            Err(_) => {
                                crate::metrics::upgrade_rejected(crate::metrics::reason::TIMEOUT);
                                return tracing::debug!(%peer, "TLS handshake timed out");
                            }
                        };
                        if let Err(e) = service.serve_stream_from(stream, Some(peer)).await {
                            tracing::debug!(error = %e, %peer, "upgrade failed");
                        }
                    });
                    return;
                }
                // The connection's future alone, the permit inside it: this task is what every
                // idle connection holds (a block around it would keep its captures twice).
                let serving = service.serve_owned(stream, Some(peer), permit);
                connections.spawn(futures_util::FutureExt::map(serving, drop));
            }
            Err(full) => {
                tracing::debug!(%peer, reason = full.reason(), "connection refused");
                if self.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
                    self.refusing.fetch_sub(1, Ordering::Relaxed);
                    return; // closed unanswered
                }
                let refusing = self.refusing.clone();
                // Answered from a task of its own, so the accept loop never waits on a peer.
                connections.spawn(async move {
                    let mut stream = stream;
                    upgrade::Refusal::full(full.reason())
                        .send(&mut stream)
                        .await;
                    // Read what the peer sent, briefly, so closing does not reset the
                    // connection before it reads the answer.
                    let mut sink = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_millis(100), async {
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    })
                    .await;
                    refusing.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }

    /// Runs until Ctrl-C (or SIGTERM on Unix), then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let service = self.service();
        tokio::spawn(async move {
            shutdown_signal().await;
            service.shutdown();
        });
        self.run().await
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Binds and serves until Ctrl-C, printing `listening on ws://host:port` (`wss://` with TLS).
pub async fn serve<D: Send + Sync + 'static, S: Send + Sync + 'static>(
    router: Router<D, S>,
    options: ServeOptions<D>,
) -> Result<(), Error> {
    let server = Server::bind(router, options).await?;
    println!("listening on {}", server.url());
    server.run_until_signal().await
}
