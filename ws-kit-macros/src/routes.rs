//! `routes![a, b, c]`: a route table whose dispatch is one `match` on the type tag, with duplicate
//! type tags rejected at compile time.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Path, Token};

pub struct RoutesInput {
    handlers: Punctuated<Path, Token![,]>,
}

impl Parse for RoutesInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        Ok(RoutesInput {
            handlers: Punctuated::parse_terminated(input)?,
        })
    }
}

pub fn expand(input: RoutesInput) -> TokenStream {
    let handlers: Vec<&Path> = input.handlers.iter().collect();
    if handlers.is_empty() {
        return quote!(::core::compile_error!(
            "`routes!` needs at least one handler"
        ));
    }
    let ws = quote!(::ws_kit::__private);
    let tag_consts: Vec<_> = (0..handlers.len())
        .map(|i| format_ident!("__TAG_{}", i))
        .collect();
    let tag_values: Vec<_> = handlers
        .iter()
        .map(|h| quote_spanned!(h.span()=> <<#h as ::ws_kit::Handler>::Message as ::ws_kit::Message>::TYPE))
        .collect();
    let indexes: Vec<syn::Index> = (0..handlers.len()).map(syn::Index::from).collect();
    let first = handlers[0];
    let data = quote!(<#first as ::ws_kit::Handler>::Data);

    // One check per pair, spanned at the later handler, so the error points at the duplicate.
    let mut checks = Vec::new();
    for (j, later) in handlers.iter().enumerate() {
        if let Some(earlier) = handlers[..j]
            .iter()
            .find(|h| path_text(h) == path_text(later))
        {
            let message = format!("`{}` is listed twice in `routes!`", path_text(earlier));
            return quote_spanned!(later.span()=> ::core::compile_error!(#message));
        }
        checks.push(quote_spanned! {later.span()=>
            const _: fn() = #ws::same_data::<#data, #later>;
        });
        for (i, earlier) in handlers[..j].iter().enumerate() {
            let (a, b) = (&tag_values[i], &tag_values[j]);
            let message = format!(
                "duplicate type tag in `routes!`: `{}` handles the same message type as `{}`",
                path_text(later),
                path_text(earlier)
            );
            checks.push(quote_spanned! {later.span()=>
                const _: () = if #ws::str_eq(#a, #b) { ::core::panic!(#message) };
            });
        }
    }
    let arms = handlers.iter().zip(&indexes).zip(&tag_consts).map(|((h, i), c)| {
        quote_spanned!(h.span()=> #c => ::core::option::Option::Some(&self.#i as &dyn #ws::DynRoute<#data>),)
    });

    quote! {{
        #[allow(non_camel_case_types)]
        struct __WsKitRoutes(#(#handlers),*);
        #(#checks)*
        impl #ws::RouteTable<#data> for __WsKitRoutes {
            fn find(&self, __tag: &str) -> ::core::option::Option<&dyn #ws::DynRoute<#data>> {
                #( const #tag_consts: &str = #tag_values; )*
                match __tag {
                    #(#arms)*
                    _ => ::core::option::Option::None,
                }
            }

            fn tags(&self) -> ::std::vec::Vec<&'static str> {
                ::std::vec![#(#tag_values),*]
            }
        }
        ::ws_kit::Routes::<#data>::from_table(__WsKitRoutes(
            #( <#handlers as ::core::default::Default>::default() ),*
        ))
    }}
}

fn path_text(path: &Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}
