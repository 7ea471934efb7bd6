//! The fields of a message or payload struct, shared by `#[derive(Message)]` and
//! `#[derive(Payload)]`: parsing (`rename`, `meta`, `#[validate]`), and the code that reads,
//! writes and validates them. Every use of a field's type goes through an autoref pick
//! (`ws_kit::__private::Pick`), so a type that cannot be a field is reported once, at the field,
//! by the check [`checks`] emits.

use crate::case;
use crate::errors::Errors;
use crate::validate;
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, LitStr, Type};

/// One field, as the derives see it.
pub(crate) struct Field {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
    /// The name on the wire.
    pub(crate) wire: String,
    /// `#[message(meta)]`: travels in `meta`, not in `payload`.
    pub(crate) meta: bool,
    pub(crate) rules: Vec<validate::Rule>,
}

/// Parses named fields. `attr` is the derive's own attribute (`message` or `payload`); `meta` is
/// allowed only for messages. `rule` is the container's `rename_all` rule.
pub(crate) fn parse(
    named: &[&syn::Field],
    attr: &str,
    allow_meta: bool,
    rule: &str,
    errors: &mut Errors,
) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    for field in named {
        let ident = field.ident.clone().expect("named field");
        let rust_name = ident.to_string();
        let rust_name = rust_name.strip_prefix("r#").unwrap_or(&rust_name);
        let mut wire = case::rename_field(rust_name, rule).expect("rule checked by the caller");
        let mut meta = false;
        let mut rename_seen = false;
        let mut rules = Vec::new();
        for a in &field.attrs {
            if a.path().is_ident(attr) {
                let result = a.parse_nested_meta(|m| {
                    if m.path.is_ident("rename") {
                        let lit: LitStr = m.value()?.parse()?;
                        if rename_seen {
                            return Err(m.error("duplicate `rename`"));
                        }
                        rename_seen = true;
                        wire = lit.value();
                        Ok(())
                    } else if m.path.is_ident("meta") && allow_meta {
                        if meta {
                            return Err(m.error("duplicate `meta`"));
                        }
                        meta = true;
                        Ok(())
                    } else {
                        let key = m
                            .path
                            .get_ident()
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        let expected = if allow_meta {
                            "`rename` or `meta`"
                        } else {
                            "`rename`"
                        };
                        Err(m.error(format!(
                            "unknown `{attr}` field attribute key `{key}`; expected {expected}"
                        )))
                    }
                });
                if let Err(e) = result {
                    errors.push(e);
                }
            } else if a.path().is_ident("validate") {
                rules.extend(validate::parse(a, errors));
            }
        }
        if let Some(other) = fields.iter().find(|f| f.wire == wire && f.meta == meta) {
            errors.spanned(
                &ident,
                format!(
                    "wire name `{wire}` is already used by field `{}`",
                    other.ident
                ),
            );
        }
        fields.push(Field {
            ident,
            ty: field.ty.clone(),
            wire,
            meta,
            rules,
        });
    }
    fields
}

/// One check per field type, spanned at the type: the only error a type that cannot be a field
/// produces. Inside the usual containers (`Vec<Item>`, `Option<Item>`, maps) the check is on the
/// element type, so the error names `Item`, the type to fix.
pub(crate) fn checks(fields: &[&Field]) -> TokenStream {
    let checks = fields.iter().map(|f| {
        let ty = element_type(&f.ty);
        quote_spanned!(ty.span()=> let _: fn() = ::ws_kit::__private::assert_field::<#ty>;)
    });
    quote!(const _: () = { #( #checks )* };)
}

/// `Item` for `Vec<Item>`, `Option<Vec<Item>>`, `HashMap<String, Item>`, `[Item; 3]`, `Box<Item>`;
/// the type itself otherwise.
fn element_type(ty: &Type) -> &Type {
    const CONTAINERS: [&str; 8] = [
        "Vec", "VecDeque", "Option", "Box", "HashMap", "BTreeMap", "HashSet", "BTreeSet",
    ];
    match ty {
        Type::Array(a) => element_type(&a.elem),
        Type::Slice(s) => element_type(&s.elem),
        Type::Paren(p) => element_type(&p.elem),
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return ty;
            };
            if !CONTAINERS.contains(&last.ident.to_string().as_str()) {
                return ty;
            }
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return ty;
            };
            // The last type argument: the element, or a map's value.
            match args.args.iter().rev().find_map(|a| match a {
                syn::GenericArgument::Type(t) => Some(t),
                _ => None,
            }) {
                Some(inner) => element_type(inner),
                None => ty,
            }
        }
        _ => ty,
    }
}

