//! A typed Rust client for the `rpc` example: requests, a typed error, progress, cancellation.
//!
//! Run the server in one terminal and the client in another:
//!   cargo run --example rpc
//!   cargo run --example client --features client
//! The client connects to `ws://127.0.0.1:3000` (set `URL=ws://host:port` to change it).
//! Try stopping and restarting the server while a request is in flight: the request fails with
//! "connection closed", and the client reconnects by itself.
//!
//! The message structs are copies of the server's (the `rpc` example is a binary, not a library):
//! a client crate of its own would do the same, or share them with the server through a common
//! crate. Either way the derive gives both sides the same type tags and wire names.

use std::time::Duration;
use ws_kit::Message;
use ws_kit::client::{Client, RequestError, RequestOptions};

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping {
    text: String,
}

#[derive(Message)]
struct Pong {
    reply: String,
}

#[derive(Message)]
#[rpc(response = UserData)]
struct GetUser {
    id: String,
}

#[derive(Message)]
struct UserData {
    name: String,
    email: String,
}

#[derive(Message)]
#[rpc(response = CountdownResult)]
struct Countdown {
    from: u32,
    interval_ms: u64,
}

#[derive(Message)]
struct CountdownResult {
    n: u32,
    done: bool,
}

/// Talks to the `rpc` server at `url`; also run by the integration tests.
pub(crate) async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(url).await?;
    println!("connected to {url}");

    let pong = client
        .request(&Ping {
            text: "hello".into(),
        })
        .await?;
    println!("PING        -> {}", pong.reply);

    let user = client.request(&GetUser { id: "1".into() }).await?;
    println!("GET_USER 1  -> {} <{}>", user.name, user.email);

    // Errors are typed by code; `retryable` is inferred from the code when the server omits it.
    match client.request(&GetUser { id: "7".into() }).await {
        Err(RequestError::Server(e)) => println!(
            "GET_USER 7  -> {e} (retryable: {:?}, details: {:?})",
            e.retryable(),
            e.details()
        ),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("user 7 should not exist".into()),
    }

    // Progress updates carry the response type; a timeout of its own is sent as `meta.timeoutMs`.
    let options = RequestOptions::new().timeout(Duration::from_secs(5));
    let countdown = Countdown {
        from: 3,
        interval_ms: 100,
    };
    let mut call = client.request_with(&countdown, options);
    while let Some(update) = call.progress().await {
        println!("COUNTDOWN   .. {}", update.n);
    }
    let result = call.await?;
    println!("COUNTDOWN   -> n={} done={}", result.n, result.done);

    // Cancellation: `abort()` sends `$ws:abort`; the server stops the handler and answers CANCELLED.
    // (Dropping the call would send `$ws:abort` too, without waiting for the answer.)
    let slow = Countdown {
        from: 10,
        interval_ms: 200,
    };
    let mut call = client.request(&slow);
    if let Some(update) = call.progress().await {
        println!("slow        .. {}", update.n);
    }
    call.abort();
    match call.await {
        Err(e) => println!("slow        -> {e}"),
        Ok(_) => return Err("the countdown finished despite the abort".into()),
    }

    client.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("URL").unwrap_or_else(|_| "ws://127.0.0.1:3000".to_string());
    run(&url).await
}
