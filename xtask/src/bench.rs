//! Benchmarks (not tests): figures for BENCHMARKS.md, measured side by side in one run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::workspace_root;

pub fn cargo_build_release(args: &[&str]) -> Result<()> {
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
    match (field(&text, "faults="), field(&text, "ns=")) {
        (Some(f), Some(ns)) if f > 0.0 => Ok(ns / f),
        _ => bail!("no faults=/ns= in output: {text}"),
    }
}

/// The number after `name` (e.g. "ns=") among the words of a benchmark program's output line.
fn field(text: &str, name: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .and_then(|v| v.parse::<f64>().ok())
}

fn median(v: &mut [f64]) -> f64 {
    quantile(v, 0.5)
}

/// The q-quantile (0..=1) with linear interpolation between the two nearest samples.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let Some(last) = v.len().checked_sub(1) else {
        return f64::NAN;
    };
    let at = q * last as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (at - lo as f64)
}

fn ensure_bpftrace() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/bin/bpftrace");
    if !path.exists() {
        if !crate::host::is_root() {
            bail!("bpftrace is missing: apt-get install bpftrace");
        }
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-remove", "bpftrace"])
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
    cargo_build_release(&["-p", "odp-ebpf", "--example", "empty_probe"])?;
    let root = workspace_root();
    let odp_ctl = root.join("target/release/odp-ctl");
    let fault_loop = root.join("target/release/examples/fault_loop");
    let empty_probe = root.join("target/release/examples/empty_probe");
    let workload = [
        fault_loop.display().to_string(),
        pages.to_string(),
        loops.to_string(),
    ];
    let stream_file = std::env::temp_dir().join("odp-bench-stream.jsonl");
    let bt_file = std::env::temp_dir().join("odp-bench-bpftrace.txt");

    let conditions = [
        "untraced",
        "empty-program",
        "count-only",
        "stream-json",
        "bpftrace-printf",
        "exporter",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); conditions.len()];
    let mut drops = 0u64;
    let mut streamed_events = Vec::new();
    let mut exporter_events = Vec::new();
    for round in 0..rounds {
        // Each round starts one condition later, so none always runs right after another
        // (bpftrace's teardown, say) and position effects spread over all of them.
        for i in (0..conditions.len()).map(|k| (k + round) % conditions.len()) {
            let name = &conditions[i];
            let ns = match *name {
                "untraced" => ns_per_fault(Command::new(&workload[0]).args(&workload[1..]))?,
                "empty-program" => ns_per_fault(Command::new(&empty_probe).args(&workload))?,
                "count-only" => ns_per_fault(
                    Command::new(&odp_ctl)
                        .args(["trace", "--count-only", "--points", "cpu", "--"])
                        .args(&workload),
                )?,
                "exporter" => exporter_beside(&odp_ctl, &workload, &mut exporter_events)?,
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
        "\nhost probe overhead: {rounds} rounds x {} faults each, medians (interleaved, rotated)",
        pages * loops
    );
    // The paired column divides each run by the untraced run of its own round before taking
    // the median, so drifts of this noisy host slower than a round cancel out.
    println!(
        "{:<16} {:>12} {:>12} {:>12}   paired quartiles",
        "condition", "ns/fault", "vs untraced", "paired"
    );
    let percent = |ratio: f64| (ratio - 1.0) * 100.0;
    println!("{:<16} {base:>12.1}", conditions[0]);
    for (i, name) in conditions.iter().enumerate().skip(1) {
        let mut paired: Vec<f64> = samples[i]
            .iter()
            .zip(&samples[0])
            .map(|(traced, untraced)| traced / untraced)
            .collect();
        let m = median(&mut samples[i]);
        println!(
            "{name:<16} {m:>12.1} {:>+11.1}% {:>+11.1}%   {:+.1}% .. {:+.1}%",
            percent(m / base),
            percent(median(&mut paired)),
            percent(quantile(&mut paired, 0.25)),
            percent(quantile(&mut paired, 0.75)),
        );
    }
    println!(
        "stream-json: {drops} drops in total; events per run: {streamed_events:?} (faults per run: {})",
        pages * loops
    );
    println!("exporter: events its engine took per run: {exporter_events:?}");
    Ok(())
}

/// ns per fault of the workload while `odp-ctl exporter --cpu-faults` watches it, live, from
/// attach to detach; the events the exporter's engine took are pushed to `events`.
fn exporter_beside(odp_ctl: &Path, workload: &[String], events: &mut Vec<u64>) -> Result<f64> {
    let comm = Path::new(&workload[0])
        .file_name()
        .context("workload name")?
        .to_os_string();
    let exporter = ExporterProcess::start(
        odp_ctl,
        &["--cpu-faults".as_ref(), "--comm".as_ref(), comm.as_os_str()],
    )?;
    // Probes are attached once the exporter names its address.
    let ns = ns_per_fault(Command::new(&workload[0]).args(&workload[1..]));
    // Its events reach the engine within the reordering window and a snapshot.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let seen = exporter.scrape().map(|(_, _, n)| n);
    exporter.stop()?;
    events.push(seen?);
    ns
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
  for method in fentry kprobe; do
    odp-ctl trace --attach $method --count-only --output /tmp/c.txt 2>/tmp/c.err & t=$!
    while ! grep -q tracing /tmp/c.err 2>/dev/null; do sleep 0.2; done
    run count-$method
    kill -INT $t; wait $t
    odp-ctl --json trace --attach $method --output /tmp/s.jsonl 2>/tmp/s.err & t=$!
    while ! grep -q tracing /tmp/s.err 2>/dev/null; do sleep 0.2; done
    run stream-$method
    kill -INT $t; wait $t
    grep '^{"summary"' /tmp/s.jsonl | sed "s/^/SUMMARY $method /"
  done
done
"#;

/// The traced conditions of `vm_probes`, each against the untraced run of its round.
const VM_BENCH_CONDITIONS: [&str; 4] = [
    "count-fentry",
    "count-kprobe",
    "stream-fentry",
    "stream-kprobe",
];

/// Loopback RDMA throughput over an ODP MR in the VM with the full probe set (counting, and
/// streaming to a file), kernel functions by fentry and by kprobes, and without, interleaved.
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
    // Per streamed round and method, from trace's closing line: (points attached, events,
    // drops, missed).
    let mut streamed: std::collections::BTreeMap<String, Vec<[u64; 4]>> = Default::default();
    for line in outcome.output.lines() {
        if let Some(c) = line.strip_prefix("BENCH ") {
            condition = c.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("SUMMARY ") {
            let (method, text) = rest.split_once(' ').context("SUMMARY without a method")?;
            let v: serde_json::Value = serde_json::from_str(text.trim())
                .with_context(|| format!("trace's closing line: {text}"))?;
            let s = &v["summary"];
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            streamed.entry(method.to_string()).or_default().push([
                n("attached"),
                n("events"),
                n("drops"),
                n("missed"),
            ]);
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
    println!("\nVM loopback throughput on a 16 MiB ODP MR, 1 MiB messages, {rounds} rounds, medians (MB/s, ratio to untraced)");
    print!("{:<12} {:>9}", "op", "untraced");
    for c in VM_BENCH_CONDITIONS {
        print!(" {c:>20}");
    }
    println!();
    for op in ["RDMA WRITE", "RDMA READ", "SEND"] {
        let mut get = |c: &str| {
            samples
                .get_mut(&(op.to_string(), c.to_string()))
                .map(|v| median(v))
                .unwrap_or(f64::NAN)
        };
        let untraced = get("untraced");
        print!("{op:<12} {untraced:>9.1}");
        for c in VM_BENCH_CONDITIONS {
            let v = get(c);
            print!(" {:>20}", format!("{v:.1} ({:.2})", v / untraced));
        }
        println!();
    }
    for (method, rows) in &streamed {
        let column = |i: usize| -> Vec<u64> { rows.iter().map(|r| r[i]).collect() };
        println!(
            "stream-{method}, per round: points attached {:?}, events {:?}, drops {:?}, missed {:?}",
            column(0),
            column(1),
            column(2),
            column(3)
        );
    }
    Ok(())
}

/// The capture the monitor's tests replay: rxe, RDMA WRITEs racing MADV_DONTNEED.
const MONITOR_CAPTURE: &str = "odp-ctl/tests/data/rxe-dontneed-race.jsonl";

/// The committed capture repeated back to back (10 ms apart) until `min_events`; returns the
/// path, the event count and the events per second of capture time.
fn repeated_capture(min_events: usize) -> Result<(PathBuf, usize, f64)> {
    let root = workspace_root();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(root.join(MONITOR_CAPTURE))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let ts = |v: &serde_json::Value| v["ts_ns"].as_u64().unwrap_or(0);
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
        bail!("{MONITOR_CAPTURE} is empty");
    };
    let period = ts(last) - ts(first) + 10_000_000;
    let copies = min_events.div_ceil(lines.len());
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("monitor-replay.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for copy in 0..copies as u64 {
        for line in &lines {
            let mut shifted = line.clone();
            shifted["ts_ns"] = (ts(line) + copy * period).into();
            serde_json::to_writer(&mut out, &shifted)?;
            std::io::Write::write_all(&mut out, b"\n")?;
        }
    }
    std::io::Write::flush(&mut out)?;
    let events = copies * lines.len();
    Ok((path, events, lines.len() as f64 / (period as f64 / 1e9)))
}

/// CPU ticks (user + system) of each thread of `pid`, by thread name.
fn thread_ticks(pid: &str) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let comm = std::fs::read_to_string(dir.join("comm"))?
            .trim()
            .to_string();
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        // Fields after the parenthesised name; utime and stime are the 14th and 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let stat_field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
        out.push((
            comm,
            stat_field(14).unwrap_or(0) + stat_field(15).unwrap_or(0),
        ));
    }
    Ok(out)
}

fn tmux(args: &[&str]) -> Result<String> {
    let out = Command::new("tmux").args(args).output().context("tmux")?;
    if !out.status.success() {
        bail!(
            "tmux {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The "events N" the monitor's header shows.
fn events_on_screen(session: &str) -> Result<u64> {
    let screen = tmux(&["capture-pane", "-p", "-t", session])?;
    screen
        .lines()
        .next()
        .and_then(|l| l.split(" | ").find_map(|p| p.strip_prefix("events ")))
        .and_then(|n| n.replace(',', "").parse().ok())
        .with_context(|| format!("no event count on the screen:\n{screen}"))
}

/// One paced TUI run: (events/s achieved, screen thread % of a core, replay thread %).
fn tui_round(
    odp_ctl: &Path,
    capture: &Path,
    speed: f64,
    window: std::time::Duration,
) -> Result<(f64, f64, f64)> {
    let session = format!("odp-bench-{}", std::process::id());
    let command = format!(
        "exec {} monitor --replay {} --speed {speed:.3} --fps 10",
        odp_ctl.display(),
        capture.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ])?;
    let result = (|| {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let pid = tmux(&["display-message", "-p", "-t", &session, "#{pane_pid}"])?
            .trim()
            .to_string();
        let ticks_per_s = 100.0; // USER_HZ on Linux
        let (before, events_before, t0) = (
            thread_ticks(&pid)?,
            events_on_screen(&session)?,
            std::time::Instant::now(),
        );
        std::thread::sleep(window);
        let (after, events_after, elapsed) = (
            thread_ticks(&pid)?,
            events_on_screen(&session)?,
            t0.elapsed().as_secs_f64(),
        );
        let share = |name: &str| {
            let get = |v: &[(String, u64)]| {
                v.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, t)| *t)
                    .sum::<u64>()
            };
            (get(&after) - get(&before)) as f64 / ticks_per_s / elapsed * 100.0
        };
        Ok((
            (events_after - events_before) as f64 / elapsed,
            share("odp-ctl"),
            share("odp-replay"),
        ))
    })();
    let _ = tmux(&["kill-session", "-t", &session]);
    result
}

/// The monitor's speed: the engine alone on a decoded capture, the whole `--replay --summary`
/// path (JSON parse included), and the TUI's CPU at 10 fps under a paced 100k events/s replay.
pub fn monitor(rounds: usize, rate: f64) -> Result<()> {
    crate::host::ensure()?;
    cargo_build_release(&["-p", "odp-ctl"])?;
    cargo_build_release(&["-p", "odp-core", "--example", "engine_replay"])?;
    let root = workspace_root();
    let odp_ctl = root.join("target/release/odp-ctl");
    let engine_replay = root.join("target/release/examples/engine_replay");
    let window = std::time::Duration::from_secs(8);
    // Enough for the paced run's warm-up and window, with a margin.
    let wanted = (rate * (window.as_secs_f64() + 4.0)) as usize;
    let (capture, events, capture_rate) = repeated_capture(wanted.max(1_000_000))?;
    let speed = rate / capture_rate;
    println!(
        "capture: {events} events ({MONITOR_CAPTURE} repeated), {capture_rate:.0} events/s as recorded; TUI replays at x{speed:.2}"
    );
    let mut engine = Vec::new();
    let mut whole = Vec::new();
    let mut tui: Vec<(f64, f64, f64)> = Vec::new();
    for round in 1..=rounds {
        let out = Command::new(&engine_replay)
            .arg(root.join(MONITOR_CAPTURE))
            .arg("4000000")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        match (field(&text, "events="), field(&text, "ns=")) {
            (Some(n), Some(ns)) if out.status.success() => engine.push(n / ns * 1e9),
            _ => bail!(
                "engine_replay: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }

        let t = std::time::Instant::now();
        let out = Command::new(&odp_ctl)
            .args(["--json", "monitor", "--summary", "--replay"])
            .arg(&capture)
            .output()?;
        let secs = t.elapsed().as_secs_f64();
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
        let n = summary["events"].as_u64().unwrap_or(0);
        if n as usize != events {
            bail!("replay summary counted {n} events of {events}");
        }
        whole.push(n as f64 / secs);

        tui.push(tui_round(&odp_ctl, &capture, speed, window)?);
        println!(
            "round {round}: engine {:.2}M/s, replay --summary {:.2}M/s, TUI at {:.0}/s: screen {:.1}%, replay thread {:.1}%",
            engine[round - 1] / 1e6,
            whole[round - 1] / 1e6,
            tui[round - 1].0,
            tui[round - 1].1,
            tui[round - 1].2
        );
    }
    let column = |i: usize| median(&mut tui.iter().map(|r| [r.0, r.1, r.2][i]).collect::<Vec<_>>());
    let (achieved, screen, replay) = (column(0), column(1), column(2));
    println!("medians of {rounds} rounds:");
    println!(
        "  engine alone          {:>8.2}M events/s  (target >= 2M/s)",
        median(&mut engine) / 1e6
    );
    println!(
        "  replay --summary      {:>8.2}M events/s  (JSON parse + engine, one process)",
        median(&mut whole) / 1e6
    );
    println!("  TUI, 10 fps, {achieved:.0} events/s: screen thread {screen:.1}% of a core (target < 5%), replay thread {replay:.1}%");
    Ok(())
}

const VM_STRESS_BENCH: &str = r#"
cat > /tmp/actions.toml <<'TOML'
name = "bench-actions"
duration = "SECONDS"
[[mr]]
name = "buf"
size = "4M"
[[traffic]]
mr = "buf"
op = "read"
message = "4K"
range = "0:4K"
rate = 1
[[invalidate]]
mr = "buf"
action = "dontneed"
rate = 100000000
length = "64K"
TOML
cat > /tmp/throughput.toml <<'TOML'
name = "bench-throughput"
duration = "SECONDS"
[[mr]]
name = "buf"
size = "8M"
[[traffic]]
name = "writer"
mr = "buf"
op = "write"
range = "0:4M"
depth = 4
[[traffic]]
name = "reader"
mr = "buf"
op = "read"
range = "4M:4M"
depth = 4
TOML
for round in $(seq 1 ROUNDS); do
  madvise_loop 4M 64K SECONDS rxe0 | sed 's/^/BARE /'
  odp-ctl --json stress /tmp/actions.toml --no-probes > /job/actions-$round.json
  odp-ctl --json stress /tmp/throughput.toml --no-probes > /job/plain-$round.json
  odp-ctl --json stress /tmp/throughput.toml > /job/probed-$round.json
done
"#;

fn stress_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    if doc["mismatches"] != 0 || doc["wc_errors"] != 0 {
        bail!("{}: the stress run reported bad data", path.display());
    }
    Ok(doc)
}

/// The stress engine in the VM: DONTNEED actions per second its generator sustains against a
/// bare madvise loop on the same registered memory, and loopback throughput over ODP MRs with
/// and without the probe session; interleaved rounds, medians.
pub fn vm_stress(vm_opts: &crate::VmOpts, rounds: usize, seconds: u32) -> Result<()> {
    crate::host::ensure()?;
    cargo_build_release(&["-p", "odp-ctl"])?;
    cargo_build_release(&["-p", "odp-core", "--example", "madvise_loop"])?;
    let root = workspace_root();
    let binaries = vec![
        root.join("target/release/odp-ctl"),
        root.join("target/release/examples/madvise_loop"),
    ];
    let guest = crate::prepare(vm_opts)?;
    let script = VM_STRESS_BENCH
        .replace("ROUNDS", &rounds.to_string())
        .replace("SECONDS", &seconds.to_string());
    let outcome = crate::vm::run_job(&guest, &crate::job(vm_opts, script, binaries))?;
    if outcome.status != 0 {
        bail!("the benchmark failed in the VM (status {})", outcome.status);
    }
    let job = crate::vm::job_dir();
    let mut bare = Vec::new();
    for line in outcome.output.lines() {
        let Some(rest) = line.strip_prefix("BARE ") else {
            continue;
        };
        if let (Some(n), Some(ns)) = (field(rest, "actions="), field(rest, "ns=")) {
            bare.push(n / ns * 1e9);
        }
    }
    let (mut generated, mut plain, mut probed) = (Vec::new(), Vec::new(), Vec::new());
    let total_mb = |doc: &serde_json::Value| -> f64 {
        doc["traffic"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t["mb_per_s"].as_f64().unwrap_or(0.0))
            .sum()
    };
    for round in 1..=rounds {
        let actions = stress_json(&job.join(format!("actions-{round}.json")))?;
        generated.push(
            actions["actions"]["dontneed"]["per_s"]
                .as_f64()
                .unwrap_or(0.0),
        );
        plain.push(total_mb(&stress_json(
            &job.join(format!("plain-{round}.json")),
        )?));
        let p = stress_json(&job.join(format!("probed-{round}.json")))?;
        if p["probes"]["status"] != "attached" {
            bail!("probes did not attach: {}", p["probes"]["status"]);
        }
        probed.push(total_mb(&p));
        println!(
            "round {round}: bare {:.0}/s, generator {:.0}/s; throughput {:.1} MB/s plain, {:.1} MB/s probed",
            bare.get(round - 1).copied().unwrap_or(f64::NAN),
            generated[round - 1],
            plain[round - 1],
            probed[round - 1]
        );
    }
    let (b, g) = (median(&mut bare), median(&mut generated));
    let (p0, p1) = (median(&mut plain), median(&mut probed));
    println!("medians of {rounds} rounds of {seconds}s:");
    println!("  DONTNEED 64K on a registered 4M ODP MR: bare loop {b:.0}/s, stress generator {g:.0}/s (ratio {:.2})", g / b);
    println!("  loopback WRITE+READ on ODP MRs: {p0:.1} MB/s without probes, {p1:.1} MB/s with (ratio {:.2})", p1 / p0);
    Ok(())
}

/// Cross-host traffic in two linked guests: the serving guest offers an ODP MR on one port and a
/// pinned one on another; the other guest alternates ODP-to-ODP and pinned-to-pinned runs of
/// `register --peer`, round by round, so both see the same moments of host noise.
const VM_PEER_BENCH: &str = r#"bb=/usr/bin/busybox
n=0
until $bb ping -c1 -W1 $ODP_VM_PEER >/dev/null 2>&1; do n=$((n + 1)); [ $n -ge 120 ] && exit 3; done
if [ "$ODP_VM_HOST" = 1 ]; then
    odp-ctl serve --listen $ODP_VM_ADDRESS:10090 --pinned --size SIZE >/tmp/pinned.log 2>&1 & p=$!
    odp-ctl serve --listen $ODP_VM_ADDRESS --size SIZE >/tmp/odp.log 2>&1 & o=$!
    misses=0
    while [ $misses -lt 3 ]; do
        if $bb ping -c1 -W1 $ODP_VM_PEER >/dev/null 2>&1; then misses=0; else misses=$((misses + 1)); fi
        $bb sleep 1
    done
    kill -TERM $p $o
    wait
else
    n=0
    until odp-ctl register --peer $ODP_VM_PEER --size 64K >/dev/null 2>&1 && odp-ctl register --peer $ODP_VM_PEER:10090 --pinned --size 64K >/dev/null 2>&1; do
        n=$((n + 1)); [ $n -ge 60 ] && exit 4; $bb sleep 1
    done
    for r in $(seq ROUNDS); do
        echo "PEER odp $(odp-ctl --json register --peer $ODP_VM_PEER --size SIZE --message-size MSG)" | tr -d '\n'; echo
        echo "PEER pinned $(odp-ctl --json register --peer $ODP_VM_PEER:10090 --pinned --size SIZE --message-size MSG)" | tr -d '\n'; echo
        echo "PEER probed $(odp-ctl --json register --peer $ODP_VM_PEER --size SIZE --message-size MSG --probes)" | tr -d '\n'; echo
        echo "TOUCH $(odp-ctl --json register --peer $ODP_VM_PEER --size 1M --touch-latency 256)" | tr -d '\n'; echo
    done
fi
"#;

pub fn vm_peer(vm_opts: &crate::VmOpts, rounds: usize, size: &str, message: &str) -> Result<()> {
    crate::host::ensure()?;
    cargo_build_release(&["-p", "odp-ctl"])?;
    let binaries = vec![workspace_root().join("target/release/odp-ctl")];
    let guest = crate::prepare(vm_opts)?;
    let script = VM_PEER_BENCH
        .replace("ROUNDS", &rounds.to_string())
        .replace("SIZE", size)
        .replace("MSG", message);
    let job = crate::job(vm_opts, script, binaries);
    let [serving, driving] = crate::vm::run_pair(&guest, [&job, &job])?;
    if serving.status != 0 || driving.status != 0 {
        bail!(
            "the benchmark failed in the guests (status {} and {})",
            serving.status,
            driving.status
        );
    }
    // (kind, op) -> MB/s per round.
    let mut rates: std::collections::BTreeMap<(String, String), Vec<f64>> = Default::default();
    // (pass, quantile) -> microseconds per round.
    let mut touch: std::collections::BTreeMap<(&str, &str), Vec<f64>> = Default::default();
    for line in driving.output.lines() {
        if let Some(json) = line.strip_prefix("TOUCH ") {
            let doc: serde_json::Value =
                serde_json::from_str(json).with_context(|| format!("--touch-latency: {json}"))?;
            let latency = &doc["peer"]["touch_latency"];
            for pass in ["first_touch", "warm"] {
                for q in ["p50_ns", "p99_ns"] {
                    let ns = latency[pass][q]
                        .as_f64()
                        .with_context(|| format!("--touch-latency without {pass}.{q}: {json}"))?;
                    touch.entry((pass, q)).or_default().push(ns / 1e3);
                }
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("PEER ") else {
            continue;
        };
        let (kind, json) = rest.split_once(' ').context("PEER line without a kind")?;
        let doc: serde_json::Value =
            serde_json::from_str(json).with_context(|| format!("register's report: {json}"))?;
        for op in doc["traffic"]["ops"].as_array().into_iter().flatten() {
            if !op["mismatch"].is_null() {
                bail!("{kind} {}: wrong bytes: {}", op["op"], op["mismatch"]);
            }
            let bytes = op["bytes"].as_f64().unwrap_or(0.0);
            let us = op["elapsed_us"].as_f64().unwrap_or(f64::NAN);
            rates
                .entry((
                    kind.to_string(),
                    op["op"].as_str().unwrap_or("?").to_string(),
                ))
                .or_default()
                .push(bytes / us);
        }
    }
    println!("medians of {rounds} interleaved rounds, {size} per op, {message} messages, MB/s:");
    for op in ["write", "read", "send"] {
        let mut rounds_of = |kind: &str| -> Result<Vec<f64>> {
            let got = rates
                .remove(&(kind.to_string(), op.to_string()))
                .unwrap_or_default();
            if got.len() != rounds {
                bail!("{op}: {} {kind} rounds of {rounds}", got.len());
            }
            Ok(got)
        };
        let mut odp = rounds_of("odp")?;
        let mut pinned = rounds_of("pinned")?;
        // ODP again, with this side's probes: every completer run (one per ACK) is probed.
        let mut probed = rounds_of("probed")?;
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.1}..{hi:.1}")
        };
        let (so, sp, sb) = (spread(&odp), spread(&pinned), spread(&probed));
        let (o, p, b) = (median(&mut odp), median(&mut pinned), median(&mut probed));
        println!(
            "  {op:<5} ODP {o:.1} ({so}), pinned {p:.1} ({sp}), ODP/pinned {:.2}; ODP with the \
             requester's probes {b:.1} ({sb}), probed/ODP {:.2}",
            o / p,
            b / o
        );
    }
    println!("RDMA READ of one 4 KiB page of the peer's ODP MR, 256 pages a round, medians of the rounds' quantiles, us:");
    let mut at = |pass, q| median(touch.get_mut(&(pass, q)).map_or(&mut Vec::new(), |v| v));
    let (cold50, cold99) = (at("first_touch", "p50_ns"), at("first_touch", "p99_ns"));
    let (warm50, warm99) = (at("warm", "p50_ns"), at("warm", "p99_ns"));
    println!(
        "  first touch p50 {cold50:.1} p99 {cold99:.1}; warm p50 {warm50:.1} p99 {warm99:.1}; first/warm at p50 {:.2}",
        cold50 / warm50
    );
    Ok(())
}

/// One piece of a capture line rewritten per synthetic copy.
enum Piece {
    Text(String),
    /// The event's time, shifted by the copy's offset.
    Ts(u64),
    /// A user process's pid or tid: each copy is another process.
    Pid(u64),
    /// An address space or kernel object: each copy has its own.
    Addr(u64),
    /// The workload's name: copies cycle through SYNTHETIC_NAMES names.
    Comm,
}

/// Process names the synthetic copies cycle through: more than the engine keeps apart in
/// retired counts, as a fleet host's many jobs would be.
const SYNTHETIC_NAMES: u64 = 500;

/// The committed capture as a template for long synthetic streams: copy `n` is another process
/// (pid, address spaces, objects of its own) registering, faulting, racing and releasing its
/// MR, `n` capture-lengths later.
struct SyntheticStream {
    lines: Vec<Vec<Piece>>,
    period: u64,
}

impl SyntheticStream {
    fn from_capture() -> Result<SyntheticStream> {
        let text = std::fs::read_to_string(workspace_root().join(MONITOR_CAPTURE))?;
        let mut lines = Vec::new();
        let (mut first, mut last) = (u64::MAX, 0);
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line)?;
            let mut fields = Vec::new();
            let ts = v["ts_ns"].as_u64().context("ts_ns")?;
            first = first.min(ts);
            last = last.max(ts);
            v["ts_ns"] = "@@0@@".into();
            fields.push(Piece::Ts(ts));
            let kernel_thread = v["comm"].as_str().is_some_and(|c| c.starts_with("kworker"));
            if !kernel_thread {
                for key in ["pid", "tid"] {
                    let id = v[key].as_u64().context("pid")?;
                    v[key] = format!("@@{}@@", fields.len()).into();
                    fields.push(Piece::Pid(id));
                }
            }
            if v["comm"] == "race_workload" {
                v["comm"] = format!("@@{}@@", fields.len()).into();
                fields.push(Piece::Comm);
            }
            for key in ["mm", "obj"] {
                let hex = v[key].as_str().context("address")?;
                let addr = u64::from_str_radix(hex.trim_start_matches("0x"), 16)?;
                if addr != 0 {
                    v[key] = format!("@@{}@@", fields.len()).into();
                    fields.push(Piece::Addr(addr));
                }
            }
            // Numbers go in without the quotes their markers were serialised with.
            let json = serde_json::to_string(&v)?
                .replace("\"@@", "@@")
                .replace("@@\"", "@@");
            let mut pieces = Vec::new();
            let mut fields = fields.into_iter().map(Some).collect::<Vec<_>>();
            for (i, part) in json.split("@@").enumerate() {
                if i % 2 == 0 {
                    pieces.push(Piece::Text(part.to_string()));
                } else {
                    let index: usize = part.parse()?;
                    let field = fields.get_mut(index).and_then(Option::take);
                    pieces.push(field.context("a marker used twice")?);
                }
            }
            // Addresses and comm are strings in the recording: put their quotes back.
            for i in 0..pieces.len() {
                if matches!(pieces[i], Piece::Addr(_) | Piece::Comm) {
                    for j in [i - 1, i + 1] {
                        if let Some(Piece::Text(t)) = pieces.get_mut(j) {
                            if j < i {
                                t.push('"');
                            } else {
                                t.insert(0, '"');
                            }
                        }
                    }
                }
            }
            lines.push(pieces);
        }
        if lines.is_empty() {
            bail!("{MONITOR_CAPTURE} is empty");
        }
        Ok(SyntheticStream {
            lines,
            period: last - first + 10_000_000,
        })
    }

    fn events_per_copy(&self) -> usize {
        self.lines.len()
    }

    /// Writes line `index` of copy `copy`.
    fn write(&self, out: &mut impl std::io::Write, copy: u64, index: usize) -> Result<()> {
        for piece in &self.lines[index] {
            match piece {
                Piece::Text(t) => out.write_all(t.as_bytes())?,
                Piece::Ts(ts) => write!(out, "{}", ts + copy * self.period)?,
                Piece::Pid(pid) => write!(out, "{}", pid + 1000 + copy)?,
                Piece::Addr(a) => write!(out, "{:#x}", a ^ (copy << 40))?,
                Piece::Comm => write!(out, "job-{}", copy % SYNTHETIC_NAMES)?,
            }
        }
        out.write_all(b"\n")?;
        Ok(())
    }
}

