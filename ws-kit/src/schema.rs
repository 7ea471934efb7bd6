//! The shape of a message as its derive sees it: wire names, field types, `#[validate]` rules,
//! meta fields and the response an RPC binds. [`MessageSchema::of`] reads it from any
//! `#[derive(Message)]` type; [`typescript`](crate::typescript) turns it into zod schemas, and
//! [`MessageSchema::check_payload`] runs the server's own decoder on a payload, so the two can be
//! compared.
//!
//! ```
//! use ws_kit::Message;
//! use ws_kit::schema::{MessageSchema, TypeSchema};
//!
//! #[derive(Message)]
//! struct JoinRoom {
//!     #[validate(length(min = 1, max = 20))]
//!     username: String,
//!     room_id: Option<u32>,
//! }
//!
//! let schema = MessageSchema::of::<JoinRoom>();
//! assert_eq!(schema.tag, "JOIN_ROOM");
//! assert_eq!(schema.payload[1].wire_name, "roomId");
//! assert!(matches!(schema.payload[1].ty, TypeSchema::Optional(_)));
//! assert!(schema.check_payload(Some(r#"{"username":""}"#)).is_err()); // too short
//! ```

use crate::error::Issue;
use crate::scan::Pick;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// A message's schema: what the derive knows of it.
#[derive(Clone, Debug)]
pub struct MessageSchema {
    /// The Rust struct's name (`JoinRoom`).
    pub rust_name: &'static str,
    /// The wire type tag (`JOIN_ROOM`).
    pub tag: &'static str,
    /// Whether the message has payload fields; without them it takes no `payload` key at all.
    pub has_payload: bool,
    /// The payload's fields, in declaration order.
    pub payload: Vec<FieldSchema>,
    /// The fields declared with `#[message(meta)]`, which travel in `meta`.
    pub meta: Vec<FieldSchema>,
    /// For a request (`#[rpc(response = T)]`), the response's schema.
    pub response: Option<Box<MessageSchema>>,
    check: fn(Option<&RawValue>) -> Result<(), Vec<Issue>>,
}

impl MessageSchema {
    /// Assembles a schema; called by the derive's expansion.
    #[doc(hidden)]
    pub fn __new(
        rust_name: &'static str,
        tag: &'static str,
        has_payload: bool,
        payload: Vec<FieldSchema>,
        meta: Vec<FieldSchema>,
        response: Option<MessageSchema>,
        check: fn(Option<&RawValue>) -> Result<(), Vec<Issue>>,
    ) -> Self {
        MessageSchema {
            rust_name,
            tag,
            has_payload,
            payload,
            meta,
            response: response.map(Box::new),
            check,
        }
    }

    /// Decodes and validates `payload` (JSON text; `None` for a frame without one) exactly as
    /// the server does for this message, with no meta: `Err` holds the issues the server would
    /// answer with `INVALID_ARGUMENT`. Text that is not JSON is one issue at `payload`.
    pub fn check_payload(&self, payload: Option<&str>) -> Result<(), Vec<Issue>> {
        let raw = match payload.map(serde_json::from_str::<&RawValue>) {
            None => None,
            Some(Ok(raw)) => Some(raw),
            Some(Err(e)) => return Err(vec![Issue::new("payload", e.to_string())]),
        };
        (self.check)(raw)
    }
}

/// One field of a message or of a nested `#[derive(Payload)]` struct.
#[derive(Clone, Debug)]
pub struct FieldSchema {
    /// The Rust field's name.
    pub rust_name: &'static str,
    /// Its name on the wire (`roomId`).
    pub wire_name: &'static str,
    /// Its type.
    pub ty: TypeSchema,
    /// Its `#[validate]` rules, in order.
    pub rules: Vec<RuleSchema>,
}

/// A field's type, as far as the wire is concerned.
#[derive(Clone, Debug)]
pub enum TypeSchema {
    /// `String`, `Box<str>`, `Arc<str>`, `char` (one character).
    String {
        /// Exactly one character (`char`).
        one_char: bool,
    },
    /// `bool`.
    Bool,
    /// A Rust integer type and the range it holds.
    Integer {
        /// `u32`, `i64`, ...
        rust: &'static str,
        /// Its smallest value.
        min: i128,
        /// Its largest value.
        max: i128,
    },
    /// `f32` or `f64`.
    Float {
        /// `f32` or `f64`.
        rust: &'static str,
    },
    /// `uuid::Uuid`: a string in any form `Uuid::parse_str` reads.
    Uuid,
    /// `serde_json::Value`: any JSON value, but present.
    Json,
    /// `Option<T>`: absent, `null`, or a `T`.
    Optional(Box<TypeSchema>),
    /// `Vec<T>`, `VecDeque<T>`, sets: a JSON array.
    List(Box<TypeSchema>),
    /// A map with string keys: a JSON object whose values are `T`.
    Map(Box<TypeSchema>),
    /// A `#[derive(Payload)]` struct.
    Object(ObjectSchema),
    /// Any other serde type (an enum, say): its wire shape is serde's, unknown to the derive.
    Other {
        /// The Rust type's name.
        rust: &'static str,
    },
}

