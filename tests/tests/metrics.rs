//! Metrics (feature `metrics`) over real sockets: one in-process Prometheus recorder for the whole
//! binary, rendered to text and read back. Each test measures what its own traffic added.
//!
//! The recorder is global and so are the gauges (open connections, queued bytes): the tests run
//! one at a time (`SERIAL`), each waiting for the gauges to settle at 0 before it starts.
#![cfg(feature = "metrics")]

mod support;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use support::{Client, RawClient, bounded, eventually, http_exchange, refused, request, serve};
use ws_kit::{
    Connection, Ctx, ErrorCode, Message, OverflowPolicy, Router, ServeOptions, UpgradeRequest,
    WsError, handler, query_param, routes,
};

// ---------------------------------------------------------------------------------------------
// The recorder, and reading it back.

/// The recorder of this test binary, installed on first use.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("install the metrics recorder")
    })
}

/// One test at a time: the gauges are global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs a test body under [`bounded`], alone, once the gauges are back at 0.
fn metrics_test<F: std::future::Future<Output = ()> + Send + 'static>(test: F) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    recorder();
    bounded(async move {
        settled().await;
        test.await;
    });
}

/// Waits until no connection is open and no byte is queued (a previous test's server is gone).
async fn settled() {
    eventually("the gauges settled at 0", || async {
        let m = scrape();
        m.get("ws_kit_connections", &[]) == 0.0 && m.get("ws_kit_outbound_queued_bytes", &[]) == 0.0
    })
    .await;
}

/// A rendered scrape: series (name, labels) → value.
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

fn scrape() -> Scrape {
    let text = recorder().render();
    let mut series = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().expect("a sample value");
        let (name, labels) = match key.split_once('{') {
            None => (key.to_string(), BTreeMap::new()),
            Some((name, rest)) => (name.to_string(), parse_labels(rest)),
        };
        series.insert((name, labels), value);
    }
    Scrape(series)
}

/// `k="v",k2="v2"}` → labels.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closed label value") {
                (_, '\\') => value.push(chars.next().expect("an escaped char").1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = &after[end + 1..];
    }
    labels
}

impl Scrape {
    /// A series' value; 0 when it was never emitted.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Whether any series carries `value` in any label.
    fn has_label_value(&self, value: &str) -> bool {
        self.0
            .keys()
            .any(|(_, labels)| labels.values().any(|v| v == value))
    }
}

/// What a series gained between two scrapes.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

// ---------------------------------------------------------------------------------------------
// Messages, handlers, a router. Tags are this file's own (`MET_*`), so no other traffic counts.

#[derive(Message)]
struct MetEvent {
    text: String,
}

#[handler]
async fn met_event(_ctx: Ctx<MetEvent>) {}

#[derive(Message)]
#[rpc(response = MetPong)]
struct MetPing {
    #[validate(length(min = 1))]
    text: String,
}

#[derive(Message)]
struct MetPong {
    text: String,
}

#[handler]
async fn met_ping(ctx: Ctx<MetPing>) -> Result<MetPong, WsError> {
    // Waits once, so the request goes through the in-flight table and a spawned task too.
    tokio::task::yield_now().await;
    Ok(MetPong {
        text: ctx.payload.text.clone(),
    })
}

#[derive(Message)]
#[rpc(response = MetPong)]
struct MetFind {
    text: String,
}

#[handler]
async fn met_find(_ctx: Ctx<MetFind>) -> Result<MetPong, WsError> {
    Err(WsError::new(ErrorCode::NotFound, "no such thing"))
}

#[derive(Message)]
struct MetNews {
    text: String,
}

