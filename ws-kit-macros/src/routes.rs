//! `routes![a, b.middleware(m), c.ordered()]`: a route table whose lookup is one `match` on the
//! type tag, with duplicate type tags rejected at compile time.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Path, Token};

pub(crate) struct RoutesInput {
    entries: Punctuated<Expr, Token![,]>,
}

impl Parse for RoutesInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        Ok(RoutesInput {
            entries: Punctuated::parse_terminated(input)?,
        })
    }
}

/// One entry: the whole expression (a handler, or a handler with route options) and the
/// handler's name at its root.
struct Entry<'a> {
    expr: &'a Expr,
    handler: &'a Path,
}

/// The handler at the root of `a.middleware(m).ordered()`: `a`.
fn handler_of(expr: &Expr) -> Option<&Path> {
    match expr {
        Expr::Path(p) if p.qself.is_none() => Some(&p.path),
        Expr::MethodCall(call) => handler_of(&call.receiver),
        Expr::Paren(p) => handler_of(&p.expr),
        _ => None,
    }
}

/// The entry as a `ws_kit::Route`, with its options called through their full paths, so they
/// work without importing the `Handler` trait. `Err` names an option that does not exist.
fn route_of(expr: &Expr) -> Result<TokenStream, syn::Error> {
    match expr {
        Expr::Path(_) => Ok(quote_spanned!(expr.span()=> ::ws_kit::__private::route(#expr))),
        Expr::Paren(p) => route_of(&p.expr),
        Expr::MethodCall(call) => {
            let receiver = route_of(&call.receiver)?;
            let method = &call.method;
            let args = &call.args;
            match method.to_string().as_str() {
                "middleware" | "ordered" => Ok(quote_spanned!(method.span()=>
                    ::ws_kit::Route::#method(#receiver, #args)
                )),
                other => Err(syn::Error::new(
                    method.span(),
                    format!(
                        "unknown route option `{other}`; expected `.middleware(..)` or `.ordered()`"
                    ),
                )),
            }
        }
        _ => Err(syn::Error::new(expr.span(), "expected a handler name")),
    }
}

pub(crate) fn expand(input: RoutesInput) -> TokenStream {
    let mut entries = Vec::new();
    for expr in &input.entries {
        match handler_of(expr) {
            Some(handler) => entries.push(Entry { expr, handler }),
            None => {
                return quote_spanned!(expr.span()=> ::core::compile_error!(
                    "`routes!` takes handler names, each optionally followed by route options: `routes![join, say.middleware(audit), ping.ordered()]`"
                ));
            }
        }
    }
    if entries.is_empty() {
        return quote!(::core::compile_error!(
            "`routes!` needs at least one handler"
        ));
    }
    let ws = quote!(::ws_kit::__private);
    let tag_consts: Vec<_> = (0..entries.len())
        .map(|i| format_ident!("__WS_KIT_TAG_{}", i))
        .collect();

    let mut items = Vec::new();
    for (j, later) in entries.iter().enumerate() {
        let handler = later.handler;
        let tag = &tag_consts[j];
        // The tag, read from the handler's value (not its type): a function that lacks
        // `#[handler]` is then reported as "not a ws-kit handler".
        items.push(quote_spanned! {handler.span()=>
            const #tag: &str = #ws::tag_of(&#handler);
        });
        if let Some(earlier) = entries[..j]
            .iter()
            .find(|e| path_text(e.handler) == path_text(handler))
        {
            let message = format!(
                "`{}` is listed twice in `routes!`",
                path_text(earlier.handler)
            );
            return quote_spanned!(handler.span()=> ::core::compile_error!(#message));
        }
        // One check per pair, spanned at the later handler, so the error points at the duplicate.
        for (i, earlier) in entries[..j].iter().enumerate() {
            let earlier_tag = &tag_consts[i];
            let message = format!(
                "duplicate type tag in `routes!`: `{}` handles the same message type as `{}`",
                path_text(handler),
                path_text(earlier.handler)
            );
            items.push(quote_spanned! {handler.span()=>
                const _: () = if #ws::str_eq(#earlier_tag, #tag) { ::core::panic!(#message) };
            });
        }
    }
    let indexes: Vec<usize> = (0..entries.len()).collect();
    let mut adds = Vec::new();
    for e in &entries {
        // A bare handler is added as it is (one error, "not a handler of this router", if it
        // is not one); a handler with options goes through `Route`.
        let route = match e.expr {
            Expr::Path(_) => Ok(e.expr.to_token_stream()),
            expr => route_of(expr),
        };
        match route {
            Ok(route) => adds.push(quote_spanned!(e.expr.span()=> .__add(#route))),
            Err(err) => return err.to_compile_error(),
        }
    }

    quote! {{
        #( #items )*
        fn __ws_kit_index(__tag: &str) -> ::core::option::Option<usize> {
            match __tag {
                #( #tag_consts => ::core::option::Option::Some(#indexes), )*
                _ => ::core::option::Option::None,
            }
        }
        ::ws_kit::Routes::__with_index(__ws_kit_index) #( #adds )*
    }}
}

fn path_text(path: &Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}
