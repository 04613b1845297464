//! odp-ctl as a user runs it: exit codes, JSON documents and messages. Device tests print a named
//! skip without a device; the VM run (`cargo xtask test`) requires one.

use std::process::{Output, Stdio};
use std::time::Duration;

use odp_core::testing::{device_or_skip, kernel_resource_count};
use serde_json::Value;

mod common;
use common::odp_ctl;

fn run(args: &[&str]) -> Output {
    odp_ctl().args(args).output().expect("run odp-ctl")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "devices",
        "caps",
        "register",
        "prefetch",
        "probes",
        "trace",
        "monitor",
        "stress",
        "exporter",
        "serve",
        "Exit codes:",
        "3  no RDMA device",
        "8  the peer",
    ] {
        assert!(text.contains(word), "help lacks {word:?}:\n{text}");
    }
}

#[test]
fn malformed_arguments_are_usage_errors() {
    let out = run(&["register", "--size", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad size suffix"), "{}", stderr(&out));
    let out = run(&["prefetch", "--mode", "sometimes"]);
    assert_eq!(out.status.code(), Some(2));
    // A storm of no calls, and knobs without a peer to apply them to.
    for args in [
        &["register", "--peer", "10.20.0.1", "--remote-dontneed", "0"][..],
        &["register", "--remote-dontneed", "5"],
        &["register", "--ack-timeout", "1"],
        &["register", "--peer", "10.20.0.1", "--ack-timeout", "32"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn numbers_too_large_are_refused_not_panicked_on() {
    for args in [
        &["trace", "--duration", "9999999999999999999999"][..],
        &["trace", "--duration", "10000000000000000000"],
        &["monitor", "--summary", "--duration", "99999999999999h"],
        &["stress", "--no-probes", "--duration", "99999999999h"],
        &["monitor", "--summary", "--slow", "9999999999999999999999"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("too long"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let replay = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rxe-dontneed-race.jsonl"
    );
    let out = run(&[
        "monitor",
        "--summary",
        "--replay",
        replay,
        "--speed",
        "1e-300",
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("--speed"), "{}", stderr(&out));
    let dir = tempfile::tempdir().expect("tempdir");
    let baseline = include_str!("../../scenarios/baseline.toml");
    for (name, scenario) in [
        (
            "long",
            baseline.replace("duration = \"3s\"", "duration = 1e30"),
        ),
        (
            "phases",
            baseline.replace("duration = \"3s\"\n", "")
                + "[[phase]]\nduration = \"2000h\"\n[[phase]]\nduration = \"2000h\"\n",
        ),
    ] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, scenario).expect("scenario");
        let out = run(&["stress", "--no-probes", path.to_str().expect("utf-8 path")]);
        assert_eq!(out.status.code(), Some(6), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("too long") || stderr(&out).contains("100 days"),
            "{name}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn filters_that_cannot_work_are_refused_before_anything_starts() {
    let out = run(&["trace", "--count-only", "--range", "0x7f0000000000:4M"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--count-only"));
    let out = run(&["trace", "--range", "0x1000:0"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-empty"));
    let out = run(&["trace", "--range", "nowhere"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed range is a usage error"
    );
    // Checked up front: no "tracing" line, and in about the time odp-ctl takes to start at all
    // (here, or in the emulated guest), far below what discovery and loading take there.
    let started = std::time::Instant::now();
    assert!(run(&["--help"]).status.success());
    let bound = started.elapsed() * 3 + Duration::from_millis(200);
    let replay = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rxe-dontneed-race.jsonl"
    );
    for (args, says) in [
        (
            &["trace", "--comm", "a-name-of-16-bytes"][..],
            "1 to 15 bytes",
        ),
        (&["trace", "--comm", ""], "1 to 15 bytes"),
        (
            &["monitor", "--summary", "--device", "a-device-of-16-b"],
            "1 to 15 bytes",
        ),
        (&["trace", "--pid", "4194305"], "no such process"),
        (
            &["trace", "--output", "/nonexistent/dir/out.txt"],
            "cannot create",
        ),
        (
            &[
                "monitor",
                "--summary",
                "--record",
                "/nonexistent/dir/r.jsonl",
            ],
            "cannot create",
        ),
        (&["monitor", "--replay", replay], "needs a terminal"),
    ] {
        let started = std::time::Instant::now();
        let out = odp_ctl()
            .args(args)
            .stdout(Stdio::piped())
            .output()
            .expect("run odp-ctl");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {err}");
        assert!(
            err.contains(says) && !err.contains("tracing"),
            "{args:?}: {err}"
        );
        assert!(
            started.elapsed() < bound,
            "{args:?}: checked late ({:?}, bound {bound:?})",
            started.elapsed()
        );
    }
}

/// `odp-ctl ... | head` ends quietly: killed by SIGPIPE like any Unix tool, never a panic.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::io::Read;
    let mut child = odp_ctl()
        .args(["stress", "--print-default"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().expect("wait");
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}"
    );
}

#[test]
fn zero_length_is_invalid_input_before_any_device_is_touched() {
    // Runs everywhere: the buffer is validated before the device is opened.
    let out = run(&["register", "--size", "0"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("greater than zero"),
        "{}",
        stderr(&out)
    );
    // Before any route to the peer is looked for (without rdma_cm that would be exit 3).
    for (args, said) in [
        (
            &["register", "--peer", "10.20.0.1", "--message-size", "0"][..],
            "--message-size",
        ),
        (
            &[
                "register",
                "--peer",
                "10.20.0.1",
                "--remote-dontneed",
                "5",
                "--remote-dontneed-length",
                "100",
            ],
            "at least a page",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(said), "{}", stderr(&out));
    }
    let out = run(&["--json", "register", "--backing", "hugetlb", "--size", "4K"]);
    assert_eq!(out.status.code(), Some(6));
    let doc = json(&out);
    assert_eq!(doc["error"]["kind"], "invalid-input");
    assert!(doc["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("huge page size"));
}

#[test]
fn devices_without_rdma_says_so_and_exits_3() {
    let has_device = odp_core::verbs::list_devices().is_ok_and(|d| !d.is_empty());
    let out = run(&["devices"]);
    if has_device {
        assert!(out.status.success(), "{}", stderr(&out));
        return;
    }
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("no RDMA devices found")
            || err.contains("libibverbs.so.1 could not be loaded"),
        "{err}"
    );
    let out = run(&["--json", "caps"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["error"]["kind"], "no-device");
}

#[test]
fn a_buffer_too_large_looks_for_the_device_first_and_is_a_resource_limit() {
    // 1 TiB: no machine here has it. Without a device nothing is mapped and the answer is "no
    // device" (3); with one, the mapping is refused as a resource limit (5), not "other" (1).
    let has_device = odp_core::verbs::list_devices().is_ok_and(|d| !d.is_empty());
    let out = run(&["--json", "register", "--size", "1T"]);
    let doc = json(&out);
    if has_device {
        assert_eq!(out.status.code(), Some(5), "{doc}");
        assert_eq!(doc["error"]["kind"], "permission", "{doc}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("memlock limit"),
            "{doc}"
        );
    } else {
        assert_eq!(out.status.code(), Some(3), "{doc}");
        assert_eq!(doc["error"]["kind"], "no-device", "{doc}");
    }
}

#[test]
fn devices_and_caps_show_odp_support() {
    let Some(dev) = device_or_skip("devices_and_caps_show_odp_support") else {
        return;
    };
    let doc = json(&run(&["--json", "devices"]));
    let devices = doc["devices"].as_array().expect("devices array");
    let entry = devices
        .iter()
        .find(|d| d["name"] == dev.as_str())
        .expect("device listed");
    assert_eq!(entry["odp"], true);

    let out = run(&["--json", "caps", &dev]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = json(&out);
    let odp = &doc["device"]["odp"];
    assert_eq!(odp["supported"], true);
    for op in ["send", "recv", "write", "read"] {
        assert_eq!(odp["rc"][op], true, "rc ODP lacks {op}: {odp}");
    }
    assert_eq!(doc["ports"][0]["state"], "ACTIVE");

    let human = String::from_utf8_lossy(&run(&["caps", &dev]).stdout).into_owned();
    assert!(
        human.contains("SUPPORTED") && human.contains(" rc "),
        "{human}"
    );
}

#[test]
fn register_with_traffic_verifies_every_backing() {
    let Some(_) = device_or_skip("register_with_traffic_verifies_every_backing") else {
        return;
    };
    for (backing, size) in [
        ("anon", "1M"),
        ("thp", "4M"),
        ("hugetlb", "4M"),
        ("file", "1M"),
        ("shared", "1M"),
    ] {
        let out = run(&[
            "--json",
            "register",
            "--backing",
            backing,
            "--size",
            size,
            "--touch",
            "--traffic",
        ]);
        assert!(out.status.success(), "{backing}: {}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["mr"]["odp"], true);
        assert_eq!(doc["mr"]["backing"], backing);
        if backing == "hugetlb" {
            // Either the kernel took IBV_ACCESS_HUGETLB, or `auto` fell back and says so.
            let access = doc["mr"]["access"].as_array().expect("access");
            let flagged = access.iter().any(|a| a == "hugetlb");
            let notes = doc["mr"]["notes"].to_string();
            assert!(
                flagged != notes.contains("IBV_ACCESS_HUGETLB rejected"),
                "{access:?} {notes}"
            );
        }
        let ops = doc["traffic"]["ops"].as_array().expect("ops");
        assert_eq!(ops.len(), 3);
        for op in ops {
            assert!(op["mismatch"].is_null(), "{backing}: {op}");
            assert!(op["bytes"].as_u64().unwrap_or(0) >= 1 << 20, "{op}");
        }
        assert_eq!(doc["deregistered"], true);
    }
}

#[test]
fn prefetch_every_advice_in_both_modes_succeeds() {
    let Some(_) = device_or_skip("prefetch_every_advice_in_both_modes_succeeds") else {
        return;
    };
    let out = run(&[
        "--json", "prefetch", "--advice", "all", "--mode", "both", "--range", "0:64K", "--range",
        "1M:1M",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = json(&out);
    let calls = doc["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 6, "3 advices x 2 modes");
    for call in calls {
        assert_eq!(call["rc"], 0, "{call}");
        assert_eq!(call["ranges"].as_array().map(Vec::len), Some(2));
    }
    assert_eq!(doc["failed"], 0);
}

#[test]
fn unsupported_and_invalid_requests_map_to_their_exit_codes() {
    let Some(_) = device_or_skip("unsupported_and_invalid_requests_map_to_their_exit_codes") else {
        return;
    };

    // rxe has no implicit ODP: exit 4, with the reason.
    let out = run(&["register", "--implicit"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not support implicit ODP"));

    // Forcing the huge-page flag where the kernel refuses it is "unsupported", not a crash.
    let out = run(&[
        "register",
        "--backing",
        "hugetlb",
        "--size",
        "4M",
        "--hugetlb-flag",
        "yes",
    ]);
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert!(stderr(&out).contains("EOPNOTSUPP"), "{}", stderr(&out));
    }

    let cases: &[(&[&str], &str)] = &[
        (&["caps", "nosuchdev9"], "not found"),
        (
            &["prefetch", "--access", "none", "--advice", "prefetch-write"],
            "EINVAL",
        ),
        (&["prefetch", "--lkey", "0xdead00"], "ibv_advise_mr failed"),
        (
            &["prefetch", "--size", "1M", "--range", "512K:1M"],
            "outside",
        ),
        (
            &[
                "register",
                "--size",
                "4M",
                "--backing",
                "file",
                "--file",
                "/nonexistent/dir/f",
            ],
            "cannot open",
        ),
    ];
    for (args, needle) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // The JSON error carries the errno for scripts.
    let out = run(&[
        "--json",
        "prefetch",
        "--access",
        "none",
        "--advice",
        "prefetch-write",
    ]);
    assert_eq!(json(&out)["calls"][0]["errno_name"], "EINVAL");
}

#[test]
fn hold_deregisters_on_sigterm_and_sigint() {
    let Some(_) = device_or_skip("hold_deregisters_on_sigterm_and_sigint") else {
        return;
    };
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let child = odp_ctl()
            .args(["register", "--size", "1M", "--hold"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let pid = child.id() as i32;
        // Wait until the kernel shows the child's MR, then signal it.
        let registered = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            rdma_mrs_of(pid) > 0
        });
        assert!(registered, "the held MR never appeared");
        // SAFETY: pid is our own child, still running.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "signal {signal}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("holding the MR") && text.contains("deregistered"),
            "{text}"
        );
        assert_eq!(rdma_mrs_of(pid), 0);
    }
}

fn rdma_mrs_of(pid: i32) -> usize {
    kernel_resource_count("mr", pid as u32).expect("rdma resource show mr")
}

/// `stress --peer` checks the scenario for running across hosts before it resolves or connects
/// anything: what only runs where the memory is is refused where it is written.
#[test]
fn a_scenario_that_cannot_run_across_hosts_is_refused_before_any_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fork = include_str!("../../scenarios/fork-cow.toml");
    let path = dir.path().join("fork-cow.toml");
    std::fs::write(&path, fork).expect("scenario");
    let line = fork
        .lines()
        .position(|l| l.starts_with("[[invalidate]]"))
        .expect("an action")
        + 1;
    let file = path.to_str().expect("utf-8 path");
    // An address nobody holds: a connection attempt would take seconds and say so.
    for check in [true, false] {
        let mut args = vec!["stress", "--peer", "192.0.2.1", file];
        if check {
            args.push("--check");
        }
        let out = run(&args);
        assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("{file}:{line}:1: fork runs where the memory is"))
                && stderr(&out).contains("(across hosts)"),
            "{}",
            stderr(&out)
        );
    }
    let storm = dir.path().join("storm.toml");
    std::fs::write(&storm, include_str!("../../scenarios/dontneed-storm.toml")).expect("scenario");
    let out = run(&[
        "stress",
        "--peer",
        "192.0.2.1",
        "--check",
        storm.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
