//! Pub/sub with the in-memory engine over real sockets: docs/protocol.md section 8.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{Client, bounded, bounded_multi_thread, eventually, request, serve};
use ws_kit::pubsub::Capability;
use ws_kit::{
    Connection, Ctx, Message, PublishOptions, PublishResult, Router, ServeOptions, WsError,
    handler, routes,
};

// ---------------------------------------------------------------------------------------------
// Messages and handlers.

#[derive(Message)]
#[rpc(response = Subscribed)]
struct Subscribe {
    topic: String,
}

#[derive(Message)]
#[rpc(response = Subscribed)]
struct Unsubscribe {
    topic: String,
}

#[derive(Message)]
struct Subscribed {
    topic: String,
}

/// Publishes `ROOM_MSG {text}` and replies with the `PublishResult`.
#[derive(Message)]
#[rpc(response = Published)]
struct Publish {
    topic: String,
    text: String,
    exclude_self: Option<bool>,
    meta: Option<serde_json::Map<String, Value>>,
}

#[derive(Message)]
struct Published {
    ok: bool,
    capability: String,
    matched: Option<usize>,
    error: Option<String>,
}

/// Fire-and-forget: publishes `SAID {seq}`.
#[derive(Message)]
struct Say {
    topic: String,
    seq: u32,
}

#[derive(Message)]
struct Said {
    seq: u32,
}

#[derive(Message)]
struct RoomMsg {
    text: String,
}

/// Published by `on_close` to every topic the closing connection was in.
#[derive(Message)]
struct Gone {
    client_id: String,
    still_subscribed: bool,
    subscribers: usize,
}

#[handler]
async fn subscribe(ctx: Ctx<Subscribe>) -> Result<Subscribed, WsError> {
    ctx.subscribe(&ctx.payload.topic).await?;
    Ok(Subscribed {
        topic: ctx.payload.topic.clone(),
    })
}

#[handler]
async fn unsubscribe(ctx: Ctx<Unsubscribe>) -> Result<Subscribed, WsError> {
    ctx.unsubscribe(&ctx.payload.topic).await?;
    Ok(Subscribed {
        topic: ctx.payload.topic.clone(),
    })
}

fn published(result: PublishResult) -> Published {
    let capability = serde_json::to_value(result.capability).expect("capability serializes");
    Published {
        ok: result.ok,
        capability: capability.as_str().expect("a string").to_string(),
        matched: result.matched,
        error: result.error.map(|e| e.code().to_string()),
    }
}

#[handler]
async fn publish(ctx: Ctx<Publish>) -> Result<Published, WsError> {
    let mut options = PublishOptions::new();
    if ctx.payload.exclude_self == Some(true) {
        options = options.exclude_self();
    }
    if let Some(meta) = &ctx.payload.meta {
        options = options.meta(meta.clone());
    }
    let msg = RoomMsg {
        text: ctx.payload.text.clone(),
    };
    let result = ctx.publish_with(&ctx.payload.topic, &msg, options).await;
    Ok(published(result))
}

#[handler]
async fn say(ctx: Ctx<Say>) {
    ctx.publish(
        &ctx.payload.topic,
        &Said {
            seq: ctx.payload.seq,
        },
    )
    .await;
}

fn router() -> Router {
    Router::new().routes(routes![subscribe, unsubscribe, publish, say])
}

/// `router()` plus an `on_close` that tells each of the connection's topics it is gone.
fn router_with_goodbye() -> Router {
    router().on_close(|conn: Connection, _| async move {
        for topic in conn.topics() {
            let gone = Gone {
                client_id: conn.client_id().to_string(),
                still_subscribed: conn.is_subscribed(&topic),
                subscribers: conn.subscriber_count(&topic).await.unwrap_or(0),
            };
            conn.publish_with(&topic, &gone, PublishOptions::new().exclude_self())
                .await;
        }
    })
}

async fn sub(client: &mut Client, topic: &str) -> Value {
    request(
        client,
        json!({"type": "SUBSCRIBE", "payload": {"topic": topic}}),
        "sub",
    )
    .await
}

async fn subscribed(client: &mut Client, topic: &str) {
    let reply = sub(client, topic).await;
    assert_eq!(
        reply,
        json!({"type": "SUBSCRIBED", "meta": {"correlationId": "sub"}, "payload": {"topic": topic}})
    );
}

