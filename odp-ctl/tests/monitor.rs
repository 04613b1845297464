//! `odp-ctl monitor` as users run it: the summary of a recorded capture checked against an
//! independent count over its raw events, bad recordings refused, the TUI driven in a real
//! terminal (tmux), and in the VM a live race workload whose summary must agree with its own
//! recorded event stream.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use odp_core::memory::{Backing, Mapping};
use odp_core::testing::device_or_skip;
use odp_core::trace::Record;
use odp_core::verbs::{Access, Context, LoopbackConfig, LoopbackRc, MemoryRegion};
use serde_json::Value;

mod common;
use common::{fifo, fixture, odp_ctl, odp_ctl_path, Synthetic, Terminal};

fn records(path: &Path) -> Vec<Record<'static>> {
    std::fs::read_to_string(path)
        .expect("read recording")
        .lines()
        .filter(|l| {
            !l.trim().is_empty() && !l.starts_with("{\"summary\"") && !l.starts_with("{\"clocks\"")
        })
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

/// The reference: races and retries counted the slow, obvious way (every fault against every
/// invalidation), sharing no code with the engine.
fn brute_force(records: &[Record]) -> (u64, u64, u64, u64) {
    let faults: Vec<&Record> = records.iter().filter(|r| r.point == "fault").collect();
    let end = |r: &Record| r.ts_ns + r.duration_ns;
    // umem -> (mm, start, end) of registrations.
    let mrs: Vec<&Record> = records.iter().filter(|r| r.point == "umem_get").collect();
    // Notifier ranges: start paired with its end by thread and range object.
    let mut open: HashMap<(u32, u64), &Record> = HashMap::new();
    let mut windows = Vec::new(); // (mm, lo, hi, t0, t1)
    for r in records {
        match r.point.as_ref() {
            "inv_range_start" => {
                open.insert((r.tid, r.obj), r);
            }
            "inv_range_end" => {
                let start = open.remove(&(r.tid, r.obj)).unwrap_or(r);
                let touches = mrs
                    .iter()
                    .any(|m| m.mm == start.mm && start.start < m.end && m.start < start.end);
                if touches {
                    windows.push((start.mm, start.start, start.end, start.ts_ns, end(r)));
                }
            }
            _ => {}
        }
    }
    let callbacks: Vec<&Record> = records
        .iter()
        .filter(|r| r.point == "rxe_invalidate" || r.point == "mlx5_invalidate")
        .collect();
    // Every notifier sequence read, by thread and interval, in time order.
    let mut begins_by_tid: HashMap<(u32, u64), Vec<u64>> = HashMap::new();
    for r in records.iter().filter(|r| r.point == "read_begin") {
        begins_by_tid
            .entry((r.tid, r.obj))
            .or_default()
            .push(r.ts_ns);
    }
    for ts in begins_by_tid.values_mut() {
        ts.sort_unstable();
    }
    let mut races = 0;
    let mut retries = 0;
    for f in &faults {
        let by_callback = callbacks.iter().any(|c| {
            c.obj == f.obj
                && c.ts_ns < end(f)
                && f.ts_ns < end(c)
                && c.start < f.end
                && f.start < c.end
        });
        let by_range = windows.iter().any(|&(mm, lo, hi, t0, t1)| {
            mm == f.mm && t0 < end(f) && f.ts_ns < t1 && lo < f.end && f.start < hi
        });
        races += u64::from(by_callback || by_range);
        let read_begins = begins_by_tid.get(&(f.tid, f.obj)).map_or(0, |ts| {
            ts.partition_point(|&t| t <= end(f)) - ts.partition_point(|&t| t < f.ts_ns)
        }) as u64;
        retries += read_begins.saturating_sub(1);
    }
    let demand = faults.iter().filter(|f| !f.prefetch).count() as u64;
    (demand, callbacks.len() as u64, races, retries)
}

fn summary_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "monitor failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn check_against_reference(summary: &Value, records: &[Record]) -> (u64, u64, u64, u64) {
    let (faults, invalidations, races, retries) = brute_force(records);
    let totals = &summary["totals"];
    assert_eq!(totals["faults"], faults, "faults");
    assert_eq!(totals["invalidations"], invalidations, "invalidations");
    assert_eq!(totals["races"], races, "races");
    assert_eq!(totals["retries"], retries, "retries");
    assert_eq!(
        summary["events"],
        records.len() as u64,
        "every event ingested"
    );
    (faults, invalidations, races, retries)
}

