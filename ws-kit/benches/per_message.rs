//! The per-message path without sockets, each beside the bare serde_json cost of the same work.
//!
//! Run: `cargo bench -p ws-kit --features bench --bench per_message`.
//! The ws-kit side goes through `ws_kit::__bench` (feature `bench`), which calls the read loop's own
//! frame handler: there is no second dispatch path here.

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::hint::black_box;
use ws_kit::__bench::{Conn, Fanout, encode_reply};
use ws_kit::Message;
use ws_kit::tungstenite::{Message as WsMessage, Utf8Bytes};

// ---- ws-kit's messages and handlers: `workload` ----

mod workload;
use workload::Pong;

/// What the fan-out benchmark publishes.
#[derive(Message)]
struct NewMessage {
    username: String,
    text: String,
}

// ---- the bare serde_json equivalents ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BareEnvelope<P> {
    #[serde(rename = "type")]
    ty: String,
    payload: P,
    meta: Option<BareMeta>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BareMeta {
    timestamp: Option<u64>,
    correlation_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BareSendMessage {
    room_id: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BarePing {
    text: String,
}

#[derive(Serialize)]
struct BareReply<'a, P> {
    #[serde(rename = "type")]
    ty: &'a str,
    meta: BareReplyMeta<'a>,
    payload: P,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BareReplyMeta<'a> {
    correlation_id: &'a str,
}

#[derive(Serialize)]
struct BarePong<'a> {
    reply: &'a str,
}

#[derive(Serialize)]
struct BarePublication<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    payload: BareNewMessage<'a>,
}

#[derive(Serialize)]
struct BareNewMessage<'a> {
    username: &'a str,
    text: &'a str,
}

const SEND: &str = r#"{"type":"SEND_MESSAGE","payload":{"roomId":"r1","text":"hello"},"meta":{"timestamp":1700000000000}}"#;
/// The same frame with `type` last: the one-pass decoder declines it (the router cannot pick the
/// message type before parsing), so it takes the full path (serde_json, envelope then payload).
const SEND_TYPE_LAST: &str = r#"{"payload":{"roomId":"r1","text":"hello"},"meta":{"timestamp":1700000000000},"type":"SEND_MESSAGE"}"#;
const PING: &str = r#"{"type":"PING","payload":{"text":"hello"},"meta":{"correlationId":"c1"}}"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn decode_validate_dispatch(c: &mut Criterion) {
    let rt = runtime();
    let _rt = rt.enter();
    let mut conn = Conn::new(workload::router(), ()).unwrap();

    // Sanity: the event is accepted silently, the RPC gets exactly its PONG.
    conn.dispatch(SEND);
    assert!(conn.drain().is_empty(), "SEND_MESSAGE must not be answered");
    conn.dispatch(SEND_TYPE_LAST);
    assert!(conn.drain().is_empty(), "SEND_MESSAGE must not be answered");
    conn.dispatch(PING);
    let out = conn.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].to_text().unwrap(),
        r#"{"type":"PONG","meta":{"correlationId":"c1"},"payload":{"reply":"hello"}}"#
    );
    assert_eq!(conn.pending_tasks(), 0);

    let mut g = c.benchmark_group("decode_validate_dispatch");
    g.bench_function("event/serde_json_decode", |b| {
        b.iter(|| {
            let env: BareEnvelope<BareSendMessage> = serde_json::from_str(black_box(SEND)).unwrap();
            black_box((&env.ty, &env.payload.room_id, &env.payload.text));
            black_box(env)
        })
    });
    g.bench_function("event/ws_kit_dispatch", |b| {
        b.iter(|| conn.dispatch(black_box(SEND)))
    });
    g.bench_function("event/ws_kit_dispatch_full_path", |b| {
        b.iter(|| conn.dispatch(black_box(SEND_TYPE_LAST)))
    });
    g.bench_function("rpc_ping_pong/serde_json_decode_encode", |b| {
        let mut queue: VecDeque<WsMessage> = VecDeque::new();
        b.iter(|| {
            let env: BareEnvelope<BarePing> = serde_json::from_str(black_box(PING)).unwrap();
            let cid = env.meta.as_ref().and_then(|m| m.correlation_id.as_deref());
            let reply = BareReply {
                ty: "PONG",
                meta: BareReplyMeta {
                    correlation_id: cid.unwrap_or_default(),
                },
                payload: BarePong {
                    reply: &env.payload.text,
                },
            };
            let frame = Utf8Bytes::from(serde_json::to_string(&reply).unwrap());
            black_box((&env.ty, env.meta.as_ref().map(|m| m.timestamp)));
            queue.push_back(WsMessage::Text(frame));
            black_box(std::mem::take(&mut queue))
        })
    });
    g.bench_function("rpc_ping_pong/ws_kit_dispatch", |b| {
        b.iter(|| {
            conn.dispatch(black_box(PING));
            black_box(conn.drain())
        })
    });
    g.finish();
}

