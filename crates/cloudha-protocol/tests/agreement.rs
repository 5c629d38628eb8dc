//! Property test: the fast item decoder ([`Command::from_json`], [`Answer::from_json`]) and
//! serde's derive (`serde_json::from_str::<Command>`) agree on every input: both accept with
//! equal values, or both refuse.
//!
//! Inputs are generated items of every command and answer variant with random field values
//! (VM states in the compact string and the verbose array forms), then mutated: unknown fields of
//! every JSON kind (out-of-range numbers, lone surrogates, nesting past serde_json's limit
//! included), duplicated keys, a second `type`, reordered keys, wrong types, removed keys, the
//! sequence form, escaped keys, whitespace, byte flips, insertions and truncations. Frames
//! carrying such items are also decoded by the codec, fed in random chunks, and compared with a
//! reference built on the derive.
//!
//! Deterministic: a fixed seed, or `CLOUDHA_AGREEMENT_SEED=<n>` (decimal or `0x` hex) to replay
//! or explore; `CLOUDHA_AGREEMENT_CASES=<n>` for a longer run. The seed and the case are printed
//! on failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::BytesMut;
use cloudha_protocol::*;
use serde::Deserialize;
use serde::de::{MapAccess, SeqAccess, Visitor};

const DEFAULT_SEED: u64 = 0xc10d_4a11_a64e_e001;
const DEFAULT_ITEM_CASES: u64 = 4000;
const DEFAULT_FRAME_CASES: u64 = 600;

// ---------------------------------------------------------------------------------------------
// Randomness

/// splitmix64: small, seedable, good enough to drive a generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `pct` percent.
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn u64(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.next() % 10,
            3 => self.next() % 100_000,
            _ => self.next(),
        }
    }
    fn string(&mut self) -> String {
        const ALPHABET: &[char] = &[
            'a', 'Z', '0', ' ', '_', '"', '\\', '/', '\n', '\t', '\u{0}', '\u{1f}', '\u{7f}', 'é',
            '\u{2028}', '😀', '=', ',', '{', '}', '[', ']', ':',
        ];
        let n = self.below(12);
        (0..n).map(|_| *self.pick(ALPHABET)).collect()
    }
    fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        self.chance(50).then(|| f(self))
    }
}

fn case_rng(seed: u64, stream: u64, case: u64) -> Rng {
    let mut r = Rng::new(seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f));
    r.0 ^= case.wrapping_mul(0xe703_7ed1_a0b4_28db);
    r.next();
    r
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn seed() -> u64 {
    env_u64("CLOUDHA_AGREEMENT_SEED").unwrap_or(DEFAULT_SEED)
}

// ---------------------------------------------------------------------------------------------
// Generated items

const HOST_TYPES: &[HostType] = &[
    HostType::Routing,
    HostType::Storage,
    HostType::ConsoleProxy,
    HostType::SecondaryStorage,
    HostType::SecondaryStorageVm,
    HostType::SecondaryStorageCmdExecutor,
    HostType::TrafficMonitor,
    HostType::ExternalFirewall,
    HostType::ExternalLoadBalancer,
    HostType::LocalSecondaryStorage,
    HostType::L2Networking,
];
const HYPERVISORS: &[HypervisorType] = &[
    HypervisorType::Kvm,
    HypervisorType::Lxc,
    HypervisorType::XenServer,
    HypervisorType::VMware,
    HypervisorType::Hyperv,
    HypervisorType::Simulator,
    HypervisorType::BareMetal,
    HypervisorType::Ovm3,
    HypervisorType::None,
];
const POWER: &[VmPowerState] = &[
    VmPowerState::PowerOn,
    VmPowerState::PowerOff,
    VmPowerState::PowerUnknown,
    VmPowerState::PowerReportMissing,
];
const REASONS: &[ShutdownReason] = &[
    ShutdownReason::Requested,
    ShutdownReason::Update,
    ShutdownReason::DeleteHost,
    ShutdownReason::Unknown,
];

fn vm_states(rng: &mut Rng) -> Vec<VmStateReport> {
    (0..rng.below(6))
        .map(|_| VmStateReport {
            vm: VmId(rng.u64()),
            power: *rng.pick(POWER),
        })
        .collect()
}

