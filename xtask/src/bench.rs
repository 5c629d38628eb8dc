//! `cargo xtask bench [FILTER]`: runs every benchmark at full size, then prints one summary
//! table of medians and throughputs (divan's per-bench tables are printed as they run).

use std::process::{Command, Stdio};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(["bench", "--workspace", "--quiet"])
        .current_dir(crate::root());
    cmd.env("CLOUDHA_BENCH_FULL", "1");
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo bench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        return Err(format!("cargo bench exited with {}", out.status));
    }
    println!(
        "\n{:<58} {:>14} {:>20}",
        "benchmark", "median", "median throughput"
    );
    for row in summarize(&text) {
        println!("{:<58} {:>14} {:>20}", row.0, row.1, row.2);
    }
    Ok(())
}

/// (name, median, throughput) for each leaf row of divan's tree output.
fn summarize(text: &str) -> Vec<(String, String, String)> {
    let mut rows = Vec::new();
    let mut group = String::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        // Custom benches print `metric: <name> <value> <unit> [notes]`.
        if let Some(rest) = line.strip_prefix("metric: ") {
            let mut parts = rest.splitn(4, ' ');
            let name = parts.next().unwrap_or_default().to_owned();
            let value = format!(
                "{} {}",
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default()
            );
            rows.push((name, value, parts.next().unwrap_or_default().to_owned()));
            continue;
        }
        let cols: Vec<&str> = line.split('│').map(str::trim).collect();
        if cols.len() < 4 {
            continue;
        }
        if cols[0].ends_with("fastest") {
            group = cols[0]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            continue;
        }
        let Some(name_col) = cols[0].split("─ ").nth(1) else {
            continue;
        };
        let mut parts = name_col.split_whitespace();
        let name = parts.next().unwrap_or_default();
        if name.is_empty() || cols[2].is_empty() {
            continue;
        }
        let through = lines
            .get(i + 1)
            .map(|next| next.split('│').map(str::trim).collect::<Vec<_>>())
            .filter(|c| c.len() >= 4 && c[3].ends_with("/s"))
            .map(|c| c[3].to_owned())
            .unwrap_or_default();
        rows.push((format!("{group}::{name}"), cols[2].to_owned(), through));
    }
    rows
}

#[cfg(test)]
mod tests {
    #[test]
    fn summarizes_divan_tables() {
        let text = "codec                                 fastest       │ slowest       │ median        │ mean          │ samples │ iters\n\
├─ decode_x                            7.8 µs        │ 56.5 µs       │ 8.1 µs        │ 8.2 µs        │ 2000    │ 2000\n\
│                                     127.3 Kitem/s │ 17.68 Kitem/s │ 122.8 Kitem/s │ 121.1 Kitem/s │         │\n\
╰─ payload_only                       1.4 µs        │ 4.8 µs        │ 1.5 µs        │ 1.5 µs        │ 2000    │ 2000\n\
metric: attache::idle 900 bytes (n=10)\n";
        let rows = super::summarize(text);
        assert_eq!(
            rows,
            vec![
                (
                    "codec::decode_x".into(),
                    "8.1 µs".into(),
                    "122.8 Kitem/s".into()
                ),
                ("codec::payload_only".into(), "1.5 µs".into(), String::new()),
                ("attache::idle".into(), "900 bytes".into(), "(n=10)".into()),
            ]
        );
    }
}
