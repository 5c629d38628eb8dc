//! Running an explore: each drawn schedule judged on the invariants (on worker threads), the
//! violating ones shrunk, and the findings merged by shape.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    ExploreOptions, Explorer, Finding, Judge, Outcome, Phase, Progress, SIMULATOR_PANIC, Schedule,
    Violation,
};
use crate::report::Invariants;
use crate::scenario::FaultKind;

impl Explorer {
    /// Runs a schedule; the invariants it broke (a panic counts as [`SIMULATOR_PANIC`]).
    pub fn judge(&self, schedule: &Schedule) -> Vec<Violation> {
        let scenario = self.scenario(schedule);
        match catch_unwind(AssertUnwindSafe(|| {
            crate::simulate(&scenario, schedule.seed)
        })) {
            Ok(report) => report
                .invariants
                .all()
                .iter()
                .filter(|(_, i)| !i.ok)
                .map(|(name, i)| Violation {
                    invariant: (*name).to_owned(),
                    message: i.violations.first().cloned().unwrap_or_default(),
                })
                .collect(),
            Err(payload) => vec![Violation {
                invariant: SIMULATOR_PANIC.to_owned(),
                message: payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned()),
            }],
        }
    }

    /// Draws and runs `options.schedules` schedules on `options.jobs` threads, then shrinks
    /// the violating ones; `progress` is told as schedules finish (from any thread).
    pub fn run(&self, options: &ExploreOptions, progress: &(dyn Fn(Progress) + Sync)) -> Outcome {
        self.run_with(options, progress, &|s| self.judge(s))
    }

    /// [`Explorer::run`] with another judge (tests give a synthetic one).
    pub(super) fn run_with(
        &self,
        options: &ExploreOptions,
        progress: &(dyn Fn(Progress) + Sync),
        judge: &Judge<'_>,
    ) -> Outcome {
        let total = options.schedules;
        let verdicts = parallel(
            total,
            options.jobs,
            |i| judge(&self.draw(options.seed, i)),
            &|done| {
                progress(Progress {
                    phase: Phase::Running,
                    done,
                    total,
                });
            },
        );

        let mut order: Vec<String> = Invariants::default()
            .all()
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        for v in verdicts.iter().flatten() {
            if !order.contains(&v.invariant) {
                order.push(v.invariant.clone());
            }
        }
        let mut by_invariant: Vec<(String, usize, usize)> =
            order.iter().map(|n| (n.clone(), 0, 0)).collect();
        let mut jobs: Vec<(usize, String)> = Vec::new();
        for (i, found) in verdicts.iter().enumerate() {
            for v in found {
                if let Some(row) = by_invariant.iter_mut().find(|r| r.0 == v.invariant) {
                    row.1 += 1;
                    if row.2 < options.shrink_limit {
                        row.2 += 1;
                        jobs.push((i, v.invariant.clone()));
                    }
                }
            }
        }

        let shrunk = parallel(
            jobs.len(),
            options.jobs,
            |j| {
                let (index, invariant) = &jobs[j];
                let start = self.draw(options.seed, *index);
                let before = start.faults.len();
                let (minimal, message) = self.shrink_with(start, invariant, judge);
                (before, minimal, message)
            },
            &|done| {
                progress(Progress {
                    phase: Phase::Shrinking,
                    done,
                    total: jobs.len(),
                });
            },
        );

        let mut findings: Vec<Finding> = Vec::new();
        for ((index, invariant), (before, minimal, message)) in jobs.into_iter().zip(shrunk) {
            let message = message.unwrap_or_else(|| {
                verdicts[index]
                    .iter()
                    .find(|v| v.invariant == invariant)
                    .map(|v| v.message.clone())
                    .unwrap_or_default()
            });
            if let Some(f) = findings
                .iter_mut()
                .find(|f| f.invariant == invariant && shape(&f.schedule) == shape(&minimal))
            {
                f.similar += 1;
                continue;
            }
            let file_name = format!("{invariant}-{index}.toml");
            let comments = vec![
                format!(
                    "Found by `cloudha explore {} --seed {}{}`: schedule {index}, shrunk from {before} fault(s) to {}.",
                    self.file,
                    options.seed,
                    if self.allow_lies { " --allow-lies" } else { "" },
                    minimal.faults.len()
                ),
                format!("Violates `{invariant}`: {message}"),
                format!("Reproduce: cloudha simulate {file_name}"),
            ];
            let name = format!(
                "{}: {invariant} (explore seed {}, schedule {index})",
                self.base.name, options.seed
            );
            let text = self.to_toml(&minimal, &comments, &name);
            findings.push(Finding {
                index,
                invariant,
                message,
                faults_before: before,
                schedule: minimal,
                similar: 0,
                file_name,
                text,
            });
        }
        Outcome {
            file: self.file.clone(),
            seed: options.seed,
            schedules: total,
            violating: verdicts.iter().filter(|v| !v.is_empty()).count(),
            by_invariant: by_invariant
                .into_iter()
                .filter(|(name, n, _)| *n > 0 || name != SIMULATOR_PANIC)
                .collect(),
            findings,
        }
    }
}

/// What two minimal schedules must share to count as one finding: the same kinds in the same
/// order, each on as many hosts or VMs (which hosts, the times, durations and the run's seed
/// may differ: a power loss of kvm-h1 and one of kvm-h2 are the same finding).
fn shape(s: &Schedule) -> Vec<(FaultKind, usize, usize)> {
    s.faults
        .iter()
        .map(|f| (f.kind, f.hosts.len(), f.vms.len()))
        .collect()
}

/// `f(0..n)` on `jobs` scoped threads pulling indices from one counter; results in index
/// order, whatever the threads' timing. `tick(done)` after each item.
pub(super) fn parallel<T: Send>(
    n: usize,
    jobs: usize,
    f: impl Fn(usize) -> T + Sync,
    tick: &(dyn Fn(usize) + Sync),
) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.clamp(1, n.max(1)))
            .map(|w| {
                let (next, done, f) = (&next, &done, &f);
                std::thread::Builder::new()
                    .name(format!("explore-{w}"))
                    .spawn_scoped(scope, move || {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break mine;
                            }
                            mine.push((i, f(i)));
                            tick(done.fetch_add(1, Ordering::Relaxed) + 1);
                        }
                    })
                    .expect("a worker thread")
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(mine) => mine,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, t)| t).collect()
}
