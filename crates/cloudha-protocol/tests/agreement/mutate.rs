//! Mutations of generated items: of the tree (unknown fields, duplicated keys, a second `type`,
//! reordered, wrong-typed, removed and renamed keys, the sequence form) and of the text (byte
//! flips, truncations, insertions, deletions).

use cloudha_protocol::{Answer, Command};

use super::json::J;
use super::rng::Rng;

/// Any JSON value, odd ones included: what an unknown field may hold, or a wrong type.
pub(super) fn any_value(rng: &mut Rng, depth: usize) -> J {
    const NUMBERS: &[&str] = &[
        "0",
        "-0",
        "1",
        "-1",
        "7",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "1.5",
        "-0.0",
        "1e3",
        "1E+2",
        "0.1e1",
        "2.5e-3",
        "1e400",
        "-1e400",
        "1e-400",
        "1.7976931348623157e308",
    ];
    const RAW_STRINGS: &[&str] = &[
        r#""\ud800""#,
        r#""\udc00""#,
        r#""\ud800\u0041""#,
        r#""\ud83d\ude00""#,
        r#""\u0000""#,
        r#""\/\b\f\n\r\t\"\\""#,
        r#""\u00e9\u2028""#,
        r#""type""#,
    ];
    const ODD: &[&str] = &[
        r#""PowerOn""#,
        r#""Routing""#,
        r#""KVM""#,
        r#""Update""#,
        r#"{"Routing":null}"#,
        r#"{"Routing":{}}"#,
        r#"{"PowerOn":[]}"#,
        r#"{"KVM":null,"LXC":null}"#,
        r#"{}"#,
        r#"[]"#,
        r#"[1,"PowerOn"]"#,
        r#"[[1,"PowerOn"]]"#,
        r#"[{"vm":1,"power":"PowerOn","x":1e400}]"#,
        r#"[{"vm":1,"power":"PowerOn","x":{"y":[null,"\ud83d\ude00"]}}]"#,
        r#""1=PowerOn,2=PowerOff""#,
        r#""1=PowerOn,""#,
        r#""""#,
        r#"{"type":"ping"}"#,
        r#"["ping",1]"#,
    ];
    match rng.below(if depth >= 3 { 7 } else { 10 }) {
        0 => J::Null,
        1 => J::Bool(rng.chance(50)),
        2 => J::Raw((*rng.pick(NUMBERS)).to_owned()),
        3 => J::Num(rng.u64().to_string()),
        4 => J::Str(rng.string()),
        5 => J::Raw((*rng.pick(RAW_STRINGS)).to_owned()),
        6 => J::Raw((*rng.pick(ODD)).to_owned()),
        7 => J::Arr(
            (0..rng.below(4))
                .map(|_| any_value(rng, depth + 1))
                .collect(),
        ),
        8 => J::Obj(
            (0..rng.below(4))
                .map(|_| (key(rng), any_value(rng, depth + 1)))
                .collect(),
        ),
        _ => {
            // nesting around serde_json's recursion limit (128)
            let n = 120 + rng.below(16);
            let (open, close) = if rng.chance(50) {
                ("[", "]")
            } else {
                (r#"{"a":"#, "}")
            };
            J::Raw(format!("{}1{}", open.repeat(n), close.repeat(n)))
        }
    }
}

/// A key: unknown ones, near misses, and every known field name.
fn key(rng: &mut Rng) -> String {
    const KEYS: &[&str] = &[
        "future",
        "x",
        "",
        "Type",
        "TYPE",
        "type ",
        "types",
        "host_id",
        "target",
        "vm",
        "power",
        "vm_states",
        "name",
        "version",
        "host_type",
        "hypervisor",
        "cluster",
        "pod",
        "zone",
        "gateway_accessible",
        "success",
        "alive",
        "heartbeat_age_ms",
        "details",
        "ping_interval_ms",
        "avoid_ms",
        "send_startup",
        "ha",
        "force",
        "reason",
        "params",
    ];
    if rng.chance(10) {
        rng.string()
    } else {
        (*rng.pick(KEYS)).to_owned()
    }
}

fn tag_value(rng: &mut Rng) -> J {
    match rng.below(6) {
        0 => J::Str((*rng.pick(Command::TYPE_NAMES)).to_owned()),
        1 => J::Str((*rng.pick(Answer::TYPE_NAMES)).to_owned()),
        2 => J::Str(rng.pick(&["teleport", "Ping", "", "ping "]).to_string()),
        _ => any_value(rng, 1),
    }
}

/// A random object in the tree (the item itself most often), for mutations below the top.
fn some_object<'a>(j: &'a mut J, rng: &mut Rng) -> Option<&'a mut Vec<(String, J)>> {
    let descend = rng.chance(25);
    match j {
        J::Obj(entries) => {
            if descend && !entries.is_empty() {
                let i = rng.below(entries.len());
                // Split the borrow: look below, or come back to this object.
                if matches!(entries[i].1, J::Obj(_) | J::Arr(_)) {
                    return some_object(&mut entries[i].1, rng);
                }
            }
            Some(entries)
        }
        J::Arr(items) if !items.is_empty() => {
            let i = rng.below(items.len());
            some_object(&mut items[i], rng)
        }
        _ => None,
    }
}