async fn publish_text(client: &mut Client, topic: &str, text: &str, exclude_self: bool) -> Value {
    let frame = request(
        client,
        json!({"type": "PUBLISH", "payload": {"topic": topic, "text": text, "excludeSelf": exclude_self}}),
        "pub",
    )
    .await;
    assert_eq!(frame["type"], "PUBLISHED", "unexpected frame {frame}");
    frame["payload"].clone()
}

fn exact(matched: usize) -> Value {
    json!({"ok": true, "capability": "exact", "matched": matched})
}

fn room_msg(text: &str) -> Value {
    json!({"type": "ROOM_MSG", "payload": {"text": text}})
}

// ---------------------------------------------------------------------------------------------
// Topics and subscriptions.

/// Topics must match `^[A-Za-z0-9:_./-]{1,128}$`: others get `INVALID_ARGUMENT` on subscribe and
/// unsubscribe, and a publish to them returns `ok: false`.
#[test]
fn topic_names_are_validated() {
    bounded(async {
        let server = serve(router(), ServeOptions::new()).await;
        let mut client = server.client().await;

        for good in ["a", "room:1/a_b.c-d", "ABC:xyz/0.9", &"t".repeat(128)] {
            subscribed(&mut client, good).await;
        }
        for bad in [
            "",
            "has space",
            "a#b",
            "a*",
            "caf\u{e9}",
            "tab\t",
            &"t".repeat(129),
        ] {
            let reply = sub(&mut client, bad).await;
            assert_eq!(
                reply["type"], "RPC_ERROR",
                "subscribe to {bad:?} gave {reply}"
            );
            assert_eq!(
                reply["payload"]["code"], "INVALID_ARGUMENT",
                "subscribe to {bad:?}"
            );

            let reply = request(
                &mut client,
                json!({"type": "UNSUBSCRIBE", "payload": {"topic": bad}}),
                "u",
            )
            .await;
            assert_eq!(
                reply["payload"]["code"], "INVALID_ARGUMENT",
                "unsubscribe from {bad:?}"
            );

            let result = publish_text(&mut client, bad, "x", false).await;
            assert_eq!(result["ok"], false, "publish to {bad:?} gave {result}");
            assert_eq!(result["error"], "INVALID_ARGUMENT");
        }
    });
}

/// Subscribing twice is one subscription: a publish reaches the connection once (`matched: 1`),
/// and one unsubscribe removes it.
#[test]
fn subscribe_is_idempotent() {
    bounded(async {
        let server = serve(router(), ServeOptions::new()).await;
        let mut client = server.client().await;
        for _ in 0..3 {
            subscribed(&mut client, "room").await;
        }
        client
            .send(json!({"type": "PUBLISH", "payload": {"topic": "room", "text": "once"}, "meta": {"correlationId": "p1"}}))
            .await;
        assert_eq!(client.recv().await, room_msg("once"));
        let reply = client.recv().await;
        assert_eq!(
            reply["meta"]["correlationId"], "p1",
            "a second delivery came before the reply: {reply}"
        );
        assert_eq!(reply["payload"], exact(1));

        let reply = request(
            &mut client,
            json!({"type": "UNSUBSCRIBE", "payload": {"topic": "room"}}),
            "u1",
        )
        .await;
        assert_eq!(reply["type"], "SUBSCRIBED");
        // Nothing delivered: the reply is the very next frame.
        client
            .send(json!({"type": "PUBLISH", "payload": {"topic": "room", "text": "gone"}, "meta": {"correlationId": "p2"}}))
            .await;
        let reply = client.recv().await;
        assert_eq!(
            reply["meta"]["correlationId"], "p2",
            "delivered after unsubscribe: {reply}"
        );
        assert_eq!(reply["payload"], exact(0));
    });
}

/// Past `max_topics_per_connection`, subscribe fails with `RESOURCE_EXHAUSTED`; re-subscribing is
/// not counted, unsubscribing frees a slot, and the limit is per connection.
#[test]
fn topic_limit_per_connection() {
    bounded(async {
        let server = serve(router(), ServeOptions::new().max_topics_per_connection(2)).await;
        let mut client = server.client().await;
        subscribed(&mut client, "t1").await;
        subscribed(&mut client, "t2").await;

        let reply = sub(&mut client, "t3").await;
        assert_eq!(reply["type"], "RPC_ERROR", "{reply}");
        assert_eq!(reply["payload"]["code"], "RESOURCE_EXHAUSTED");

        subscribed(&mut client, "t1").await;
        request(
            &mut client,
            json!({"type": "UNSUBSCRIBE", "payload": {"topic": "t2"}}),
            "u",
        )
        .await;
        subscribed(&mut client, "t3").await;
        // The failed subscribe left no trace: t3 has exactly this one subscriber.
        assert_eq!(publish_text(&mut client, "t3", "x", true).await, exact(0));

        let mut other = server.client().await;
        subscribed(&mut other, "t4").await;
        subscribed(&mut other, "t5").await;
    });
}

