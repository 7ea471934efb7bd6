//! `#[validate(...)]` field constraints, checked with the `validator` crate's traits.
//!
//! Supported: `length(min, max, equal)`, `range(min, max, exclusive_min, exclusive_max)`, `email`,
//! `url`, `contains(pattern)`, `does_not_contain(pattern)`, `non_control_character`,
//! `regex(path)`, `custom(function)`. Each takes an optional `message = "..."`.

use crate::errors::Errors;
use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Expr, LitStr, meta::ParseNestedMeta};

/// One constraint on one field, ready to expand.
pub(crate) struct Rule {
    /// Tokens of a `bool` expression that is true when the value is valid; `VALUE` is `&field`.
    check: TokenStream,
    /// Tokens of a `String` expression for the default message.
    message: TokenStream,
    /// Tokens of a `ws_kit::schema::Rule` expression: the rule for generated front-end schemas.
    describe: TokenStream,
}

/// Parses one `#[validate(...)]` attribute into rules.
pub(crate) fn parse(attr: &syn::Attribute, errors: &mut Errors) -> Vec<Rule> {
    let mut rules = Vec::new();
    let result = attr.parse_nested_meta(|meta| {
        let name = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        let v = quote!(__value);
        let mut span = meta.path.span();
        let p = quote!(::ws_kit::__private::validator);
        let r = quote!(::ws_kit::schema::Rule);
        let rule = match name.as_str() {
            "length" => {
                let args = Args::parse(&meta, &["min", "max", "equal"])?;
                let [min, max, equal] = [args.opt("min"), args.opt("max"), args.opt("equal")];
                let message = match (args.get("min"), args.get("max"), args.get("equal")) {
                    (_, _, Some(eq)) => quote!(::std::format!("length must be exactly {}", #eq)),
                    (Some(lo), Some(hi), None) => {
                        quote!(::std::format!("length must be between {} and {}", #lo, #hi))
                    }
                    (Some(lo), None, None) => quote!(::std::format!("length must be at least {}", #lo)),
                    (None, Some(hi), None) => quote!(::std::format!("length must be at most {}", #hi)),
                    (None, None, None) => {
                        return Err(meta.error("`length` needs `min`, `max` or `equal`"));
                    }
                };
                Rule {
                    check: quote!(#p::ValidateLength::<u64>::validate_length(#v, #min, #max, #equal)),
                    message: args.message_or(message),
                    describe: quote!(#r::Length { min: #min, max: #max, equal: #equal }),
                }
            }
            "range" => {
                let keys = ["min", "max", "exclusive_min", "exclusive_max"];
                let args = Args::parse(&meta, &keys)?;
                let opts = keys.map(|k| args.opt_raw(k));
                let [min, max, xmin, xmax] = &opts;
                let mut parts = Vec::new();
                if let Some(e) = args.get("min") {
                    parts.push(quote!(::std::format!("at least {}", #e)));
                }
                if let Some(e) = args.get("exclusive_min") {
                    parts.push(quote!(::std::format!("greater than {}", #e)));
                }
                if let Some(e) = args.get("max") {
                    parts.push(quote!(::std::format!("at most {}", #e)));
                }
                if let Some(e) = args.get("exclusive_max") {
                    parts.push(quote!(::std::format!("less than {}", #e)));
                }
                if parts.is_empty() {
                    return Err(meta.error("`range` needs at least one of `min`, `max`, `exclusive_min`, `exclusive_max`"));
                }
                let message = quote!(::std::format!("must be {}", [#(#parts),*].join(" and ")));
                let [dmin, dmax, dxmin, dxmax] = keys.map(|k| args.opt_f64(k));
                Rule {
                    check: quote!(#p::ValidateRange::validate_range(#v, #min, #max, #xmin, #xmax)),
                    message: args.message_or(message),
                    describe: quote!(#r::Range {
                        min: #dmin,
                        max: #dmax,
                        exclusive_min: #dxmin,
                        exclusive_max: #dxmax,
                    }),
                }
            }
            "email" | "url" | "non_control_character" => {
                let args = Args::parse(&meta, &[])?;
                let (check, text, describe) = match name.as_str() {
                    "email" => (quote!(#p::ValidateEmail::validate_email(#v)), "must be a valid email address", quote!(#r::Email)),
                    "url" => (quote!(#p::ValidateUrl::validate_url(#v)), "must be a valid URL", quote!(#r::Url)),
                    _ => (
                        quote!(#p::ValidateNonControlCharacter::validate_non_control_character(#v)),
                        "must not contain control characters",
                        quote!(#r::NonControlCharacter),
                    ),
                };
                Rule {
                    check,
                    message: args.message_or(quote!(::std::string::String::from(#text))),
                    describe,
                }
            }
            "contains" | "does_not_contain" => {
                let args = Args::parse(&meta, &["pattern"])?;
                let Some(pattern) = args.get("pattern") else {
                    return Err(meta.error(format!("`{name}` needs `pattern = \"...\"`")));
                };
                let (check, text, describe) = if name == "contains" {
                    (
                        quote!(#p::ValidateContains::validate_contains(#v, #pattern)),
                        "must contain",
                        quote!(#r::Contains(::std::string::ToString::to_string(&#pattern))),
                    )
                } else {
                    (
                        quote!(#p::ValidateDoesNotContain::validate_does_not_contain(#v, #pattern)),
                        "must not contain",
                        quote!(#r::DoesNotContain(::std::string::ToString::to_string(&#pattern))),
                    )
                };
                Rule {
                    check,
                    message: args.message_or(quote!(::std::format!("{} `{}`", #text, #pattern))),
                    describe,
                }
            }
            "regex" => {
                let args = Args::parse(&meta, &["path"])?;
                let Some(path) = args.get("path") else {
                    return Err(meta.error("`regex` needs `path = ...` naming a regex"));
                };
                Rule {
                    check: quote!(#p::ValidateRegex::validate_regex(#v, &#path)),
                    message: args.message_or(quote!(::std::string::String::from("does not match the expected pattern"))),
                    describe: quote!(#r::Regex(::std::string::ToString::to_string(
                        #p::AsRegex::as_regex(&&#path).as_str()
                    ))),
                }
            }
            "custom" => {
                let args = Args::parse(&meta, &["function"])?;
                let Some(function) = args.get("function") else {
                    return Err(meta.error("`custom` needs `function = path::to::fn`"));
                };
                span = function.span();
                let function = match function {
                    Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => {
                        let path: syn::Path = s.parse()?;
                        quote!(#path)
                    }
                    other => quote!(#other),
                };
                let function_text = function.to_string().replace(' ', "");
                // A custom check returns `Result<(), E: Display>`; its error text is the message.
                Rule {
                    check: quote!(match ::ws_kit::__private::custom_error(#function(#v)) {
                        ::core::option::Option::Some(__m) => {
                            __issue_message = ::core::option::Option::Some(__m);
                            false
                        }
                        ::core::option::Option::None => true,
                    }),
                    message: args.message_or(quote!(::std::string::String::from("is invalid"))),
                    describe: quote!(#r::Custom(#function_text)),
                }
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown validation `{name}`; expected one of `length`, `range`, `email`, `url`, `contains`, `does_not_contain`, `non_control_character`, `regex`, `custom`"
                )));
            }
        };
        rules.push(Rule {
            check: respan(rule.check, span),
            message: rule.message,
            describe: rule.describe,
        });
        Ok(())
    });
    if let Err(e) = result {
        errors.push(e);
    }
    rules
}

/// Re-spans generated tokens at the rule's name, so a type error (say `length` on a number)
/// points at the rule the user wrote.
fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tt = proc_macro2::TokenTree::Group(group);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

/// The rules of one field as `ws_kit::schema::RuleSchema` expressions.
pub(crate) fn describe(rules: &[Rule]) -> Vec<TokenStream> {
    rules
        .iter()
        .map(
            |Rule {
                 message, describe, ..
             }| {
                quote!(::ws_kit::schema::RuleSchema { rule: #describe, message: #message })
            },
        )
        .collect()
}

/// Expands the rules of one field into statements that push issues. `wire_path` is an expression
/// of the field's path, evaluated only when a rule fails.
pub(crate) fn expand(rules: &[Rule], access: TokenStream, wire_path: &TokenStream) -> TokenStream {
    let checks = rules.iter().map(|Rule { check, message, .. }| {
        quote! {
            {
                let __value = &#access;
                let mut __issue_message: ::core::option::Option<::std::string::String> = ::core::option::Option::None;
                if !(#check) {
                    let __text = __issue_message.take().unwrap_or_else(|| #message);
                    __issues.push(::ws_kit::Issue::new(#wire_path, __text));
                }
            }
        }
    });
    quote!(#(#checks)*)
}

/// `key = expr` arguments of one validation, plus an optional `message = "..."`.
struct Args {
    values: Vec<(String, Expr)>,
    message: Option<LitStr>,
}

impl Args {
    fn parse(meta: &ParseNestedMeta, allowed: &[&str]) -> syn::Result<Self> {
        let mut args = Args {
            values: Vec::new(),
            message: None,
        };
        if !meta.input.peek(syn::token::Paren) {
            return Ok(args);
        }
        meta.parse_nested_meta(|inner| {
            let key = inner
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            if key == "message" {
                args.message = Some(inner.value()?.parse()?);
            } else if allowed.contains(&key.as_str()) {
                if args.values.iter().any(|(k, _)| *k == key) {
                    return Err(inner.error(format!("duplicate `{key}`")));
                }
                args.values.push((key, inner.value()?.parse()?));
            } else {
                let expected = if allowed.is_empty() {
                    "only `message`".to_string()
                } else {
                    allowed
                        .iter()
                        .map(|a| format!("`{a}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + " or `message`"
                };
                return Err(inner.error(format!("unknown argument `{key}`; expected {expected}")));
            }
            Ok(())
        })?;
        Ok(args)
    }

    fn get(&self, key: &str) -> Option<&Expr> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    /// `Some(expr as u64)` or `None`, for `length`.
    fn opt(&self, key: &str) -> TokenStream {
        match self.get(key) {
            Some(e) => quote!(::core::option::Option::Some((#e) as u64)),
            None => quote!(::core::option::Option::None),
        }
    }

    /// `Some(expr as f64)` or `None`: a `range` bound for the schema.
    fn opt_f64(&self, key: &str) -> TokenStream {
        match self.get(key) {
            Some(e) => quote!(::core::option::Option::Some((#e) as f64)),
            None => quote!(::core::option::Option::None),
        }
    }

    /// `Some(expr)` or `None`, letting the field type decide (for `range`).
    fn opt_raw(&self, key: &str) -> TokenStream {
        match self.get(key) {
            Some(e) => quote!(::core::option::Option::Some(#e)),
            None => quote!(::core::option::Option::None),
        }
    }

    fn message_or(&self, default: TokenStream) -> TokenStream {
        match &self.message {
            Some(m) => quote!(::std::string::String::from(#m)),
            None => default,
        }
    }
}