#[test]
fn replayed_capture_summary_agrees_with_a_brute_force_count() {
    let out = odp_ctl()
        .args(["monitor", "--replay"])
        .arg(fixture())
        .args(["--summary", "--json"])
        .output()
        .expect("run");
    let summary = summary_json(&out);
    let (faults, invalidations, races, retries) =
        check_against_reference(&summary, &records(&fixture()));
    // The capture is worth keeping only if it shows the interesting things.
    assert!(faults > 0 && invalidations > 0, "{faults} {invalidations}");
    assert!(races + retries > 0, "the capture has collisions");
    assert_eq!(
        summary["mrs"].as_array().map(Vec::len),
        Some(1),
        "one ODP MR"
    );
    // MADV_DONTNEED reaches the driver as MMU_NOTIFY_CLEAR, and nothing else ran.
    assert_eq!(
        summary["totals"]["invalidations_by_cause"]["CLEAR"],
        invalidations
    );
    odp_core::testing::host_suffices();
}

#[test]
fn a_recording_that_lost_events_replays_as_one_that_lost_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lossy.jsonl");
    let mut text = std::fs::read_to_string(fixture()).expect("fixture");
    // The closing line a recorder writes: what its source lost and attached.
    text.push_str(
        r#"{"summary":{"events":8836,"drops":5,"missed":3,"missed_per_point":{"fault":3},"unpaired":1,"unflushed":2,"overflow":4,"attached":29,"skipped":{"mlx5_pagefault_implicit":"not in this kernel"}}}"#,
    );
    text.push('\n');
    std::fs::write(&path, text).expect("write");
    let out = odp_ctl()
        .args(["--json", "monitor", "--summary", "--replay"])
        .arg(&path)
        .output()
        .expect("run");
    let summary = summary_json(&out);
    let source = &summary["source"];
    assert_eq!(source["drops"], 5, "{source}");
    assert_eq!(source["missed"], 3, "{source}");
    assert_eq!(source["missed_per_point"]["fault"], 3, "{source}");
    assert_eq!(source["unpaired"], 1, "{source}");
    assert_eq!(source["unflushed"], 2, "{source}");
    assert_eq!(source["overflow"], 4, "{source}");
    assert_eq!(source["probes_attached"], 29, "{source}");
    assert_eq!(source["probes_total"], 30, "{source}");
    assert_eq!(summary["events"], 8836, "the closing line is not an event");
    let human = odp_ctl()
        .args(["monitor", "--summary", "--replay"])
        .arg(&path)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&human.stdout);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("5 drops, 3 missed (fault=3), 1 calls unpaired")
            && first.contains("2 CPU faults left in a batch")
            && first.contains("4 shed by a lagging consumer")
            && first.contains("29/30 probes attached"),
        "{first}"
    );
    odp_core::testing::host_suffices();
}

#[test]
fn the_human_summary_names_the_totals() {
    let out = odp_ctl()
        .args(["monitor", "--replay"])
        .arg(fixture())
        .arg("--summary")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "faults",
        "invalidations",
        "races",
        "retries",
        "timeouts",
        "rxe0",
        "CLEAR",
    ] {
        assert!(text.contains(word), "{word} missing from:\n{text}");
    }
    odp_core::testing::host_suffices();
}

