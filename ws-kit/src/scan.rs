//! A strict reader for the plain shape of JSON, for the one-pass fast path (`wire::decode_direct`
//! and the payload decoders that `#[derive(Message)]` generates).
//!
//! It reads only a subset of JSON: strings without escapes, integers, `true`/`false`/`null`,
//! objects whose keys have no escapes. Everything else — an escape, a fraction in an integer
//! field, a duplicate key — makes it *decline* (`None`), and the frame takes the full path, which
//! parses with serde_json and reports every issue. Values of other field types (nested structs,
//! enums, arrays, fractions) are handed to serde_json, one value at a time, so they decode exactly
//! as the full path decodes them.
//!
//! The rule that keeps the fast path honest: whatever it accepts, serde_json accepts too, with the
//! same value. The tests below check it exhaustively on short inputs; `wire.rs` checks 40,000
//! mutated frames against the full path, and `tests/protocol.rs` whole frames over a socket.

use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// How deep a value handed to serde_json may nest before the fast path declines (serde_json's own
/// limit is 128; the full path counts the envelope's levels too).
const MAX_DEPTH: usize = 64;

/// A cursor over one frame's text.
#[derive(Debug)]
pub struct Scan<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scan<'a> {
    /// A cursor at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Scan { text, pos: 0 }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips whitespace, then consumes `byte`.
    #[inline]
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Some(())
        } else {
            None
        }
    }

    /// Skips whitespace, then consumes `literal` if the text continues with it.
    #[inline]
    fn eat_literal(&mut self, literal: &str) -> bool {
        self.skip_ws();
        self.literal_key(literal)
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos == self.text.len()
    }

    /// Consumes `null` if it comes next.
    #[inline]
    pub fn null(&mut self) -> bool {
        self.eat_literal("null")
    }

    /// A string without escapes or control characters.
    #[inline]
    pub fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let end = start + plain_len(self.text.as_bytes().get(start..)?)?;
        self.pos = end + 1;
        // Both ends sit next to an ASCII quote: always char boundaries.
        self.text.get(start..end)
    }

    /// Opens an object; `Some(true)` when an entry follows, `Some(false)` for `{}`.
    #[inline]
    pub fn object(&mut self) -> Option<bool> {
        self.eat(b'{')?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            Some(false)
        } else {
            Some(true)
        }
    }

    /// An entry's key (no escapes) and its colon.
    #[inline]
    pub fn key(&mut self) -> Option<&'a str> {
        let key = self.str()?;
        self.eat(b':')?;
        Some(key)
    }

    /// After an entry's value: `Some(true)` after a comma, `Some(false)` at the object's end.
    #[inline]
    pub fn next_entry(&mut self) -> Option<bool> {
        self.skip_ws();
        let more = match self.peek()? {
            b',' => true,
            b'}' => false,
            _ => return None,
        };
        self.pos += 1;
        Some(more)
    }

    /// A number's text, checked against JSON's grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        match bytes.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                digits(&mut i);
            }
            _ => return None,
        }
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = bytes.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = bytes.get(i) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        // A digit right after `0` (`01`) is left unread: the caller then finds no delimiter.
        self.pos = i;
        self.text.get(start..i)
    }

    /// An integer token as sign and magnitude, read in one pass; `None` for a fraction, an
    /// exponent, `-0` or a magnitude past `u64` (serde_json reads all of those as floats), and
    /// for anything that is no number.
    #[inline]
    fn integer(&mut self) -> Option<(bool, u64)> {
        self.skip_ws();
        let bytes = self.text.as_bytes();
        let mut i = self.pos;
        let negative = bytes.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let mut value = match *bytes.get(i)? {
            b'0' => 0,
            d @ b'1'..=b'9' => u64::from(d - b'0'),
            _ => return None,
        };
        i += 1;
        if value != 0 {
            while let Some(d @ b'0'..=b'9') = bytes.get(i).copied() {
                value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                i += 1;
            }
        }
        // A digit right after a leading `0` (`01`) is left unread: the caller then finds no
        // delimiter and declines.
        if matches!(bytes.get(i), Some(b'.' | b'e' | b'E')) || (negative && value == 0) {
            return None;
        }
        self.pos = i;
        Some((negative, value))
    }

    /// Consumes `literal` if the text continues with it exactly, no whitespace before. The derive
    /// passes a quoted key and its colon (`"name":`), the shape `JSON.stringify` writes.
    #[inline]
    pub fn literal_key(&mut self, literal: &str) -> bool {
        let rest = self.text.as_bytes().get(self.pos..).unwrap_or_default();
        if rest.starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            true
        } else {
            false
        }
    }

    /// The text of the next value, whatever it is. Only its extent is found here: whoever reads
    /// the text (serde_json, or this reader on a new cursor) checks it.
    pub fn raw_value(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut i = start;
        match *bytes.get(i)? {
            b'"' => i = skip_string(bytes, i + 1)?,
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *bytes.get(i)? {
                        b'"' => {
                            i = skip_string(bytes, i + 1)?;
                            continue;
                        }
                        b'{' | b'[' => {
                            depth += 1;
                            if depth > MAX_DEPTH {
                                return None;
                            }
                        }
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {
                while let Some(&b) = bytes.get(i) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    i += 1;
                }
                if i == start {
                    return None;
                }
            }
        }
        self.pos = i;
        self.text.get(start..i)
    }

    /// Reads a value of a type outside the plain subset with serde_json.
    pub fn serde_value<T: DeserializeOwned>(&mut self) -> Option<T> {
        serde_json::from_str(self.raw_value()?).ok()
    }

    /// Skips a value, checking with serde_json that it is one.
    pub fn ignore_value(&mut self) -> Option<()> {
        self.serde_value::<serde::de::IgnoredAny>().map(drop)
    }
}

