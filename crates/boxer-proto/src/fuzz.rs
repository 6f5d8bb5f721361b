//! Arbitrary values of any serde type, built from fuzz input (feature
//! `fuzz`: test support, never in a production build).
//!
//! Random bytes fed to a decoder are mostly garbage that fails at the first
//! byte; the property `decode(encode(x)) == x` needs well-formed values of
//! every shape. Rather than derive a generator beside every message (and keep
//! the derives in step with the messages), [`Input`] drives a type's own
//! `Deserialize` from raw bytes: each byte picks a variant, a length, a number
//! or a character. Every message, and every variant added later, is generated
//! without a line here, and a fuzzer that mutates the bytes mutates the
//! message. When the bytes run out every choice is zero (the first variant,
//! empty collections, `None`), so generation always ends.
//!
//! The format is not self-describing (`deserialize_any` fails), like postcard,
//! so every type that postcard carries can be generated; it says it is not
//! human-readable, as postcard does, so addresses and networks take their
//! compact forms. Types whose `Deserialize` validates (an [`ipnet::Ipv4Net`]
//! with a prefix above 32) fail for some inputs: [`arbitrary`] then gives
//! `None` and the fuzz target skips that input.
//!
//! The fuzz targets and how to run them longer: docs/security.md.

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

/// How long each fuzz target runs under `cargo test` unless the environment
/// says otherwise: thousands of inputs per target in a debug build, and a few
/// seconds for the whole set on two cores. `BOLERO_RANDOM_TEST_TIME_MS`
/// overrides it; `BOLERO_RANDOM_ITERATIONS` alone runs that many inputs
/// however long they take.
pub fn test_time() -> Duration {
    if std::env::var_os("BOLERO_RANDOM_ITERATIONS").is_some() {
        // Bolero treats `Duration::MAX` as "no time limit".
        Duration::MAX
    } else {
        Duration::from_millis(400)
    }
}

/// A value of type `T` built from `data`, or `None` when `T`'s own checks
/// refuse what the bytes chose.
pub fn arbitrary<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    Input::new(data).arbitrary()
}

/// Integers at the edges of the integer types, where arithmetic overflows and
/// limits are off by one. Truncated to a narrower type, they are its edges too.
const EDGES: [u64; 16] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    i64::MAX as u64,
    i64::MIN as u64,
    u64::MAX,
];

/// Characters of names, addresses and specs, and the odd ones parsers trip on.
const ALPHABET: &[u8] = b"abcdenorwz-0123456789.:=@/_ ABZ\0\n\t\"\\%[]";

/// Pieces of Boxer names and addresses, so that strings get past a parser's
/// first check more often than random characters would.
const TOKENS: [&str; 16] = [
    "web",
    "db",
    "node",
    "-0",
    "-1",
    "demo",
    ".boxer",
    ":",
    "=",
    "127.0.0.1",
    "[::1]",
    "65535",
    "0",
    "..",
    "/",
    "\u{e9}",
];

/// Fuzz input being turned into values.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Input reading `data` from the start.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been used.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes not used yet.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }

    /// A value of type `T`; `None` when `T`'s own checks refuse it.
    pub fn arbitrary<T: DeserializeOwned>(&mut self) -> Option<T> {
        T::deserialize(&mut *self).ok()
    }

    /// The next byte; 0 once the input is used up.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Up to `n` next bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A collection length: mostly below 8, sometimes up to 300, past the
    /// 256-entry limits of the control messages.
    pub fn length(&mut self) -> usize {
        match self.byte() {
            b @ 0..0xf0 => usize::from(b % 8),
            b => usize::from(b - 0xf0) * 20,
        }
    }

    /// An integer of `width` bytes (zero-extended): small, an edge, or any.
    pub fn number(&mut self, width: usize) -> u64 {
        let pick = self.byte();
        match pick % 4 {
            0 => u64::from(pick >> 2),
            1 => EDGES[usize::from(pick >> 2) % EDGES.len()],
            _ => {
                let mut le = [0u8; 8];
                for b in le.iter_mut().take(width) {
                    *b = self.byte();
                }
                u64::from_le_bytes(le)
            }
        }
    }

    /// Any character, mostly from [`ALPHABET`].
    pub fn char(&mut self) -> char {
        match self.byte() {
            b @ 0..0xf0 => char::from(ALPHABET[usize::from(b) % ALPHABET.len()]),
            _ => self.unicode(),
        }
    }

    fn unicode(&mut self) -> char {
        let code = u32::from_le_bytes([self.byte(), self.byte(), self.byte() % 0x11, 0]);
        char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
    }

    /// A string of [`Input::length`] pieces: characters and [`TOKENS`].
    pub fn string(&mut self) -> String {
        let pieces = self.length();
        let mut s = String::new();
        for _ in 0..pieces {
            match self.byte() {
                b @ 0..0xd0 => s.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()])),
                b @ 0xd0..0xf0 => s.push_str(TOKENS[usize::from(b) % TOKENS.len()]),
                _ => s.push(self.unicode()),
            }
        }
        s
    }
}

