//! A JSON tree that keeps key order and duplicate keys, and may hold raw text; its writer, with
//! equivalent variations (whitespace, escapes, the verbose VM-state form).

use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::{MapAccess, SeqAccess, Visitor};

use super::rng::Rng;

#[derive(Debug, Clone)]
pub(super) enum J {
    Null,
    Bool(bool),
    /// A number as written.
    Num(String),
    /// A string, unescaped (the writer escapes it).
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
    /// Text written as is (odd numbers, escapes, deep nesting).
    Raw(String),
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = J;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<J, E> {
                Ok(J::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<J, E> {
                Ok(J::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<J, E> {
                Ok(J::Num(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<J, E> {
                Ok(J::Num(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<J, E> {
                Ok(J::Num(format!("{v:?}")))
            }
            fn visit_str<E>(self, v: &str) -> Result<J, E> {
                Ok(J::Str(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(J::Arr(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, J>()? {
                    out.push((k, v));
                }
                Ok(J::Obj(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// How a tree is written: plain (our own encoding's shape) or with equivalent variations.
#[derive(Clone, Copy)]
pub(super) struct Style {
    /// Whitespace around tokens.
    pub(super) spaces: bool,
    /// `\u` escapes for some plain characters, `\/`, surrogate pairs.
    pub(super) escapes: bool,
}

fn write_str(s: &str, rng: &mut Rng, style: Style, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let escape_anyway = style.escapes && rng.chance(25);
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' if !escape_anyway => out.push_str("\\n"),
            '\t' if !escape_anyway => out.push_str("\\t"),
            '/' if escape_anyway => out.push_str("\\/"),
            c if (c as u32) < 0x20 || escape_anyway => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn space(rng: &mut Rng, style: Style, out: &mut String) {
    if style.spaces && rng.chance(30) {
        const SPACES: &[&str] = &[" ", "\n", "\t", "\r\n  "];
        let s = *rng.pick(SPACES);
        out.push_str(s);
    }
}

pub(super) fn write_json(j: &J, rng: &mut Rng, style: Style, out: &mut String) {
    space(rng, style, out);
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) | J::Raw(n) => out.push_str(n),
        J::Str(s) => write_str(s, rng, style, out),
        J::Arr(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(v, rng, style, out);
            }
            space(rng, style, out);
            out.push(']');
        }
        J::Obj(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(rng, style, out);
                write_str(k, rng, style, out);
                space(rng, style, out);
                out.push(':');
                write_json(v, rng, style, out);
            }
            space(rng, style, out);
            out.push('}');
        }
    }
    space(rng, style, out);
}

/// The tree of a value as serde_json encodes it (our encoding: tag first, fields in order).
pub(super) fn tree<T: serde::Serialize>(v: &T) -> J {
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

/// Rewrites the compact VM-state string into the verbose array form (objects or pairs).
pub(super) fn verbose_vm_states(item: &mut J, rng: &mut Rng) {
    let J::Obj(entries) = item else { return };
    for (k, v) in entries.iter_mut() {
        if k != "vm_states" {
            continue;
        }
        let J::Str(compact) = v else { continue };
        let reports = cloudha_protocol::vm::vm_states_compact::parse(compact).unwrap();
        let array = reports
            .iter()
            .map(|r| {
                let vm = J::Num(r.vm.0.to_string());
                let power = J::Str(r.power.as_str().to_owned());
                if rng.chance(20) {
                    J::Arr(vec![vm, power])
                } else {
                    let mut fields = vec![("vm".to_owned(), vm), ("power".to_owned(), power)];
                    if rng.chance(50) {
                        fields.reverse();
                    }
                    J::Obj(fields)
                }
            })
            .collect();
        *v = J::Arr(array);
    }
}
