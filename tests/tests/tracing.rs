//! `tracing`: a span per connection (client id, remote address, user) and per message (type,
//! correlation id, outcome, duration), errors at the level their kind deserves.

mod support;

use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use support::{bounded, request, serve};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use ws_kit::{Ctx, Message, Router, ServeOptions, WsError, handler, routes};

/// What the subscriber saw: spans by id (name, fields, parent's name) and events.
#[derive(Clone, Default)]
struct Seen {
    spans: Arc<Mutex<HashMap<u64, SpanSeen>>>,
    events: Arc<Mutex<Vec<EventSeen>>>,
}

/// An event's level and fields.
type EventSeen = (Level, HashMap<String, String>);

#[derive(Clone, Debug, Default)]
struct SpanSeen {
    name: String,
    parent: Option<String>,
    fields: HashMap<String, String>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Seen {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut span = SpanSeen {
            name: attrs.metadata().name().to_string(),
            ..SpanSeen::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        span.parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.name().to_string());
        self.spans.lock().unwrap().insert(id.into_u64(), span);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(span) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        self.events
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields));
    }
}

impl Seen {
    fn spans_named(&self, name: &str) -> Vec<SpanSeen> {
        let spans = self.spans.lock().unwrap();
        spans.values().filter(|s| s.name == name).cloned().collect()
    }
}

#[derive(Message)]
#[rpc(response = Found)]
struct Find {
    id: String,
}

#[derive(Message)]
struct Found {
    id: String,
}

#[handler]
async fn find(ctx: Ctx<Find>) -> Result<Found, WsError> {
    if ctx.payload.id == "boom" {
        panic!("the store exploded");
    }
    if ctx.payload.id != "1" {
        return Err(WsError::not_found("no such thing"));
    }
    ctx.set_user_id("u1").await?;
    Ok(Found {
        id: ctx.payload.id.clone(),
    })
}

#[test]
fn connections_and_messages_have_spans_and_errors_their_levels() {
    bounded(async {
        let seen = Seen::default();
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));
        let server = serve(Router::new().routes(routes![find]), ServeOptions::new()).await;
        let mut client = server.client().await;
        let client_id = client.headers["x-client-id"].to_str().unwrap().to_string();
        let ok = request(
            &mut client,
            json!({"type": "FIND", "payload": {"id": "1"}}),
            "c1",
        )
        .await;
        assert_eq!(ok["type"], "FOUND");
        let missing = request(
            &mut client,
            json!({"type": "FIND", "payload": {"id": "2"}}),
            "c2",
        )
        .await;
        assert_eq!(missing["payload"]["code"], "NOT_FOUND");
        let panicked = request(
            &mut client,
            json!({"type": "FIND", "payload": {"id": "boom"}}),
            "c3",
        )
        .await;
        assert_eq!(panicked["payload"]["code"], "INTERNAL");

        let connections = seen.spans_named("ws.connection");
        assert_eq!(connections.len(), 1, "{connections:?}");
        let conn = &connections[0].fields;
        assert_eq!(conn["client_id"], client_id);
        assert!(conn["remote"].starts_with("127.0.0.1:"), "{conn:?}");
        assert_eq!(conn["user"], "u1");

        let mut messages = seen.spans_named("ws.message");
        messages.sort_by_key(|m| m.fields["correlation_id"].clone());
        let outcomes: Vec<_> = messages
            .iter()
            .map(|m| {
                (
                    m.fields["correlation_id"].as_str(),
                    m.fields["outcome"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            outcomes,
            [("c1", "ok"), ("c2", "NOT_FOUND"), ("c3", "INTERNAL")]
        );
        for m in &messages {
            assert_eq!(m.fields["type"], "FIND");
            assert_eq!(m.parent.as_deref(), Some("ws.connection"));
            assert!(m.fields.contains_key("duration_us"), "{m:?}");
        }

        let events = seen.events.lock().unwrap().clone();
        let level_of = |code: &str| {
            events
                .iter()
                .find(|(_, f)| f.get("code").map(String::as_str) == Some(code))
                .map(|(level, f)| (*level, f["kind"].clone()))
        };
        assert_eq!(
            level_of("INTERNAL"),
            Some((Level::ERROR, "Panic".to_string()))
        );
        assert_eq!(
            level_of("NOT_FOUND"),
            Some((Level::DEBUG, "Handler".to_string()))
        );
    });
}