/// A FIFO in a fresh directory under target/bench.
fn bench_fifo(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let c_path = std::ffi::CString::new(path.to_str().context("utf-8 path")?)?;
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        bail!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(path)
}

/// A running `odp-ctl exporter` (a replay, or live probes) and the address it serves.
struct ExporterProcess {
    child: std::process::Child,
    addr: String,
}

impl ExporterProcess {
    /// `odp-ctl exporter --listen 127.0.0.1:0 ARGS`, once it names its address.
    fn start(odp_ctl: &Path, args: &[&std::ffi::OsStr]) -> Result<ExporterProcess> {
        use std::io::BufRead as _;
        let mut child = Command::new(odp_ctl)
            .args(["exporter", "--listen", "127.0.0.1:0"])
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stderr = std::io::BufReader::new(child.stderr.take().context("stderr")?);
        let mut line = String::new();
        stderr.read_line(&mut line)?;
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .with_context(|| format!("no address in {line:?}"))?
            .to_string();
        Ok(ExporterProcess { child, addr })
    }

    /// (VmRSS, VmHWM) in MiB.
    fn memory(&self) -> Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        Ok((kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0))
    }

    /// User + system CPU ticks of the whole process.
    fn ticks(&self) -> Result<u64> {
        Ok(thread_ticks(&self.child.id().to_string())?
            .iter()
            .map(|(_, t)| t)
            .sum())
    }

    /// GET /metrics: the response, headers and body.
    fn metrics(&self) -> Result<String> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(&self.addr)?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    /// One scrape of /metrics: (milliseconds it took, bytes, odp_exporter_events_total).
    fn scrape(&self) -> Result<(f64, usize, u64)> {
        let t = std::time::Instant::now();
        let body = self.metrics()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let events = body
            .lines()
            .find_map(|l| l.strip_prefix("odp_exporter_events_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        Ok((ms, body.len(), events))
    }

    /// The sum of a counter's samples, all labels.
    fn counter(&self, name: &str) -> Result<f64> {
        Ok(self
            .metrics()?
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum())
    }

    /// Waits (up to a minute) until the engine has taken `events`.
    fn wait_for_events(&self, events: u64) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if self.scrape()?.2 >= events {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the exporter never counted {events} events");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the exporter exited with {status}");
        }
        Ok(())
    }
}

