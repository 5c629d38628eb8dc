//! Shrinking a violating schedule to a minimal one: fewer faults, fewer hosts, earlier.

use std::time::Duration;

use super::draw::Space;
use super::{Explorer, Judge, Schedule};
use crate::scenario::Fault;

/// Runs a shrink may spend on one violation.
pub(super) const SHRINK_BUDGET: usize = 160;

impl Explorer {
    /// Shrinks a schedule that violates `invariant` to a minimal one that still does; returns
    /// it with the violation's message in the minimal run.
    pub fn shrink(&self, schedule: Schedule, invariant: &str) -> (Schedule, Option<String>) {
        self.shrink_with(schedule, invariant, &|s| self.judge(s))
    }

    pub(super) fn shrink_with(
        &self,
        schedule: Schedule,
        invariant: &str,
        judge: &Judge<'_>,
    ) -> (Schedule, Option<String>) {
        let mut message = None;
        let minimal = shrink(&self.space, schedule, SHRINK_BUDGET, |s| {
            match judge(s).into_iter().find(|v| v.invariant == invariant) {
                Some(v) => {
                    message = Some(v.message);
                    true
                }
                None => false,
            }
        });
        (minimal, message)
    }
}

/// Shrinks `start` while `fails` holds: fewer faults, then fewer hosts (or VMs) per fault,
/// then each fault as early as the space allows (a bisection to the second), repeated until a
/// pass changes nothing or `budget` runs are spent. Greedy: the result is minimal in the
/// sense that no single one of those steps keeps it failing.
pub(super) fn shrink(
    space: &Space,
    start: Schedule,
    budget: usize,
    mut fails: impl FnMut(&Schedule) -> bool,
) -> Schedule {
    let runs = std::cell::Cell::new(0);
    let mut check = |s: &Schedule| {
        if runs.get() >= budget {
            return false;
        }
        runs.set(runs.get() + 1);
        fails(s)
    };
    let mut best = start;
    // Faults already moved as early as they go (by value: positions shift as faults go).
    let mut settled: Vec<Fault> = Vec::new();
    loop {
        let before = best.clone();
        let mut i = 0;
        while i < best.faults.len() {
            let mut c = best.clone();
            c.faults.remove(i);
            if check(&c) {
                best = c;
            } else {
                i += 1;
            }
        }
        for i in 0..best.faults.len() {
            let mut j = 0;
            while best.faults[i].hosts.len() + best.faults[i].vms.len() > 1 {
                let f = &best.faults[i];
                if j >= f.hosts.len() + f.vms.len() {
                    break;
                }
                let mut c = best.clone();
                let g = &mut c.faults[i];
                if j < g.hosts.len() {
                    g.hosts.remove(j);
                } else {
                    g.vms.remove(j - g.hosts.len());
                }
                if check(&c) {
                    best = c;
                } else {
                    j += 1;
                }
            }
        }
        for i in 0..best.faults.len() {
            if settled.contains(&best.faults[i]) || best.faults[i].at <= space.at.0 {
                continue;
            }
            let with_at = |best: &Schedule, at: Duration| {
                let mut c = best.clone();
                c.faults[i].at = at;
                c
            };
            let (mut lo, mut hi) = (space.at.0, best.faults[i].at);
            let c = with_at(&best, lo);
            if check(&c) {
                best = c;
            } else {
                while hi.saturating_sub(lo) > Duration::from_secs(1) {
                    let mid = lo + Duration::from_secs(hi.saturating_sub(lo).as_secs() / 2);
                    let c = with_at(&best, mid);
                    if check(&c) {
                        best = c;
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
            }
            settled.push(best.faults[i].clone());
        }
        if best == before || runs.get() >= budget {
            break;
        }
    }
    best.faults.sort_by_key(|f| f.at);
    best
}
