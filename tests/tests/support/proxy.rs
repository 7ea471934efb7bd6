//! A TCP proxy in front of Redis that tests cut or slow down (outages, a frozen Redis).

use super::WAIT;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// A TCP proxy in front of Redis that a test can cut or slow down: `down` closes every proxied
/// connection and refuses new ones (accepts and closes them at once), `up` proxies again;
/// `set_latency` delays what the clients send to Redis.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    latency_ms: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(watch::channel(true).0);
        let latency_ms = Arc::new(AtomicU64::new(0));
        let (state, latency) = (up.clone(), latency_ms.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if !*state.borrow() {
                    continue; // dropped: refused
                }
                let mut cut = state.subscribe();
                let (target, latency) = (target.clone(), latency.clone());
                tokio::spawn(async move {
                    let connect = tokio::time::timeout(WAIT, TcpStream::connect(&target));
                    let Ok(Ok(outbound)) = connect.await else {
                        return;
                    };
                    let (from_client, mut to_client) = inbound.into_split();
                    let (mut from_redis, to_redis) = outbound.into_split();
                    // Either direction ending ends the connection, as does a cut.
                    tokio::select! {
                        () = delayed_copy(from_client, to_redis, latency) => {}
                        _ = tokio::io::copy(&mut from_redis, &mut to_client) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            latency_ms,
            accept,
        }
    }

    pub(crate) fn down(&self) {
        self.up.send_replace(false);
    }

    pub(crate) fn up(&self) {
        self.up.send_replace(true);
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

/// Copies `from` to `to`, each chunk `latency` after it was read (a delay, not a throttle).
async fn delayed_copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, latency: Arc<AtomicU64>) {
    let (chunks, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let at = Instant::now() + Duration::from_millis(latency.load(Ordering::SeqCst));
            if chunks.send((at, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(read, write);
}
