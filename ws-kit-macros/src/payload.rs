//! `#[derive(Payload)]`: a struct nested inside a message's payload (a field `items: Vec<Item>`),
//! read and written as strictly as a message (camelCase by default, unknown keys rejected) and
//! validated with its own `#[validate]` rules, reported under the field's path.

use crate::errors::{Errors, unknown_key};
use crate::fields::{self, Field};
use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields};

pub(crate) fn expand(input: DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    match parse(&input, &mut errors) {
        Some(fields) if errors.is_empty() => generate(&input, &fields),
        _ => errors.to_compile_errors(),
    }
}

fn parse(input: &DeriveInput, errors: &mut Errors) -> Option<Vec<Field>> {
    let named = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => named.named.iter().collect::<Vec<_>>(),
            other => {
                errors.spanned(
                    other,
                    "`Payload` needs named fields; for other shapes derive serde's `Serialize` and `Deserialize`",
                );
                return None;
            }
        },
        Data::Enum(e) => {
            errors.spanned(
                e.enum_token,
                "`Payload` is for structs; derive serde's `Serialize` and `Deserialize` for an enum field",
            );
            return None;
        }
        Data::Union(u) => {
            errors.spanned(u.union_token, "`Payload` is for structs, not unions");
            return None;
        }
    };
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        errors.spanned(
            &input.generics,
            "`Payload` cannot be derived for generic structs; a payload has one fixed shape on the wire",
        );
    }
    let mut rename_all: Option<(String, proc_macro2::Span)> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("payload")) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename_all") {
                errors.rename_all(&meta, "payload", &mut rename_all)
            } else {
                Err(unknown_key(&meta, "payload", "`rename_all`"))
            }
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    let rule = rename_all.map_or_else(|| "camelCase".to_string(), |(rule, _)| rule);
    Some(fields::parse(&named, "payload", false, &rule, errors))
}

fn generate(input: &DeriveInput, fields: &[Field]) -> TokenStream {
    let ident = &input.ident;
    let name = ident.to_string();
    let fields: Vec<&Field> = fields.iter().collect();
    let ws = quote!(::ws_kit::__private);
    let checks = fields::checks(&fields);
    let deserialize = fields::deserialize_impl(&quote!(#ident), &name, &fields);
    let serialize = fields::serialize_body(&name, &fields);
    let validations = fields::validations(&fields, &quote!(__path), None);
    let describe = fields::describe_fields(&fields);
    quote! {
        const _: () = {
            #checks
            #deserialize

            #[automatically_derived]
            impl #ws::serde::Serialize for #ident {
                #[allow(clippy::needless_borrow)]
                fn serialize<__S: #ws::serde::Serializer>(
                    &self,
                    __serializer: __S,
                ) -> ::core::result::Result<__S::Ok, __S::Error> {
                    #serialize
                }
            }

            #[automatically_derived]
            impl ::ws_kit::schema::Describe for #ident {
                fn describe() -> ::ws_kit::schema::TypeSchema {
                    // Rule arguments are cast to `u64` / `f64` whatever their type.
                    #[allow(trivial_numeric_casts, clippy::unnecessary_cast, clippy::needless_borrow)]
                    fn fields() -> ::std::vec::Vec<::ws_kit::schema::FieldSchema> {
                        #describe
                    }
                    ::ws_kit::schema::TypeSchema::Object(::ws_kit::schema::ObjectSchema {
                        rust_name: #name,
                        path: ::std::any::type_name::<#ident>(),
                        fields,
                    })
                }
            }

            #[automatically_derived]
            impl #ws::Nested for #ident {
                // `length` bounds are cast to `u64` whatever their type; a `u64` one is a trivial cast.
                #[allow(trivial_numeric_casts, clippy::unnecessary_cast, clippy::needless_borrow)]
                fn validate_at(&self, __path: &str, __issues: &mut ::std::vec::Vec<::ws_kit::Issue>) {
                    let _ = (&__path, &__issues);
                    #validations
                }
            }
        };
    }
}
