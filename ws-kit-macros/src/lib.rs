//! Macros for [ws-kit](https://docs.rs/ws-kit). Use them through the `ws-kit` crate, which re-exports
//! them and the runtime items their expansions name; do not depend on this crate directly. Their
//! documentation, with examples, is on the re-exports: `ws_kit::Message`, `ws_kit::Payload`,
//! `ws_kit::handler`, `ws_kit::routes`.

mod case;
mod errors;
mod fields;
mod handler;
mod message;
mod payload;
mod routes;
mod validate;

use proc_macro::TokenStream;

/// Derives `ws_kit::Message`: the wire type tag, strict decoding, field validation and encoding.
///
/// ```
/// use ws_kit::Message;
///
/// #[derive(Message)]                   // type tag "JOIN_ROOM"
/// struct JoinRoom {
///     #[validate(length(min = 1, max = 20))]
///     username: String,
///     room_id: String,                 // "roomId" on the wire
///     #[message(meta)]
///     trace_id: Option<String>,        // travels in `meta.traceId`
/// }
///
/// #[derive(Message)]
/// #[rpc(response = Pong)]              // a request; its handler returns a `Pong`
/// #[message(type = "PING")]
/// struct Ping { text: String }
///
/// #[derive(Message)]
/// struct Pong { reply: String }
///
/// assert_eq!(JoinRoom::TYPE, "JOIN_ROOM");
/// ```
///
/// Attributes: `#[message(type = "..", rename_all = "..")]` and `#[rpc(response = T)]` on the
/// struct; `#[message(rename = "..", meta)]` and `#[validate(..)]` (`length`, `range`, `email`,
/// `url`, `contains`, `does_not_contain`, `non_control_character`, `regex`, `custom`) on fields.
/// Mistakes are compile errors at the attribute:
///
/// ```compile_fail
/// #[derive(ws_kit::Message)]
/// #[message(type = "$ws:abort")]   // reserved by the protocol
/// struct Sneaky;
/// ```
#[proc_macro_derive(Message, attributes(message, rpc, validate))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    message::expand(syn::parse_macro_input!(input as syn::DeriveInput)).into()
}

/// Derives what a struct nested in a message's payload needs: strict decoding (camelCase wire names,
/// unknown keys rejected), encoding, and its own `#[validate]` rules, whose issues carry the full
/// path (`payload.items[2].text`).
///
/// ```
/// use ws_kit::{Message, Payload};
///
/// #[derive(Payload)]
/// struct Item {
///     #[validate(length(min = 1, max = 100))]
///     text: String,
///     is_done: bool,                   // "isDone" on the wire
/// }
///
/// #[derive(Message)]
/// struct SaveList {
///     items: Vec<Item>,
/// }
/// ```
///
/// Attributes: `#[payload(rename_all = "..")]` on the struct, `#[payload(rename = "..")]` and
/// `#[validate(..)]` on fields. It is for structs with named fields; an enum field takes serde's
/// derives instead:
///
/// ```compile_fail
/// #[derive(ws_kit::Payload)]
/// enum Status { Open, Done }
/// ```
#[proc_macro_derive(Payload, attributes(payload, validate))]
pub fn derive_payload(input: TokenStream) -> TokenStream {
    payload::expand(syn::parse_macro_input!(input as syn::DeriveInput)).into()
}

/// Makes an `async fn(ctx: Ctx<M, D, S>)` a routable handler: a unit struct of the same name that
/// implements `ws_kit::Handler`. A request's handler returns its reply (the one terminal frame);
/// an event's returns `()` or `Result<(), E>`. `E` is anything `Into<WsError>`.
///
/// ```
/// use ws_kit::{handler, Ctx, Message, WsError};
///
/// #[derive(Message)]
/// #[rpc(response = Pong)]
/// struct Ping { text: String }
///
/// #[derive(Message)]
/// struct Pong { reply: String }
///
/// #[derive(Message)]
/// struct Say { text: String }
///
/// #[handler]
/// async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
///     ctx.progress(&Pong { reply: "working".into() });
///     Ok(Pong { reply: format!("Got: {}", ctx.payload.text) })
/// }
///
/// #[handler]
/// async fn say(ctx: Ctx<Say>) -> Result<(), WsError> {
///     ctx.publish("room", &Pong { reply: ctx.payload.text.clone() }).await;
///     Ok(())
/// }
/// ```
///
/// A request's handler that returns anything but its response does not compile:
///
/// ```compile_fail
/// # use ws_kit::{handler, Ctx, Message};
/// # #[derive(Message)] #[rpc(response = Pong)] struct Ping { text: String }
/// # #[derive(Message)] struct Pong { reply: String }
/// #[handler]
/// async fn ping(ctx: Ctx<Ping>) {     // error: this handler must return `Result<Pong, E>`
///     let _ = &ctx.payload.text;
/// }
/// ```
///
/// Because the handler becomes a unit struct, its name is also a pattern: in the same module,
/// `let ping = ...;` no longer binds a variable called `ping`. Name variables differently from
/// handlers (the macro rejects an argument named like its handler with a clear error).
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(args.into(), syn::parse_macro_input!(item as syn::ItemFn)).into()
}

/// Builds a route table from handlers: dispatch is one `match` on the type tag, and two handlers
/// for one type tag are a compile error. Each entry may carry route options: `.middleware(m)`
/// (per-message middleware, after the router's) and `.ordered()` (see `Router::ordered`).
///
/// ```
/// use ws_kit::{handler, routes, Ctx, Incoming, Message, Next, Router, WsError};
///
/// #[derive(Message)]
/// struct Join { room: String }
///
/// #[derive(Message)]
/// struct Say { text: String }
///
/// #[handler]
/// async fn join(ctx: Ctx<Join>) -> Result<(), WsError> {
///     ctx.subscribe(&ctx.payload.room).await
/// }
///
/// #[handler]
/// async fn say(ctx: Ctx<Say>) {
///     let _ = &ctx.payload.text;
/// }
///
/// async fn audit(msg: Incoming<()>, next: Next<()>) -> Result<(), WsError> {
///     println!("{}", msg.message_type());
///     next.run().await
/// }
///
/// let router = Router::new().routes(routes![join.ordered(), say.middleware(audit)]);
/// ```
///
/// ```compile_fail
/// # use ws_kit::{handler, routes, Ctx, Message, Router};
/// # #[derive(Message)] struct Join;
/// #[handler]
/// async fn join(ctx: Ctx<Join>) {}
/// #[handler]
/// async fn join_again(ctx: Ctx<Join>) {}
/// let router = Router::new().routes(routes![join, join_again]); // duplicate type tag
/// ```
#[proc_macro]
pub fn routes(input: TokenStream) -> TokenStream {
    routes::expand(syn::parse_macro_input!(input as routes::RoutesInput)).into()
}
