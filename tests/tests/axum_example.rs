//! The axum example's real binary: every route on one port, and a Prometheus scrape over HTTP that
//! finds the counts the test's own traffic caused.
#![cfg(all(feature = "axum", feature = "metrics"))]

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::binary::run_example;
use support::{Client, WAIT, http_exchange};

const ROOM: &str = "0190f3a4-8a4e-7cc0-9a3e-2f1f0d1c2b3a";

/// `GET path` on a connection of its own: status and body.
async fn get(port: u16, path: &str) -> (u16, String) {
    let addr = ([127, 0, 0, 1], port).into();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (status, response) = http_exchange(addr, &request).await;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    (status, body)
}

/// The value of the sample `name{labels}` in a Prometheus text scrape: the line whose name is
/// `name` and whose labels include every pair of `labels` (0 when there is none).
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn joined(port: u16, name: &str) -> Client {
    let mut client = Client::connect(&format!("ws://127.0.0.1:{port}/ws")).await;
    assert_eq!(client.recv().await["type"], "WELCOME");
    client
        .send(json!({"type": "JOIN_ROOM", "payload": {"roomId": ROOM, "username": name}}))
        .await;
    assert_eq!(
        client.recv_type("USER_JOINED").await["payload"]["username"],
        name
    );
    client
}

#[test]
fn the_axum_example_serves_every_route_and_its_metrics_count_the_traffic() {
    let example = run_example("axum", &["axum"], &[], WAIT * 2);
    let port = example.port;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            // The page and health.
            let (status, page) = get(port, "/").await;
            assert_eq!(status, 200);
            assert!(page.contains("<html") || page.contains("<!doctype"), "{page}");
            let (status, health) = get(port, "/health").await;
            assert_eq!((status, health.as_str()), (200, "ok, 0 connections\n"));

            // Before any traffic the scrape already lists the metrics, described, at 0.
            let (status, scrape) = get(port, "/metrics").await;
            assert_eq!(status, 200);
            assert!(scrape.contains("# HELP ws_kit_connections "), "{scrape}");
            assert!(
                scrape.lines().any(|line| line == "ws_kit_connections 0"),
                "{scrape}"
            );

            // Real traffic on /ws: two joins, one message, one invalid join.
            let mut ada = joined(port, "ada").await;
            let mut bob = joined(port, "bob").await;
            assert_eq!(ada.recv_type("USER_JOINED").await["payload"]["userCount"], 2);
            ada.send(json!({"type": "SEND_MESSAGE", "payload": {"roomId": ROOM, "text": "hi"}}))
                .await;
            for client in [&mut ada, &mut bob] {
                assert_eq!(client.recv_type("NEW_MESSAGE").await["payload"]["text"], "hi");
            }
            bob.send(json!({"type": "JOIN_ROOM", "payload": {"roomId": "not-a-uuid", "username": "bob"}}))
                .await;
            assert_eq!(
                bob.recv_type("ERROR").await["payload"]["code"],
                "INVALID_ARGUMENT"
            );

            // The JSON route sees the room's members.
            let (status, room) = get(port, &format!("/api/rooms/{ROOM}")).await;
            assert_eq!(status, 200, "{room}");
            let room: Value = serde_json::from_str(&room).expect("JSON");
            let mut names: Vec<&str> = room["members"]
                .as_array()
                .expect("members")
                .iter()
                .filter_map(|m| m["username"].as_str())
                .collect();
            names.sort_unstable();
            assert_eq!(names, ["ada", "bob"]);
            let (status, _) = get(port, "/api/rooms/not-a-uuid").await;
            assert_eq!(status, 400);

            // A refused upgrade: a plain GET on /ws.
            let (status, _) = get(port, "/ws").await;
            assert_eq!(status, 400);

            // The scrape over HTTP finds exactly the traffic above.
            let (status, scrape) = get(port, "/metrics").await;
            assert_eq!(status, 200);
            let count = |name, labels: &[(&str, &str)]| sample(&scrape, name, labels);
            assert_eq!(count("ws_kit_connections", &[]), 2.0, "{scrape}");
            assert_eq!(count("ws_kit_upgrades_total", &[]), 2.0, "{scrape}");
            assert_eq!(
                count(
                    "ws_kit_messages_total",
                    &[("type", "JOIN_ROOM"), ("outcome", "ok")]
                ),
                2.0,
                "{scrape}"
            );
            assert_eq!(
                count(
                    "ws_kit_messages_total",
                    &[("type", "JOIN_ROOM"), ("outcome", "INVALID_ARGUMENT")]
                ),
                1.0,
                "{scrape}"
            );
            assert_eq!(
                count(
                    "ws_kit_messages_total",
                    &[("type", "SEND_MESSAGE"), ("outcome", "ok")]
                ),
                1.0,
                "{scrape}"
            );
            assert_eq!(
                count("ws_kit_upgrades_rejected_total", &[("reason", "malformed")]),
                1.0,
                "{scrape}"
            );
            // Two USER_JOINED to ada then bob (1 + 2 deliveries), NEW_MESSAGE to both (2).
            assert_eq!(count("ws_kit_publications_total", &[]), 3.0, "{scrape}");
            assert_eq!(count("ws_kit_deliveries_total", &[]), 5.0, "{scrape}");
            assert_eq!(
                // The invalid join never reached its handler.
                count("ws_kit_handler_duration_seconds_count", &[("type", "JOIN_ROOM")]),
                2.0,
                "{scrape}"
            );

            // Closing both: the gauge goes back to 0.
            ada.close(1000).await;
            bob.close(1000).await;
            support::eventually("the connections gauge back to 0", || async {
                let (_, scrape) = get(port, "/metrics").await;
                sample(&scrape, "ws_kit_connections", &[]) == 0.0
            })
            .await;
        })
        .await
        .expect("the test took over 60 s");
    });
    drop(example);
}
