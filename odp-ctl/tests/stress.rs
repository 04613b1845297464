//! `odp-ctl stress` as users run it: the example scenarios in the VM on rxe, each checked for
//! clean data and for agreement between the tool's own log of actions and the probe events;
//! bad scenario files refused with their line and column; Ctrl-C ends a run with a report.

use std::io::Write;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use odp_core::testing::device_or_skip;
use serde_json::Value;

mod common;
use common::{odp_ctl, odp_ctl_path, Terminal};

/// The repository's example scenarios, built into this binary so the guest has them too.
const EXAMPLES: [(&str, &str); 11] = [
    ("baseline", include_str!("../../scenarios/baseline.toml")),
    (
        "dontneed-storm",
        include_str!("../../scenarios/dontneed-storm.toml"),
    ),
    ("remap", include_str!("../../scenarios/remap.toml")),
    ("fork-cow", include_str!("../../scenarios/fork-cow.toml")),
    ("mprotect", include_str!("../../scenarios/mprotect.toml")),
    ("phases", include_str!("../../scenarios/phases.toml")),
    ("thp", include_str!("../../scenarios/thp.toml")),
    ("atomics", include_str!("../../scenarios/atomics.toml")),
    ("migrate", include_str!("../../scenarios/migrate.toml")),
    ("mremap", include_str!("../../scenarios/mremap.toml")),
    ("ksm", include_str!("../../scenarios/ksm.toml")),
];