/// A command of the variant `Command::TYPE_NAMES[which]`, with random field values.
fn command(rng: &mut Rng, which: usize) -> Command {
    let c = match Command::TYPE_NAMES[which] {
        "startup" => Command::Startup(StartupCommand {
            host_id: HostId(rng.u64()),
            name: rng.string(),
            version: rng.string(),
            host_type: rng.option(|r| *r.pick(HOST_TYPES)),
            hypervisor: rng.option(|r| *r.pick(HYPERVISORS)),
            cluster: rng.option(|r| ClusterId(r.u64())),
            pod: rng.option(|r| PodId(r.u64())),
            zone: rng.option(|r| ZoneId(r.u64())),
            vm_states: vm_states(rng),
        }),
        "ready" => Command::Ready(ReadyCommand {
            host_id: HostId(rng.u64()),
        }),
        "ping" => Command::Ping(PingCommand {
            host_id: HostId(rng.u64()),
        }),
        "ping_routing" => Command::PingRouting(PingRoutingCommand {
            host_id: HostId(rng.u64()),
            vm_states: vm_states(rng),
            gateway_accessible: rng.chance(50),
        }),
        "check_health" => Command::CheckHealth(CheckHealthCommand {}),
        "check_on_host" => Command::CheckOnHost(CheckOnHostCommand {
            target: HostId(rng.u64()),
        }),
        "fence" => Command::Fence(FenceCommand {
            target: HostId(rng.u64()),
            vm: rng.option(|r| VmId(r.u64())),
        }),
        "ping_test" => Command::PingTest(PingTestCommand {
            target: HostId(rng.u64()),
        }),
        "check_virtual_machine" => Command::CheckVirtualMachine(CheckVirtualMachineCommand {
            vm: VmId(rng.u64()),
        }),
        "start_vm" => Command::StartVm(StartVmCommand {
            vm: VmId(rng.u64()),
            ha: rng.chance(50),
        }),
        "stop_vm" => Command::StopVm(StopVmCommand {
            vm: VmId(rng.u64()),
            force: rng.chance(50),
        }),
        "shutdown" => Command::Shutdown(ShutdownCommand {
            reason: *rng.pick(REASONS),
            details: rng.string(),
        }),
        "agent_control" => Command::AgentControl(AgentControlCommand {
            name: rng.string(),
            params: (0..rng.below(4))
                .map(|_| (rng.string(), rng.string()))
                .collect::<BTreeMap<_, _>>(),
        }),
        other => panic!("no generator for command `{other}`: add one"),
    };
    assert_eq!(c.type_name(), Command::TYPE_NAMES[which]);
    c
}

/// An answer of the variant `Answer::TYPE_NAMES[which]`, with random field values.
fn answer(rng: &mut Rng, which: usize) -> Answer {
    let a = match Answer::TYPE_NAMES[which] {
        "startup_answer" => Answer::Startup(StartupAnswer {
            success: rng.chance(50),
            host_id: HostId(rng.u64()),
            ping_interval_ms: rng.u64(),
            details: rng.string(),
        }),
        "ping_answer" => Answer::Ping(PingAnswer {
            avoid_ms: (0..rng.below(4)).map(|_| rng.string()).collect(),
            send_startup: rng.chance(50),
        }),
        "check_on_host_answer" => Answer::CheckOnHost(CheckOnHostAnswer {
            success: rng.chance(50),
            alive: rng.chance(50),
            heartbeat_age_ms: rng.option(Rng::u64),
            details: rng.string(),
        }),
        "fence_answer" => Answer::Fence(FenceAnswer {
            success: rng.chance(50),
            alive: rng.chance(50),
            heartbeat_age_ms: rng.option(Rng::u64),
            details: rng.string(),
        }),
        "check_virtual_machine_answer" => Answer::CheckVirtualMachine(CheckVirtualMachineAnswer {
            success: rng.chance(50),
            power: *rng.pick(POWER),
            details: rng.string(),
        }),
        "answer" => Answer::Generic(GenericAnswer {
            success: rng.chance(50),
            details: rng.string(),
        }),
        other => panic!("no generator for answer `{other}`: add one"),
    };
    assert_eq!(a.type_name(), Answer::TYPE_NAMES[which]);
    a
}

