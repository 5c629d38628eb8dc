//! The run's report: JSON (keys in a stable order, so equal runs give equal bytes, `wall_ms`
//! aside) and a readable timeline.

use serde::Serialize;

/// The whole report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The seed used.
    pub seed: u64,
    /// Virtual run time.
    pub virtual_duration_s: f64,
    /// Wall time of the run.
    pub wall_ms: u64,
    /// Every host.
    pub hosts: Vec<HostReport>,
    /// Every VM.
    pub vms: Vec<VmReport>,
    /// Every fence attempt.
    pub fences: Vec<FenceReport>,
    /// Every host fault and when it was noticed.
    pub detections: Vec<Detection>,
    /// Every alert.
    pub alerts: Vec<AlertReport>,
    /// The ground-truth invariants.
    pub invariants: Invariants,
    /// The scenario's expectations.
    pub expectations: Vec<ExpectationResult>,
}

/// A host and its status transitions.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Name.
    pub name: String,
    /// Transitions in time order; the first `from` is null.
    pub transitions: Vec<TransitionReport>,
    /// Calls its BMC received (status, off, reset).
    pub bmc_calls: u64,
}

/// One status transition.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionReport {
    /// When.
    pub at_s: f64,
    /// From (null: no status yet).
    pub from: Option<String>,
    /// Event.
    pub event: String,
    /// To.
    pub to: String,
    /// Why.
    pub reason: String,
}

/// A VM, where it ran, and its HA restarts.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    /// Name.
    pub name: String,
    /// HA flag.
    pub ha: bool,
    /// Ground-truth placements in time order (the first at 0).
    pub placements: Vec<PlacementReport>,
    /// HA restarts.
    pub restarts: Vec<RestartReport>,
    /// The death proofs HA recorded for it (one per work item that found one).
    pub proofs: Vec<ProofReport>,
}

/// A death proof, as HA recorded it on a work item.
#[derive(Debug, Clone, Serialize)]
pub struct ProofReport {
    /// When it was made.
    pub at_s: f64,
    /// power_fenced, pool_fenced, self_fenced, dead_verdict, vm_reported_off, operator_word.
    pub kind: String,
    /// The host whose copy is proven dead.
    pub host: Option<String>,
    /// The evidence.
    pub evidence: String,
    /// For self and pool fences: the heartbeat's age when read, in seconds.
    pub heartbeat_age_s: Option<f64>,
    /// For self and pool fences: the self-fence deadline relied on, in seconds.
    pub deadline_s: Option<f64>,
}

/// One ground-truth placement.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementReport {
    /// When.
    pub at_s: f64,
    /// Host.
    pub host: Option<String>,
    /// Running or Stopped.
    pub state: String,
}

/// One HA restart.
#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    /// When.
    pub at_s: f64,
    /// The host it ran on before.
    pub from_host: Option<String>,
    /// The host it runs on now.
    pub to_host: String,
}

/// One fence attempt.
#[derive(Debug, Clone, Serialize)]
pub struct FenceReport {
    /// When.
    pub at_s: f64,
    /// The fenced host.
    pub host: String,
    /// Which fencer.
    pub method: String,
    /// fenced, failed or no_proof.
    pub outcome: String,
    /// The proof or the reason.
    pub evidence: String,
}

/// A host fault, when the host's status first changed after it, and when it went Down.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// Host.
    pub host: String,
    /// The fault.
    pub fault: String,
    /// When the fault hit.
    pub fault_at_s: f64,
    /// The host's last ping before the fault (null: none seen).
    pub last_ping_s: Option<f64>,
    /// The first status change after it (null: none).
    pub flagged_at_s: Option<f64>,
    /// When it went Down (null: never).
    pub down_at_s: Option<f64>,
}

/// One alert.
#[derive(Debug, Clone, Serialize)]
pub struct AlertReport {
    /// When.
    pub at_s: f64,
    /// Kind (snake_case).
    pub kind: String,
    /// Host.
    pub host: Option<String>,
    /// Text.
    pub message: String,
}

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Invariant {
    /// Held throughout.
    pub ok: bool,
    /// What broke it, when.
    pub violations: Vec<String>,
    /// What it could not judge before the run ended (`ha_liveness`: deaths less than the bound
    /// before the end).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_judged: Vec<String>,
}

/// The five invariants, judged on ground truth alone (docs/scenarios.md).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Invariants {
    /// No VM has two live processes at once, anywhere (one host included).
    pub no_double_run: Invariant,
    /// Every HA start's recorded death proof is true in ground truth at that instant.
    pub no_unsafe_start: Invariant,
    /// Every HA VM whose process died (its host lost power, was cut off, or it crashed) runs
    /// again within `sim.liveness.bound`, unless excused by the truth.
    pub ha_liveness: Invariant,
    /// No non-HA VM is restarted unless `force.ha`.
    pub no_unwanted_restart: Invariant,
    /// No host that stayed powered and reachable is declared Down or powered off by a fencer.
    pub no_false_down: Invariant,
}

