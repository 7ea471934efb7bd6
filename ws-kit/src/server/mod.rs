//! Serving: the listening [`Server`] (accept loop, graceful shutdown) and [`serve`]; the
//! [`Service`] it drives, the handshake and the options live in the submodules.

mod handshake;
mod options;
mod service;

pub use handshake::{IntoAuth, Rejection, UpgradeRequest, query_param};
pub use options::{PayloadLimit, ServeOptions};
pub use service::Service;

use crate::error::Error;
use crate::router::Router;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

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
        Ok(Server { listener, service })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
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
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(pair) => pair,
                        // Out of file descriptors and the like: keep serving the others.
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let service = self.service.clone();
                    connections.spawn(async move {
                        if let Err(e) = service.serve_stream(stream).await {
                            tracing::debug!(error = %e, "upgrade failed");
                        }
                    });
                }
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

/// Binds and serves until Ctrl-C, printing `listening on ws://host:port`.
pub async fn serve<D: Send + Sync + 'static, S: Send + Sync + 'static>(
    router: Router<D, S>,
    options: ServeOptions<D>,
) -> Result<(), Error> {
    let server = Server::bind(router, options).await?;
    println!("listening on ws://{}", server.local_addr());
    server.run_until_signal().await
}