pub(super) fn mutate_tree(item: &mut J, rng: &mut Rng) -> &'static str {
    let top_len = match item {
        J::Obj(e) => e.len(),
        _ => 0,
    };
    match rng.below(10) {
        0 | 1 => {
            if let Some(obj) = some_object(item, rng) {
                let at = rng.below(obj.len() + 1);
                obj.insert(at, (key(rng), any_value(rng, 0)));
            }
            "unknown field"
        }
        2 => {
            if let J::Obj(e) = item
                && !e.is_empty()
            {
                let (k, v) = e[rng.below(e.len())].clone();
                let v = if rng.chance(50) { v } else { any_value(rng, 0) };
                let at = rng.below(e.len() + 1);
                e.insert(at, (k, v));
            }
            "duplicated key"
        }
        3 => {
            if let J::Obj(e) = item {
                let at = rng.below(top_len + 1);
                e.insert(at, ("type".to_owned(), tag_value(rng)));
            }
            "second type"
        }
        4 => {
            if let J::Obj(e) = item {
                for i in (1..e.len()).rev() {
                    let j = rng.below(i + 1);
                    e.swap(i, j);
                }
            }
            "reordered keys"
        }
        5 => {
            if let Some(obj) = some_object(item, rng)
                && !obj.is_empty()
            {
                let i = rng.below(obj.len());
                obj[i].1 = any_value(rng, 0);
            }
            "wrong type"
        }
        6 => {
            if let Some(obj) = some_object(item, rng)
                && !obj.is_empty()
            {
                let i = rng.below(obj.len());
                obj.remove(i);
            }
            "removed key"
        }
        7 => {
            // the sequence form serde's derive accepts: ["ping", fields in order...]
            if let J::Obj(e) = item {
                let mut tag = None;
                let mut rest = Vec::new();
                for (k, v) in e.drain(..) {
                    if k == "type" && tag.is_none() {
                        tag = Some(v);
                    } else {
                        rest.push(v);
                    }
                }
                if rng.chance(20) {
                    rest.pop();
                }
                let mut arr: Vec<J> = tag.into_iter().collect();
                arr.extend(rest);
                *item = J::Arr(arr);
            }
            "sequence form"
        }
        8 => {
            if let J::Obj(e) = item
                && let Some(t) = e.iter_mut().find(|(k, _)| k == "type")
            {
                t.1 = tag_value(rng);
            }
            "changed tag"
        }
        _ => {
            if let J::Obj(e) = item
                && !e.is_empty()
            {
                let i = rng.below(e.len());
                e[i].0 = key(rng);
            }
            "renamed key"
        }
    }
}

pub(super) fn mutate_text(text: &mut String, rng: &mut Rng) -> &'static str {
    const SNIPPETS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        ",",
        ":",
        "\\",
        "\\u",
        "e",
        "-",
        ".",
        "0",
        " ",
        "null",
        "\"type\":",
        "\"type\":\"ping\",",
        "1e400",
        "\u{0}",
        "é",
    ];
    let mut bytes = std::mem::take(text).into_bytes();
    let name = match rng.below(4) {
        0 => {
            for _ in 0..=rng.below(3) {
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len());
                    bytes[i] = if rng.chance(70) {
                        *rng.pick(b"{}[]\":,\\ 0123456789aeEtnu-+.")
                    } else {
                        rng.next() as u8
                    };
                }
            }
            "byte flip"
        }
        1 => {
            let cut = rng.below(bytes.len() + 1);
            bytes.truncate(cut);
            "truncation"
        }
        2 => {
            let at = rng.below(bytes.len() + 1);
            let s = rng.pick(SNIPPETS).as_bytes();
            bytes.splice(at..at, s.iter().copied());
            "insertion"
        }
        _ => {
            let a = rng.below(bytes.len() + 1);
            let b = (a + rng.below(8)).min(bytes.len());
            bytes.drain(a..b);
            "deletion"
        }
    };
    *text = String::from_utf8_lossy(&bytes).into_owned();
    name
}