// ---------------------------------------------------------------------------------------------
// Publishing.

/// `publish` returns `{ok: true, capability: exact, matched}` with the exact number of subscribers
/// reached; each gets `{"type","payload"}` and nothing else.
#[test]
fn publish_result_is_exact() {
    bounded(async {
        let server = serve(router(), ServeOptions::new()).await;
        let mut subscribers = Vec::new();
        for _ in 0..3 {
            let mut client = server.client().await;
            subscribed(&mut client, "room").await;
            subscribers.push(client);
        }
        let mut publisher = server.client().await;
        assert_eq!(
            publish_text(&mut publisher, "room", "hi", false).await,
            exact(3)
        );
        for client in &mut subscribers {
            assert_eq!(client.recv().await, room_msg("hi"));
        }
        assert_eq!(
            publish_text(&mut publisher, "empty", "anyone?", false).await,
            exact(0)
        );
    });
}

/// `exclude_self` skips the publishing connection (and does not count it).
#[test]
fn exclude_self() {
    bounded(async {
        let server = serve(router(), ServeOptions::new()).await;
        let mut me = server.client().await;
        let mut other = server.client().await;
        subscribed(&mut me, "room").await;
        subscribed(&mut other, "room").await;

        me.send(json!({"type": "PUBLISH", "payload": {"topic": "room", "text": "not me", "excludeSelf": true}, "meta": {"correlationId": "p1"}}))
            .await;
        let reply = me.recv().await;
        assert_eq!(
            reply["meta"]["correlationId"], "p1",
            "the publisher got its own publication: {reply}"
        );
        assert_eq!(reply["payload"], exact(1));
        assert_eq!(other.recv().await, room_msg("not me"));

        me.send(json!({"type": "PUBLISH", "payload": {"topic": "room", "text": "all"}, "meta": {"correlationId": "p2"}}))
            .await;
        assert_eq!(me.recv().await, room_msg("all"));
        assert_eq!(me.recv().await["payload"], exact(2));
        assert_eq!(other.recv().await, room_msg("all"));
    });
}

/// A delivery has no `meta` unless the publisher gave some, and publisher meta can never set
/// `type` or `correlationId`.
#[test]
fn publication_frame_shape() {
    bounded(async {
        let server = serve(router(), ServeOptions::new()).await;
        let mut sub_client = server.client().await;
        subscribed(&mut sub_client, "room").await;
        let mut publisher = server.client().await;

        publish_text(&mut publisher, "room", "plain", false).await;
        let frame = sub_client.recv().await;
        assert_eq!(frame, room_msg("plain"));
        assert!(frame.get("meta").is_none());

        let reply = request(
            &mut publisher,
            json!({"type": "PUBLISH", "payload": {
                "topic": "room", "text": "tagged",
                "meta": {"traceId": "t-1", "type": "EVIL", "correlationId": "stolen"}
            }}),
            "p",
        )
        .await;
        assert_eq!(reply["payload"], exact(1));
        assert_eq!(
            sub_client.recv().await,
            json!({"type": "ROOM_MSG", "payload": {"text": "tagged"}, "meta": {"traceId": "t-1"}})
        );
    });
}

/// One publisher's publications to one topic reach each subscriber in the order they were sent.
#[test]
fn fifo_per_subscriber() {
    bounded(async {
        let server = serve(router(), ServeOptions::new()).await;
        let mut subscribers = Vec::new();
        for _ in 0..3 {
            let mut client = server.client().await;
            subscribed(&mut client, "fifo").await;
            subscribers.push(client);
        }
        let mut publisher = server.client().await;
        for seq in 0..100 {
            publisher
                .send(json!({"type": "SAY", "payload": {"topic": "fifo", "seq": seq}}))
                .await;
        }
        for client in &mut subscribers {
            for seq in 0..100 {
                assert_eq!(
                    client.recv().await,
                    json!({"type": "SAID", "payload": {"seq": seq}})
                );
            }
        }
    });
}

