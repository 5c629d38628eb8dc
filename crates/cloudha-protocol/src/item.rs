//! Decoding one item of a batch (a command or an answer) the fast way, true to serde's derive.
//!
//! The enums derive `Deserialize` (internally tagged by `type`), and serde's derive buffers the
//! whole item before it reads the payload. The codec reads our own encoding, which writes the tag
//! first (`{"type":"ping",...`), directly: the tag from the text, then the payload struct from the
//! same parser, with no buffer. Everything that makes the derive refuse an item is refused here
//! too:
//! - a second `type` key ([`PayloadError::DuplicateType`]);
//! - an ignored value (an unknown field, at any depth) that serde_json cannot read as a value:
//!   numbers out of `f64` range, lone surrogate escapes, nesting past the recursion limit. The
//!   derive buffers every value, so it reads them; here they are read the same way
//!   ([`StrictIgnore`]) instead of being skipped.
//!
//! Anything else (the tag not first, the sequence form `["ping",7]`, an item the direct read
//! refuses) is left to the derive itself, so both agree there by construction. A property test
//! (`tests/agreement/`) checks the claim on generated and mutated items.

use std::cell::Cell;
use std::fmt;

use serde::de::value::{BorrowedStrDeserializer, StrDeserializer, StringDeserializer};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde::{Deserialize, forward_to_deserialize_any};

/// The tag key.
const TAG: &str = "type";

/// The tag of an item that starts with it, as we encode it: `{"type":"<tag>"` with no escape
/// in the tag and no whitespace. `None` for any other shape.
pub(crate) fn leading_tag(raw: &str) -> Option<&str> {
    let rest = raw.strip_prefix(r#"{"type":""#)?;
    let end = rest.find('"')?;
    let tag = &rest[..end];
    (!tag.contains('\\')).then_some(tag)
}

/// Why the direct read of a payload failed.
#[derive(Debug)]
pub(crate) enum PayloadError {
    /// The item has a second `type` key.
    DuplicateType,
    /// Anything else: serde's derive decides whether it is really an error.
    Json(serde_json::Error),
}

/// Reads the payload struct `P` of an item that starts with its tag ([`leading_tag`]), skipping
/// that first `type` key and refusing a second one.
pub(crate) fn payload<'de, P: Deserialize<'de>>(raw: &'de str) -> Result<P, PayloadError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(raw);
    let read = P::deserialize(TaggedPayload {
        de: &mut de,
        duplicate: &duplicate,
    })
    .and_then(|p| de.end().map(|()| p));
    read.map_err(|e| {
        if duplicate.get() {
            PayloadError::DuplicateType
        } else {
            PayloadError::Json(e)
        }
    })
}

/// What a scan of an item the derive refused found about its tags.
#[derive(Debug, Default)]
pub(crate) struct TagScan {
    /// The first tag, when it is a string.
    pub(crate) first: Option<String>,
    /// Whether a second `type` key follows it.
    pub(crate) duplicate: bool,
}

/// Finds the tags of an item, as far as its text can be read (for error reports only).
pub(crate) fn scan_tags(raw: &str) -> TagScan {
    let found = std::cell::RefCell::new(TagScan::default());
    let _ = serde_json::Deserializer::from_str(raw).deserialize_any(TagScanVisitor(&found));
    found.into_inner()
}

struct TagScanVisitor<'a>(&'a std::cell::RefCell<TagScan>);

impl<'de> Visitor<'de> for TagScanVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<KeyText<'de>>()? {
            if key.0 != TAG {
                map.next_value::<IgnoredAny>()?;
            } else if seen {
                self.0.borrow_mut().duplicate = true;
                return Ok(());
            } else {
                seen = true;
                let tag = map.next_value::<KeyText<'de>>()?;
                self.0.borrow_mut().first = Some(tag.0.into_owned());
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(tag) = seq.next_element::<KeyText<'de>>()? {
            self.0.borrow_mut().first = Some(tag.0.into_owned());
        }
        Ok(())
    }
}

