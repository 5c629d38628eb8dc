//! `cloudha explore`: reads the base, runs the explorer on every core with a progress bar (on
//! a terminal only), writes the minimal failing scenarios, prints the summary.
//!
//! Standard output is deterministic for a seed (the summary); the wall time and the rate go
//! to standard error.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use cloudha_sim::{ExploreOptions, Explorer, Phase, Progress};

use super::bad_input;

/// The command line of `cloudha explore`.
pub(crate) struct Args {
    pub(crate) base: PathBuf,
    pub(crate) schedules: usize,
    pub(crate) seed: Option<u64>,
    pub(crate) out: PathBuf,
    pub(crate) allow_lies: bool,
    pub(crate) jobs: Option<usize>,
    pub(crate) shrink_limit: usize,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let path = args.base.display().to_string();
    let text = match std::fs::read_to_string(&args.base) {
        Ok(t) => t,
        Err(e) => return bad_input(format!("{path}: {e}")),
    };
    if args.schedules == 0 {
        return bad_input("explore: --schedules must be at least 1");
    }
    if args.jobs == Some(0) {
        return bad_input("explore: --jobs must be at least 1");
    }
    let explorer = match Explorer::parse(&text, &path, args.allow_lies) {
        Ok(e) => e,
        Err(e) => return bad_input(e),
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let options = ExploreOptions {
        schedules: args.schedules,
        seed: args.seed.or(explorer.base().seed).unwrap_or(1),
        jobs,
        shrink_limit: args.shrink_limit,
    };
    quiet_worker_panics();
    let bar = Bar::new(std::io::stderr().is_terminal());
    #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
    let wall = std::time::Instant::now();
    let outcome = explorer.run(&options, &|p| bar.draw(p));
    let secs = wall.elapsed().as_secs_f64();
    bar.clear();

    if !outcome.findings.is_empty()
        && let Err(e) = std::fs::create_dir_all(&args.out)
    {
        return bad_input(format!("--out {}: {e}", args.out.display()));
    }
    for f in &outcome.findings {
        let file = args.out.join(&f.file_name);
        if let Err(e) = std::fs::write(&file, &f.text) {
            return bad_input(format!("{}: {e}", file.display()));
        }
    }
    print!("{}", outcome.summary(&args.out.display().to_string()));
    eprintln!(
        "explore: {} schedules in {secs:.1} s on {jobs} thread{} ({:.0} schedules/s)",
        outcome.schedules,
        if jobs == 1 { "" } else { "s" },
        outcome.schedules as f64 / secs.max(1e-9)
    );
    if outcome.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A run that panics is a finding (`simulator_panic`), reported in the summary: its worker
/// thread stays silent instead of printing the panic over the progress bar. Other threads keep
/// the default report.
fn quiet_worker_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let worker = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("explore-"));
        if !worker {
            default(info);
        }
    }));
}

/// A one-line progress bar on standard error, drawn only on a terminal (never into CI logs),
/// redrawn when the percentage changes.
struct Bar {
    on: bool,
    last: Mutex<Option<(Phase, usize)>>,
}

impl Bar {
    const WIDTH: usize = 30;

    fn new(on: bool) -> Self {
        Self {
            on,
            last: Mutex::new(None),
        }
    }

    fn draw(&self, p: Progress) {
        if !self.on || p.total == 0 {
            return;
        }
        let percent = p.done * 100 / p.total;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some((p.phase, percent)) {
            return;
        }
        *last = Some((p.phase, percent));
        let filled = p.done * Self::WIDTH / p.total;
        let what = match p.phase {
            Phase::Running => "running",
            Phase::Shrinking => "shrinking",
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{what:<9} [{}{}] {}/{} {percent}%",
            "#".repeat(filled),
            ".".repeat(Self::WIDTH - filled),
            p.done,
            p.total
        );
        let _ = err.flush();
    }

    fn clear(&self) {
        if self.on {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}