fn encode_reply_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_reply");
    g.bench_function("serde_json_to_string", |b| {
        b.iter(|| {
            let reply = BareReply {
                ty: "PONG",
                meta: BareReplyMeta {
                    correlation_id: black_box("c1"),
                },
                payload: BarePong {
                    reply: black_box("hello"),
                },
            };
            Utf8Bytes::from(serde_json::to_string(&reply).unwrap())
        })
    });
    g.bench_function("ws_kit_encode_reply", |b| {
        b.iter(|| {
            let pong = Pong {
                reply: black_box("hello").to_string(),
            };
            encode_reply(&pong, black_box("c1"))
        })
    });
    g.bench_function("ws_kit_encode_reply_prebuilt", |b| {
        let pong = Pong {
            reply: "hello".to_string(),
        };
        b.iter(|| encode_reply(black_box(&pong), black_box("c1")))
    });
    // Same bytes on both sides.
    let pong = Pong {
        reply: "hello".to_string(),
    };
    let bare = BareReply {
        ty: "PONG",
        meta: BareReplyMeta {
            correlation_id: "c1",
        },
        payload: BarePong { reply: "hello" },
    };
    assert_eq!(
        encode_reply(&pong, "c1").as_str(),
        serde_json::to_string(&bare).unwrap()
    );
    g.finish();
}

fn publish_1000(c: &mut Criterion) {
    const N: usize = 1000;
    const TOPIC: &str = "room:r1";
    let fanout = Fanout::new(TOPIC, N, 1024 * 1024);
    let msg = NewMessage {
        username: "alice".into(),
        text: "hello".into(),
    };
    let result = fanout.publish(TOPIC, &msg);
    assert!(result.ok);
    assert_eq!(result.matched, Some(N));
    assert_eq!(fanout.drain(), N);

    let mut g = c.benchmark_group("publish_1000");
    g.bench_function("serde_json_once_clone_into_1000_queues", |b| {
        let mut queues: Vec<VecDeque<WsMessage>> = (0..N).map(|_| VecDeque::new()).collect();
        b.iter(|| {
            let publication = BarePublication {
                ty: "NEW_MESSAGE",
                payload: BareNewMessage {
                    username: black_box("alice"),
                    text: black_box("hello"),
                },
            };
            let frame = Utf8Bytes::from(serde_json::to_string(&publication).unwrap());
            for q in &mut queues {
                q.push_back(WsMessage::Text(frame.clone()));
            }
            // The writer takes each queue whole, as ws-kit's does.
            queues
                .iter_mut()
                .map(|q| std::mem::take(q).len())
                .sum::<usize>()
        })
    });
    g.bench_function("ws_kit_memory_pubsub", |b| {
        b.iter(|| {
            let result = fanout.publish(black_box(TOPIC), &msg);
            black_box(result);
            fanout.drain()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    decode_validate_dispatch,
    encode_reply_group,
    publish_1000
);
criterion_main!(benches);
