//! How a field of a message or of a [`Payload`](derive@crate::Payload) type is read, written and
//! validated, whatever its type. The derives call these through "autoref" picks:
//! `(&&Pick::<T>::new()).read_value(..)` finds the real reader when `T` implements [`Field`],
//! and a stand-in otherwise, so a field type that cannot be read produces exactly one compile
//! error — the [`assert_field`] check at the field, in words — instead of one per use in the
//! generated code. Nested `#[validate]` rules run through [`Nested`].

use crate::error::Issue;
use crate::scan::Pick;
use crate::wire::strip_position;
use serde::Serialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

/// What the type of a message's (or payload's) field must be: readable and writable as JSON.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a field of a ws-kit message or payload",
    label = "this type cannot be read from or written to JSON",
    note = "derive `ws_kit::Payload` for a struct of your own (camelCase, strict, validated like a message); give other types (an enum, say) serde's `Serialize` and `Deserialize`"
)]
pub trait Field {}

impl<T: Serialize + DeserializeOwned> Field for T {}

/// The one check of a field's type, spanned at the field by the derives.
pub fn assert_field<T: Field>() {}

/// Reads a field's value (`T: Field`).
pub trait PickRead<T> {
    /// The next value of the map.
    fn read_value<'de, A: MapAccess<'de>>(&self, map: &mut A) -> Result<T, A::Error>;
    /// The value of an absent key: `None` for an `Option`, an error for the rest.
    fn missing_value<E: de::Error>(&self, field: &'static str) -> Result<T, E>;
    /// A declared meta field from the envelope's raw meta entries (absent reads as `null`).
    fn meta_value(
        &self,
        meta: &[(Cow<'_, str>, &RawValue)],
        key: &str,
        issues: &mut Vec<Issue>,
    ) -> Option<T>;
}

impl<T: DeserializeOwned> PickRead<T> for &Pick<T> {
    fn meta_value(
        &self,
        meta: &[(Cow<'_, str>, &RawValue)],
        key: &str,
        issues: &mut Vec<Issue>,
    ) -> Option<T> {
        let raw = meta
            .iter()
            .find(|(k, _)| k == key)
            .map_or("null", |(_, v)| v.get());
        match serde_json::from_str(raw) {
            Ok(value) => Some(value),
            Err(_) if raw == "null" => {
                issues.push(Issue::new(format!("meta.{key}"), "required"));
                None
            }
            Err(e) => {
                issues.push(Issue::new(format!("meta.{key}"), strip_position(&e)));
                None
            }
        }
    }

    #[inline]
    fn read_value<'de, A: MapAccess<'de>>(&self, map: &mut A) -> Result<T, A::Error> {
        map.next_value::<T>()
    }
    fn missing_value<E: de::Error>(&self, field: &'static str) -> Result<T, E> {
        T::deserialize(MissingField(field, PhantomData))
    }
}

/// Stands in for a type that cannot be read (compilation has already failed at the field).
pub trait PickNoRead<T> {
    /// Fails.
    fn read_value<'de, A: MapAccess<'de>>(&self, map: &mut A) -> Result<T, A::Error>;
    /// Fails.
    fn missing_value<E: de::Error>(&self, field: &'static str) -> Result<T, E>;
    /// Fails.
    fn meta_value(
        &self,
        meta: &[(Cow<'_, str>, &RawValue)],
        key: &str,
        issues: &mut Vec<Issue>,
    ) -> Option<T>;
}

impl<T> PickNoRead<T> for Pick<T> {
    fn meta_value(
        &self,
        _: &[(Cow<'_, str>, &RawValue)],
        _: &str,
        _: &mut Vec<Issue>,
    ) -> Option<T> {
        None
    }

    fn read_value<'de, A: MapAccess<'de>>(&self, _: &mut A) -> Result<T, A::Error> {
        Err(de::Error::custom("this field's type cannot be read"))
    }
    fn missing_value<E: de::Error>(&self, _: &'static str) -> Result<T, E> {
        Err(de::Error::custom("this field's type cannot be read"))
    }
}

/// Writes a field (`T: Field`).
pub trait PickWrite<T> {
    /// Writes `value` under `key`.
    fn write_field<S: SerializeStruct>(
        &self,
        s: &mut S,
        key: &'static str,
        value: &T,
    ) -> Result<(), S::Error>;
    /// Writes `value` under `key` in a map (declared meta fields).
    fn write_entry<M: SerializeMap>(
        &self,
        map: &mut M,
        key: &str,
        value: &T,
    ) -> Result<(), M::Error>;
}

impl<T: Serialize> PickWrite<T> for &Pick<T> {
    #[inline]
    fn write_field<S: SerializeStruct>(
        &self,
        s: &mut S,
        key: &'static str,
        value: &T,
    ) -> Result<(), S::Error> {
        s.serialize_field(key, value)
    }
    #[inline]
    fn write_entry<M: SerializeMap>(
        &self,
        map: &mut M,
        key: &str,
        value: &T,
    ) -> Result<(), M::Error> {
        map.serialize_entry(key, value)
    }
}

/// Stands in for a type that cannot be written (compilation has already failed at the field).
pub trait PickNoWrite<T> {
    /// Writes nothing.
    fn write_field<S: SerializeStruct>(
        &self,
        s: &mut S,
        key: &'static str,
        value: &T,
    ) -> Result<(), S::Error>;
    /// Writes nothing.
    fn write_entry<M: SerializeMap>(
        &self,
        map: &mut M,
        key: &str,
        value: &T,
    ) -> Result<(), M::Error>;
}

impl<T> PickNoWrite<T> for Pick<T> {
    fn write_field<S: SerializeStruct>(
        &self,
        _: &mut S,
        _: &'static str,
        _: &T,
    ) -> Result<(), S::Error> {
        Ok(())
    }
    fn write_entry<M: SerializeMap>(&self, _: &mut M, _: &str, _: &T) -> Result<(), M::Error> {
        Ok(())
    }
}

/// A value with `#[validate]` rules of its own: a `#[derive(Payload)]` type, or a `Vec`, `Option`,
/// `Box` or string-keyed map of them. Its issues are reported under the field's path
/// (`payload.items[2].text`).
pub trait Nested {
    /// Runs the rules, with `path` the value's own path.
    fn validate_at(&self, path: &str, issues: &mut Vec<Issue>);
}

impl<T: Nested> Nested for Vec<T> {
    fn validate_at(&self, path: &str, issues: &mut Vec<Issue>) {
        for (i, item) in self.iter().enumerate() {
            item.validate_at(&format!("{path}[{i}]"), issues);
        }
    }
}

impl<T: Nested> Nested for Option<T> {
    fn validate_at(&self, path: &str, issues: &mut Vec<Issue>) {
        if let Some(value) = self {
            value.validate_at(path, issues);
        }
    }
}

impl<T: Nested> Nested for Box<T> {
    fn validate_at(&self, path: &str, issues: &mut Vec<Issue>) {
        (**self).validate_at(path, issues);
    }
}

impl<T: Nested> Nested for BTreeMap<String, T> {
    fn validate_at(&self, path: &str, issues: &mut Vec<Issue>) {
        for (key, value) in self {
            value.validate_at(&format!("{path}.{key}"), issues);
        }
    }
}

impl<T: Nested, H> Nested for HashMap<String, T, H> {
    fn validate_at(&self, path: &str, issues: &mut Vec<Issue>) {
        for (key, value) in self {
            value.validate_at(&format!("{path}.{key}"), issues);
        }
    }
}

/// Runs a nested value's rules (`T: Nested`).
pub trait PickNested<T> {
    /// Validates `value`, the field `key` of the object at `parent`.
    fn validate_nested(&self, value: &T, parent: &str, key: &str, issues: &mut Vec<Issue>);
}

impl<T: Nested> PickNested<T> for &Pick<T> {
    #[inline]
    fn validate_nested(&self, value: &T, parent: &str, key: &str, issues: &mut Vec<Issue>) {
        value.validate_at(&format!("{parent}.{key}"), issues);
    }
}

/// A value without rules of its own: nothing to run (and no path is built).
pub trait PickFlat<T> {
    /// Does nothing.
    fn validate_nested(&self, value: &T, parent: &str, key: &str, issues: &mut Vec<Issue>);
}

impl<T> PickFlat<T> for Pick<T> {
    #[inline]
    fn validate_nested(&self, _: &T, _: &str, _: &str, _: &mut Vec<Issue>) {}
}

/// A deserializer for an absent key: an `Option` reads it as `None`, anything else fails with
/// serde's `missing field` error (as serde's derive does).
struct MissingField<E>(&'static str, PhantomData<E>);

impl<'de, E: de::Error> Deserializer<'de> for MissingField<E> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, E> {
        Err(E::missing_field(self.0))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        visitor.visit_none()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}