/// Why a value could not be built: the type refused what the input chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl<'de> de::Deserializer<'de> for &mut Input<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom("fuzz input is not self-describing"))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bool(self.byte() & 1 == 1)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i8(self.byte() as i8)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i16(self.number(2) as i16)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i32(self.number(4) as i32)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(self.number(8) as i64)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(self.byte())
    }

    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u16(self.number(2) as u16)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u32(self.number(4) as u32)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(self.number(8))
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f32(f32::from_bits(self.number(4) as u32))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(f64::from_bits(self.number(8)))
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_char(self.char())
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_string(self.string())
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_string(self.string())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let n = self.length();
        v.visit_byte_buf(self.bytes(n).to_vec())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        if self.byte() & 1 == 1 { v.visit_some(self) } else { v.visit_none() }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let left = self.length();
        v.visit_seq(Seq { input: self, left })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        v.visit_seq(Seq { input: self, left: len })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, len: usize, v: V) -> Result<V::Value, Error> {
        v.visit_seq(Seq { input: self, left: len })
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let left = self.length();
        v.visit_map(Seq { input: self, left })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_seq(Seq { input: self, left: fields.len() })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        if variants.is_empty() {
            return Err(de::Error::custom("an enum without variants has no value"));
        }
        let variant = usize::from(self.byte()) % variants.len();
        v.visit_enum(Enum { input: self, variant: variant as u32 })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u32(u32::from(self.byte()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, tuple, struct or map.
struct Seq<'s, 'a> {
    input: &'s mut Input<'a>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Seq<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.input).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Seq<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.input).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.input)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// An enum whose variant the input has picked.
struct Enum<'s, 'a> {
    input: &'s mut Input<'a>,
    variant: u32,
}

impl<'de> de::EnumAccess<'de> for Enum<'_, '_> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let index: de::value::U32Deserializer<Error> = self.variant.into_deserializer();
        Ok((seed.deserialize(index)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for Enum<'_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(&mut *self.input)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        v.visit_seq(Seq { input: self.input, left: len })
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value, Error> {
        v.visit_seq(Seq { input: self.input, left: fields.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{NodeMessage, Request, ServerMessage};

    #[test]
    fn every_variant_is_reached_and_empty_input_is_the_first() {
        assert_eq!(arbitrary::<NodeMessage>(&[]), Some(NodeMessage::Listening(vec![])));
        let mut seen = std::collections::HashSet::new();
        for tag in 0..=255u8 {
            if let Some(m) = arbitrary::<ServerMessage>(&[tag, 1, 2, 3]) {
                seen.insert(std::mem::discriminant(&m));
            }
        }
        assert_eq!(seen.len(), 15, "every ServerMessage variant");
        // Bytes past the first choice shape the value.
        let a = arbitrary::<Request>(&[0, 3, 0xe0, b'x', 7]);
        let b = arbitrary::<Request>(&[0, 3, 0xe1, b'x', 7]);
        assert!(a.is_some() && a != b);
    }
}
