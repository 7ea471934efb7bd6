//! `#[derive(Message)]`: parse → validate → expand.

use crate::case;
use crate::errors::{Errors, unknown_key};
use crate::fields::{self, Field};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Type};

/// Meta keys every envelope may carry; a message cannot declare them again.
const STANDARD_META: [&str; 4] = ["correlationId", "timestamp", "timeoutMs", "idempotencyKey"];
/// Meta keys the server owns; a client's values are stripped.
const RESERVED_META: [&str; 2] = ["clientId", "receivedAt"];
/// Type tags the protocol keeps for itself (besides the `$` and `__` prefixes).
const RESERVED_TAGS: [&str; 2] = ["ERROR", "RPC_ERROR"];

struct Message {
    ident: Ident,
    tag: String,
    response: Option<Type>,
    fields: Vec<Field>,
    unit: bool,
}

pub(crate) fn expand(input: DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let parsed = parse(&input, &mut errors);
    match parsed {
        Some(message) if errors.is_empty() => generate(&message),
        // On error, emit the errors only: the struct itself is untouched by a derive, so the user's
        // item still exists and other code keeps type-checking.
        _ => errors.to_compile_errors(),
    }
}

fn parse(input: &DeriveInput, errors: &mut Errors) -> Option<Message> {
    let struct_data = match &input.data {
        Data::Struct(s) => s,
        Data::Enum(e) => {
            errors.spanned(e.enum_token, "`Message` can only be derived for structs with named fields or unit structs, not enums");
            return None;
        }
        Data::Union(u) => {
            errors.spanned(u.union_token, "`Message` can only be derived for structs with named fields or unit structs, not unions");
            return None;
        }
    };
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        errors.spanned(&input.generics, "`Message` cannot be derived for generic structs; a message has one fixed shape on the wire");
    }

    let mut tag: Option<(String, Span)> = None;
    let mut rename_all: Option<(String, Span)> = None;
    let mut response: Option<Type> = None;
    let mut rpc_attr_seen = false;
    for attr in &input.attrs {
        if attr.path().is_ident("message") {
            let result = attr.parse_nested_meta(|meta| {
                let key = meta
                    .path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                match key.as_str() {
                    "type" => {
                        let lit: LitStr = meta.value()?.parse()?;
                        if tag.is_some() {
                            errors.spanned(&meta.path, "duplicate `type` in `#[message(...)]`");
                        } else {
                            tag = Some((lit.value(), lit.span()));
                        }
                    }
                    "rename_all" => errors.rename_all(&meta, "message", &mut rename_all)?,
                    _ => return Err(unknown_key(&meta, "message", "`type` or `rename_all`")),
                }
                Ok(())
            });
            if let Err(e) = result {
                errors.push(e);
            }
        } else if attr.path().is_ident("rpc") {
            if rpc_attr_seen {
                errors.spanned(attr, "duplicate `#[rpc(...)]` attribute");
                continue;
            }
            rpc_attr_seen = true;
            if let syn::Meta::Path(_) = attr.meta {
                errors.spanned(
                    attr,
                    "`#[rpc]` needs a response message: `#[rpc(response = MyReply)]`",
                );
                continue;
            }
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("response") {
                    if response.is_some() {
                        return Err(meta.error("duplicate `response` in `#[rpc(...)]`"));
                    }
                    response = Some(meta.value()?.parse()?);
                    Ok(())
                } else {
                    Err(unknown_key(&meta, "rpc", "`response`"))
                }
            });
            match result {
                Err(e) => errors.push(e),
                Ok(()) if response.is_none() => errors.spanned(
                    attr,
                    "`#[rpc]` needs a response message: `#[rpc(response = MyReply)]`",
                ),
                Ok(()) => {}
            }
        }
    }

    let (tag, tag_span) = tag.unwrap_or_else(|| {
        (
            case::screaming_snake(&input.ident.to_string()),
            input.ident.span(),
        )
    });
    if tag.is_empty() {
        errors.at(tag_span, "the type tag must not be empty");
    } else if tag.starts_with('$') || tag.starts_with("__") || RESERVED_TAGS.contains(&tag.as_str())
    {
        errors.at(
            tag_span,
            format!("the type tag `{tag}` is reserved by the protocol (types starting with `$` or `__`, `ERROR` and `RPC_ERROR` are the server's own)"),
        );
    }

    let rule = rename_all
        .map(|(r, _)| r)
        .unwrap_or_else(|| "camelCase".to_string());
    let (named, unit) = match &struct_data.fields {
        Fields::Named(named) => (named.named.iter().collect::<Vec<_>>(), false),
        Fields::Unit => (Vec::new(), true),
        Fields::Unnamed(unnamed) => {
            errors.spanned(
                unnamed,
                "`Message` needs named fields (or a unit struct); tuple structs have no wire names",
            );
            return None;
        }
    };

    let fields = fields::parse(&named, "message", true, &rule, errors);
    for f in fields.iter().filter(|f| f.meta) {
        let wire = &f.wire;
        if RESERVED_META.contains(&wire.as_str()) {
            errors.spanned(
                &f.ident,
                format!("`{wire}` is a reserved meta key: the server strips it from client frames and sets its own (use `ctx.client_id()` / `ctx.received_at()`)"),
            );
        } else if STANDARD_META.contains(&wire.as_str()) {
            errors.spanned(&f.ident, format!("`{wire}` is a standard meta key; read it from `ctx.meta()` instead of declaring it"));
        }
    }

    Some(Message {
        ident: input.ident.clone(),
        tag,
        response,
        fields,
        unit,
    })
}

