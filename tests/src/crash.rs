//! The crash test's parts: a line protocol between the HA manager under test (`crash-manager`,
//! killed with SIGKILL at random points) and a fake orchestrator in a process of its own
//! (`crash-orchestrator`, never killed), which runs the VMs, commits each start's key with the
//! VM record and keeps the independent record of every start. The client side is a
//! [`VmOrchestrator`] over that protocol.
//!
//! Requests and answers are one line each, over a fresh loopback connection per request (a
//! request cut off by a kill leaves nothing behind in the orchestrator but what it did):
//!
//! - `get VM` → a record, or `none`
//! - `on HOST` → the records whose host (or last host) is HOST, `;`-separated
//! - `running HOST` → the ids running on HOST, `,`-separated
//! - `force_stop VM` → the record
//! - `start VM KEY C1,C2,..` → `ok HOST`, or `err capacity|failed|refused REASON`
//! - `dump` → every record, then every start, one per line, then `end`
//!
//! A record is `ID STATE HOST LAST_HOST UPDATE_COUNT KEY` (`-` for none); a start in a dump is
//! `start VM KEY HOST FRESH` (`FRESH` is 0 for a key answered from what was done before).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use cloudha_ha::{DeathProof, Expunge, OrchestratorError, StartError, StartParams, VmOrchestrator};
use cloudha_ports::{StartKey, VmRecord};
use cloudha_protocol::{ClusterId, HostId, HypervisorType, VmId, VmState, ZoneId};

/// A VM record as one line.
pub fn record_line(r: &VmRecord) -> String {
    let opt = |h: Option<HostId>| h.map_or("-".to_string(), |h| h.to_string());
    format!(
        "{} {:?} {} {} {} {}",
        r.id,
        r.state,
        opt(r.host),
        opt(r.last_host),
        r.update_count,
        r.start_key.map_or("-".to_string(), |k| k.to_string())
    )
}

/// A VM record from one line (an HA-enabled KVM user VM of cluster 1, zone 1).
///
/// # Errors
/// What is wrong with the line.
pub fn parse_record(line: &str) -> Result<VmRecord, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [id, state, host, last, count, key] = f[..] else {
        return Err(format!("record {line:?}: expected six fields"));
    };
    let num = |s: &str, what: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("record {line:?}: bad {what} {s:?}"))
    };
    let host_of = |s: &str, what: &str| -> Result<Option<HostId>, String> {
        if s == "-" {
            Ok(None)
        } else {
            num(s, what).map(|n| Some(HostId(n)))
        }
    };
    let id = VmId(num(id, "id")?);
    let mut r = VmRecord::new(id, format!("vm{id}"), HypervisorType::Kvm);
    r.state = match state {
        "Running" => VmState::Running,
        "Stopped" => VmState::Stopped,
        "Starting" => VmState::Starting,
        "Destroyed" => VmState::Destroyed,
        other => return Err(format!("record {line:?}: bad state {other:?}")),
    };
    r.host = host_of(host, "host")?;
    r.last_host = host_of(last, "last host")?;
    r.update_count = num(count, "update count")?;
    r.start_key = match key {
        "-" => None,
        k => Some(k.parse()?),
    };
    r.ha_enabled = true;
    r.cluster = Some(ClusterId(1));
    r.zone = Some(ZoneId(1));
    Ok(r)
}

/// One start, as the orchestrator recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartEntry {
    /// The VM.
    pub vm: VmId,
    /// Its key.
    pub key: StartKey,
    /// Where it runs.
    pub host: HostId,
    /// It started the VM (not a repeated key answered from before).
    pub fresh: bool,
}

/// What a `dump` holds.
#[derive(Debug, Clone, Default)]
pub struct Dump {
    /// Every VM.
    pub vms: Vec<VmRecord>,
    /// Every start, in order.
    pub starts: Vec<StartEntry>,
    /// Every start refused because the VM's record was not stopped (none may ever be).
    pub refused: Vec<String>,
}

/// A [`VmOrchestrator`] talking to the fake orchestrator at `addr`. Its reads block (they are
/// plain calls in the port, and the orchestrator answers on loopback at once); its actions run
/// on the blocking pool.
#[derive(Debug, Clone)]
pub struct RemoteVms {
    addr: SocketAddr,
}

