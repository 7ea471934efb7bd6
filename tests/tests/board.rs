//! A small collaborative to-do board, written from the README and the crate docs as a newcomer
//! would, over real sockets: shared state (`Router::with_state`), nested payload types
//! (`#[derive(Payload)]`), per-message middleware inside `routes!`, ordered dispatch, and a
//! request whose handler returns its reply.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::serve;
use ws_kit::{
    Ctx, Incoming, Message, Next, Payload, Router, ServeOptions, WsError, handler, routes,
};

/// How long joining a board takes (its membership is "looked up in a store").
const LOOKUP: Duration = Duration::from_millis(150);

// ---- the app ----

/// Every board's items: the app's state, shared by all handlers.
#[derive(Default)]
struct Store {
    boards: Mutex<BTreeMap<String, Vec<Item>>>,
}

type BoardCtx<M> = Ctx<M, (), Arc<Store>>;

#[derive(Payload, Clone, Debug, PartialEq)]
struct Item {
    #[validate(length(min = 1, max = 100))]
    text: String,
    is_done: bool,
    tags: Option<Vec<Tag>>,
}

#[derive(Payload, Clone, Debug, PartialEq)]
struct Tag {
    #[validate(length(min = 1, max = 10))]
    name: String,
}

#[derive(Message)]
struct JoinBoard {
    #[validate(length(min = 1, max = 64))]
    board_id: String,
}

#[derive(Message)]
struct BoardSnapshot {
    board_id: String,
    items: Vec<Item>,
}

#[derive(Message)]
struct AddItem {
    #[validate(length(min = 1, max = 64))]
    board_id: String,
    item: Item,
}

#[derive(Message)]
struct ItemAdded {
    board_id: String,
    item: Item,
}

#[derive(Message)]
#[rpc(response = Items)]
struct ListItems {
    board_id: String,
}

#[derive(Message)]
struct Items {
    items: Vec<Item>,
}

fn topic(board_id: &str) -> String {
    format!("board:{board_id}")
}

#[handler]
async fn join_board(ctx: BoardCtx<JoinBoard>) -> Result<(), WsError> {
    tokio::time::sleep(LOOKUP).await;
    let board_id = ctx.payload.board_id.clone();
    ctx.subscribe(&topic(&board_id)).await?;
    let items = ctx
        .state()
        .boards
        .lock()
        .unwrap()
        .get(&board_id)
        .cloned()
        .unwrap_or_default();
    ctx.send(&BoardSnapshot { board_id, items });
    Ok(())
}

#[handler]
async fn add_item(ctx: BoardCtx<AddItem>) -> Result<(), WsError> {
    let AddItem { board_id, item } = &ctx.payload;
    ctx.state()
        .boards
        .lock()
        .unwrap()
        .entry(board_id.clone())
        .or_default()
        .push(item.clone());
    let added = ItemAdded {
        board_id: board_id.clone(),
        item: item.clone(),
    };
    ctx.publish(&topic(board_id), &added).await;
    Ok(())
}

#[handler]
async fn list_items(ctx: BoardCtx<ListItems>) -> Result<Items, WsError> {
    let boards = ctx.state().boards.lock().unwrap();
    let items = boards
        .get(&ctx.payload.board_id)
        .cloned()
        .unwrap_or_default();
    Ok(Items { items })
}

/// Only members of some board may add items.
async fn members_only(msg: Incoming<()>, next: Next<()>) -> Result<(), WsError> {
    if msg.topics().is_empty() {
        return Err(WsError::failed_precondition("join a board first"));
    }
    next.run().await
}

async fn start(ordered: bool) -> (support::TestServer<()>, Arc<Store>) {
    let store = Arc::new(Store::default());
    let routes = if ordered {
        routes![
            join_board.ordered(),
            add_item.middleware(members_only),
            list_items
        ]
    } else {
        routes![join_board, add_item.middleware(members_only), list_items]
    };
    let router = Router::with_state(store.clone()).routes(routes);
    (serve(router, ServeOptions::new()).await, store)
}

fn add(board: &str, text: &str) -> Value {
    json!({"type": "ADD_ITEM", "payload": {"boardId": board, "item": {"text": text, "isDone": false}}})
}

// ---- the tests ----

/// The newcomer's race (docs/protocol.md 2a): `JOIN_BOARD` then `ADD_ITEM` at once. By default the
/// join's handler is still looking up the membership when the add is dispatched, so the add is
/// refused; with `join_board.ordered()` the add waits for the join and goes through.
#[tokio::test]
async fn ordered_join_is_finished_before_the_next_frame_starts() {
    let (server, _) = start(false).await;
    let mut client = server.client().await;
    client
        .send(json!({"type": "JOIN_BOARD", "payload": {"boardId": "b1"}}))
        .await;
    client.send(add("b1", "milk")).await;
    let refused = client.recv().await;
    assert_eq!(refused["type"], "ERROR");
    assert_eq!(refused["payload"]["code"], "FAILED_PRECONDITION");
    assert_eq!(client.recv().await["type"], "BOARD_SNAPSHOT");

    let (server, store) = start(true).await;
    let mut client = server.client().await;
    client
        .send(json!({"type": "JOIN_BOARD", "payload": {"boardId": "b1"}}))
        .await;
    client.send(add("b1", "milk")).await;
    assert_eq!(
        client.recv().await,
        json!({"type": "BOARD_SNAPSHOT", "meta": {}, "payload": {"boardId": "b1", "items": []}})
    );
    assert_eq!(
        client.recv().await,
        json!({"type": "ITEM_ADDED", "payload": {"boardId": "b1", "item": {"text": "milk", "isDone": false}}})
    );
    assert_eq!(store.boards.lock().unwrap()["b1"].len(), 1);
}