/// `impl Deserialize for #target`: a strict object (unknown keys, duplicates and missing
/// non-`Option` fields are serde's usual errors) whose fields are `fields`.
pub(crate) fn deserialize_impl(target: &TokenStream, name: &str, fields: &[&Field]) -> TokenStream {
    let ws = quote!(::ws_kit::__private);
    let serde = quote!(#ws::serde);
    let wires: Vec<&String> = fields.iter().map(|f| &f.wire).collect();
    let idents: Vec<&Ident> = fields.iter().map(|f| &f.ident).collect();
    let tys: Vec<&Type> = fields.iter().map(|f| &f.ty).collect();
    let slots: Vec<Ident> = (0..fields.len())
        .map(|i| format_ident!("__f{}", i))
        .collect();
    let indexes: Vec<usize> = (0..fields.len()).collect();
    let expecting = format!("struct {name}");
    quote! {
        #[automatically_derived]
        impl<'de> #serde::Deserialize<'de> for #target {
            fn deserialize<__D: #serde::Deserializer<'de>>(
                __deserializer: __D,
            ) -> ::core::result::Result<Self, __D::Error> {
                const __FIELDS: &[&str] = &[#(#wires),*];
                // The index of a field name; any other key is serde's `unknown field` error
                // (strict decoding). A `match`, which the compiler turns into length checks.
                struct __Field;
                impl<'de> #serde::de::DeserializeSeed<'de> for __Field {
                    type Value = usize;
                    #[inline]
                    fn deserialize<__D: #serde::Deserializer<'de>>(
                        self,
                        __deserializer: __D,
                    ) -> ::core::result::Result<usize, __D::Error> {
                        #serde::Deserializer::deserialize_identifier(__deserializer, self)
                    }
                }
                impl<'de> #serde::de::Visitor<'de> for __Field {
                    type Value = usize;
                    fn expecting(
                        &self,
                        __f: &mut ::core::fmt::Formatter<'_>,
                    ) -> ::core::fmt::Result {
                        __f.write_str("a field name")
                    }
                    #[inline]
                    fn visit_str<__E: #serde::de::Error>(
                        self,
                        __key: &str,
                    ) -> ::core::result::Result<usize, __E> {
                        match __key {
                            #( #wires => ::core::result::Result::Ok(#indexes), )*
                            _ => ::core::result::Result::Err(__E::unknown_field(__key, __FIELDS)),
                        }
                    }
                }
                struct __Visitor;
                #[automatically_derived]
                impl<'de> #serde::de::Visitor<'de> for __Visitor {
                    type Value = #target;

                    fn expecting(
                        &self,
                        __f: &mut ::core::fmt::Formatter<'_>,
                    ) -> ::core::fmt::Result {
                        __f.write_str(#expecting)
                    }

                    // `&&Pick` is the point: method lookup picks the reader by the receiver's depth.
                    #[allow(clippy::needless_borrow)]
                    fn visit_map<__A: #serde::de::MapAccess<'de>>(
                        self,
                        mut __map: __A,
                    ) -> ::core::result::Result<#target, __A::Error> {
                        use #ws::{PickNoRead as _, PickRead as _};
                        #( let mut #slots: ::core::option::Option<#tys> = ::core::option::Option::None; )*
                        while let ::core::option::Option::Some(__i) =
                            #serde::de::MapAccess::next_key_seed(&mut __map, __Field)?
                        {
                            match __i {
                                #(
                                    #indexes => {
                                        if #slots.is_some() {
                                            return ::core::result::Result::Err(
                                                <__A::Error as #serde::de::Error>::duplicate_field(#wires),
                                            );
                                        }
                                        #slots = ::core::option::Option::Some(
                                            (&&#ws::Pick::<#tys>::new()).read_value(&mut __map)?,
                                        );
                                    }
                                )*
                                _ => {
                                    return ::core::result::Result::Err(
                                        <__A::Error as #serde::de::Error>::custom("unexpected field index"),
                                    );
                                }
                            }
                        }
                        ::core::result::Result::Ok(#target {
                            #(
                                #idents: match #slots {
                                    ::core::option::Option::Some(__v) => __v,
                                    ::core::option::Option::None => {
                                        (&&#ws::Pick::<#tys>::new()).missing_value(#wires)?
                                    }
                                },
                            )*
                        })
                    }
                }
                #serde::Deserializer::deserialize_struct(__deserializer, #name, __FIELDS, __Visitor)
            }
        }
    }
}