#[test]
fn a_bad_recording_is_refused_with_its_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.jsonl");
    let good = std::fs::read_to_string(fixture()).expect("fixture");
    let first = good.lines().next().expect("a line");
    std::fs::write(&path, format!("{first}\n{{\"ts_ns\": \"soon\"}}\n")).expect("write");
    let out = odp_ctl()
        .args(["monitor", "--summary", "--replay"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6), "invalid input");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:2:"), "{err}");
    let missing = odp_ctl()
        .args(["monitor", "--summary", "--replay", "/nonexistent/x.jsonl"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot open the recording"));
}

#[test]
fn the_tui_shows_a_replay_in_a_real_terminal_and_restores_it_on_quit() {
    let bin = odp_ctl_path();
    let command = format!(
        "{bin} monitor --replay {} --speed 0; echo monitor-exit=$?; sleep 30",
        fixture().display()
    );
    let Some(term) = Terminal::start(
        "the_tui_shows_a_replay_in_a_real_terminal_and_restores_it_on_quit",
        100,
        30,
        &command,
    ) else {
        return;
    };
    let main = term.wait_for("source ended", 20);
    for want in [
        "odp-ctl monitor",
        "replay rxe-dontneed-race.jsonl",
        "faults",
        "races",
        "MRs (1)",
        "rxe0",
        "per second",
        "events",
    ] {
        assert!(main.contains(want), "{want:?} not on the screen:\n{main}");
    }
    // Findings panel, then the MR detail, then help.
    term.keys("Tab");
    let findings = term.wait_for("findings: races", 20);
    term.keys("Enter");
    let detail = term.wait_for("fault latency", 20);
    term.keys("?");
    let help = term.wait_for("any key closes", 20);
    term.keys("Escape");
    term.keys("q");
    let after = term.wait_for("monitor-exit=", 20);
    assert!(findings.contains("findings: races"), "{findings}");
    assert!(
        detail.contains("MR #1") && detail.contains("latency") && detail.contains("p99"),
        "{detail}"
    );
    assert!(help.contains("q, Ctrl-C"), "{help}");
    assert!(after.contains("monitor-exit=0"), "{after}");
    // The alternate screen is gone: the shell's line is all that shows, no monitor frame.
    let visible = term.text(0);
    assert!(
        !visible.contains("per second"),
        "terminal not restored:\n{visible}"
    );
    odp_core::testing::host_suffices();
}

const CHILD_ENV: &str = "ODP_MONITOR_RACE_CHILD";

/// Child mode: RDMA WRITEs into an ODP MR for the given seconds while a second thread drops the
/// MR's pages with MADV_DONTNEED. A helper the test below runs in a child, not a test.
#[test]
#[ignore = "child mode: run by the test that monitors it"]
fn race_workload() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (device, seconds) = spec.split_once(':').expect("device:seconds");
    let seconds: f64 = seconds.parse().expect("seconds");
    let ctx = Context::open(Some(device)).expect("open");
    let pd = ctx.alloc_pd().expect("pd");
    let size = 1 << 20;
    let chunk = 64 << 10;
    let map = Arc::new(Mapping::new(size, Backing::Anonymous).expect("map"));
    let mr = MemoryRegion::register(&pd, &map, 0, size, Access::FULL | Access::ON_DEMAND)
        .expect("odp mr");
    let src_map = Arc::new(Mapping::new(size, Backing::Anonymous).expect("map"));
    src_map.fill(0x5a);
    let src = MemoryRegion::register(&pd, &src_map, 0, size, Access::FULL).expect("mr");
    let mut lb = LoopbackRc::new(&pd, &LoopbackConfig::default()).expect("loopback");
    let stop = Arc::new(AtomicBool::new(false));
    let dropper = {
        let stop = Arc::clone(&stop);
        let map = Arc::clone(&map);
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let offset = (i * 7 % (size / chunk)) * chunk;
                map.madvise(offset, chunk, libc::MADV_DONTNEED, "madvise")
                    .expect("madvise");
                i += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut i = 0usize;
    while Instant::now() < until {
        let offset = (i % (size / chunk)) * chunk;
        lb.write(&src, offset, &mr, offset, chunk).expect("write");
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    dropper.join().expect("dropper");
}

#[test]
fn live_summary_of_a_race_workload_agrees_with_its_own_recording() {
    let test = "live_summary_of_a_race_workload_agrees_with_its_own_recording";
    let Some(device) = device_or_skip(test) else {
        return;
    };
    if !odp_core::testing::root_or_skip(test, "loading BPF") {
        return;
    }
    let dir = std::env::var_os("ODP_MONITOR_KEEP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let recording = dir.join("rxe-dontneed-race.jsonl");
    let exe = std::env::current_exe().expect("test binary");
    // The fixture above was made with ODP_MONITOR_RACE_SECONDS=0.3 (a small file).
    let seconds = std::env::var("ODP_MONITOR_RACE_SECONDS").unwrap_or_else(|_| "2".into());
    // The command runs directly (the guest has no shell); its output shares our stdout and
    // precedes the summary, which is printed once the command has exited.
    let out = odp_ctl()
        .args(["monitor", "--summary", "--json", "--record"])
        .arg(&recording)
        .arg("--")
        .arg(&exe)
        .args(["--ignored", "--exact", "race_workload", "--nocapture"])
        .env(CHILD_ENV, format!("{device}:{seconds}"))
        .output()
        .expect("run monitor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (child_output, json) = stdout
        .rfind("\n{\n")
        .map_or(("", &*stdout), |at| stdout.split_at(at + 1));
    assert!(
        child_output.contains("test result: ok. 1 passed"),
        "the workload failed:\n{child_output}\nmonitor: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(json).expect("summary JSON after the workload");
    let raw = records(&recording);
    let (faults, invalidations, races, retries) = check_against_reference(&summary, &raw);
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {} events, {faults} faults, {invalidations} invalidations, {races} races, {retries} retries",
        raw.len()
    );
    assert!(faults > 0, "the WRITEs faulted");
    assert!(invalidations > 0, "DONTNEED invalidated the MR");
    assert_eq!(summary["source"]["drops"], 0);
    let mrs = summary["mrs"].as_array().expect("mrs");
    assert!(
        mrs.iter()
            .any(|m| m["device"] == device.as_str() && m["lkey"].is_u64()),
        "the ODP MR with its device and keys: {mrs:?}"
    );
}

/// The pid of the running `odp-ctl monitor` whose command line holds `marker`.
fn monitor_pid(marker: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // odp-ctl itself, not the shell whose command line names it too.
        let is_odp_ctl = args.first().is_some_and(|a| a.ends_with("odp-ctl"));
        (is_odp_ctl
            && args.iter().any(|a| a == "monitor")
            && args.iter().any(|a| a.contains(marker)))
        .then_some(pid)
    })
}

#[test]
fn terminating_signals_end_the_live_screen_and_give_the_terminal_back() {
    let test = "terminating_signals_end_the_live_screen_and_give_the_terminal_back";
    let bin = odp_ctl_path();
    for (signal, name) in [
        (libc::SIGHUP, "HUP"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGTERM, "TERM"),
    ] {
        // A copy per signal, so each run is found by its own path.
        let dir = tempfile::tempdir().expect("tempdir");
        let replay = dir.path().join(format!("sig-{name}.jsonl"));
        std::fs::copy(fixture(), &replay).expect("copy");
        let command = format!(
            "{bin} monitor --replay {} --speed 0; echo monitor-exit=$?; sleep 30",
            replay.display()
        );
        let Some(term) = Terminal::start(test, 100, 30, &command) else {
            return;
        };
        let shown = term.wait_for("source ended", 20);
        assert!(shown.contains("per second"), "{name}: {shown}");
        let pid = monitor_pid(&format!("sig-{name}.jsonl")).expect("the monitor's pid");
        // SAFETY: sending a signal to a process this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "{name}");
        let after = term.wait_for("monitor-exit=", 20);
        assert!(after.contains("monitor-exit=0"), "{name}: {after}");
        let visible = term.text(0);
        assert!(
            !visible.contains("per second"),
            "{name}: terminal not restored:\n{visible}"
        );
    }
}

#[test]
fn replay_input_is_bounded_named_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replay = |path: &Path| {
        let started = Instant::now();
        let out = odp_ctl()
            .args(["--json", "monitor", "--summary", "--speed", "0", "--replay"])
            .arg(path)
            .output()
            .expect("run");
        (out, started.elapsed())
    };
    // No newline ever: refused at the line bound, not buffered without end.
    let (out, took) = replay(Path::new("/dev/zero"));
    let err = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("/dev/zero:1:1") && err.contains("longer than"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (out, _) = replay(dir.path());
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is a directory"));
    let bad = dir.path().join("bad.jsonl");
    let first = std::fs::read_to_string(fixture())
        .expect("fixture")
        .lines()
        .next()
        .expect("a line")
        .to_string();
    let mut bytes = format!("{first}\nxx").into_bytes();
    bytes.push(0xff);
    bytes.push(b'\n');
    std::fs::write(&bad, bytes).expect("write");
    let (out, _) = replay(&bad);
    let err = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("bad.jsonl:2:3") && err.contains("not UTF-8"),
        "{err}"
    );
    // Lines that are not events are counted by reason.
    let mixed = dir.path().join("mixed.jsonl");
    let unknown = first.replacen("\"point\":\"", "\"point\":\"from_a_later_build_", 1);
    std::fs::write(&mixed, format!("{first}\n\n{unknown}\n{first}\n")).expect("write");
    let (out, _) = replay(&mixed);
    let summary = summary_json(&out);
    // The first line twice: an exact repeat, counted apart from the lines skipped.
    assert_eq!(summary["events"], 1, "{summary}");
    assert_eq!(summary["source"]["duplicates"], 1, "{summary}");
    let skipped = &summary["source"]["lines_skipped"];
    assert_eq!(skipped["blank"], 1, "{skipped}");
    assert_eq!(skipped["point unknown to this build"], 1, "{skipped}");
}

#[test]
fn a_signal_ends_a_replay_stuck_on_a_fifo_without_a_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = fifo(dir.path());
    let mut child = odp_ctl()
        .args(["monitor", "--summary", "--replay"])
        .arg(&fifo)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling the process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.try_wait().expect("wait");
    if status.is_none() {
        let _ = child.kill();
    }
    assert!(status.is_some(), "still blocked 10 s after SIGINT");
}