/// A string, borrowed when it has no escape.
struct KeyText<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyText(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyText(v.to_owned().into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// The item as the payload struct sees it: its map without the `type` key.
struct TaggedPayload<'a, 'de> {
    de: &'a mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
    duplicate: &'a Cell<bool>,
}

impl<'de> Deserializer<'de> for TaggedPayload<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_map(TagSkipping {
            visitor,
            duplicate: self.duplicate,
        })
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

struct TagSkipping<'a, V> {
    visitor: V,
    duplicate: &'a Cell<bool>,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for TagSkipping<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(TagSkippingMap {
            map,
            seen: false,
            duplicate: self.duplicate,
        })
    }
}

struct TagSkippingMap<'a, A> {
    map: A,
    seen: bool,
    duplicate: &'a Cell<bool>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for TagSkippingMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        mut seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.map.next_key_seed(KeyOrTag(seed))? {
                None => return Ok(None),
                Some(KeyOr::Key(k)) => return Ok(Some(k)),
                Some(KeyOr::Tag(s)) => {
                    if self.seen {
                        self.duplicate.set(true);
                        return Err(de::Error::duplicate_field(TAG));
                    }
                    self.seen = true;
                    // The leading tag, already read from the text by `leading_tag`.
                    self.map.next_value::<IgnoredAny>()?;
                    seed = s;
                }
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.map.next_value_seed(Strict(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

enum KeyOr<T, K> {
    Key(T),
    Tag(K),
}

/// A key seed that hands the `type` key back instead of passing it to the payload.
struct KeyOrTag<K>(K);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeyOrTag<K> {
    type Value = KeyOr<K::Value, K>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeyOrTag<K> {
    type Value = KeyOr<K::Value, K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        if v == TAG {
            return Ok(KeyOr::Tag(self.0));
        }
        self.0
            .deserialize(BorrowedStrDeserializer::new(v))
            .map(KeyOr::Key)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v == TAG {
            return Ok(KeyOr::Tag(self.0));
        }
        self.0.deserialize(StrDeserializer::new(v)).map(KeyOr::Key)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        if v == TAG {
            return Ok(KeyOr::Tag(self.0));
        }
        self.0
            .deserialize(StringDeserializer::new(v))
            .map(KeyOr::Key)
    }
}

/// Reads any JSON value and drops it, as strictly as serde's derive buffers it: every number
/// parsed, every string unescaped, nesting counted.
pub(crate) struct StrictIgnore;

impl<'de> Deserialize<'de> for StrictIgnore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictIgnore)
    }
}

impl<'de> Visitor<'de> for StrictIgnore {
    type Value = StrictIgnore;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_none<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self, D::Error> {
        StrictIgnore::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self, D::Error> {
        StrictIgnore::deserialize(d)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<StrictIgnore>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<StrictIgnore>()?.is_some() {
            map.next_value::<StrictIgnore>()?;
        }
        Ok(self)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self, A::Error> {
        let (StrictIgnore, variant) = data.variant::<StrictIgnore>()?;
        variant.newtype_variant::<StrictIgnore>()
    }
}

/// A seed whose deserializer reads ignored values strictly ([`StrictIgnore`]), at any depth.
struct Strict<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Strict<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(StrictDe(d))
    }
}

/// A deserializer that forwards everything to `D`, wrapping what it hands out, except
/// `deserialize_ignored_any`, which reads the value with [`StrictIgnore`] instead of skipping it.
struct StrictDe<D>(D);

macro_rules! forward_strict {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.0.$method($($arg,)* StrictVisitor(visitor))
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for StrictDe<D> {
    type Error = D::Error;

    forward_strict! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        StrictIgnore::deserialize(self.0)?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

struct StrictVisitor<V>(V);

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.0.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for StrictVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(StrictDe(d))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(StrictDe(d))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(StrictSeq(seq))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(StrictMap(map))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(StrictEnum(data))
    }
}

struct StrictSeq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for StrictSeq<A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        self.0.next_element_seed(Strict(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct StrictMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for StrictMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Strict(seed))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.0.next_value_seed(Strict(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct StrictEnum<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for StrictEnum<A> {
    type Error = A::Error;
    type Variant = StrictEnum<A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Strict(seed))?;
        Ok((value, StrictEnum(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for StrictEnum<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.0.newtype_variant_seed(Strict(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, StrictVisitor(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, StrictVisitor(visitor))
    }
}