/// A `#[derive(Payload)]` struct nested in a message.
#[derive(Clone, Debug)]
pub struct ObjectSchema {
    /// The struct's name (`Item`).
    pub rust_name: &'static str,
    /// Its full path (`std::any::type_name`), which tells two structs of one name apart.
    pub path: &'static str,
    /// Its fields; a function, so a struct that contains itself has a finite schema.
    pub fields: fn() -> Vec<FieldSchema>,
}

/// One `#[validate]` rule with the message the server answers when it fails.
#[derive(Clone, Debug)]
pub struct RuleSchema {
    /// The rule.
    pub rule: Rule,
    /// The issue's message (the rule's `message = ".."`, or its default).
    pub message: String,
}

/// A `#[validate]` rule with its arguments evaluated.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// `length`: characters of a string, items of a list, entries of a map.
    Length {
        /// `min`.
        min: Option<u64>,
        /// `max`.
        max: Option<u64>,
        /// `equal`.
        equal: Option<u64>,
    },
    /// `range` on a number.
    Range {
        /// `min` (inclusive).
        min: Option<f64>,
        /// `max` (inclusive).
        max: Option<f64>,
        /// `exclusive_min`.
        exclusive_min: Option<f64>,
        /// `exclusive_max`.
        exclusive_max: Option<f64>,
    },
    /// `email`, as the `validator` crate checks it.
    Email,
    /// `url`: what `url::Url::parse` accepts (the WHATWG URL standard).
    Url,
    /// `contains(pattern)`.
    Contains(String),
    /// `does_not_contain(pattern)`.
    DoesNotContain(String),
    /// `non_control_character`: no character of the Unicode category Cc.
    NonControlCharacter,
    /// `regex(path)`: the pattern's text, in the `regex` crate's syntax.
    Regex(String),
    /// `custom(function)`: the function's path; it runs only on the server.
    Custom(&'static str),
}

/// A type the derive can describe. Implemented for the field types ws-kit knows and by
/// `#[derive(Payload)]`; any other field type is [`TypeSchema::Other`].
pub trait Describe {
    /// The type's schema.
    fn describe() -> TypeSchema;
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl Describe for $t {
            fn describe() -> TypeSchema {
                TypeSchema::Integer {
                    rust: stringify!($t),
                    min: <$t>::MIN as i128,
                    max: <$t>::MAX as i128,
                }
            }
        }
    )*};
}
integers!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl Describe for f32 {
    fn describe() -> TypeSchema {
        TypeSchema::Float { rust: "f32" }
    }
}

impl Describe for f64 {
    fn describe() -> TypeSchema {
        TypeSchema::Float { rust: "f64" }
    }
}

impl Describe for bool {
    fn describe() -> TypeSchema {
        TypeSchema::Bool
    }
}

impl Describe for char {
    fn describe() -> TypeSchema {
        TypeSchema::String { one_char: true }
    }
}

macro_rules! strings {
    ($($t:ty),*) => {$(
        impl Describe for $t {
            fn describe() -> TypeSchema {
                TypeSchema::String { one_char: false }
            }
        }
    )*};
}
strings!(String, Box<str>, Arc<str>);

impl Describe for uuid::Uuid {
    fn describe() -> TypeSchema {
        TypeSchema::Uuid
    }
}

impl Describe for serde_json::Value {
    fn describe() -> TypeSchema {
        TypeSchema::Json
    }
}

impl<T: Describe> Describe for Option<T> {
    fn describe() -> TypeSchema {
        TypeSchema::Optional(Box::new(T::describe()))
    }
}

impl<T: Describe> Describe for Box<T> {
    fn describe() -> TypeSchema {
        T::describe()
    }
}

macro_rules! lists {
    ($($t:ident),*) => {$(
        impl<T: Describe> Describe for $t<T> {
            fn describe() -> TypeSchema {
                TypeSchema::List(Box::new(T::describe()))
            }
        }
    )*};
}
lists!(Vec, VecDeque, BTreeSet);

impl<T: Describe, H> Describe for HashSet<T, H> {
    fn describe() -> TypeSchema {
        TypeSchema::List(Box::new(T::describe()))
    }
}

impl<T: Describe> Describe for BTreeMap<String, T> {
    fn describe() -> TypeSchema {
        TypeSchema::Map(Box::new(T::describe()))
    }
}

impl<T: Describe, H> Describe for HashMap<String, T, H> {
    fn describe() -> TypeSchema {
        TypeSchema::Map(Box::new(T::describe()))
    }
}

/// The derive's pick for a field type that implements [`Describe`].
#[doc(hidden)]
pub trait PickDescribe {
    fn describe_type(&self) -> TypeSchema;
}

impl<T: Describe> PickDescribe for &Pick<T> {
    fn describe_type(&self) -> TypeSchema {
        T::describe()
    }
}

/// The derive's pick for any other field type.
#[doc(hidden)]
pub trait PickUndescribed {
    fn describe_type(&self) -> TypeSchema;
}

impl<T> PickUndescribed for Pick<T> {
    fn describe_type(&self) -> TypeSchema {
        TypeSchema::Other {
            rust: std::any::type_name::<T>(),
        }
    }
}