/// Runs `odp-ctl ARGS` with stdout to `out` and returns its exit code and peak resident set
/// (KiB), read from its own rusage, not the test process's other children.
fn peak_rss_kib(args: &[&std::ffi::OsStr], out: &Path) -> (i32, i64) {
    let file = std::fs::File::create(out).expect("stdout file");
    let child = odp_ctl().args(args).stdout(file).spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills; pid is our own unwaited child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: status and usage are valid for writes for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child);
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

#[test]
fn tens_of_thousands_of_mrs_take_bounded_memory_and_say_what_was_summarised() {
    const MRS: u64 = 12_000;
    const PROCESSES: u64 = 1_500;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("many-mrs.jsonl");
    let mut recording = Synthetic::default();
    for i in 0..MRS {
        recording.mr(
            &format!("w{}", i % PROCESSES),
            1000 + i % PROCESSES,
            2,
            false,
        );
    }
    recording.write(&path);
    let out = dir.path().join("summary.json");
    let (code, peak_kib) = peak_rss_kib(
        &[
            "--json".as_ref(),
            "monitor".as_ref(),
            "--summary".as_ref(),
            "--speed".as_ref(),
            "0".as_ref(),
            "--replay".as_ref(),
            path.as_os_str(),
        ],
        &out,
    );
    let text = std::fs::read_to_string(&out).expect("summary");
    assert_eq!(code, 0, "{text}");
    let summary: Value = serde_json::from_str(&text).expect("one JSON document");
    // Every count exact, however little latency detail was kept.
    assert_eq!(summary["totals"]["faults"], 2 * MRS);
    assert_eq!(summary["mrs"].as_array().map(Vec::len), Some(MRS as usize));
    assert_eq!(
        summary["summarised"]["mrs_without_latency"],
        MRS - 4096,
        "{}",
        summary["summarised"]
    );
    assert_eq!(
        summary["summarised"]["processes_without_latency"],
        PROCESSES - 1024
    );
    // One histogram per MR of the old size (~33 KiB each) alone would be 400 MB.
    assert!(peak_kib < 200 * 1024, "peak RSS {peak_kib} KiB");
    let _ = writeln!(
        std::io::stderr(),
        "{MRS} MRs, {PROCESSES} processes: peak RSS {} MiB",
        peak_kib / 1024
    );
    odp_core::testing::host_suffices();
}

