//! The chat, hosted on axum: one port for the page, the API, health, metrics and the WebSocket.
//!
//! Run: `cargo run --example axum --features axum` (PORT=3000 by default; PORT=0 picks a free
//! port), then open <http://127.0.0.1:3000/>.
//!
//! - `GET /`: the chat page (the chat example's own);
//! - `GET /ws`: the chat's WebSocket (EXAMPLES.md), mounted with [`ws_kit::Service::axum_route`];
//! - `GET /api/rooms/{roomId}`: who is in a room on this instance, as JSON;
//! - `GET /health`: `ok` and the number of open connections;
//! - `GET /metrics`: ws-kit's metrics (and any of the app's) for Prometheus.
//!
//! Ctrl-C closes the WebSocket connections (1001), then axum drains its requests and exits.

#[allow(dead_code)]
#[path = "chat.rs"]
mod chat;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::time::Duration;
use ws_kit::{ServeOptions, Service};

/// What the HTTP routes share: the WebSocket service and the metrics exporter.
#[derive(Clone)]
struct AppState {
    chat: Service<chat::ChatData>,
    metrics: PrometheusHandle,
}

async fn page() -> Html<&'static str> {
    Html(include_str!("chat.html"))
}

async fn health(State(state): State<AppState>) -> String {
    format!("ok, {} connections\n", state.chat.connection_count())
}

async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// `GET /api/rooms/{roomId}`: the room's members on this instance, sorted by client id.
async fn room(
    State(state): State<AppState>,
    Path(room_id): Path<uuid::Uuid>,
) -> Json<serde_json::Value> {
    let members: Vec<_> = state
        .chat
        .clients()
        .in_topic(&format!("room:{room_id}"))
        .iter()
        .map(|conn| serde_json::json!({"clientId": conn.client_id(), "username": chat::username(conn)}))
        .collect();
    Json(serde_json::json!({"roomId": room_id, "members": members}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    // The app picks the exporter; ws-kit emits through the `metrics` facade.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let chat = chat::router().into_service(ServeOptions::new())?;
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(scrape))
        .route("/api/rooms/{room_id}", get(room))
        .route("/ws", chat.axum_route())
        .with_state(AppState {
            chat: chat.clone(),
            metrics,
        });

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = tokio::signal::ctrl_c().await;
        chat.graceful_shutdown().await;
    })
    .await?;
    Ok(())
}