fn scenario(name: &str) -> PathBuf {
    let Some((_, text)) = EXAMPLES.iter().find(|(n, _)| *n == name) else {
        panic!("no scenario {name}");
    };
    let dir = std::env::temp_dir().join(format!("odp-stress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write scenario");
    path
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn skip(test: &str) -> Option<String> {
    let device = device_or_skip(test)?;
    odp_core::testing::root_or_skip(test, "loading BPF").then_some(device)
}

/// Runs an example scenario for `seconds` with probes and checks it: exact data, probes
/// attached, no drops, traffic on every worker. A run that failed completions only as rxe is
/// known to (common::rxe_failures_explained) passes, the failures named on stderr; anything
/// else fails.
fn run_checked(name: &str, seconds: &str) -> Value {
    let mut cmd = odp_ctl();
    cmd.args(["--json", "stress"]).arg(scenario(name));
    if name != "phases" {
        cmd.args(["--duration", seconds]);
    }
    let out = cmd.output().expect("run stress");
    let report = common::stress_report(name, &out);
    assert_eq!(report["mismatches"], 0, "{name}");
    assert_eq!(report["probes"]["status"], "attached", "{name}");
    assert_eq!(report["probes"]["summary"]["source"]["drops"], 0, "{name}");
    for t in report["traffic"].as_array().expect("traffic") {
        assert!(t["ops"].as_u64().unwrap_or(0) > 0, "{name}: {t}");
        assert!(t["pages_checked"].as_u64().unwrap_or(0) > 0, "{name}: {t}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "{name}: traffic {} actions {} matching {} races {} retries {}",
        report["traffic"],
        report["actions"],
        report["probes"]["matching"],
        report["probes"]["summary"]["totals"]["races"],
        report["probes"]["summary"]["totals"]["retries"]
    );
    report
}

/// Every action of this kind that succeeded was seen: one invalidation event of `cause` in the
/// stress process's address space, over its range, inside its window, each event for one
/// action. Unseen actions are allowed only up to the runs the kernel skipped of the matched
/// point's own programs (docs/FINDINGS.md #8): with none skipped, every action must be seen.
fn every_action_seen(report: &Value, action: &str, cause: &str) {
    let done = report["actions"][action]["done"].as_u64().unwrap_or(0);
    assert!(done > 0, "no {action} ran: {}", report["actions"]);
    let m = &report["probes"]["matching"][action];
    assert_eq!(m["actions"], done, "{action}");
    let point = m["point"].as_str().expect("the matched point");
    let source = &report["probes"]["summary"]["source"];
    let missed = source["missed_per_point"][point].as_u64().unwrap_or(0);
    let matched = m["matched"].as_u64().unwrap_or(0);
    assert!(
        matched + missed >= done,
        "{action} not seen by {point} ({missed} of its runs skipped): {m}"
    );
    if matched < done {
        let _ = writeln!(
            std::io::stderr(),
            "{action}: {} of {done} unseen, within the {missed} runs of {point} the kernel skipped",
            done - matched
        );
    }
    // The engine's count of that cause agrees (it sees every address space, so at least).
    let by_cause = report["probes"]["summary"]["totals"]["invalidations_by_cause"][cause]
        .as_u64()
        .unwrap_or(0);
    assert!(
        by_cause >= matched,
        "{cause} invalidations {by_cause} < {matched} {action} matched"
    );
}

#[test]
fn baseline_moves_exact_bytes_with_no_invalidations_or_races() {
    if skip("baseline_moves_exact_bytes_with_no_invalidations_or_races").is_none() {
        return;
    }
    let report = run_checked("baseline", "2s");
    let totals = &report["probes"]["summary"]["totals"];
    assert!(
        totals["faults"].as_u64().unwrap_or(0) > 0,
        "ODP faulted: {totals}"
    );
    assert_eq!(totals["invalidations"], 0);
    assert_eq!(totals["races"], 0);
    assert_eq!(report["traffic"].as_array().map(Vec::len), Some(3));
}

#[test]
fn dontneed_storm_keeps_data_and_every_drop_reaches_the_driver() {
    if skip("dontneed_storm_keeps_data_and_every_drop_reaches_the_driver").is_none() {
        return;
    }
    let report = run_checked("dontneed-storm", "3s");
    every_action_seen(&report, "dontneed", "CLEAR");
    let zeroed: u64 = report["traffic"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            t["pages_zeroed_by_actions"].as_u64().unwrap_or(0)
                + t["pages_torn_by_actions"].as_u64().unwrap_or(0)
        })
        .sum();
    assert!(zeroed > 0, "the storm dropped pages under transfers");
}

#[test]
fn remap_keeps_data_and_every_remap_unmaps_at_the_driver() {
    if skip("remap_keeps_data_and_every_remap_unmaps_at_the_driver").is_none() {
        return;
    }
    let report = run_checked("remap", "3s");
    every_action_seen(&report, "remap", "UNMAP");
}

#[test]
fn fork_cow_keeps_the_parents_data() {
    if skip("fork_cow_keeps_the_parents_data").is_none() {
        return;
    }
    let report = run_checked("fork-cow", "3s");
    // Copy-on-write keeps what the parent owns: fork never excuses a zero page, so run_clean's
    // zero mismatches is that check.
    every_action_seen(&report, "fork", "PROTECTION_PAGE");
}

#[test]
fn mprotect_toggling_keeps_reads_exact_and_reaches_the_driver() {
    if skip("mprotect_toggling_keeps_reads_exact_and_reaches_the_driver").is_none() {
        return;
    }
    let report = run_checked("mprotect", "3s");
    every_action_seen(&report, "mprotect", "PROTECTION_VMA");
}

#[test]
fn thp_collapse_and_split_keep_data_and_reach_the_driver() {
    if skip("thp_collapse_and_split_keep_data_and_reach_the_driver").is_none() {
        return;
    }
    let report = run_checked("thp", "3s");
    // Contents are kept: collapse and split never excuse a zero page, so run_checked's zero
    // mismatches is that check.
    // A collapse of what is already huge, or a split of what is not, changes nothing and need
    // not reach the driver; some of each must.
    for action in ["collapse", "split"] {
        let done = report["actions"][action]["done"].as_u64().unwrap_or(0);
        let seen = report["probes"]["matching"][action]["matched"]
            .as_u64()
            .unwrap_or(0);
        assert!(done > 0 && seen > 0, "{action}: {done} done, {seen} seen");
    }
}

#[test]
fn atomics_count_exactly_through_dontneed() {
    if skip("atomics_count_exactly_through_dontneed").is_none() {
        return;
    }
    let report = run_checked("atomics", "3s");
    let adder = &report["traffic"][0];
    assert_eq!(adder["op"], "fetch-add");
    assert!(adder["ops"].as_u64().unwrap_or(0) > 100, "{adder}");
    // Drops reset some counts (accepted only where a drop hit that page), and reached rxe.
    assert!(
        adder["pages_zeroed_by_actions"].as_u64().unwrap_or(0) > 0,
        "{adder}"
    );
    every_action_seen(&report, "dontneed", "CLEAR");
}

#[test]
fn numa_migration_keeps_data_and_every_move_reaches_the_driver() {
    if skip("numa_migration_keeps_data_and_every_move_reaches_the_driver").is_none() {
        return;
    }
    let report = run_checked("migrate", "3s");
    // Contents are kept: migrate never excuses a zero page, so run_clean's zero mismatches is
    // that check.
    // Every migrate that moved a page was seen; one that moved none changed nothing.
    let m = &report["probes"]["matching"]["migrate"];
    let moved = m["actions"].as_u64().unwrap_or(0);
    assert!(moved > 0, "{m}");
    assert_eq!(m["matched"], moved, "{m}");
    // Each move was matched to a CLEAR: try_to_migrate's cause (MIGRATE is for device memory).
    let causes = &report["probes"]["summary"]["totals"]["invalidations_by_cause"];
    assert!(
        causes["CLEAR"].as_u64().unwrap_or(0) >= moved,
        "invalidations {causes} < {moved} moves"
    );
}

#[test]
fn mremap_keeps_data_and_every_move_unmaps_at_the_driver() {
    if skip("mremap_keeps_data_and_every_move_unmaps_at_the_driver").is_none() {
        return;
    }
    let report = run_checked("mremap", "3s");
    // The pages left: some device accesses afterwards must have met zeroed ones.
    let zeroed: u64 = report["traffic"]
        .as_array()
        .expect("traffic")
        .iter()
        .map(|t| t["pages_zeroed_by_actions"].as_u64().unwrap_or(0))
        .sum();
    assert!(zeroed > 0, "{}", report["traffic"]);
    every_action_seen(&report, "mremap", "UNMAP");
}

#[test]
fn ksm_merges_keep_data_and_every_merge_reaches_the_driver() {
    if skip("ksm_merges_keep_data_and_every_merge_reaches_the_driver").is_none() {
        return;
    }
    let before = std::fs::read_to_string("/sys/kernel/mm/ksm/run").expect("ksm run");
    let report = run_checked("ksm", "3s");
    let m = &report["probes"]["matching"]["ksm"];
    let merged = m["actions"].as_u64().unwrap_or(0);
    assert!(
        merged > 0,
        "no action saw a merge: {m} {}",
        report["actions"]
    );
    assert_eq!(m["matched"], merged, "{m}");
    let causes = &report["probes"]["summary"]["totals"]["invalidations_by_cause"];
    assert!(
        causes["CLEAR"].as_u64().unwrap_or(0) >= merged,
        "{causes} < {merged} merges"
    );
    assert_eq!(
        std::fs::read_to_string("/sys/kernel/mm/ksm/run").expect("ksm run"),
        before,
        "ksmd left as it was"
    );
}

/// Processes named odp-ctl still running (the forked children of `fork` actions keep the name).
fn odp_ctl_processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "odp-ctl")
        })
        .collect()
}

