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
#[proc_macro_derive(Message, attributes(message, rpc, validate))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    message::expand(syn::parse_macro_input!(input as syn::DeriveInput)).into()
}

/// Derives what a struct nested in a message's payload needs: strict decoding, encoding and its
/// own `#[validate]` rules.
#[proc_macro_derive(Payload, attributes(payload, validate))]
pub fn derive_payload(input: TokenStream) -> TokenStream {
    payload::expand(syn::parse_macro_input!(input as syn::DeriveInput)).into()
}

/// Makes an `async fn(ctx: Ctx<M, D, S>)` a routable handler.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(args.into(), syn::parse_macro_input!(item as syn::ItemFn)).into()
}

/// Builds a route table from handlers.
#[proc_macro]
pub fn routes(input: TokenStream) -> TokenStream {
    routes::expand(syn::parse_macro_input!(input as routes::RoutesInput)).into()
}
