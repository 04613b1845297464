//! Benchmarks (not tests): figures for BENCHMARKS.md, measured side by side in one run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::workspace_root;

fn cargo_build_release(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release"])
        .args(args)
        .current_dir(workspace_root())
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("cargo build --release {} failed", args.join(" "));
    }
    Ok(())
}

/// Runs a command whose output contains `faults=N ns=T` and returns ns per fault.
fn ns_per_fault(cmd: &mut Command) -> Result<f64> {
    let out = cmd.output().context("running the fault loop")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("benchmark command failed: {text}");
    }
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (field("faults="), field("ns=")) {
        (Some(f), Some(ns)) if f > 0.0 => Ok(ns / f),
        _ => bail!("no faults=/ns= in output: {text}"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ensure_bpftrace() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/bin/bpftrace");
    if !path.exists() {
        if !crate::host::is_root() {
            bail!("bpftrace is missing: apt-get install bpftrace");
        }
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "bpftrace"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            bail!("installing bpftrace failed");
        }
    }
    Ok(path)
}

/// Host probe overhead: a process faulting fresh pages as fast as it can, untraced, counted in
/// the kernel, streamed to a file, and traced by bpftrace printing the same per-event line.
pub fn probes(rounds: usize, pages: usize, loops: usize) -> Result<()> {
    crate::host::ensure()?;
    let bpftrace = ensure_bpftrace()?;
    // bpftrace attaches classic tracepoints through tracefs, which these machines leave unmounted.
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let status = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()
            .context("mounting tracefs")?;
        if !status.success() {
            bail!("mounting tracefs for bpftrace failed");
        }
    }
    cargo_build_release(&["-p", "odp-ctl"])?;
    cargo_build_release(&["-p", "odp-ebpf", "--example", "fault_loop"])?;
    let root = workspace_root();
    let odp_ctl = root.join("target/release/odp-ctl");
    let fault_loop = root.join("target/release/examples/fault_loop");
    let workload = [
        fault_loop.display().to_string(),
        pages.to_string(),
        loops.to_string(),
    ];
    let stream_file = std::env::temp_dir().join("odp-bench-stream.jsonl");
    let bt_file = std::env::temp_dir().join("odp-bench-bpftrace.txt");

    let conditions = ["untraced", "count-only", "stream-json", "bpftrace-printf"];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); conditions.len()];
    let mut drops = 0u64;
    let mut streamed_events = Vec::new();
    for round in 0..rounds {
        for (i, name) in conditions.iter().enumerate() {
            let ns = match *name {
                "untraced" => ns_per_fault(Command::new(&workload[0]).args(&workload[1..]))?,
                "count-only" => ns_per_fault(
                    Command::new(&odp_ctl)
                        .args(["trace", "--count-only", "--points", "cpu", "--"])
                        .args(&workload),
                )?,
                "stream-json" => ns_per_fault(
                    Command::new(&odp_ctl)
                        .args(["--json", "trace", "--points", "cpu", "--output"])
                        .arg(&stream_file)
                        .arg("--")
                        .args(&workload),
                )?,
                _ => ns_per_fault(
                    Command::new(&bpftrace)
                        .args(["-q", "-o"])
                        .arg(&bt_file)
                        .arg("-e")
                        .arg(
                            "tracepoint:exceptions:page_fault_user /pid == cpid/ \
                             { printf(\"%d %d %lx %lx\\n\", pid, tid, args->address, args->error_code); }",
                        )
                        .arg("-c")
                        .arg(workload.join(" ")),
                )?,
            };
            if *name == "stream-json" {
                let summary = summary_of(&stream_file)?;
                drops += summary.0;
                streamed_events.push(summary.1);
            }
            samples[i].push(ns);
            eprintln!("round {round}: {name:<16} {ns:8.1} ns/fault");
        }
    }
    let base = median(&mut samples[0].clone());
    println!(
        "\nhost probe overhead: {rounds} rounds x {} faults each, medians (interleaved)",
        pages * loops
    );
    println!(
        "{:<16} {:>12} {:>10}",
        "condition", "ns/fault", "vs untraced"
    );
    for (i, name) in conditions.iter().enumerate() {
        let m = median(&mut samples[i]);
        println!("{name:<16} {m:>12.1} {:>+9.1}%", (m / base - 1.0) * 100.0);
    }
    println!(
        "stream-json: {drops} drops in total; events per run: {streamed_events:?} (faults per run: {})",
        pages * loops
    );
    Ok(())
}

