//! The scenario's `[[expect]]` entries checked against the assembled report.

use std::time::Duration;

use super::Cloud;
use crate::report::{AlertReport, ExpectationResult, HostReport, VmReport, clock};
use crate::scenario::Expect;

/// An expectation on a count: "`range` `what`" holds when `n` is within `min`..=`max`.
fn counted(
    what: String,
    n: u64,
    min: Option<u64>,
    max: Option<u64>,
    detail: String,
) -> ExpectationResult {
    let range = match (min, max) {
        (Some(a), Some(b)) => format!("between {a} and {b}"),
        (Some(a), None) => format!("at least {a}"),
        (None, Some(b)) => format!("at most {b}"),
        (None, None) => "any number of".into(),
    };
    ExpectationResult {
        text: format!("{range} {what}"),
        ok: min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m),
        detail,
    }
}

impl Cloud {
    pub(super) fn expectations(
        &self,
        hosts: &[HostReport],
        vms: &[VmReport],
        alerts: &[AlertReport],
    ) -> Vec<ExpectationResult> {
        let fmt = |d: Duration| cloudha_protocol::duration::format(d);
        let secs = |d: Duration| d.as_millis() as f64 / 1000.0;
        self.scenario
            .expects
            .iter()
            .map(|e| match e {
                Expect::HostStatus {
                    host,
                    status,
                    after,
                    by,
                } => {
                    let h = hosts.iter().find(|h| &h.name == host);
                    let hit = h.and_then(|h| {
                        h.transitions.iter().find(|t| {
                            t.to == status.as_str() && t.at_s >= secs(*after) && t.at_s <= secs(*by)
                        })
                    });
                    let seen = h
                        .map(|h| {
                            h.transitions
                                .iter()
                                .map(|t| format!("{}@{}", t.to, clock(t.at_s)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    ExpectationResult {
                        text: format!(
                            "host {host} enters {status} between {} and {}",
                            fmt(*after),
                            fmt(*by)
                        ),
                        ok: hit.is_some(),
                        detail: hit.map_or(format!("not seen; statuses: [{seen}]"), |t| {
                            format!("entered {status} at {}", clock(t.at_s))
                        }),
                    }
                }
                Expect::HostNever { host, status } => {
                    let hit = hosts
                        .iter()
                        .find(|h| &h.name == host)
                        .and_then(|h| h.transitions.iter().find(|t| t.to == status.as_str()));
                    ExpectationResult {
                        text: format!("host {host} never enters {status}"),
                        ok: hit.is_none(),
                        detail: hit.map_or("never entered".into(), |t| {
                            format!("entered {status} at {}", clock(t.at_s))
                        }),
                    }
                }
                Expect::VmState {
                    vm,
                    state,
                    by,
                    on,
                    not_on,
                } => {
                    let v = vms.iter().find(|v| &v.name == vm);
                    let last =
                        v.and_then(|v| v.placements.iter().rev().find(|p| p.at_s <= secs(*by)));
                    let want = format!("{state:?}");
                    let ok = last.is_some_and(|p| {
                        p.state == want
                            && on.as_ref().is_none_or(|h| p.host.as_ref() == Some(h))
                            && not_on.as_ref().is_none_or(|h| p.host.as_ref() != Some(h))
                    });
                    let mut text = format!("vm {vm} is {want} by {}", fmt(*by));
                    if let Some(h) = on {
                        text.push_str(&format!(" on {h}"));
                    }
                    if let Some(h) = not_on {
                        text.push_str(&format!(" not on {h}"));
                    }
                    ExpectationResult {
                        text,
                        ok,
                        detail: last.map_or("no placement".into(), |p| {
                            format!(
                                "{} on {} since {}",
                                p.state,
                                p.host.as_deref().unwrap_or("-"),
                                clock(p.at_s)
                            )
                        }),
                    }
                }
                Expect::VmNotRestarted { vm } => {
                    let n = vms
                        .iter()
                        .find(|v| &v.name == vm)
                        .map_or(0, |v| v.restarts.len());
                    ExpectationResult {
                        text: format!("vm {vm} is never restarted"),
                        ok: n == 0,
                        detail: format!("{n} restarts"),
                    }
                }
                Expect::AlertCount { kind, min, max } => {
                    let n = alerts.iter().filter(|a| &a.kind == kind).count() as u64;
                    counted(
                        format!("{kind} alerts"),
                        n,
                        *min,
                        *max,
                        format!("{n} raised"),
                    )
                }
                Expect::ProofCount { kind, min, max } => {
                    let n = vms
                        .iter()
                        .flat_map(|v| &v.proofs)
                        .filter(|p| &p.kind == kind)
                        .count() as u64;
                    counted(
                        format!("HA work items with a {kind} proof"),
                        n,
                        *min,
                        *max,
                        format!("{n} recorded"),
                    )
                }
                Expect::BmcCalls { host, min, max } => {
                    let n = hosts
                        .iter()
                        .find(|h| &h.name == host)
                        .map_or(0, |h| h.bmc_calls);
                    counted(
                        format!("calls to the BMC of {host}"),
                        n,
                        *min,
                        *max,
                        format!("{n} calls"),
                    )
                }
            })
            .collect()
    }
}