/// Ordered dispatch holds later frames, not control frames: `__heartbeat` is answered while the
/// ordered join still runs, and the frames after it keep their order.
#[tokio::test]
async fn heartbeats_pass_held_frames_which_keep_their_order() {
    let (server, _) = start(true).await;
    let mut client = server.client().await;
    client
        .send(json!({"type": "JOIN_BOARD", "payload": {"boardId": "b2"}}))
        .await;
    for text in ["one", "two", "three"] {
        client.send(add("b2", text)).await;
    }
    client.send(json!({"type": "__heartbeat"})).await;
    assert_eq!(client.recv().await["type"], "__heartbeat_ack");
    assert_eq!(client.recv().await["type"], "BOARD_SNAPSHOT");
    for text in ["one", "two", "three"] {
        assert_eq!(client.recv().await["payload"]["item"]["text"], text);
    }
}

/// Shared state: what one connection adds, another lists, through a request whose handler
/// returns its reply.
#[tokio::test]
async fn handlers_share_the_routers_state() {
    let (server, store) = start(true).await;
    let mut alice = server.client().await;
    alice
        .send(json!({"type": "JOIN_BOARD", "payload": {"boardId": "b3"}}))
        .await;
    alice.send(add("b3", "bread")).await;
    alice.recv().await;
    alice.recv().await;
    let mut bob = server.client().await;
    let reply = support::request(
        &mut bob,
        json!({"type": "LIST_ITEMS", "payload": {"boardId": "b3"}}),
        "l1",
    )
    .await;
    assert_eq!(
        reply,
        json!({"type": "ITEMS", "meta": {"correlationId": "l1"}, "payload": {"items": [
            {"text": "bread", "isDone": false}
        ]}})
    );
    assert_eq!(store.boards.lock().unwrap()["b3"][0].text, "bread");
}

/// Nested types are as strict and validated as the message, on the one-pass path (a frame as
/// `JSON.stringify` writes it) and the full path (whitespace) alike, with the full path.
#[tokio::test]
async fn nested_payloads_are_strict_and_validated() {
    let (server, _) = start(true).await;
    let mut client = server.client().await;
    client
        .send(json!({"type": "JOIN_BOARD", "payload": {"boardId": "b4"}}))
        .await;
    client.recv().await;
    let cases = [
        (
            json!({"text": "", "isDone": false}),
            "payload.item.text",
            "length must be between 1 and 100",
        ),
        (
            json!({"text": "x", "isDone": false, "tags": [{"name": "ok"}, {"name": "far too long"}]}),
            "payload.item.tags[1].name",
            "length must be between 1 and 10",
        ),
        (
            json!({"text": "x", "isDone": false, "colour": "red"}),
            "payload.item.colour",
            "unknown field `colour`, expected one of `text`, `isDone`, `tags`",
        ),
        (
            json!({"text": "x"}),
            "payload.item.isDone",
            "missing field `isDone`",
        ),
        (
            json!({"text": "x", "is_done": true}),
            "payload.item.is_done",
            "unknown field `is_done`, expected one of `text`, `isDone`, `tags`",
        ),
    ];
    for (item, path, message) in cases {
        let frame = json!({"type": "ADD_ITEM", "payload": {"boardId": "b4", "item": item}});
        for text in [
            support::type_first(&frame),
            serde_json::to_string_pretty(&frame).unwrap(),
        ] {
            client.send_text(&text).await;
            let err = client.recv().await;
            assert_eq!(err["type"], "ERROR", "{text}");
            assert_eq!(err["payload"]["code"], "INVALID_ARGUMENT", "{text}");
            assert_eq!(
                err["payload"]["details"]["issues"],
                json!([{"path": path, "message": message}]),
                "{text}"
            );
        }
    }
    // A valid nested item with tags is accepted both ways.
    let frame = json!({"type": "ADD_ITEM", "payload": {"boardId": "b4", "item": {"text": "x", "isDone": true, "tags": [{"name": "home"}]}}});
    for text in [
        support::type_first(&frame),
        serde_json::to_string_pretty(&frame).unwrap(),
    ] {
        client.send_text(&text).await;
        let added = client.recv().await;
        assert_eq!(
            added["payload"]["item"]["tags"],
            json!([{"name": "home"}]),
            "{text}"
        );
    }
}
