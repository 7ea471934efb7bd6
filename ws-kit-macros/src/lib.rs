//! Macros for [ws-kit](https://docs.rs/ws-kit). Use them through the `ws-kit` crate, which re-exports
//! them and the runtime items their expansions name; do not depend on this crate directly.

mod case;
mod errors;
mod handler;
mod message;
mod routes;
mod validate;

use proc_macro::TokenStream;

/// Derives `ws_kit::Message`: the wire type tag, strict decoding, field validation and encoding.
///
/// See the `ws_kit::Message` docs for the attributes (`#[message(type = "...", rename_all = "...")]`,
/// `#[rpc(response = T)]`, field `#[message(rename = "...", meta)]` and `#[validate(...)]`).
#[proc_macro_derive(Message, attributes(message, rpc, validate))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    message::expand(syn::parse_macro_input!(input as syn::DeriveInput)).into()
}

/// Makes an `async fn(ctx: Ctx<M, D>)` a routable handler (a unit struct of the same name that
/// implements `ws_kit::Handler`).
///
/// Because the handler becomes a unit struct, its name is also a pattern: in the same module,
/// `let ping = ...;` no longer binds a variable called `ping`. Name variables differently from
/// handlers (the macro rejects an argument named like its handler with a clear error).
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(args.into(), syn::parse_macro_input!(item as syn::ItemFn)).into()
}

/// Builds a route table from handlers: `routes![join_room, send_message]`. Dispatch is one `match`
/// on the type tag; two handlers for one type tag are a compile error.
#[proc_macro]
pub fn routes(input: TokenStream) -> TokenStream {
    routes::expand(syn::parse_macro_input!(input as routes::RoutesInput)).into()
}