/// The body of a `serialize(&self, __serializer)`: the fields as one JSON object.
pub(crate) fn serialize_body(name: &str, fields: &[&Field]) -> TokenStream {
    let ws = quote!(::ws_kit::__private);
    let serde = quote!(#ws::serde);
    let n = fields.len();
    let writes = fields.iter().map(|f| {
        let (ident, ty, wire) = (&f.ident, &f.ty, &f.wire);
        let write =
            quote!((&&#ws::Pick::<#ty>::new()).write_field(&mut __state, #wire, &self.#ident)?;);
        if is_option(ty) {
            // `None` is left out, never `null`: what a front end's optional field expects.
            quote! {
                if ::core::option::Option::is_none(&self.#ident) {
                    #serde::ser::SerializeStruct::skip_field(&mut __state, #wire)?;
                } else {
                    #write
                }
            }
        } else {
            write
        }
    });
    if fields.is_empty() {
        return quote! {
            let __state = #serde::Serializer::serialize_struct(__serializer, #name, 0)?;
            #serde::ser::SerializeStruct::end(__state)
        };
    }
    quote! {
        use #ws::{PickNoWrite as _, PickWrite as _};
        let mut __state = #serde::Serializer::serialize_struct(__serializer, #name, #n)?;
        #( #writes )*
        #serde::ser::SerializeStruct::end(__state)
    }
}

/// The `#[validate]` rules and nested checks of `fields`. `parent` is a `&str` expression: the
/// path of the object the fields belong to (`"payload"`, or a nested value's path).
pub(crate) fn validations(
    fields: &[&Field],
    parent: &TokenStream,
    literal_parent: Option<&str>,
) -> TokenStream {
    let ws = quote!(::ws_kit::__private);
    let checks = fields.iter().map(|f| {
        let (ident, ty, wire) = (&f.ident, &f.ty, &f.wire);
        let path = match literal_parent {
            Some(parent) => {
                let path = format!("{parent}.{wire}");
                quote!(#path)
            }
            None => quote!(::std::format!("{}.{}", #parent, #wire)),
        };
        let rules = validate::expand(&f.rules, quote!(self.#ident), &path);
        quote! {
            #rules
            (&&#ws::Pick::<#ty>::new()).validate_nested(&self.#ident, #parent, #wire, __issues);
        }
    });
    if fields.is_empty() {
        return quote!();
    }
    quote! {
        use #ws::{PickFlat as _, PickNested as _};
        #( #checks )*
    }
}

/// Whether a field's type is written `Option<..>` (by its last path segment).
fn is_option(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().is_some_and(|s| {
            s.ident == "Option" && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))
        }),
        _ => false,
    }
}

/// A `Vec<ws_kit::schema::FieldSchema>` expression: the fields' wire names, types and rules, for
/// generated front-end schemas. Each type is described by an autoref pick: a type ws-kit knows
/// (or a `#[derive(Payload)]` struct) by its `Describe` impl, any other as `Other`.
pub(crate) fn describe_fields(fields: &[&Field]) -> TokenStream {
    let ws = quote!(::ws_kit::__private);
    let entries = fields.iter().map(|f| {
        let ident = f.ident.to_string();
        let rust_name = ident.strip_prefix("r#").unwrap_or(&ident);
        let (ty, wire) = (&f.ty, &f.wire);
        let rules = validate::describe(&f.rules);
        quote! {
            ::ws_kit::schema::FieldSchema {
                rust_name: #rust_name,
                wire_name: #wire,
                ty: (&&#ws::Pick::<#ty>::new()).describe_type(),
                rules: ::std::vec![#(#rules),*],
            }
        }
    });
    quote! {{
        use #ws::{PickDescribe as _, PickUndescribed as _};
        ::std::vec![#(#entries),*]
    }}
}