/// A connection's subscriptions are removed when it closes, but only after `on_close` ran: the
/// hook still sees them and can publish to the room; afterwards the subscriber count drops. The
/// same holds for a connection that drops without a close frame.
#[test]
fn subscriptions_removed_after_on_close() {
    bounded(async {
        let server = serve(router_with_goodbye(), ServeOptions::new()).await;
        let publisher = server.service.publisher();
        let mut stay = server.client().await;
        subscribed(&mut stay, "room").await;

        for graceful in [true, false] {
            let mut leaving = server.client().await;
            subscribed(&mut leaving, "room").await;
            subscribed(&mut leaving, "other").await;
            let id = leaving.headers["x-client-id"].to_str().unwrap().to_string();
            assert_eq!(publisher.subscriber_count("room").await, Some(2));

            if graceful {
                leaving.close(1000).await;
            } else {
                drop(leaving);
            }
            let gone = stay.recv().await;
            assert_eq!(
                gone,
                json!({"type": "GONE", "payload": {"clientId": id, "stillSubscribed": true, "subscribers": 2}}),
                "graceful: {graceful}"
            );
            eventually(
                "the closed connection's subscriptions to be removed",
                || async {
                    publisher.subscriber_count("room").await == Some(1)
                        && publisher.subscriber_count("other").await == Some(0)
                },
            )
            .await;
            assert_eq!(
                publish_text(&mut stay, "room", "still here", true).await,
                exact(0)
            );
        }
    });
}

/// `router.publisher()` and `service.publisher()` publish from outside handlers (here from a
/// spawned task), with the same exact results.
#[test]
fn publisher_outside_handlers() {
    bounded(async {
        let router = router();
        let router_publisher = router.publisher();
        let server = serve(router, ServeOptions::new()).await;
        let service_publisher = server.service.publisher();
        let mut a = server.client().await;
        let mut b = server.client().await;
        subscribed(&mut a, "news").await;
        subscribed(&mut b, "news").await;

        let expected = PublishResult {
            ok: true,
            capability: Capability::Exact,
            matched: Some(2),
            error: None,
        };
        let task = tokio::spawn(async move {
            router_publisher
                .publish(
                    "news",
                    &RoomMsg {
                        text: "from the router".into(),
                    },
                )
                .await
        });
        assert_eq!(task.await.unwrap(), expected);
        for client in [&mut a, &mut b] {
            assert_eq!(client.recv().await, room_msg("from the router"));
        }

        let result = service_publisher
            .publish(
                "news",
                &RoomMsg {
                    text: "from the service".into(),
                },
            )
            .await;
        assert_eq!(result, expected);
        for client in [&mut a, &mut b] {
            assert_eq!(client.recv().await, room_msg("from the service"));
        }

        assert_eq!(
            service_publisher
                .publish("nobody", &RoomMsg { text: "x".into() })
                .await,
            PublishResult::exact(0)
        );
        let bad = service_publisher
            .publish("bad topic", &RoomMsg { text: "x".into() })
            .await;
        assert!(!bad.ok);
        assert_eq!(
            bad.error.map(|e| e.code().to_string()).as_deref(),
            Some("INVALID_ARGUMENT")
        );
    });
}

/// 50 connections in one room each receive every one of 200 publications exactly once, in order.
#[test]
fn fifty_connections_each_receive_every_message_in_order() {
    bounded_multi_thread(async {
        const CLIENTS: usize = 50;
        const MESSAGES: u32 = 200;
        let server = serve(router(), ServeOptions::new()).await;
        let mut subscribers = Vec::new();
        for _ in 0..CLIENTS {
            let mut client = server.client().await;
            subscribed(&mut client, "crowd").await;
            subscribers.push(client);
        }
        assert_eq!(
            server.service.publisher().subscriber_count("crowd").await,
            Some(CLIENTS)
        );

        let readers: Vec<_> = subscribers
            .into_iter()
            .map(|mut client| {
                tokio::spawn(async move {
                    for seq in 0..=MESSAGES {
                        let frame = client.recv().await;
                        assert_eq!(frame, json!({"type": "SAID", "payload": {"seq": seq}}));
                    }
                })
            })
            .collect();

        let mut publisher = server.client().await;
        // 0..MESSAGES, then MESSAGES as an end marker: whatever came between would break the sequence.
        for seq in 0..=MESSAGES {
            publisher
                .send(json!({"type": "SAY", "payload": {"topic": "crowd", "seq": seq}}))
                .await;
        }
        let all = async {
            for reader in readers {
                reader
                    .await
                    .expect("a subscriber saw a wrong, missing or repeated frame");
            }
        };
        tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("the subscribers did not get every frame in time");
    });
}
