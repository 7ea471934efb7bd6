//! A server for `hostile.rs`'s descriptor-exhaustion test, run as a child process under a small
//! open-files limit (the limit is per process, so the test cannot lower its own without starving
//! every other test). No connection limit of ws-kit's own, so it is the kernel that refuses: the
//! accept loop meets `EMFILE`. Prints `listening on ws://127.0.0.1:<port>` once bound.

use std::io::Write;
use std::time::Duration;
use ws_kit::{Router, ServeOptions, Server, routes};
use ws_kit_tests::ping;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = ServeOptions::new()
        .port(0)
        .max_connections(usize::MAX)
        .max_connections_per_ip(usize::MAX)
        // Sockets that never upgrade hold their descriptors for the whole test.
        .handshake_timeout(Duration::from_secs(120));
    let server = Server::bind(Router::new().routes(routes![ping]), options).await?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on ws://{}", server.local_addr())?;
    out.flush()?;
    server.run().await?;
    Ok(())
}
