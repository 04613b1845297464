//! The two user-facing drivers: `demo` (the main job, in the VM) and `test` (host tests, then
//! the device tests on rxe in the VM), with one closing count over both.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{vm, workspace_root};

/// Test outcomes read from cargo test output and our named skips.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Counts {
    /// Folds one line of test output into the counts.
    pub fn observe(&mut self, line: &str) {
        if line.starts_with("SKIP ") {
            self.skipped += 1;
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }

    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a command, echoing both streams and counting test results from them.
fn run_counted(mut cmd: Command) -> Result<(bool, Counts)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning cargo")?;
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let echo = |stream: Box<dyn std::io::Read + Send>, to_stderr: bool| {
        std::thread::spawn(move || {
            let mut counts = Counts::default();
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                counts.observe(&line);
                if to_stderr {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
            }
            counts
        })
    };
    let out = echo(Box::new(stdout), false);
    let err = echo(Box::new(stderr), true);
    let status = child.wait()?;
    let mut counts = out.join().unwrap_or_default();
    counts.add(err.join().unwrap_or_default());
    Ok((status.success(), counts))
}

/// Builds the integration test binaries and odp-ctl, returning their paths.
fn build_vm_artifacts() -> Result<(Vec<PathBuf>, PathBuf)> {
    let out = cargo()
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut tests = Vec::new();
    let mut odp_ctl = None;
    for line in out.stdout.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if kinds.iter().any(|k| k == "test") {
            tests.push(PathBuf::from(exe));
        } else if kinds.iter().any(|k| k == "bin")
            && msg["target"]["name"] == "odp-ctl"
            && msg["profile"]["test"] == false
        {
            odp_ctl = Some(PathBuf::from(exe));
        }
    }
    let odp_ctl = odp_ctl.context("cargo built no odp-ctl binary")?;
    if tests.is_empty() {
        bail!("cargo built no integration test binaries");
    }
    tests.sort();
    Ok((tests, odp_ctl))
}

pub struct TestOpts {
    pub host: bool,
    pub vm: bool,
    pub vm_opts: crate::VmOpts,
    pub filter: Option<String>,
}