impl Invariants {
    /// Every invariant with its name.
    pub fn all(&self) -> [(&'static str, &Invariant); 5] {
        [
            ("no_double_run", &self.no_double_run),
            ("no_unsafe_start", &self.no_unsafe_start),
            ("ha_liveness", &self.ha_liveness),
            ("no_unwanted_restart", &self.no_unwanted_restart),
            ("no_false_down", &self.no_false_down),
        ]
    }

    /// Every invariant with its name, mutable.
    pub fn all_mut(&mut self) -> [(&'static str, &mut Invariant); 5] {
        [
            ("no_double_run", &mut self.no_double_run),
            ("no_unsafe_start", &mut self.no_unsafe_start),
            ("ha_liveness", &mut self.ha_liveness),
            ("no_unwanted_restart", &mut self.no_unwanted_restart),
            ("no_false_down", &mut self.no_false_down),
        ]
    }
}

/// One expectation's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ExpectationResult {
    /// The expectation, in words.
    pub text: String,
    /// Met.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// How fast one failed host was handled, in seconds from its last ping before the fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failover {
    /// The fault, after the last ping.
    pub fault_s: f64,
    /// Down, after the last ping (`None`: never Down).
    pub down_s: Option<f64>,
    /// The last of its HA VMs running elsewhere again, after the last ping (`None`: not all).
    pub restarted_s: Option<f64>,
}

impl Report {
    /// How fast the first fault of `host` was handled (measured from its last ping before it).
    /// `None` when the host had no fault or no ping before it.
    pub fn failover(&self, host: &str) -> Option<Failover> {
        let d = self.detections.iter().find(|d| d.host == host)?;
        let last = d.last_ping_s?;
        let mut restarted = Some(f64::MIN);
        for v in self.vms.iter().filter(|v| v.ha) {
            let ran_here = v
                .placements
                .iter()
                .rev()
                .find(|p| p.at_s <= d.fault_at_s)
                .is_some_and(|p| p.host.as_deref() == Some(host));
            if !ran_here {
                continue;
            }
            let back = v
                .restarts
                .iter()
                .find(|r| r.at_s >= d.fault_at_s && r.from_host.as_deref() == Some(host));
            restarted = match (restarted, back) {
                (Some(t), Some(r)) => Some(t.max(r.at_s)),
                _ => None,
            };
        }
        Some(Failover {
            fault_s: d.fault_at_s - last,
            down_s: d.down_at_s.map(|t| t - last),
            restarted_s: restarted.filter(|t| *t > f64::MIN).map(|t| t - last),
        })
    }

    /// Whether every invariant and expectation holds.
    pub fn ok(&self) -> bool {
        self.invariants.all().iter().all(|(_, i)| i.ok) && self.expectations.iter().all(|e| e.ok)
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A readable timeline of transitions, fences, restarts and alerts, by time.
    pub fn timeline(&self) -> String {
        let mut lines: Vec<(f64, u8, String)> = Vec::new();
        for h in &self.hosts {
            for t in &h.transitions {
                let from = t.from.as_deref().unwrap_or("(null)");
                lines.push((
                    t.at_s,
                    0,
                    format!(
                        "host  {:<14} {from} --{}--> {}  [{}]",
                        h.name, t.event, t.to, t.reason
                    ),
                ));
            }
        }
        for f in &self.fences {
            lines.push((
                f.at_s,
                1,
                format!(
                    "fence {:<14} {} {}: {}",
                    f.host, f.method, f.outcome, f.evidence
                ),
            ));
        }
        for v in &self.vms {
            for r in &v.restarts {
                lines.push((
                    r.at_s,
                    2,
                    format!(
                        "vm    {:<14} restarted {} -> {}",
                        v.name,
                        r.from_host.as_deref().unwrap_or("?"),
                        r.to_host
                    ),
                ));
            }
        }
        for a in &self.alerts {
            lines.push((
                a.at_s,
                3,
                format!(
                    "alert {:<14} {}: {}",
                    a.host.as_deref().unwrap_or("-"),
                    a.kind,
                    a.message
                ),
            ));
        }
        lines.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut out = String::new();
        for (at, _, text) in lines {
            out.push_str(&format!("[{}] {text}\n", clock(at)));
        }
        out
    }

    /// The summary printed after the timeline.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "scenario {} (seed {}): {} virtual, {} hosts, {} VMs, {} transitions, {} fences, {} restarts, {} alerts, {} ms wall\n",
            self.scenario,
            self.seed,
            clock(self.virtual_duration_s),
            self.hosts.len(),
            self.vms.len(),
            self.hosts
                .iter()
                .map(|h| h.transitions.len())
                .sum::<usize>(),
            self.fences.len(),
            self.vms.iter().map(|v| v.restarts.len()).sum::<usize>(),
            self.alerts.len(),
            self.wall_ms,
        );
        for (name, inv) in self.invariants.all() {
            out.push_str(&format!(
                "  invariant {name}: {}\n",
                if inv.ok {
                    "ok".to_owned()
                } else {
                    format!("FAILED ({})", inv.violations.join("; "))
                }
            ));
            if !inv.not_judged.is_empty() {
                out.push_str(&format!(
                    "  invariant {name}: not judged (too close to the end): {}\n",
                    inv.not_judged.join("; ")
                ));
            }
        }
        for e in &self.expectations {
            out.push_str(&format!(
                "  expect {}: {} ({})\n",
                e.text,
                if e.ok { "ok" } else { "FAILED" },
                e.detail
            ));
        }
        out.push_str(if self.ok() {
            "result: ok\n"
        } else {
            "result: FAILED\n"
        });
        out
    }
}

/// `h:mm:ss` (with milliseconds when not whole).
pub fn clock(s: f64) -> String {
    let ms = (s * 1000.0).round() as u64;
    let (h, m, sec, rest) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if rest == 0 {
        format!("{h}:{m:02}:{sec:02}")
    } else {
        format!("{h}:{m:02}:{sec:02}.{rest:03}")
    }
}