/// The exporter's memory over a long replay of MR churn, and its CPU at a steady event rate
/// with a scrape every second.
pub fn exporter(events: usize, rate: f64, seconds: u64) -> Result<()> {
    crate::host::ensure()?;
    cargo_build_release(&["-p", "odp-ctl"])?;
    let odp_ctl = workspace_root().join("target/release/odp-ctl");
    let stream = SyntheticStream::from_capture()?;
    let per_copy = stream.events_per_copy();
    let copies = events.div_ceil(per_copy) as u64;
    let total = copies * per_copy as u64;
    println!(
        "memory: {total} events, {copies} copies of {MONITOR_CAPTURE} ({per_copy} events, one MR \
         registered, raced and released by its own process), {:.0} s of stream time, {SYNTHETIC_NAMES} \
         process names",
        copies as f64 * stream.period as f64 / 1e9
    );
    let fifo = bench_fifo("exporter-memory.fifo")?;
    let exporter = ExporterProcess::start(&odp_ctl, &["--replay".as_ref(), fifo.as_os_str()])?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&fifo)?);
    let started = std::time::Instant::now();
    let marks = [copies / 10, copies / 2, copies];
    for copy in 0..copies {
        for index in 0..per_copy {
            stream.write(&mut out, copy, index)?;
        }
        if let Some(&mark) = marks.iter().find(|&&m| m == copy + 1) {
            std::io::Write::flush(&mut out)?;
            // All but the reordering window's last 100 ms of stream have reached the engine.
            let written = (copy + 1) * per_copy as u64;
            exporter.wait_for_events(written - per_copy as u64)?;
            let (rss, peak) = exporter.memory()?;
            let (ms, bytes, _) = exporter.scrape()?;
            println!(
                "  {:>3}% ({written} events, {:.0} s): RSS {rss:.1} MiB, peak {peak:.1} MiB; \
                 a scrape {ms:.1} ms, {bytes} bytes",
                mark * 100 / copies,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(out);
    exporter.wait_for_events(total)?;
    // Every copy's faults and races counted: the churn lost nothing.
    let faults = exporter.counter("odp_faults_total")?;
    let races = exporter.counter("odp_races_total")?;
    if faults != (copies * 1473) as f64 || races != (copies * 4) as f64 {
        bail!(
            "the exporter counted {faults} faults and {races} races, not {} and {}",
            copies * 1473,
            copies * 4
        );
    }
    let (rss, peak) = exporter.memory()?;
    println!(
        "  end of stream: RSS {rss:.1} MiB, peak {peak:.1} MiB; {:.2}M events/s through the \
         FIFO, parse and engine",
        total as f64 / started.elapsed().as_secs_f64() / 1e6
    );
    exporter.stop()?;

    println!(
        "cpu: {rate:.0} events/s for {seconds} s (the capture's copies, paced every 10 ms), a \
         scrape each second"
    );
    let fifo = bench_fifo("exporter-cpu.fifo")?;
    let exporter = ExporterProcess::start(&odp_ctl, &["--replay".as_ref(), fifo.as_os_str()])?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&fifo)?);
    let tick = std::time::Duration::from_millis(10);
    let per_tick = (rate / 100.0).round() as u64;
    let warmup = 2;
    let (mut copy, mut index, mut sent) = (0u64, 0usize, 0u64);
    let begun = std::time::Instant::now();
    let mut window = None;
    let mut scrapes = Vec::new();
    let mut next_scrape = begun + std::time::Duration::from_secs(1);
    for step in 0..(seconds + warmup) * 100 {
        for _ in 0..per_tick {
            stream.write(&mut out, copy, index)?;
            sent += 1;
            index += 1;
            if index == per_copy {
                index = 0;
                copy += 1;
            }
        }
        std::io::Write::flush(&mut out)?;
        if step == warmup * 100 {
            window = Some((std::time::Instant::now(), exporter.ticks()?, sent));
        }
        let now = std::time::Instant::now();
        if now >= next_scrape {
            scrapes.push(exporter.scrape()?.0);
            next_scrape += std::time::Duration::from_secs(1);
        }
        let due = begun + tick * (step as u32 + 1);
        if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let (from, ticks_before, sent_before) = window.context("no measuring window")?;
    let ticks = exporter.ticks()? - ticks_before;
    let secs = from.elapsed().as_secs_f64();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let achieved = (sent - sent_before) as f64 / secs;
    println!(
        "  {achieved:.0} events/s achieved: the exporter used {:.1}% of a core; scrapes median \
         {:.2} ms (max {:.2}), {} of them",
        ticks as f64 / hz / secs * 100.0,
        median(&mut scrapes.clone()),
        scrapes.iter().copied().fold(0.0, f64::max),
        scrapes.len()
    );
    drop(out);
    exporter.wait_for_events(sent)?;
    exporter.stop()?;
    Ok(())
}

/// The Perfetto export: events/s and bytes per event over the capture repeated to 4 million
/// events, beside `monitor --summary --replay` of the same file (the same pipeline without
/// the timeline), interleaved.
pub fn export(rounds: usize) -> Result<()> {
    crate::host::ensure()?;
    cargo_build_release(&["-p", "odp-ctl"])?;
    let odp_ctl = workspace_root().join("target/release/odp-ctl");
    let (capture, events, _) = repeated_capture(4_000_000)?;
    let out = workspace_root().join("target/bench/export.pftrace");
    let mut export_rates = Vec::new();
    let mut summary_rates = Vec::new();
    let mut bytes = 0;
    for round in 1..=rounds {
        let t = std::time::Instant::now();
        let status = Command::new(&odp_ctl)
            .args(["export", "--perfetto"])
            .arg(&out)
            .arg(&capture)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("odp-ctl export failed: {status}");
        }
        export_rates.push(events as f64 / t.elapsed().as_secs_f64());
        bytes = std::fs::metadata(&out)?.len();
        let t = std::time::Instant::now();
        let status = Command::new(&odp_ctl)
            .args(["monitor", "--summary", "--replay"])
            .arg(&capture)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("odp-ctl monitor failed: {status}");
        }
        summary_rates.push(events as f64 / t.elapsed().as_secs_f64());
        println!(
            "round {round}: export {:.2}M events/s, monitor --summary {:.2}M events/s",
            export_rates[round - 1] / 1e6,
            summary_rates[round - 1] / 1e6
        );
    }
    println!(
        "{events} events: export median {:.2}M events/s, monitor --summary --replay {:.2}M \
         events/s; the trace {bytes} bytes, {:.1} bytes per event",
        median(&mut export_rates) / 1e6,
        median(&mut summary_rates) / 1e6,
        bytes as f64 / events as f64
    );
    Ok(())
}