impl RemoteVms {
    /// A client of the orchestrator at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// One request, one answer line.
    ///
    /// # Errors
    /// The connection failed.
    pub fn ask(&self, request: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        writeln!(s, "{request}")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::other(
                "the orchestrator closed without an answer",
            ));
        }
        Ok(line.trim_end().to_string())
    }

    /// Everything the orchestrator holds.
    ///
    /// # Errors
    /// The connection failed, or a line is malformed.
    pub fn dump(&self) -> Result<Dump, String> {
        let mut s = TcpStream::connect(self.addr).map_err(|e| e.to_string())?;
        writeln!(s, "dump").map_err(|e| e.to_string())?;
        let mut out = Dump::default();
        for line in BufReader::new(s).lines() {
            let line = line.map_err(|e| e.to_string())?;
            if line == "end" {
                return Ok(out);
            }
            if let Some(rest) = line.strip_prefix("rec ") {
                out.vms.push(parse_record(rest)?);
            } else if let Some(rest) = line.strip_prefix("start ") {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let [vm, key, host, fresh] = f[..] else {
                    return Err(format!("start line {line:?}"));
                };
                let n = |s: &str| s.parse::<u64>().map_err(|_| format!("{line:?}"));
                out.starts.push(StartEntry {
                    vm: VmId(n(vm)?),
                    key: key.parse()?,
                    host: HostId(n(host)?),
                    fresh: fresh == "1",
                });
            } else if let Some(rest) = line.strip_prefix("refused ") {
                out.refused.push(rest.to_string());
            } else {
                return Err(format!("dump line {line:?}"));
            }
        }
        Err("the dump ended without `end`".into())
    }

    fn records(&self, request: &str) -> Vec<VmRecord> {
        match self.ask(request) {
            Ok(line) if line.is_empty() => Vec::new(),
            Ok(line) => line
                .split(';')
                .filter_map(|r| parse_record(r).ok())
                .collect(),
            Err(e) => {
                tracing::warn!(request, error = %e, "orchestrator unreachable");
                Vec::new()
            }
        }
    }

    async fn act(&self, vm: VmId, request: String) -> Result<String, OrchestratorError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.ask(&request))
            .await
            .map_err(|e| OrchestratorError::new(vm, "the request task failed").with_source(e))?
            .map_err(|e| OrchestratorError::new(vm, "orchestrator unreachable").with_source(e))
    }
}

#[async_trait::async_trait]
impl VmOrchestrator for RemoteVms {
    fn get(&self, vm: VmId) -> Option<VmRecord> {
        self.records(&format!("get {vm}")).pop()
    }

    fn vms_on_host(&self, host: HostId) -> Vec<VmRecord> {
        self.records(&format!("on {host}"))
    }

    fn running_on(&self, host: HostId) -> Vec<VmId> {
        match self.ask(&format!("running {host}")) {
            Ok(line) => line
                .split(',')
                .filter_map(|v| v.parse().ok().map(VmId))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    async fn force_stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        let line = self.act(vm, format!("force_stop {vm}")).await?;
        parse_record(&line).map_err(|e| OrchestratorError::new(vm, e))
    }

    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.force_stop(vm).await
    }

    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        _proof: &DeathProof,
    ) -> Result<HostId, StartError> {
        let candidates: Vec<String> = params.candidates.iter().map(ToString::to_string).collect();
        let request = format!("start {vm} {} {}", params.key, candidates.join(","));
        // A connection lost mid-request leaves the outcome unknown: the start may have landed.
        let line = self
            .act(vm, request)
            .await
            .map_err(|e| StartError::OutcomeUnknown(e.to_string()))?;
        match line.split_once(' ') {
            Some(("ok", host)) => host
                .parse()
                .map(HostId)
                .map_err(|_| StartError::OutcomeUnknown(format!("bad answer {line:?}"))),
            Some(("err", why)) if why.starts_with("capacity") => {
                Err(StartError::InsufficientCapacity(why.to_string()))
            }
            _ => Err(StartError::Failed(line)),
        }
    }

    async fn migrate_away(
        &self,
        _vm: VmId,
        _from: HostId,
        _candidates: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        Err(StartError::Failed("no migrations in the crash test".into()))
    }

    async fn destroy(&self, vm: VmId, _expunge: Expunge) -> Result<(), OrchestratorError> {
        Err(OrchestratorError::new(vm, "no destroys in the crash test"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_lines_are_named() {
        let mut r = parse_record("5 Running 2 1 7 9/3").unwrap();
        assert_eq!(r.host, Some(HostId(2)));
        assert_eq!(record_line(&r), "5 Running 2 1 7 9/3");
        r.host = None;
        r.start_key = None;
        assert_eq!(parse_record(&record_line(&r)).unwrap(), r);
        for bad in [
            "",
            "5 Running 2 1 7",
            "5 Flying 2 1 7 -",
            "x Running - - 1 -",
            "5 Running - - 1 9",
        ] {
            assert!(parse_record(bad).is_err(), "{bad:?}");
        }
    }
}