fn generate(m: &Message) -> TokenStream {
    let ident = &m.ident;
    let name = ident.to_string();
    let tag = &m.tag;
    let ws = quote!(::ws_kit::__private);
    let payload_fields: Vec<&Field> = m.fields.iter().filter(|f| !f.meta).collect();
    let meta_fields: Vec<&Field> = m.fields.iter().filter(|f| f.meta).collect();
    let all_fields: Vec<&Field> = m.fields.iter().collect();
    let has_payload = !payload_fields.is_empty();
    let meta_keys = meta_fields.iter().map(|f| &f.wire);

    let p_idents: Vec<&Ident> = payload_fields.iter().map(|f| &f.ident).collect();
    let p_types: Vec<&Type> = payload_fields.iter().map(|f| &f.ty).collect();
    let p_wires: Vec<&String> = payload_fields.iter().map(|f| &f.wire).collect();
    let m_idents: Vec<&Ident> = meta_fields.iter().map(|f| &f.ident).collect();
    let m_types: Vec<&Type> = meta_fields.iter().map(|f| &f.ty).collect();
    let m_wires: Vec<&String> = meta_fields.iter().map(|f| &f.wire).collect();
    let m_locals: Vec<Ident> = m_idents
        .iter()
        .map(|i| format_ident!("__meta_{}", i))
        .collect();

    let checks = fields::checks(&all_fields);
    let (shadow, decode_payload, serialize_payload) = if has_payload {
        let shadow_ty = quote!(__WsKitPayload);
        let deserialize = fields::deserialize_impl(&shadow_ty, &name, &payload_fields);
        let serialize = fields::serialize_body(&name, &payload_fields);
        (
            quote! {
                struct __WsKitPayload {
                    #( #p_idents: #p_types, )*
                }
                #deserialize
            },
            quote!(let __payload = #ws::decode_payload::<__WsKitPayload>(__raw_payload, &mut __issues);),
            serialize,
        )
    } else {
        (
            quote!(),
            quote!(let __payload = #ws::decode_no_payload(__raw_payload, &mut __issues);),
            quote!(#ws::serde::Serializer::serialize_map(__serializer, ::core::option::Option::Some(0))
                .and_then(#ws::serde::ser::SerializeMap::end)),
        )
    };
    let construct = if m.unit {
        quote!(#ident)
    } else {
        let payload_bind = if has_payload {
            quote!(let __payload = __payload?;)
        } else {
            quote!(let () = __payload?;)
        };
        let p_assign = p_idents.iter().map(|i| quote!(#i: __payload.#i));
        quote!({
            #payload_bind
            #ident { #( #p_assign, )* #( #m_idents: #m_locals?, )* }
        })
    };
    let construct_bind = if m.unit {
        quote!(let () = __payload?;)
    } else {
        quote!()
    };

    // The one-pass decoder. Each field is read by the scanner when its type is one it knows
    // (`FastField`) and by serde_json otherwise, chosen per field by method lookup on
    // `&&&Pick<T>` (see `Pick`). Declared meta fields arrive as raw text (the frame's `meta` may
    // come after its `payload`), each read on a cursor of its own.
    let scan_payload = {
        let slots: Vec<Ident> = (0..p_idents.len())
            .map(|i| format_ident!("__field{}", i))
            .collect();
        let read_payload = if has_payload {
            // Fields in declaration order, keys matched as literals (`"roomId":`): what
            // `JSON.stringify` writes for an object built in that order. The first mismatch (or
            // whitespace) leaves the rest to the general loop. Only names that JSON writes
            // without escapes can be matched as literals.
            let ordered: Vec<TokenStream> = payload_fields
                .iter()
                .zip(&slots)
                .take_while(|(f, _)| {
                    !f.wire
                        .chars()
                        .any(|c| c == '"' || c == '\\' || c.is_control())
                })
                .map(|(f, slot)| {
                    let literal = format!("\"{}\":", f.wire);
                    let ty = &f.ty;
                    quote! {
                        if !(__more && __s.literal_key(#literal)) {
                            break '__ws_kit_ordered;
                        }
                        #slot = ::core::option::Option::Some(
                            (&&&#ws::Pick::<#ty>::new()).scan_field(__s)?,
                        );
                        __more = __s.next_entry()?;
                    }
                })
                .collect();
            let ordered = if ordered.is_empty() {
                quote!()
            } else {
                quote!('__ws_kit_ordered: { #( #ordered )* })
            };
            quote! {
                let __s = __payload?;
                #( let mut #slots: ::core::option::Option<#p_types> = ::core::option::Option::None; )*
                let mut __more = __s.object()?;
                #ordered
                while __more {
                    match __s.key()? {
                        #(
                            #p_wires if #slots.is_none() => {
                                #slots = ::core::option::Option::Some(
                                    (&&&#ws::Pick::<#p_types>::new()).scan_field(__s)?,
                                );
                            }
                        )*
                        // Unknown or repeated keys: the full path names them.
                        _ => return ::core::option::Option::None,
                    }
                    __more = __s.next_entry()?;
                }
            }
        } else {
            // A message without payload fields takes no payload.
            quote! {
                if __payload.is_some() {
                    return ::core::option::Option::None;
                }
            }
        };
        // An absent meta key reads as `null`, as on the full path (`meta_value`).
        let read_meta = quote! {
            #(
                let #m_locals: #m_types = {
                    let __raw = __meta
                        .iter()
                        .find(|(__k, _)| *__k == #m_wires)
                        .map_or("null", |(_, __v)| *__v);
                    let mut __m = #ws::Scan::new(__raw);
                    let __v = (&&&#ws::Pick::<#m_types>::new()).scan_field(&mut __m)?;
                    if !__m.at_end() {
                        return ::core::option::Option::None;
                    }
                    __v
                };
            )*
        };
        let value = if m.unit {
            quote!(#ident)
        } else {
            quote! {
                #ident {
                    #(
                        #p_idents: match #slots {
                            ::core::option::Option::Some(__v) => __v,
                            ::core::option::Option::None => {
                                (&&&#ws::Pick::<#p_types>::new()).missing_field()?
                            }
                        },
                    )*
                    #( #m_idents: #m_locals, )*
                }
            }
        };
        quote! {
            // `&&&Pick` is the point: method lookup picks the reader by the receiver's depth.
            #[allow(clippy::needless_borrow)]
            fn scan_payload(
                __payload: ::core::option::Option<&mut #ws::Scan<'_>>,
                __meta: &[(&str, &str)],
            ) -> ::core::option::Option<Self> {
                use #ws::{PickFast as _, PickNone as _, PickSerde as _};
                let _ = __meta;
                #read_payload
                #read_meta
                ::core::option::Option::Some(#value)
            }
        }
    };

    let payload_validations =
        fields::validations(&payload_fields, &quote!("payload"), Some("payload"));
    let meta_validations = fields::validations(&meta_fields, &quote!("meta"), Some("meta"));

    let (is_rpc, reply, kind_impl) = match &m.response {
        Some(response) => (
            true,
            quote!(<Self as ::ws_kit::RpcMessage>::Response),
            quote_spanned! {response.span()=>
                impl ::ws_kit::RpcMessage for #ident {
                    type Response = #response;
                }
            },
        ),
        None => (
            false,
            quote!(()),
            quote!(impl ::ws_kit::EventMessage for #ident {}),
        ),
    };

    let describe_payload = fields::describe_fields(&payload_fields);
    let describe_meta = fields::describe_fields(&meta_fields);
    let describe_response = if m.response.is_some() {
        quote!(::core::option::Option::Some(
            <Self as ::ws_kit::RpcMessage>::__response_schema()
        ))
    } else {
        quote!(::core::option::Option::None)
    };

    let (use_read, use_write) = if meta_fields.is_empty() {
        (quote!(), quote!())
    } else {
        (
            quote!(use #ws::{PickNoRead as _, PickRead as _};),
            quote!(use #ws::{PickNoWrite as _, PickWrite as _};),
        )
    };

    quote! {
        const _: () = {
            #checks
            #shadow

            #[automatically_derived]
            impl ::ws_kit::Message for #ident {
                const TYPE: &'static str = #tag;
            }

            #[automatically_derived]
            impl #ws::Codec for #ident {
                const IS_RPC: bool = #is_rpc;
                const HAS_PAYLOAD: bool = #has_payload;
                const META_KEYS: &'static [&'static str] = &[#(#meta_keys),*];
                type Reply = #reply;

                // `&&Pick` is the point: method lookup picks the reader by the receiver's depth.
                #[allow(clippy::needless_borrow)]
                fn decode(
                    __raw_payload: ::core::option::Option<&#ws::RawValue>,
                    __meta: &[(::std::borrow::Cow<'_, str>, &#ws::RawValue)],
                ) -> ::core::result::Result<Self, ::std::vec::Vec<::ws_kit::Issue>> {
                    #use_read
                    let mut __issues = ::std::vec::Vec::new();
                    #ws::check_meta_keys(__meta, <Self as #ws::Codec>::META_KEYS, &mut __issues);
                    #decode_payload
                    #( let #m_locals = (&&#ws::Pick::<#m_types>::new()).meta_value(__meta, #m_wires, &mut __issues); )*
                    let __build = || -> ::core::option::Option<Self> {
                        #construct_bind
                        ::core::option::Option::Some(#construct)
                    };
                    match __build() {
                        ::core::option::Option::Some(__message) if __issues.is_empty() => {
                            ::core::result::Result::Ok(__message)
                        }
                        _ => ::core::result::Result::Err(__issues),
                    }
                }

                #scan_payload

                // `length` bounds are cast to `u64` whatever their type; a `u64` one is a trivial cast.
                // `&&Pick` picks the nested check by the receiver's depth.
                #[allow(trivial_numeric_casts, clippy::unnecessary_cast, clippy::needless_borrow)]
                fn validate(&self, __issues: &mut ::std::vec::Vec<::ws_kit::Issue>) {
                    #payload_validations
                    #meta_validations
                }

                #[allow(clippy::needless_borrow)]
                fn serialize_payload<__S: #ws::serde::Serializer>(
                    &self,
                    __serializer: __S,
                ) -> ::core::result::Result<__S::Ok, __S::Error> {
                    #serialize_payload
                }

                // Rule arguments are cast to `u64` / `f64` whatever their type.
                #[allow(trivial_numeric_casts, clippy::unnecessary_cast, clippy::needless_borrow)]
                fn schema() -> ::ws_kit::schema::MessageSchema {
                    ::ws_kit::schema::MessageSchema::__new(
                        #name,
                        #tag,
                        #has_payload,
                        #describe_payload,
                        #describe_meta,
                        #describe_response,
                        #ws::check_payload::<Self>,
                    )
                }

                #[allow(clippy::needless_borrow)]
                fn serialize_meta<__M: #ws::serde::ser::SerializeMap>(
                    &self,
                    __map: &mut __M,
                ) -> ::core::result::Result<(), __M::Error> {
                    #use_write
                    #( (&&#ws::Pick::<#m_types>::new()).write_entry(__map, #m_wires, &self.#m_idents)?; )*
                    ::core::result::Result::Ok(())
                }
            }

            #kind_impl
        };
    }
}