/// The index of the closing quote of a string whose body starts `bytes`; `None` when an escape or
/// a control character comes first (or the string never ends).
///
/// Eight bytes at a time while eight remain (in the text, not only in the string): the first
/// special byte of a word decides, whatever follows it.
#[inline]
fn plain_len(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    /// The high bit of each byte that is `"`, `\` or below 0x20 (the has-zero-byte trick). A
    /// borrow can also mark a byte above a marked one, never below: the lowest mark is exact.
    #[inline]
    fn special(x: u64) -> u64 {
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        let quote = zero(x ^ (ONES * u64::from(b'"')));
        let backslash = zero(x ^ (ONES * u64::from(b'\\')));
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        quote | backslash | control
    }
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let marks = special(u64::from_le_bytes(word));
        if marks != 0 {
            let at = i + (marks.trailing_zeros() / 8) as usize;
            return (bytes.get(at) == Some(&b'"')).then_some(at);
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => return Some(i),
            b'\\' | 0..=0x1f => return None,
            _ => i += 1,
        }
    }
    None
}

/// Past the closing quote of a string whose body starts at `i`, escapes allowed.
fn skip_string(bytes: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match *bytes.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// A field type the scanner reads itself. Its result must equal serde_json's for every input it
/// accepts.
pub trait FastField: Sized {
    /// Reads a value; `None` declines.
    fn scan(s: &mut Scan<'_>) -> Option<Self>;
    /// The value of an absent field (`Option` fields are `None`; others decline).
    fn missing() -> Option<Self> {
        None
    }
}

impl FastField for String {
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Self> {
        s.str().map(str::to_owned)
    }
}

impl FastField for Box<str> {
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Self> {
        s.str().map(Box::from)
    }
}

impl FastField for bool {
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Self> {
        if s.eat_literal("true") {
            Some(true)
        } else if s.eat_literal("false") {
            Some(false)
        } else {
            None
        }
    }
}

/// Integers: sign and magnitude, then a range check (`-5` for a `u8` declines, as serde refuses it).
macro_rules! fast_integer {
    ($($t:ty),*) => {$(
        impl FastField for $t {
            #[inline]
            fn scan(s: &mut Scan<'_>) -> Option<Self> {
                let (negative, magnitude) = s.integer()?;
                let value = if negative {
                    -i128::from(magnitude)
                } else {
                    i128::from(magnitude)
                };
                <$t>::try_from(value).ok()
            }
        }
    )*};
}
fast_integer!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

macro_rules! fast_float {
    ($($t:ty),*) => {$(
        impl FastField for $t {
            #[inline]
            fn scan(s: &mut Scan<'_>) -> Option<Self> {
                let start = s.pos;
                // An integer token converts as serde's visitors convert it: `u64` or `i64`, then
                // `as` (one rounding, symmetric in sign). serde_json reads a negative integer
                // below `i64::MIN` as a float, so that one goes to its float parser below.
                match s.integer() {
                    Some((false, magnitude)) => return Some(magnitude as $t),
                    Some((true, magnitude)) if magnitude <= 1 << 63 => {
                        return Some(-(magnitude as $t));
                    }
                    _ => {}
                }
                // Fractions and exponents: serde_json's own float parser, on this token alone.
                s.pos = start;
                serde_json::from_str(s.number()?).ok()
            }
        }
    )*};
}
fast_float!(f32, f64);

impl<T: FastField> FastField for Option<T> {
    #[inline]
    fn scan(s: &mut Scan<'_>) -> Option<Self> {
        if s.null() {
            Some(None)
        } else {
            T::scan(s).map(Some)
        }
    }
    fn missing() -> Option<Self> {
        Some(None)
    }
}

/// Picks, for a field type, the scanner's own reader ([`FastField`]) when there is one and
/// serde_json otherwise. The derive calls `(&&&Pick::<T>::new()).scan_field(s)`: method lookup
/// tries `PickFast` (implemented on `&&Pick<T>`, needs `T: FastField`), then `PickSerde` (on
/// `&Pick<T>`, needs `T: DeserializeOwned`), then `PickNone` (on `Pick<T>`, declines). The last
/// one only serves a field that serde cannot decode either: the derive's own serde code reports
/// that error, once, at the field.
#[derive(Debug)]
pub struct Pick<T>(PhantomData<T>);

impl<T> Pick<T> {
    /// A picker for `T`.
    #[inline]
    pub fn new() -> Self {
        Pick(PhantomData)
    }
}

impl<T> Default for Pick<T> {
    fn default() -> Self {
        Pick::new()
    }
}

/// The scanner's own reader, for a [`FastField`] type.
pub trait PickFast<T> {
    /// Reads the field's value.
    fn scan_field(&self, s: &mut Scan<'_>) -> Option<T>;
    /// The value of the field when its key is absent.
    fn missing_field(&self) -> Option<T>;
}

impl<T: FastField> PickFast<T> for &&Pick<T> {
    #[inline]
    fn scan_field(&self, s: &mut Scan<'_>) -> Option<T> {
        T::scan(s)
    }
    #[inline]
    fn missing_field(&self) -> Option<T> {
        T::missing()
    }
}

/// serde_json, for every other type.
pub trait PickSerde<T> {
    /// Reads the field's value.
    fn scan_field(&self, s: &mut Scan<'_>) -> Option<T>;
    /// Declines: which types serde fills in for an absent key is the full path's business.
    fn missing_field(&self) -> Option<T>;
}

impl<T: DeserializeOwned> PickSerde<T> for &Pick<T> {
    #[inline]
    fn scan_field(&self, s: &mut Scan<'_>) -> Option<T> {
        s.serde_value()
    }
    #[inline]
    fn missing_field(&self) -> Option<T> {
        None
    }
}

/// Declines: a type neither the scanner nor serde_json can read.
pub trait PickNone<T> {
    /// Declines.
    fn scan_field(&self, s: &mut Scan<'_>) -> Option<T>;
    /// Declines.
    fn missing_field(&self) -> Option<T>;
}

impl<T> PickNone<T> for Pick<T> {
    fn scan_field(&self, _: &mut Scan<'_>) -> Option<T> {
        None
    }
    fn missing_field(&self) -> Option<T> {
        None
    }
}

#[cfg(test)]
// `&&&Pick` is the point: method lookup picks the reader by the receiver's depth.
#[allow(clippy::needless_borrow)]
mod tests {
    use super::*;

    /// Every string of length `1..=max_len` over `alphabet`.
    fn all_strings(alphabet: &[&str], max_len: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut level = vec![String::new()];
        for _ in 0..max_len {
            let mut next = Vec::new();
            for prefix in &level {
                for a in alphabet {
                    next.push(format!("{prefix}{a}"));
                }
            }
            out.extend(next.iter().cloned());
            level = next;
        }
        out
    }

    /// Reads `text` as one field value followed by the end of an object, as the derive does;
    /// twice, so that strings are read both a word at a time (padded) and byte by byte (not),
    /// and both reads must agree.
    fn fast<T: FastField + PartialEq + std::fmt::Debug>(text: &str) -> Option<T> {
        let read = |framed: &str| {
            let mut s = Scan::new(framed);
            let value = T::scan(&mut s)?;
            (!s.next_entry()? && s.at_end()).then_some(value)
        };
        let tight = read(&format!("{text}}}"));
        let padded = read(&format!("{text}}}          "));
        assert_eq!(tight, padded, "{text:?} read differently when padded");
        tight
    }

    fn serde<T: DeserializeOwned>(text: &str) -> Option<T> {
        serde_json::from_str(text).ok()
    }

    /// The rule of the fast path, over every short input: accepted means serde_json accepts it
    /// with the same value. Counts how many were accepted, so a scanner that declines everything
    /// fails too.
    fn agrees<T: FastField + DeserializeOwned + PartialEq + std::fmt::Debug>(
        inputs: &[String],
        same: impl Fn(&T, &T) -> bool,
    ) -> usize {
        let mut accepted = 0;
        for input in inputs {
            if let Some(value) = fast::<T>(input) {
                accepted += 1;
                let expected = serde::<T>(input).unwrap_or_else(|| {
                    panic!("fast path accepted {input:?}; serde_json rejects it")
                });
                assert!(
                    same(&value, &expected),
                    "{input:?}: fast path read {value:?}, serde_json {expected:?}"
                );
            }
        }
        accepted
    }

    #[test]
    fn numbers_agree_with_serde_json() {
        let inputs = all_strings(&["0", "1", "9", "-", "+", ".", "e", "E", " "], 5);
        assert!(agrees::<u64>(&inputs, |a, b| a == b) > 500);
        assert!(agrees::<i64>(&inputs, |a, b| a == b) > 650);
        assert!(agrees::<u8>(&inputs, |a, b| a == b) > 150);
        assert!(agrees::<i8>(&inputs, |a, b| a == b) > 200);
        let bits = |a: &f64, b: &f64| a.to_bits() == b.to_bits();
        assert!(agrees::<f64>(&inputs, bits) > 2000);
        let bits32 = |a: &f32, b: &f32| a.to_bits() == b.to_bits();
        assert!(agrees::<f32>(&inputs, bits32) > 2000);
    }

    #[test]
    fn integer_edges_agree_with_serde_json() {
        let edges: Vec<String> = [
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "-18446744073709551615",
            "-9223372036854775809.5",
            "255",
            "256",
            "-128",
            "-129",
            "9007199254740993",
            "16777217",
            "123456789012345678901234567890",
            "-0",
            "-0.0",
            "1e400",
            "0.1",
            "2.5e-3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        agrees::<u64>(&edges, |a, b| a == b);
        agrees::<i64>(&edges, |a, b| a == b);
        agrees::<u8>(&edges, |a, b| a == b);
        agrees::<i8>(&edges, |a, b| a == b);
        agrees::<f64>(&edges, |a, b| a.to_bits() == b.to_bits());
        agrees::<f32>(&edges, |a, b| a.to_bits() == b.to_bits());
        assert_eq!(fast::<u64>("18446744073709551615"), Some(u64::MAX));
        assert_eq!(fast::<i64>("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(fast::<f32>("16777217"), Some(16_777_216.0));
        assert_eq!(fast::<u64>("18446744073709551616"), None);
    }

    #[test]
    fn strings_agree_with_serde_json() {
        // Quotes, escapes, control characters, multi-byte text, whitespace.
        let inputs = all_strings(&["\"", "a", "\\", "\u{1}", "\t", "é", " ", "n"], 5);
        assert!(agrees::<String>(&inputs, |a, b| a == b) > 250);
        assert!(agrees::<Box<str>>(&inputs, |a, b| a == b) > 250);
        assert!(agrees::<Option<String>>(&inputs, |a, b| a == b) > 250);
        // The 8-byte steps: a special byte at every offset of a longer string.
        for special in ["\\n", "\u{1f}", "\""] {
            for at in 0..20 {
                let body = format!("{}{special}{}", "x".repeat(at), "y".repeat(20 - at));
                let text = format!("\"{body}\"");
                agrees::<String>(&[text], |a, b| a == b);
            }
        }
        assert_eq!(
            fast::<String>(&format!("\"{}\"", "é".repeat(40))),
            Some("é".repeat(40))
        );
    }

    #[test]
    fn literals_agree_with_serde_json() {
        let inputs = all_strings(&["true", "false", "null", "t", "x", " "], 3);
        assert!(agrees::<bool>(&inputs, |a, b| a == b) >= 2);
        assert!(agrees::<Option<bool>>(&inputs, |a, b| a == b) >= 3);
        assert!(agrees::<Option<u32>>(&["null".into(), "7".into()], |a, b| a == b) == 2);
    }

    #[test]
    fn other_types_go_through_serde_json_with_the_right_extent() {
        let frame = r#"{"a":[1,{"b":"}]\""}],"c":{"d":[]} , "e":"x\u0041"}"#;
        let mut s = Scan::new(frame);
        assert_eq!(s.object(), Some(true));
        assert_eq!(s.key(), Some("a"));
        let a: serde_json::Value = (&&&Pick::<serde_json::Value>::new())
            .scan_field(&mut s)
            .unwrap();
        assert_eq!(a, serde_json::json!([1, {"b": "}]\""}]));
        assert_eq!(s.next_entry(), Some(true));
        assert_eq!(s.key(), Some("c"));
        let c: std::collections::HashMap<String, Vec<u8>> =
            (&&&Pick::<std::collections::HashMap<String, Vec<u8>>>::new())
                .scan_field(&mut s)
                .unwrap();
        assert_eq!(c["d"], Vec::<u8>::new());
        assert_eq!(s.next_entry(), Some(true));
        assert_eq!(s.key(), Some("e"));
        // An escaped string is no plain `String`; serde_json reads it for a `Value`.
        assert_eq!(s.str(), None);
    }

    #[test]
    fn the_picker_prefers_the_scanner() {
        // `Pick<String>` resolves to `PickFast`: it declines an escape instead of unescaping.
        let mut s = Scan::new(r#""a\"b""#);
        assert_eq!((&&&Pick::<String>::new()).scan_field(&mut s), None);
        // `Pick<Value>` resolves to `PickSerde`: it unescapes.
        let mut s = Scan::new(r#""a\"b""#);
        assert_eq!(
            (&&&Pick::<serde_json::Value>::new()).scan_field(&mut s),
            Some(serde_json::json!("a\"b"))
        );
        assert_eq!((&&&Pick::<Option<u8>>::new()).missing_field(), Some(None));
        assert_eq!((&&&Pick::<serde_json::Value>::new()).missing_field(), None);
    }

    #[test]
    fn deep_values_are_declined() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let mut s = Scan::new(&deep);
        assert_eq!(s.serde_value::<serde_json::Value>(), None);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let mut s = Scan::new(&ok);
        assert!(s.serde_value::<serde_json::Value>().is_some());
    }
}