/// Traffic on both halves of an MR while one worker forks (children touching the pages) and
/// another has ksmd merge zeroed pages: the two actions that leave something outside the
/// process (children, ksmd's settings) if a stop goes wrong.
const FORK_AND_KSM: &str = r#"
[[mr]]
name = "buf"
size = "4M"
[[traffic]]
name = "writer"
mr = "buf"
op = "write"
range = "0:2M"
[[traffic]]
name = "reader"
mr = "buf"
op = "read"
range = "2M:2M"
rate = 100
[[invalidate]]
name = "fork"
mr = "buf"
action = "fork"
rate = 50
length = "64K"
range = "0:2M"
[[invalidate]]
name = "ksm"
mr = "buf"
action = "ksm"
rate = 5
length = "64K"
range = "2M:2M"
hold = "1s"
"#;

#[test]
fn ctrl_c_ends_a_run_early_with_a_full_report_and_nothing_left_behind() {
    if skip("ctrl_c_ends_a_run_early_with_a_full_report_and_nothing_left_behind").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fork-and-ksm.toml");
    std::fs::write(&path, FORK_AND_KSM).expect("write scenario");
    let ksm_before = std::fs::read_to_string("/sys/kernel/mm/ksm/run").expect("ksm run");
    assert!(odp_ctl_processes().is_empty(), "an odp-ctl runs already");
    let mut child = odp_ctl()
        .args(["--json", "stress", "--duration", "60s"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Starting takes seconds in the TCG guest (probe discovery, load, attach; longer in a
    // debug build): interrupt a few seconds after the run says it is under way, not after a
    // fixed time from spawn.
    let stderr = child.stderr.take().expect("stderr");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("running for") {
                let _ = started_tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the run did not start within 60 s");
    std::thread::sleep(Duration::from_secs(4));
    let interrupted = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    let stopping = interrupted.elapsed();
    let stderr = stderr_reader.join().expect("stderr reader");
    assert!(
        stopping < Duration::from_secs(20),
        "took {stopping:?} to stop"
    );
    assert!(out.status.success(), "{stderr}");
    let report = json(&out);
    assert_eq!(report["stopped_early"], true);
    assert!(report["duration_s"].as_f64().unwrap_or(99.0) < 30.0);
    assert_eq!(report["mismatches"], 0);
    for action in ["fork", "ksm"] {
        assert!(
            report["actions"][action]["done"].as_u64().unwrap_or(0) > 0,
            "no {action} action ran: {}",
            report["actions"]
        );
    }
    assert_eq!(
        odp_ctl_processes(),
        Vec::<u32>::new(),
        "forked children left behind"
    );
    assert_eq!(
        std::fs::read_to_string("/sys/kernel/mm/ksm/run").expect("ksm run"),
        ksm_before,
        "ksmd's setting not restored"
    );
}

#[test]
fn bad_scenarios_are_refused_with_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "name = \"bad\"\n[[mr]]\nname = \"buf\"\nsize = \"4M\"\n\n[[traffic]]\nmr = \"buf\"\nop = \"scribble\"\n",
    )
    .expect("write");
    let out = odp_ctl().arg("stress").arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(6), "invalid input");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:8:6"), "{err}");
    assert!(err.contains("scribble"), "{err}");

    let out = odp_ctl()
        .args(["stress", "--duration", "1s"])
        .arg(scenario("phases"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("phases"));

    let out = odp_ctl()
        .args(["stress", "/nonexistent/s.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn every_example_scenario_parses() {
    let listed: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios"))
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter_map(|f| f.strip_suffix(".toml").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
    for (name, _) in EXAMPLES {
        assert!(
            listed.is_empty() || listed.iter().any(|l| l == name),
            "{name} is not in scenarios/"
        );
    }
    // The guest has no checkout: there, the list above is all it knows.
    for name in &listed {
        assert!(
            EXAMPLES.iter().any(|(n, _)| n == name),
            "scenarios/{name}.toml is not built in"
        );
    }
    for (name, _) in EXAMPLES {
        let text = std::fs::read_to_string(scenario(name)).expect("read");
        odp_core::stress::Scenario::parse(&text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let out = odp_ctl()
        .args(["stress", "--print-default"])
        .output()
        .expect("run");
    assert!(out.status.success());
    odp_core::stress::Scenario::parse(&String::from_utf8_lossy(&out.stdout), "default")
        .expect("the printed default parses");
}

#[test]
fn the_phases_example_runs_its_phases() {
    if skip("the_phases_example_runs_its_phases").is_none() {
        return;
    }
    let report = run_checked("phases", "");
    let d = report["duration_s"].as_f64().unwrap_or(0.0);
    assert!((4.9..8.0).contains(&d), "three phases of 1+2+2 s took {d}");
    assert!(report["prefetch"][0]["calls"].as_u64().unwrap_or(0) > 0);
    every_action_seen(&report, "dontneed", "CLEAR");
}

#[test]
fn stress_with_monitor_shows_the_run_live_then_reports_after_q() {
    let test = "stress_with_monitor_shows_the_run_live_then_reports_after_q";
    if skip(test).is_none() {
        return;
    }
    let bin = odp_ctl_path();
    let command = format!(
        "{bin} stress --monitor --duration 60s {}; echo stress-exit=$?; sleep 60",
        scenario("dontneed-storm").display()
    );
    let Some(term) = Terminal::start(test, 120, 40, &command) else {
        return;
    };
    // The live view, with the stress process's ODP MR in the table and faults counting up
    // (after the probe session's start: seconds in an idle guest, once over a minute).
    let live = term.wait_for("rxe0", 120);
    assert!(
        live.contains("odp-ctl monitor") && live.contains("live"),
        "{live}"
    );
    assert!(live.contains("MRs ("), "{live}");
    std::thread::sleep(Duration::from_secs(3));
    let later = term.text(0);
    assert!(
        later.contains("races") && later.contains("inval"),
        "{later}"
    );
    term.keys("q");
    let report = term.wait_for("stress-exit=", 60);
    // A long DONTNEED storm can starve a device fault past HMM's 1 s limit; rxe then fails the
    // work request (remote access error) and the run rightly exits 7, the probes having seen
    // the timeout unless its event was among those lost on a slow guest. A fault slow enough to
    // make the requester retransmit can leave rxe failing an RDMA WRITE with "remote invalid
    // request" and no fault error (docs/FINDINGS.md #7). Either is accepted only with no wrong
    // bytes.
    if !report.contains("stress-exit=0") {
        // The report wraps at the pane's width, anywhere (a wrap at a space loses the space):
        // it is read with every blank taken out, and so are the phrases looked for in it.
        let squashed: String = report.split_whitespace().collect();
        let hmm_timeouts = squashed
            .split("(hmm")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let evidence_lost = squashed.contains("neverreachedtheanalysis");
        let failures: Vec<&str> = squashed
            .split("WCERROR")
            .skip(1)
            .map(|f| f.split("vendorerror").next().unwrap_or(f))
            .collect();
        let finding_7 =
            |f: &&str| f.contains("RDMAWRITE") && f.contains("remoteinvalidrequesterror(9)");
        let hmm_timeout =
            |f: &&str| f.contains("remoteaccesserror(10)") && (hmm_timeouts > 0 || evidence_lost);
        assert!(
            squashed.contains("stress-exit=7")
                && squashed.contains("error:0mismatchedpages")
                && !failures.is_empty()
                && failures.iter().all(|f| finding_7(f) || hmm_timeout(f)),
            "{report}"
        );
        let _ = writeln!(
            std::io::stderr(),
            "{test}: {} failed completion(s), explained by {hmm_timeouts} HMM timeout(s){} or \
             finding #7",
            failures.len(),
            if evidence_lost {
                " (some events lost)"
            } else {
                ""
            }
        );
    }
    assert!(report.contains("(stopped early)"), "{report}");
    assert!(report.contains("dontneed"), "{report}");
    assert!(report.contains("kernel side (probes)"), "{report}");
}

#[test]
fn check_validates_every_example_and_names_the_entry_of_a_bad_one() {
    for (name, _) in EXAMPLES {
        let out = odp_ctl()
            .args(["--json", "stress", "--check"])
            .arg(scenario(name))
            .output()
            .expect("run");
        assert!(out.status.success(), "{name}: {out:?}");
        let doc = json(&out);
        assert!(doc["traffic"].as_u64().unwrap_or(0) > 0, "{name}: {doc}");
    }
    // Nothing is registered or run: no device is needed to check.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("overlap.toml");
    std::fs::write(
        &path,
        "[[mr]]\nname = \"buf\"\nsize = \"4M\"\n\
         [[traffic]]\nmr = \"buf\"\nop = \"write\"\n\
         [[traffic]]\nmr = \"buf\"\nop = \"read\"\nrange = \"1M:1M\"\n",
    )
    .expect("write");
    let out = odp_ctl()
        .args(["stress", "--check"])
        .arg(&path)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains(&format!("{}:7:1: traffic #2", path.display())),
        "{err}"
    );
}