/// (drops, events) from the summary line at the end of a JSON Lines trace file.
fn summary_of(path: &Path) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(path)?;
    let last = text
        .lines()
        .rev()
        .find(|l| l.contains("\"summary\""))
        .context("no summary line")?;
    let doc: serde_json::Value = serde_json::from_str(last)?;
    Ok((
        doc["summary"]["drops"].as_u64().unwrap_or(u64::MAX),
        doc["summary"]["events"].as_u64().unwrap_or(0),
    ))
}

const VM_BENCH: &str = r#"
run() { echo "BENCH $1"; odp-ctl register --size 16M --traffic --message-size 1M | grep -E "^ (RDMA|SEND)"; }
for round in $(seq 1 ROUNDS); do
  run untraced
  odp-ctl trace --count-only --output /tmp/c.txt 2>/tmp/c.err & t=$!
  while ! grep -q tracing /tmp/c.err 2>/dev/null; do sleep 0.2; done
  run count-only
  kill -INT $t; wait $t
  odp-ctl --json trace --output /tmp/s.jsonl 2>/tmp/s.err & t=$!
  while ! grep -q tracing /tmp/s.err 2>/dev/null; do sleep 0.2; done
  run stream-json
  kill -INT $t; wait $t
  grep -o '"drops":[0-9]*' /tmp/s.jsonl | sed 's/^/DROPS /'
done
"#;

/// Loopback RDMA throughput over an ODP MR in the VM with the full probe set (counting, and
/// streaming to a file) and without, interleaved.
pub fn vm_probes(vm_opts: &crate::VmOpts, rounds: usize) -> Result<()> {
    crate::host::ensure()?;
    cargo_build_release(&["-p", "odp-ctl"])?;
    let odp_ctl = workspace_root().join("target/release/odp-ctl");
    let guest = crate::prepare(vm_opts)?;
    let script = VM_BENCH.replace("ROUNDS", &rounds.to_string());
    let outcome = crate::vm::run_job(&guest, &crate::job(vm_opts, script, vec![odp_ctl]))?;
    if outcome.status != 0 {
        bail!("the benchmark failed in the VM (status {})", outcome.status);
    }
    // condition -> per-op MB/s samples
    let mut samples: std::collections::BTreeMap<(String, String), Vec<f64>> = Default::default();
    let mut condition = String::new();
    let mut drops = Vec::new();
    for line in outcome.output.lines() {
        if let Some(c) = line.strip_prefix("BENCH ") {
            condition = c.trim().to_string();
        } else if let Some(d) = line.strip_prefix("DROPS ") {
            drops.push(d.trim().trim_start_matches("\"drops\":").to_string());
        } else {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (op, rest) = match cols.as_slice() {
                ["RDMA", op, rest @ ..] => (format!("RDMA {op}"), rest),
                ["SEND", rest @ ..] => ("SEND".to_string(), rest),
                _ => continue,
            };
            if let Some(mbps) = rest.get(3).and_then(|v| v.parse::<f64>().ok()) {
                samples
                    .entry((op, condition.clone()))
                    .or_default()
                    .push(mbps);
            }
        }
    }
    println!("\nVM loopback throughput on a 16 MiB ODP MR, 1 MiB messages, {rounds} rounds, medians (MB/s)");
    println!(
        "{:<12} {:>10} {:>12} {:>12}",
        "op", "untraced", "count-only", "stream-json"
    );
    for op in ["RDMA WRITE", "RDMA READ", "SEND"] {
        let mut get = |c: &str| {
            samples
                .get_mut(&(op.to_string(), c.to_string()))
                .map(|v| median(v))
                .unwrap_or(f64::NAN)
        };
        let (u, c, s) = (get("untraced"), get("count-only"), get("stream-json"));
        println!(
            "{op:<12} {u:>10.1} {c:>8.1} ({:.2}) {s:>8.1} ({:.2})",
            c / u,
            s / u
        );
    }
    println!("stream-json drops per round: {drops:?}");
    Ok(())
}