fn router() -> Router<()> {
    Router::new().routes(routes![met_event, met_ping, met_find])
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Every inbound message is counted by its route's tag and outcome (an event, a request, a
/// validation failure, an application error, an unknown type under the one `unknown` label, never
/// the client's string); handler durations per type; RPC terminals by code.
#[test]
fn messages_by_type_and_outcome_and_rpc_terminals_by_code() {
    metrics_test(async {
        let server = serve(router(), ServeOptions::new()).await;
        let mut client = server.client().await;
        let before = scrape();

        for _ in 0..2 {
            client
                .send(json!({"type": "MET_EVENT", "payload": {"text": "hi"}}))
                .await;
        }
        let pong = request(
            &mut client,
            json!({"type": "MET_PING", "payload": {"text": "a"}}),
            "p1",
        )
        .await;
        assert_eq!(pong["type"], "MET_PONG");
        let invalid = request(
            &mut client,
            json!({"type": "MET_PING", "payload": {"text": ""}}),
            "p2",
        )
        .await;
        assert_eq!(invalid["payload"]["code"], "INVALID_ARGUMENT");
        let missing = request(
            &mut client,
            json!({"type": "MET_FIND", "payload": {"text": "x"}}),
            "f1",
        )
        .await;
        assert_eq!(missing["payload"]["code"], "NOT_FOUND");
        let unknown = request(
            &mut client,
            json!({"type": "MET_NO_SUCH_TYPE_7d1f", "payload": {}}),
            "u1",
        )
        .await;
        assert_eq!(unknown["payload"]["code"], "UNIMPLEMENTED");

        let after = scrape();
        let messages = |ty: &str, outcome: &str| {
            delta(
                &before,
                &after,
                "ws_kit_messages_total",
                &[("type", ty), ("outcome", outcome)],
            )
        };
        assert_eq!(messages("MET_EVENT", "ok"), 2.0);
        assert_eq!(messages("MET_PING", "ok"), 1.0);
        assert_eq!(messages("MET_PING", "INVALID_ARGUMENT"), 1.0);
        assert_eq!(messages("MET_FIND", "NOT_FOUND"), 1.0);
        assert_eq!(messages("unknown", "UNIMPLEMENTED"), 1.0);
        assert!(
            !after.has_label_value("MET_NO_SUCH_TYPE_7d1f"),
            "a client's type string became a label"
        );

        // Handlers that ran have durations; the invalid request's handler never ran.
        let durations = |ty: &str| {
            delta(
                &before,
                &after,
                "ws_kit_handler_duration_seconds_count",
                &[("type", ty)],
            )
        };
        assert_eq!(durations("MET_EVENT"), 2.0);
        assert_eq!(durations("MET_PING"), 1.0);
        assert_eq!(durations("MET_FIND"), 1.0);

        let terminals = |code: &str| {
            delta(
                &before,
                &after,
                "ws_kit_rpc_terminals_total",
                &[("code", code)],
            )
        };
        assert_eq!(terminals("ok"), 1.0);
        assert_eq!(terminals("INVALID_ARGUMENT"), 1.0);
        assert_eq!(terminals("NOT_FOUND"), 1.0);
        assert_eq!(terminals("UNIMPLEMENTED"), 1.0);
    });
}

/// Refused upgrades are counted by reason (path 404, `authenticate` 401, malformed 400, version
/// 426); accepted ones in `ws_kit_upgrades_total`.
#[test]
fn upgrades_accepted_and_rejected_by_reason() {
    metrics_test(async {
        let options = ServeOptions::with_authenticate(|req: &UpgradeRequest| {
            query_param(req, "token").filter(|t| t == "ok").map(|_| ())
        })
        .path("/ws");
        let server = serve(router(), options).await;
        let url = server.url();
        let before = scrape();

        assert_eq!(refused(&format!("{url}/elsewhere"), &[]).await.0, 404);
        assert_eq!(refused(&format!("{url}/ws"), &[]).await.0, 401);
        assert_eq!(refused(&format!("{url}/ws?token=no"), &[]).await.0, 401);
        let (status, _) = http_exchange(
            server.addr,
            "POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        )
        .await;
        assert_eq!(status, 400);
        let (status, _) = http_exchange(
            server.addr,
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        )
        .await;
        assert_eq!(status, 426);
        let _client = Client::connect(&format!("{url}/ws?token=ok")).await;

        let after = scrape();
        let rejected = |reason: &str| {
            delta(
                &before,
                &after,
                "ws_kit_upgrades_rejected_total",
                &[("reason", reason)],
            )
        };
        assert_eq!(rejected("path"), 1.0);
        assert_eq!(rejected("unauthorized"), 2.0);
        assert_eq!(rejected("malformed"), 1.0);
        assert_eq!(rejected("version"), 1.0);
        assert_eq!(rejected("origin"), 0.0);
        assert_eq!(delta(&before, &after, "ws_kit_upgrades_total", &[]), 1.0);
    });
}

/// `ws_kit_connections` follows connections opening and closing, back to 0.
#[test]
fn connections_gauge_goes_up_and_back_down() {
    metrics_test(async {
        let server = serve(router(), ServeOptions::new()).await;
        let connections = || scrape().get("ws_kit_connections", &[]);
        let mut a = server.client().await;
        let mut b = server.client().await;
        eventually("two connections counted", || async { connections() == 2.0 }).await;
        a.close(1000).await;
        eventually("one connection counted", || async { connections() == 1.0 }).await;
        b.close(1000).await;
        eventually("no connection counted", || async { connections() == 0.0 }).await;
        assert_eq!(server.service.connection_count(), 0);
    });
}

/// A publication to two subscribers: one publication, two deliveries; the queued bytes gauge is
/// back at 0 once the frames were written.
#[test]
fn publications_and_deliveries() {
    metrics_test(async {
        let router = router().on_open(|conn: Connection<()>| async move {
            conn.subscribe("met-room").await?;
            Ok(())
        });
        let server = serve(router, ServeOptions::new()).await;
        let mut a = server.client().await;
        let mut b = server.client().await;
        let publisher = server.service.publisher();
        eventually("both subscribed", || async {
            publisher.subscriber_count("met-room").await == Some(2)
        })
        .await;

        let before = scrape();
        let result = publisher
            .publish(
                "met-room",
                &MetNews {
                    text: "hello".into(),
                },
            )
            .await;
        assert!(result.ok);
        for client in [&mut a, &mut b] {
            assert_eq!(
                client.recv_type("MET_NEWS").await["payload"]["text"],
                "hello"
            );
        }
        let after = scrape();
        assert_eq!(
            delta(&before, &after, "ws_kit_publications_total", &[]),
            1.0
        );
        assert_eq!(delta(&before, &after, "ws_kit_deliveries_total", &[]), 2.0);
        eventually("the queues are empty", || async {
            scrape().get("ws_kit_outbound_queued_bytes", &[]) == 0.0
        })
        .await;
    });
}

/// A subscriber that never reads overflows its small outbound queue: one overflow close, and the
/// queued bytes go back to 0 (dropped with the queue), as does the connection count.
#[test]
fn overflow_close_is_counted_and_queued_bytes_return_to_zero() {
    metrics_test(async {
        let router = router().on_open(|conn: Connection<()>| async move {
            conn.subscribe("met-flood").await?;
            Ok(())
        });
        let options = ServeOptions::new().max_queued_bytes(16 * 1024, OverflowPolicy::Close);
        let server = serve(router, options).await;
        let slow = RawClient::connect(server.addr, Some(4096)).await;
        let publisher = server.service.publisher();
        eventually("subscribed", || async {
            publisher.subscriber_count("met-flood").await == Some(1)
        })
        .await;

        let before = scrape();
        let blob = MetNews {
            text: "x".repeat(4000),
        };
        let mut overflowed = false;
        for _ in 0..2000 {
            let result = publisher.publish("met-flood", &blob).await;
            if result.matched == Some(0) {
                overflowed = true;
                break;
            }
            // Queued bytes are visible while the writer is stuck on the unread socket.
            tokio::task::yield_now().await;
        }
        assert!(overflowed, "the slow subscriber never overflowed");
        let after = scrape();
        assert_eq!(
            delta(&before, &after, "ws_kit_overflow_closes_total", &[]),
            1.0
        );
        eventually("the queued bytes are back at 0", || async {
            scrape().get("ws_kit_outbound_queued_bytes", &[]) == 0.0
        })
        .await;
        drop(slow);
        eventually("the slow connection is gone", || async {
            scrape().get("ws_kit_connections", &[]) == 0.0
        })
        .await;
    });
}

/// The Redis engine reports itself connected, and a publication that reached Redis records its
/// lag (from `publish` to Redis's reply).
#[cfg(feature = "redis")]
#[test]
fn redis_connected_and_lag() {
    let Some(url) = support::redis_url() else {
        return;
    };
    metrics_test(async move {
        let before = scrape();
        let prefix = format!("ws-kit-metrics-test-{}:", uuid::Uuid::now_v7());
        let engine = ws_kit::redis::RedisOptions::new(url)
            .prefix(prefix)
            .connect()
            .await
            .expect("connect to Redis");
        assert_eq!(scrape().get("ws_kit_redis_connected", &[]), 1.0);
        let publisher = ws_kit::Publisher::new(std::sync::Arc::new(engine));
        let result = publisher
            .publish("met-redis", &MetNews { text: "x".into() })
            .await;
        assert!(result.ok, "{result:?}");
        let after = scrape();
        assert_eq!(
            delta(&before, &after, "ws_kit_redis_lag_seconds_count", &[]),
            1.0
        );
        assert!(
            after.get("ws_kit_redis_lag_seconds_sum", &[]) < Duration::from_secs(5).as_secs_f64()
        );
    });
}