// ---------------------------------------------------------------------------------------------
// A JSON tree that keeps key order and duplicate keys, and may hold raw text

#[derive(Debug, Clone)]
enum J {
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
struct Style {
    /// Whitespace around tokens.
    spaces: bool,
    /// `\u` escapes for some plain characters, `\/`, surrogate pairs.
    escapes: bool,
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

fn write_json(j: &J, rng: &mut Rng, style: Style, out: &mut String) {
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
fn tree<T: serde::Serialize>(v: &T) -> J {
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

/// Rewrites the compact VM-state string into the verbose array form (objects or pairs).
fn verbose_vm_states(item: &mut J, rng: &mut Rng) {
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

// ---------------------------------------------------------------------------------------------
// Mutations

/// Any JSON value, odd ones included: what an unknown field may hold, or a wrong type.
fn any_value(rng: &mut Rng, depth: usize) -> J {
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

fn mutate_tree(item: &mut J, rng: &mut Rng) -> &'static str {
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

fn mutate_text(text: &mut String, rng: &mut Rng) -> &'static str {
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

/// One generated item: its text, what was done to it, and the value it encodes when unmutated.
struct Case {
    text: String,
    steps: Vec<&'static str>,
    original: Option<Item>,
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Command(Command),
    Answer(Answer),
}

fn generate(rng: &mut Rng, mutate: bool) -> Case {
    let n_commands = Command::TYPE_NAMES.len();
    let which = rng.below(n_commands + Answer::TYPE_NAMES.len());
    let item = if which < n_commands {
        Item::Command(command(rng, which))
    } else {
        Item::Answer(answer(rng, which - n_commands))
    };
    let mut j = match &item {
        Item::Command(c) => tree(c),
        Item::Answer(a) => tree(a),
    };
    let mut steps = Vec::new();
    if rng.chance(30) {
        verbose_vm_states(&mut j, rng);
        steps.push("verbose vm_states");
    }
    let style = Style {
        spaces: rng.chance(10),
        escapes: rng.chance(10),
    };
    if style.spaces {
        steps.push("whitespace");
    }
    if style.escapes {
        steps.push("escapes");
    }
    let mut mutated = false;
    if mutate {
        for _ in 0..=rng.below(3) {
            steps.push(mutate_tree(&mut j, rng));
            mutated = true;
        }
    }
    let mut text = String::new();
    write_json(&j, rng, style, &mut text);
    if mutate && rng.chance(25) {
        steps.push(mutate_text(&mut text, rng));
        mutated = true;
    }
    Case {
        text,
        steps,
        original: (!mutated).then_some(item),
    }
}

// ---------------------------------------------------------------------------------------------
// The property

#[derive(Default, Debug)]
struct Tally {
    /// [fast-path shape?][accepted?]: how many items of each kind were judged.
    seen: [[usize; 2]; 2],
    duplicate_type_refusals: usize,
    tags: BTreeMap<&'static str, usize>,
}

/// Both decoders of one enum on one text: equal when both accept, both refuse otherwise; when
/// the derive blames the tag, the fast decoder's typed error says the same.
fn agree<T: PartialEq + std::fmt::Debug + for<'de> Deserialize<'de>>(
    text: &str,
    fast: Result<T, ItemError>,
    first_tag: &str,
) -> Result<bool, String> {
    let derive = serde_json::from_str::<T>(text);
    match (&fast, &derive) {
        (Ok(a), Ok(b)) if a == b => Ok(true),
        (Err(e), Err(d)) => {
            let d = d.to_string();
            let named = if d.starts_with("duplicate field `type`") {
                matches!(e, ItemError::DuplicateType { .. })
            } else if d.starts_with("missing field `type`") {
                matches!(e, ItemError::MissingType { .. })
            } else if d.starts_with("unknown variant")
                && d.contains(&format!("expected one of `{first_tag}`"))
            {
                matches!(e, ItemError::UnknownType { .. })
            } else {
                true
            };
            if named {
                Ok(false)
            } else {
                Err(format!(
                    "both refuse, but the fast decoder's error names another problem:\n  fast:   {e:?}\n  derive: {d}"
                ))
            }
        }
        _ => Err(format!(
            "disagreement:\n  fast:   {fast:?}\n  derive: {derive:?}"
        )),
    }
}

fn check_item(text: &str, tally: &mut Tally) -> Result<(Option<Command>, Option<Answer>), String> {
    let fast_c = Command::from_json(text);
    let fast_a = Answer::from_json(text);
    let dup = matches!(fast_c, Err(ItemError::DuplicateType { .. }))
        || matches!(fast_a, Err(ItemError::DuplicateType { .. }));
    let c = fast_c.as_ref().ok().cloned();
    let a = fast_a.as_ref().ok().cloned();
    let accepted_c = agree::<Command>(text, fast_c, Command::TYPE_NAMES[0])
        .map_err(|e| format!("Command: {e}"))?;
    let accepted_a =
        agree::<Answer>(text, fast_a, Answer::TYPE_NAMES[0]).map_err(|e| format!("Answer: {e}"))?;
    let fast_shape = text.starts_with(r#"{"type":""#);
    tally.seen[usize::from(fast_shape)][usize::from(accepted_c || accepted_a)] += 1;
    tally.duplicate_type_refusals += usize::from(dup);
    if let Some(c) = &c {
        *tally.tags.entry(c.type_name()).or_default() += 1;
    }
    if let Some(a) = &a {
        *tally.tags.entry(a.type_name()).or_default() += 1;
    }
    Ok((c, a))
}

fn fail(what: &str, seed: u64, case: u64, text: &str, steps: &[&str], why: &str) -> ! {
    panic!(
        "{what} case {case} failed (seed {seed:#x}; replay with CLOUDHA_AGREEMENT_SEED={seed:#x})\n\
         steps: {steps:?}\n  item: {text}\n  {why}"
    )
}

#[test]
fn fast_decoder_and_serde_derive_agree_on_generated_and_mutated_items() {
    let seed = seed();
    let cases = env_u64("CLOUDHA_AGREEMENT_CASES").unwrap_or(DEFAULT_ITEM_CASES);
    let mut tally = Tally::default();
    for case in 0..cases {
        let mut rng = case_rng(seed, 1, case);
        // one case in five stays as generated (and must decode to what was generated)
        let c = generate(&mut rng, case % 5 != 0);
        let decoded = match check_item(&c.text, &mut tally) {
            Ok(d) => d,
            Err(why) => fail("item", seed, case, &c.text, &c.steps, &why),
        };
        if let Some(original) = &c.original {
            let got = match original {
                Item::Command(_) => decoded.0.map(Item::Command),
                Item::Answer(_) => decoded.1.map(Item::Answer),
            };
            if got.as_ref() != Some(original) {
                let why = format!("generated {original:?}, decoded {got:?}");
                fail("item", seed, case, &c.text, &c.steps, &why);
            }
        }
    }
    // The corpus exercised what it claims to (the seed is printed on failure).
    let [
        [other_refused, other_accepted],
        [fast_refused, fast_accepted],
    ] = tally.seen;
    let min = (cases / 50) as usize;
    assert!(
        [other_refused, other_accepted, fast_refused, fast_accepted]
            .iter()
            .all(|&n| n >= min)
            && tally.duplicate_type_refusals >= min,
        "seed {seed:#x}: thin corpus {tally:?}"
    );
    let all_tags: Vec<_> = Command::TYPE_NAMES
        .iter()
        .chain(Answer::TYPE_NAMES)
        .copied()
        .collect();
    assert!(
        all_tags.iter().all(|t| tally.tags.contains_key(t)),
        "seed {seed:#x}: some variant was never accepted: {:?}",
        tally.tags
    );
}

/// The reference frame decoder: the same envelope, each item decoded by serde's derive.
#[derive(Deserialize)]
struct RefEnvelope<'a> {
    seq: Sequence,
    #[serde(default)]
    flags: Flags,
    #[serde(default, borrow)]
    commands: Option<Vec<&'a serde_json::value::RawValue>>,
    #[serde(default, borrow)]
    answers: Option<Vec<&'a serde_json::value::RawValue>>,
}

/// What a frame decodes to: the envelope and the indices of the rejected items, or an error.
fn reference(body: &str) -> Result<(Envelope, Vec<usize>), String> {
    let env: RefEnvelope<'_> = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let mut rejected = Vec::new();
    let body = match (env.commands, env.answers) {
        (Some(items), None) => Body::Commands(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, raw)| {
                    let r = serde_json::from_str::<Command>(raw.get()).ok();
                    if r.is_none() {
                        rejected.push(i);
                    }
                    r
                })
                .collect(),
        ),
        (None, Some(items)) => Body::Answers(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, raw)| {
                    let r = serde_json::from_str::<Answer>(raw.get()).ok();
                    if r.is_none() {
                        rejected.push(i);
                    }
                    r
                })
                .collect(),
        ),
        _ => return Err("bad body".into()),
    };
    Ok((
        Envelope {
            seq: env.seq,
            flags: env.flags,
            body,
        },
        rejected,
    ))
}

#[test]
fn frames_decode_as_the_derive_would_when_fed_in_random_chunks() {
    let seed = seed();
    let cases = env_u64("CLOUDHA_AGREEMENT_CASES").map_or(DEFAULT_FRAME_CASES, |n| n / 4);
    let codec = FrameCodec::default();
    let (mut whole, mut with_rejected, mut refused) = (0, 0, 0);
    for case in 0..cases {
        let mut rng = case_rng(seed, 2, case);
        let answers = rng.chance(50);
        let mut items = Vec::new();
        let mut steps = Vec::new();
        for _ in 0..rng.below(5) {
            let c = loop {
                let mutate = rng.chance(40);
                let c = generate(&mut rng, mutate);
                // keep the batch of one kind most of the time
                let is_answer = matches!(c.original, Some(Item::Answer(_)));
                if c.original.is_none() || is_answer == answers || rng.chance(10) {
                    break c;
                }
            };
            steps.extend(c.steps);
            items.push(c.text);
        }
        let mut body = format!(
            r#"{{"seq":{},"flags":{},"{}":[{}]"#,
            rng.u64(),
            rng.below(64),
            if answers { "answers" } else { "commands" },
            items.join(",")
        );
        if rng.chance(20) {
            let _ = write!(body, r#","future":{}"#, {
                let mut s = String::new();
                write_json(
                    &any_value(&mut rng, 0),
                    &mut rng,
                    Style {
                        spaces: false,
                        escapes: false,
                    },
                    &mut s,
                );
                s
            });
            steps.push("unknown envelope field");
        }
        body.push('}');
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body.as_bytes());