pub fn test(opts: &TestOpts) -> Result<()> {
    crate::host::ensure()?;
    let mut total = Counts::default();
    let mut ok = true;
    if opts.host {
        println!("== host tests (this kernel: no RDMA; device tests print SKIP and run in the VM)");
        let mut cmd = cargo();
        cmd.args(["test", "--workspace"]);
        if let Some(f) = &opts.filter {
            cmd.args(["--", f]);
        }
        let (success, counts) = run_counted(cmd)?;
        ok &= success;
        total.add(counts);
        println!(
            "== host: {} passed, {} failed, {} skipped",
            counts.passed, counts.failed, counts.skipped
        );
    }
    if opts.vm {
        println!("== VM tests on soft-RoCE (rxe)");
        let (tests, odp_ctl) = build_vm_artifacts()?;
        let guest = crate::prepare(&opts.vm_opts)?;
        let filter = opts
            .filter
            .as_deref()
            .map(|f| format!(" '{f}'"))
            .unwrap_or_default();
        let mut script = String::from(
            "export ODP_REQUIRE_DEVICE=1 ODP_CTL=/job/bin/odp-ctl RUST_BACKTRACE=1\nfail=0\n",
        );
        for t in &tests {
            let name = t
                .file_name()
                .and_then(|n| n.to_str())
                .context("test binary name")?;
            // One thread: the leak checks compare the kernel's per-process MR counts.
            script.push_str(&format!(
                "echo '== VM: {name}'\n/job/bin/{name} --test-threads=1{filter} || fail=1\n"
            ));
        }
        script.push_str("exit $fail\n");
        let mut binaries = tests.clone();
        binaries.push(odp_ctl);
        // mlx5_ib loads without hardware; its module BTF is what the mlx5 probe test needs.
        let mut vm_opts = opts.vm_opts.clone();
        if !vm_opts.modules.iter().any(|m| m == "mlx5_ib") {
            vm_opts.modules.push("mlx5_ib".into());
        }
        let outcome = vm::run_job(&guest, &crate::job(&vm_opts, script, binaries))?;
        let mut counts = Counts::default();
        for line in outcome.output.lines() {
            counts.observe(line);
        }
        ok &= outcome.status == 0;
        total.add(counts);
        println!(
            "== VM ({}): {} passed, {} failed, {} skipped",
            guest.kernel.abi, counts.passed, counts.failed, counts.skipped
        );
        if outcome.status != 0 && counts.failed == 0 {
            println!(
                "== VM run failed with status {} (see {})",
                outcome.status,
                outcome.job_dir.display()
            );
        }
    }
    println!(
        "total: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    std::io::stdout().flush()?;
    if !ok || total.failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

const DEMO: &str = r#"
set -e
step() { echo; echo "=== $*"; }
step "odp-ctl devices: the soft-RoCE device this VM brought up"
odp-ctl devices
step "odp-ctl caps: attributes and the full ODP capability matrix"
odp-ctl caps
step "odp-ctl register: an 8 MiB THP-backed buffer as an ODP MR, with verified loopback traffic"
odp-ctl register --size 8M --backing thp --traffic
step "odp-ctl register: hugetlb backing; IBV_ACCESS_HUGETLB is tried and, where refused (rxe), reported and dropped"
odp-ctl register --size 4M --backing hugetlb --traffic --message-size 1M
step "odp-ctl prefetch: every advice, synchronous and asynchronous, over two ranges"
odp-ctl prefetch --size 8M --advice all --mode both --range 0:2M --range 4M:4M
step "odp-ctl register --implicit: rxe has no implicit ODP, and says so (exit 4)"
if odp-ctl register --implicit; then exit 1; else echo "exit status $?"; fi
step "odp-ctl probes: which kernel and library paths this kernel lets us watch, and how"
odp-ctl probes
step "odp-ctl trace: registration, prefetch, device faults, invalidations, deregistration, live"
odp-ctl trace --output /tmp/trace.txt -- odp-ctl prefetch --size 256K --advice prefetch-write --range 0:64K >/dev/null
grep -v page_fault_user /tmp/trace.txt | head -24
echo "... $(grep -c . /tmp/trace.txt) events in all (/tmp/trace.txt)"
step "odp-ctl monitor --summary: the correlation engine over a live workload (faults, invalidations, races, retries, latencies per MR)"
odp-ctl monitor --summary --record /tmp/monitor.jsonl -- odp-ctl register --size 4M --traffic --message-size 256K
step "odp-ctl monitor --replay: the same run again from its recording, as on any machine without RDMA"
odp-ctl monitor --summary --replay /tmp/monitor.jsonl | head -3
step "odp-ctl stress: RDMA WRITE and READ while MADV_DONTNEED drops the same pages 1000 times a second; every byte checked, every drop matched to the kernel's invalidation"
odp-ctl stress /job/bin/dontneed-storm.toml
step "a third-party client on the same device: ibv_rc_pingpong with ODP (-o) and prefetch (-P)"
ibv_rc_pingpong -d rxe0 -g 1 -o -n 100 >/tmp/srv.log 2>&1 &
sleep 1
ibv_rc_pingpong -d rxe0 -g 1 -o -n 100 127.0.0.1
wait $!
echo "ibv_rc_pingpong -o: both sides ok"
ibv_rc_pingpong -d rxe0 -g 1 -o -P -n 100 >/tmp/srv.log 2>&1 &
sleep 1
ibv_rc_pingpong -d rxe0 -g 1 -o -P -n 100 127.0.0.1
wait $!
echo "ibv_rc_pingpong -o -P: both sides ok"
"#;

pub fn demo(vm_opts: &crate::VmOpts) -> Result<()> {
    crate::host::ensure()?;
    let status = cargo()
        .args(["build", "--release", "-p", "odp-ctl"])
        .status()
        .context("building odp-ctl")?;
    if !status.success() {
        bail!("building odp-ctl failed");
    }
    let odp_ctl = workspace_root().join("target/release/odp-ctl");
    let guest = crate::prepare(vm_opts)?;
    let outcome = vm::run_job(
        &guest,
        &crate::job(
            vm_opts,
            DEMO.to_string(),
            vec![
                odp_ctl,
                workspace_root().join("scenarios/dontneed-storm.toml"),
            ],
        ),
    )?;
    if outcome.status != 0 {
        bail!("the demo failed in the VM (status {})", outcome.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_cargo_result_lines_and_named_skips() {
        let mut c = Counts::default();
        c.observe("test result: ok. 11 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        c.observe("test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        c.observe("SKIP devices_and_caps_show_odp_support: no RDMA device");
        c.observe("test foo ... ok");
        assert_eq!(
            c,
            Counts {
                passed: 14,
                failed: 1,
                skipped: 1
            }
        );
    }
}