/// The committed capture's lines, reordered, repeated or edited, replayed to a JSON summary.
fn replay_lines(dir: &Path, name: &str, lines: &[String]) -> Value {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write");
    let out = odp_ctl()
        .args(["--json", "monitor", "--summary", "--speed", "0", "--replay"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{name}");
    summary_json(&out)
}

#[test]
fn disorder_within_the_window_is_repaired_and_beyond_it_counted_not_believed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = std::fs::read_to_string(fixture())
        .expect("fixture")
        .lines()
        .map(String::from)
        .collect();
    let n = lines.len() as u64;
    let verdict = |s: &Value| {
        let t = &s["totals"];
        (
            t["faults"].clone(),
            t["invalidations"].clone(),
            t["races"].clone(),
            t["retries"].clone(),
        )
    };
    let original = replay_lines(dir.path(), "original.jsonl", &lines);
    assert_eq!(
        verdict(&original),
        (1473.into(), 195.into(), 4.into(), 45.into())
    );
    let order = |s: &Value| {
        let src = &s["source"];
        (
            src["late"].as_u64().unwrap_or(u64::MAX),
            src["duplicates"].as_u64().unwrap_or(u64::MAX),
            src["out_of_span"].as_u64().unwrap_or(u64::MAX),
        )
    };
    assert_eq!(order(&original), (0, 0, 0));

    // Neighbours swapped throughout: disorder well inside the window, repaired exactly.
    let mut swapped = lines.clone();
    for pair in swapped.chunks_mut(2) {
        pair.reverse();
    }
    let s = replay_lines(dir.path(), "swapped.jsonl", &swapped);
    assert_eq!(verdict(&s), verdict(&original));
    assert_eq!(order(&s), (0, 0, 0));

    // Every line three times: the repeats are counted and left out, the verdict stands.
    let tripled: Vec<String> = lines.iter().flat_map(|l| [l, l, l]).cloned().collect();
    let s = replay_lines(dir.path(), "tripled.jsonl", &tripled);
    assert_eq!(verdict(&s), verdict(&original));
    assert_eq!(order(&s), (0, 2 * n, 0));

    // One timestamp 570 years out: left out and counted; the span is the capture's.
    let mut absurd = lines.clone();
    absurd[100] = absurd[100].replacen(
        &format!("\"ts_ns\":{}", ts_of(&lines[100])),
        "\"ts_ns\":18000000000000000000",
        1,
    );
    let s = replay_lines(dir.path(), "absurd.jsonl", &absurd);
    assert_eq!(order(&s), (0, 0, 1));
    assert_eq!(s["events"], n - 1);
    assert!(
        s["duration_s"].as_f64().unwrap_or(f64::MAX) < 1.0,
        "{}",
        s["duration_s"]
    );

    // Reversed: nearly all of it comes too late to place; every line is either placed or
    // counted, and the rates are the placed events' own.
    let reversed: Vec<String> = lines.iter().rev().cloned().collect();
    let s = replay_lines(dir.path(), "reversed.jsonl", &reversed);
    let (late, _, _) = order(&s);
    assert!(late > n / 2, "{}", s["source"]);
    assert_eq!(s["events"].as_u64().unwrap_or(0) + late, n);
    assert!(
        s["rates"]["faults"].as_f64().unwrap_or(f64::MAX) < 1e5,
        "{}",
        s["rates"]
    );
    odp_core::testing::host_suffices();
}

fn ts_of(line: &str) -> u64 {
    serde_json::from_str::<Value>(line).expect("json")["ts_ns"]
        .as_u64()
        .expect("ts_ns")
}

#[test]
fn a_recording_this_user_may_not_read_is_a_permission_error() {
    let test = "a_recording_this_user_may_not_read_is_a_permission_error";
    if !odp_core::testing::root_or_skip(test, "running odp-ctl as another user") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("root-only.jsonl");
    std::fs::copy(fixture(), &path).expect("copy");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = odp_ctl()
        .args(["--json", "monitor", "--summary", "--replay"])
        .arg(&path)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(out.status.code(), Some(5), "{doc}");
    assert_eq!(doc["error"]["kind"], "permission", "{doc}");
    assert_eq!(doc["error"]["errno"], 13, "{doc}");
    // A file that is not there is invalid input, as before.
    let out = odp_ctl()
        .args(["monitor", "--summary", "--replay"])
        .arg(dir.path().join("absent.jsonl"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6));
}