        // streaming, in random chunks
        let mut buf = BytesMut::new();
        let mut streamed = None;
        let mut fed = 0;
        while streamed.is_none() {
            let n = (1 + rng.below(64)).min(frame.len() - fed);
            buf.extend_from_slice(&frame[fed..fed + n]);
            fed += n;
            match codec.decode(&mut buf) {
                Ok(None) if fed < frame.len() => {}
                Ok(None) => streamed = Some(Err("incomplete".to_owned())),
                Ok(Some(d)) => streamed = Some(Ok(d)),
                Err(e) => streamed = Some(Err(e.to_string())),
            }
        }
        let streamed = streamed.unwrap();
        let sliced = codec.decode_slice(&frame);
        let expected = reference(&body);
        let outcome = |d: &Decoded| {
            (
                d.envelope.clone(),
                d.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
            )
        };
        let ok = match (&streamed, &sliced, &expected) {
            (Ok(s), Ok((d, used)), Ok(e)) => {
                *used == frame.len() && outcome(s) == *e && outcome(d) == *e && buf.is_empty()
            }
            (Err(_), Err(_), Err(_)) => true,
            _ => false,
        };
        if !ok {
            let why = format!(
                "streamed {:?}\n  sliced {:?}\n  reference {expected:?}",
                streamed.as_ref().map(outcome),
                sliced
                    .as_ref()
                    .map(|(d, _)| outcome(d))
                    .map_err(|e| e.to_string())
            );
            fail("frame", seed, case, &body, &steps, &why);
        }
        match expected {
            Ok((_, r)) if r.is_empty() => whole += 1,
            Ok(_) => with_rejected += 1,
            Err(_) => refused += 1,
        }
    }
    let min = (cases / 20) as usize;
    assert!(
        whole >= min && with_rejected >= min && refused >= min,
        "seed {seed:#x}: thin corpus: {whole} whole, {with_rejected} with rejected items, {refused} refused"
    );
}
