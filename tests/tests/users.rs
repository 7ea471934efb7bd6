//! Users, direct sends and broadcast on one instance (the in-memory engine): the same API the
//! Redis engine serves across instances (see redis.rs).

mod support;

use serde_json::json;
use std::time::Duration;
use support::{Client, bounded, serve};
use ws_kit::{Ctx, Message, Router, ServeOptions, WsError, handler, query_param, routes};

/// Connection data: the user named in `?user=` at upgrade.
#[derive(Default)]
struct Session {
    user: Option<String>,
}

#[derive(Message)]
struct Login {
    user: String,
}

#[derive(Message)]
struct LoggedIn {
    user: String,
}

#[derive(Message)]
struct Notice {
    text: String,
}

#[handler]
async fn login(ctx: Ctx<Login, Session>) -> Result<(), WsError> {
    ctx.set_user_id(ctx.payload.user.clone()).await?;
    ctx.send(&LoggedIn {
        user: ctx.payload.user.clone(),
    });
    Ok(())
}

fn options() -> ServeOptions<Session> {
    ServeOptions::with_authenticate(|req| {
        Some(Session {
            user: query_param(req, "user"),
        })
    })
}

fn router() -> Router<Session> {
    Router::new()
        .routes(routes![login])
        .user_id_from(|s: &Session| s.user.clone())
}

#[test]
fn send_to_user_reaches_every_session_of_that_user_only() {
    bounded(async {
        let server = serve(router(), options()).await;
        let base = server.url();
        // Two sessions of u1 indexed at upgrade, one of u1 by LOGIN, one of u2.
        let mut a = Client::connect(&format!("{base}/?user=u1")).await;
        let mut b = Client::connect(&format!("{base}/?user=u1")).await;
        let mut c = Client::connect(&base).await;
        c.send(json!({"type": "LOGIN", "payload": {"user": "u1"}}))
            .await;
        assert_eq!(c.recv().await["type"], "LOGGED_IN");
        let mut other = Client::connect(&format!("{base}/?user=u2")).await;

        let publisher = server.service.publisher();
        let result = publisher
            .send_to_user(
                "u1",
                &Notice {
                    text: "hi u1".into(),
                },
            )
            .await;
        assert!(result.ok);
        assert_eq!(result.matched, Some(3));
        let expected = json!({"type": "NOTICE", "meta": {}, "payload": {"text": "hi u1"}});
        for client in [&mut a, &mut b, &mut c] {
            assert_eq!(client.recv().await, expected);
            client.expect_silence(Duration::from_millis(100)).await;
        }
        other.expect_silence(Duration::from_millis(100)).await;
    });
}

#[test]
fn changing_user_id_moves_the_connection() {
    bounded(async {
        let server = serve(router(), options()).await;
        let mut client = Client::connect(&format!("{}/?user=old", server.url())).await;
        client
            .send(json!({"type": "LOGIN", "payload": {"user": "new"}}))
            .await;
        assert_eq!(client.recv().await["type"], "LOGGED_IN");
        let publisher = server.service.publisher();
        assert_eq!(
            publisher
                .send_to_user("old", &Notice { text: "x".into() })
                .await
                .matched,
            Some(0)
        );
        assert_eq!(
            publisher
                .send_to_user("new", &Notice { text: "y".into() })
                .await
                .matched,
            Some(1)
        );
        assert_eq!(client.recv().await["payload"]["text"], "y");
    });
}

/// Setting the user a connection already has (at upgrade, then by LOGIN, then LOGIN again)
/// changes nothing: the connection is indexed once and a send reaches it once.
#[test]
fn setting_the_same_user_again_indexes_the_connection_once() {
    bounded(async {
        let server = serve(router(), options()).await;
        let mut client = Client::connect(&format!("{}/?user=u1", server.url())).await;
        for _ in 0..2 {
            client
                .send(json!({"type": "LOGIN", "payload": {"user": "u1"}}))
                .await;
            assert_eq!(client.recv().await["type"], "LOGGED_IN");
        }
        let result = server
            .service
            .publisher()
            .send_to_user(
                "u1",
                &Notice {
                    text: "once".into(),
                },
            )
            .await;
        assert_eq!(result.matched, Some(1));
        assert_eq!(client.recv().await["payload"]["text"], "once");
        client.expect_silence(Duration::from_millis(100)).await;
    });
}

#[test]
fn send_to_client_reaches_exactly_that_connection() {
    bounded(async {
        let server = serve(router(), options()).await;
        let mut target = Client::connect(&server.url()).await;
        let mut bystander = Client::connect(&server.url()).await;
        let id: uuid::Uuid = target.headers["x-client-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let result = server
            .service
            .publisher()
            .send_to_client(
                id,
                &Notice {
                    text: "only you".into(),
                },
            )
            .await;
        assert_eq!(result.matched, Some(1));
        assert_eq!(
            target.recv().await,
            json!({"type": "NOTICE", "meta": {}, "payload": {"text": "only you"}})
        );
        bystander.expect_silence(Duration::from_millis(100)).await;
    });
}

#[test]
fn broadcast_reaches_every_connection_and_stops_at_close() {
    bounded(async {
        let server = serve(router(), options()).await;
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(Client::connect(&server.url()).await);
        }
        let publisher = server.service.publisher();
        let result = publisher.broadcast(&Notice { text: "all".into() }).await;
        assert_eq!(result.matched, Some(5));
        for client in &mut clients {
            assert_eq!(
                client.recv().await,
                json!({"type": "NOTICE", "payload": {"text": "all"}})
            );
        }
        // A closed connection leaves `#all` (and its own `#client:` topic).
        let mut gone = clients.pop().unwrap();
        gone.close(1000).await;
        support::eventually("the closed connection leaves broadcast", || {
            let publisher = publisher.clone();
            async move { publisher.subscriber_count("#all").await == Some(4) }
        })
        .await;
    });
}

#[test]
fn internal_topics_are_not_user_topics() {
    bounded(async {
        let server = serve(router(), options()).await;
        let _client = Client::connect(&server.url()).await;
        // Users cannot publish to the framework's own topics.
        let result = server
            .service
            .publisher()
            .publish("#all", &Notice { text: "x".into() })
            .await;
        assert!(!result.ok);
        assert_eq!(
            result.error.unwrap().code(),
            &ws_kit::ErrorCode::InvalidArgument
        );
    });
}
