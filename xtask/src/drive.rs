//! The two user-facing drivers: `demo` (the main job, in the VM) and `test` (host tests, then
//! the device tests on rxe in the VM), with one closing count over both.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{vm, workspace_root};

/// Test outcomes, disjoint: a skipped test is not also a pass. libtest reports a skipped test
/// as passed (it returned early), so the skips the tests record (`odp_core::testing::skip`)
/// are taken out of its passes.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Counts {
    /// Folds one line of test output into the counts: libtest's `test result:` lines.
    pub fn observe(&mut self, line: &str) {
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

    /// Moves the recorded skips out of the passes.
    fn with_skips(mut self, skips: &[Skip]) -> Counts {
        let n = skips.len() as u64;
        self.passed = self.passed.saturating_sub(n);
        self.skipped += n;
        self
    }

    fn ran_nothing(&self) -> bool {
        self.passed + self.failed + self.skipped == 0
    }
}

/// One skip as a test recorded it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Skip {
    pub test: String,
    pub reason: String,
}

/// The skips recorded in a skip log (none if it was never written).
fn read_skips(path: &std::path::Path) -> Result<Vec<Skip>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: bad skip record {l}", path.display()))
        })
        .collect()
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
    let prometheus = crate::host::prometheus()?;
    let deb = test_package()?;
    let mut total = Counts::default();
    let mut ok = true;
    if opts.host {
        println!("== host tests (this kernel: no RDMA; device tests print SKIP and run in the VM)");
        let skip_log = workspace_root().join("target/xtask-host-skips.jsonl");
        let _ = std::fs::remove_file(&skip_log);
        let _ = std::fs::remove_file(host_suffices_log());
        let mut cmd = cargo();
        cmd.args(["test", "--workspace"])
            .env(SKIP_LOG_ENV, &skip_log)
            .env(HOST_SUFFICES_LOG_ENV, host_suffices_log())
            .env(PROMETHEUS_ENV, &prometheus)
            .env(DEB_ENV, &deb);
        if let Some(f) = &opts.filter {
            cmd.args(["--", f]);
        }
        let (success, counts) = run_counted(cmd)?;
        let counts = counts.with_skips(&read_skips(&skip_log)?);
        ok &= success;
        total.add(counts);
        println!(
            "== host: {} passed, {} failed, {} skipped",
            counts.passed, counts.failed, counts.skipped
        );
    }
    if opts.vm {
        println!("== VM tests on soft-RoCE (rxe)");
        // Only what this run's host stage ran to its end is left out of the VM.
        let host_sufficed = if opts.host {
            read_host_suffices()?
        } else {
            Vec::new()
        };
        let (success, counts) = vm_tests(opts, &prometheus, &deb, &host_sufficed)?;
        ok &= success;
        total.add(counts);
    }
    println!(
        "total: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    std::io::stdout().flush()?;
    if total.ran_nothing() {
        bail!(
            "no test ran{}",
            opts.filter
                .as_deref()
                .map(|f| format!(": the filter {f:?} matches no test name"))
                .unwrap_or_default()
        );
    }
    if !ok || total.failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// The variable a test's skip record goes to (odp_core::testing::SKIP_LOG_ENV; xtask does not
/// link odp-core).
const SKIP_LOG_ENV: &str = "ODP_SKIP_LOG";
/// The variable naming the file where tests list themselves as needing nothing the VM adds
/// (odp_core::testing::HOST_SUFFICES_LOG_ENV).
const HOST_SUFFICES_LOG_ENV: &str = "ODP_HOST_SUFFICES_LOG";

fn host_suffices_log() -> PathBuf {
    workspace_root().join("target/xtask-host-suffices.txt")
}

/// The tests the host stage ran to their end that need nothing the VM adds.
fn read_host_suffices() -> Result<Vec<String>> {
    let path = host_suffices_log();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut names: Vec<String> = text.lines().map(str::to_owned).collect();
    names.sort();
    names.dedup();
    Ok(names)
}
/// Where the tests find a Prometheus server to scrape the exporter with.
const PROMETHEUS_ENV: &str = "ODP_PROMETHEUS";
/// Where the package tests find odp-ctl's Debian package.
const DEB_ENV: &str = "ODP_DEB";
/// Where the two-host tests find `odp-ctl serve` (odp_core::testing::PEER_ENV).
const PEER_ENV: &str = "ODP_PEER";
/// Where they find one serving a pinned MR (odp_core::testing::PINNED_PEER_ENV).
const PINNED_PEER_ENV: &str = "ODP_PINNED_PEER";

/// The Debian package around the test build's odp-ctl (the packaging is what is tested; a
/// release build would compile everything a second time).
fn test_package() -> Result<PathBuf> {
    let status = cargo()
        .args(["build", "-p", "odp-ctl"])
        .status()
        .context("cargo build -p odp-ctl")?;
    if !status.success() {
        bail!("cargo build -p odp-ctl failed");
    }
    crate::package::build(&workspace_root().join("target/debug/odp-ctl"))
}

/// Guest boots a VM job may use: a guest killed by the emulator's int3 oops
/// (docs/FINDINGS.md #6) is booted again (the tests: for the binaries it had not finished).
const VM_BOOTS: u32 = 3;
/// Where, in the job share, each VM test binary leaves its output and exit status.
const VM_RESULTS: &str = "results";
/// The skip log in the results: in the VM every test must run, so any record fails the run.
const VM_SKIPS: &str = "skips.jsonl";

/// One test binary's run in the guest.
struct BinaryResult {
    status: i32,
    counts: Counts,
    failed: Vec<String>,
}

/// The tests libtest listed as failed in this output: the names under its last `failures:`.
fn failed_tests(log: &str) -> Vec<String> {
    let Some((_, tail)) = log.rsplit_once("\nfailures:\n") else {
        return Vec::new();
    };
    tail.lines()
        .map_while(|l| l.strip_prefix("    "))
        .filter(|name| !name.is_empty() && !name.contains(char::is_whitespace))
        .map(str::to_string)
        .collect()
}

/// The guest script for these test binaries, less the tests in `leave_out`. Each one's status
/// is written only after its output has fully reached the share, so a binary with a status
/// file has a complete log.
fn vm_test_script(
    names: &[String],
    filter: Option<&str>,
    deb: &str,
    leave_out: &[String],
) -> String {
    let mut filter = filter.map(|f| format!(" '{f}'")).unwrap_or_default();
    // libtest's --skip matches substrings; these names are whole sentences that no other
    // test's name contains.
    for name in leave_out {
        filter.push_str(&format!(" --skip {name}"));
    }
    let mut script = format!(
        "export ODP_REQUIRE_DEVICE=1 ODP_CTL=/job/bin/odp-ctl RUST_BACKTRACE=1 \
         {SKIP_LOG_ENV}=/job/{VM_RESULTS}/{VM_SKIPS} {PROMETHEUS_ENV}=/job/bin/prometheus \
         {DEB_ENV}=/job/bin/{deb}\n\
         mkdir -p /job/{VM_RESULTS}\nfail=0\n"
    );
    for name in names {
        let out = format!("/job/{VM_RESULTS}/{name}");
        // One thread: the leak checks compare the kernel's per-process MR counts. Each test's
        // time is printed (libtest's --report-time, unstable, hence RUSTC_BOOTSTRAP) because
        // the guest's share of the suite's time budget is spent test by test.
        script.push_str(&format!(
            "echo '== VM: {name}'\n\
             {{ RUSTC_BOOTSTRAP=1 /job/bin/{name} --test-threads=1 -Z unstable-options --report-time{filter}; echo $? > /tmp/{name}.status; }} 2>&1 | tee {out}.log\n\
             cat /tmp/{name}.status > {out}.status\n\
             [ \"$(cat {out}.status)\" = 0 ] || fail=1\n"
        ));
    }
    script.push_str("exit $fail\n");
    script
}

/// Results of the binaries that finished in the last guest run (whose share is `share`), by
/// name.
fn finished_binaries(share: &Path, names: &[String]) -> Vec<(String, BinaryResult)> {
    let dir = share.join(VM_RESULTS);
    let mut finished = Vec::new();
    for name in names {
        let Ok(status) = std::fs::read_to_string(dir.join(format!("{name}.status"))) else {
            continue;
        };
        let status = status.trim().parse().unwrap_or(-1);
        let mut counts = Counts::default();
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        for line in log.lines() {
            counts.observe(line);
        }
        let failed = failed_tests(&log);
        finished.push((
            name.clone(),
            BinaryResult {
                status,
                counts,
                failed,
            },
        ));
    }
    finished
}

/// Runs every integration test binary in the guest, booting it again (up to VM_BOOTS)
/// when the emulator's int3 oops kills it; returns whether all passed and the counts.
fn vm_tests(
    opts: &TestOpts,
    prometheus: &Path,
    deb: &Path,
    host_sufficed: &[String],
) -> Result<(bool, Counts)> {
    if !host_sufficed.is_empty() {
        println!(
            "== VM: {} tests left out, run to their end on the host and needing nothing the VM \
             adds: {}",
            host_sufficed.len(),
            host_sufficed.join(", ")
        );
    }
    let (tests, odp_ctl) = build_vm_artifacts()?;
    let guest = crate::prepare(&opts.vm_opts)?;
    let pending = tests
        .iter()
        .map(|t| {
            t.file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
                .context("test binary name")
        })
        .collect::<Result<Vec<_>>>()?;
    // The tests that need a second host run between two guests, after the single guest's.
    let (peer_tests, single): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|name| name.starts_with(PEER_TESTS));
    let mut pending = single;
    let mut binaries = tests.clone();
    binaries.push(odp_ctl);
    binaries.push(prometheus.to_path_buf());
    // The exporter's lint test finds promtool beside the server, as Debian ships them.
    binaries.push(prometheus.with_file_name("promtool"));
    binaries.push(deb.to_path_buf());
    let deb_name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .context("package file name")?
        .to_string();
    // mlx5_ib loads without hardware; its module BTF is what the mlx5 probe test needs.
    let mut vm_opts = opts.vm_opts.clone();
    if !vm_opts.modules.iter().any(|m| m == "mlx5_ib") {
        vm_opts.modules.push("mlx5_ib".into());
    }
    let mut results = Vec::new();
    let mut reboots = Vec::new();
    let mut skips = Vec::new();
    for boot in 1..=VM_BOOTS {
        let script = vm_test_script(&pending, opts.filter.as_deref(), &deb_name, host_sufficed);
        let run = vm::run_job(&guest, &crate::job(&vm_opts, script, binaries.clone()));
        // Read before the next boot clears the share.
        skips.extend(read_skips(&vm::job_dir().join(VM_RESULTS).join(VM_SKIPS))?);
        let finished = finished_binaries(&vm::job_dir(), &pending);
        pending.retain(|name| !finished.iter().any(|(done, _)| done == name));
        results.extend(finished);
        let Err(err) = run else { break };
        let Some(oops) = vm::emulator_oops(&vm::job_dir()) else {
            return Err(err);
        };
        let Some(victim) = pending.first() else {
            println!("== VM: the guest died after the last test binary: {oops}");
            break;
        };
        if boot == VM_BOOTS {
            return Err(err.context(format!(
                "the guest died of the emulator's int3 oops {VM_BOOTS} times"
            )));
        }
        println!(
            "== VM: the guest died during {victim}: {oops} (multi-threaded TCG ran code while \
             it was being patched, docs/FINDINGS.md #6); booting again for {}",
            pending.join(", ")
        );
        reboots.push(victim.clone());
    }
    let mut counts = Counts::default();
    let mut ok = pending.is_empty() && skips.is_empty();
    for skip in &skips {
        println!(
            "== VM: {} skipped ({}), but every test must run here",
            skip.test, skip.reason
        );
    }
    for (name, result) in &results {
        counts.add(result.counts);
        for test in &result.failed {
            println!("== VM: FAILED {name}: {test}");
        }
        if result.status != 0 {
            ok = false;
            if result.counts.failed == 0 {
                println!("== VM: {name} exited with status {}", result.status);
            }
        }
    }
    for name in &pending {
        println!(
            "== VM: {name} left no result (see {})",
            vm::job_dir().display()
        );
    }
    let reboots = if reboots.is_empty() {
        String::new()
    } else {
        format!(
            "; the guest was booted again after the emulator's oops during {}",
            reboots.join(", ")
        )
    };
    let counts = counts.with_skips(&skips);
    println!(
        "== VM ({}): {} passed, {} failed, {} skipped{reboots}",
        guest.kernel.abi, counts.passed, counts.failed, counts.skipped
    );
    let mut total = counts;
    for name in &peer_tests {
        let binary = tests
            .iter()
            .find(|t| t.file_name().and_then(|n| n.to_str()) == Some(name.as_str()))
            .context("the peer test binary")?;
        let (pair_ok, counts) = pair_tests(opts, &guest, name, binary, &binaries)?;
        ok &= pair_ok;
        total.add(counts);
    }
    Ok((ok, total))
}

/// The size of the MR the serving guest offers, in MiB.
const SERVED_MIB: u64 = 16;

/// Where the serving guest serves a pinned MR too (odp_core::testing::PINNED_PEER_ENV).
const PINNED_PORT: u16 = 10090;

/// Test binaries (by name prefix) that need `odp-ctl serve` on a second host.
const PEER_TESTS: &str = "peer-";

/// The serving guest of a pair: `odp-ctl serve --probes` on its address until the testing guest
/// has powered off (three pings unanswered after it was first seen), then its status.
const SERVE_WHILE_PEER_LIVES: &str = r#"bb=/usr/bin/busybox
# No transparent huge pages: a storm's first cut into one splits it, one more invalidation.
echo never > /sys/kernel/mm/transparent_hugepage/enabled
# No automatic NUMA balancing (the guest has two nodes): its scans make PROTECTION_VMA
# invalidations in whichever thread of the process returns to user space, the storm's too
# (8989 for 8988 DONTNEED calls, 4 PROTECTION_VMA in that run).
echo 0 > /proc/sys/kernel/numa_balancing
# perftest's servers for the tester's perftest clients, traced like it (one attach, up front).
# One monitor per server: a monitor follows its command, not the command's children.
( /job/bin/odp-ctl --json monitor --summary -- ib_write_bw --odp -R -d rxe0 -s 65536 -n 200 >/job/perftest-write.out 2>&1
  /job/bin/odp-ctl --json monitor --summary -- ib_read_lat --odp -R -d rxe0 -s 4096 -n 100 >/job/perftest-read.out 2>&1 ) & pt=$!
# An RNR timer of 0.01 ms (rxe: one tick) rather than rdma_cm's 655 ms: the RNR test's SENDs
# wait out many NAKs while their receives come late.
/job/bin/odp-ctl --json serve --probes --min-rnr-timer 1 --listen $ODP_VM_ADDRESS --size SERVED_MIBM >/job/serve.jsonl 2>/job/serve.err & s=$!
# A peer without ODP for the tests that need one: the same serve of a pinned MR.
/job/bin/odp-ctl --json serve --pinned --listen $ODP_VM_ADDRESS:PINNED_PORT --size 1M >/job/serve-pinned.jsonl 2>/job/serve-pinned.err & p=$!
n=0
until $bb ping -c1 -W1 $ODP_VM_PEER >/dev/null 2>&1; do n=$((n + 1)); [ $n -ge 120 ] && break; done
misses=0
while [ $misses -lt 3 ]; do
    if $bb ping -c1 -W1 $ODP_VM_PEER >/dev/null 2>&1; then misses=0; else misses=$((misses + 1)); fi
    $bb sleep 1
done
# The chain first, so that it starts no server after the killall (a filtered run has no
# perftest clients: the servers still wait).
kill $pt 2>/dev/null
$bb killall ib_write_bw ib_read_lat 2>/dev/null
kill -TERM $s $p
wait $s
status=$?
wait $p
pinned=$?
wait $pt
cat /job/serve.err /job/serve.jsonl /job/serve-pinned.err
echo "== serve exited $status after $(grep -c '"peer"' /job/serve.jsonl) connections"
echo "== the pinned serve exited $pinned after $(grep -c '"peer"' /job/serve-pinned.jsonl) connections"
[ $pinned = 0 ] || exit $pinned
exit $status
"#;

/// The serving guest's perftest servers as its monitor saw them, checked as the tester checks
/// its clients: one ODP MR of twice the message size per server, each page faulted in, and in
/// once unless something invalidated it; nothing invalidates it but NUMA balancing's hinting
/// scans (PROTECTION_VMA; the guest has two nodes).
fn perftest_serving_side(share: &Path) -> Result<String> {
    let mut seen = Vec::new();
    for (comm, size, out) in [
        ("ib_write_bw", 65536u64, "perftest-write.out"),
        ("ib_read_lat", 4096, "perftest-read.out"),
    ] {
        let path = share.join(out);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let at = text.find("\n{\n").map_or(0, |i| i + 1);
        let summary: serde_json::Value = serde_json::from_str(&text[at..])
            .with_context(|| format!("the monitor's summary in {}", path.display()))?;
        let causes = &summary["totals"]["invalidations_by_cause"];
        let invalidated = causes.as_object().is_some_and(|c| {
            c.iter()
                .any(|(cause, n)| cause != "PROTECTION_VMA" && n.as_u64() != Some(0))
        });
        if invalidated {
            bail!("invalidations while {comm} ran: {causes}");
        }
        let refaults_allowed = summary["totals"]["invalidations"] != 0;
        let pages = 2 * size / 4096;
        let mrs: Vec<&serde_json::Value> = summary["mrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["comm"] == comm)
            .collect();
        let faulted = mrs
            .first()
            .and_then(|m| m["fault_pages"].as_u64())
            .unwrap_or(0);
        if mrs.len() != 1 || faulted < pages || (faulted > pages && !refaults_allowed) {
            bail!("{comm}: expected one MR with {pages} pages faulted in, got {mrs:?}");
        }
        seen.push(format!("{comm} 1 MR, {pages} pages faulted in"));
    }
    Ok(seen.join(", "))
}

/// What the serving side's probes saw, checked: attached, nothing lost, the peers' traffic
/// faulted the served MR in.
fn serving_side(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let probes = lines
        .iter()
        .find_map(|v| v.get("probes").cloned())
        .context("serve printed no probes summary")?;
    // Every MADV_DONTNEED a peer's storm made is one invalidation of the served MR by the
    // storm's thread (storm-dontneed), counted in serve's record of each connection, a failed
    // one too (before it was, runs showed more invalidations than calls: 32394 for 6702). THP
    // is off in the serving guest: with it (the guest's default is "always"), the first cut
    // into a huge page splits it, one more CLEAR (918 for 910 calls on a 16 MiB MR's 8 huge
    // pages; more once khugepaged puts them back together). Other actions' calls invalidate as
    // many times as the pages they move (migrate), and are only reported. Other CLEARs come
    // from the serving thread: a verification that read a dropped page mapped the zero page
    // there, and the next pass's write replaces it (copy-on-write, a CLEAR of that page).
    let mut calls: std::collections::BTreeMap<String, u64> = Default::default();
    for v in &lines {
        if let (Some(action), Some(n)) = (v["storm_action"].as_str(), v["storm_actions"].as_u64()) {
            *calls.entry(action.to_string()).or_default() += n;
        }
    }
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let totals = &probes["totals"];
    let source = &probes["source"];
    if n(&source["probes_attached"]) == 0 {
        bail!("no probe attached: {source}");
    }
    if n(&source["drops"]) > 0 || n(&source["missed"]) > 0 {
        bail!("events lost: {source}");
    }
    if n(&totals["faults"]) == 0 {
        bail!("no device fault while peers wrote into its ODP MR: {totals}");
    }
    let clear = n(&totals["invalidations_by_cause"]["CLEAR"]);
    let mut storms = Vec::new();
    for (action, &made) in &calls {
        let by_storm = n(&probes["invalidations_by_task"][format!("storm-{action}")]);
        if action == "dontneed" && by_storm != made {
            bail!(
                "{made} MADV_DONTNEED calls by the storm, {by_storm} invalidations by its thread"
            );
        }
        // Each migration moves pages the traffic just wrote: some must reach the driver.
        if action == "migrate" && made > 0 && by_storm == 0 {
            bail!("{made} migrations by the storm, none reached the driver");
        }
        storms.push(format!("{action} {by_storm} for {made} calls"));
    }
    Ok(format!(
        "{} device faults ({} pages), {} invalidations ({clear} CLEAR; by the storms' threads: \
         {}; by task {}), {} races, {} retries",
        n(&totals["faults"]),
        n(&totals["fault_pages"]),
        n(&totals["invalidations"]),
        if storms.is_empty() {
            "none".to_string()
        } else {
            storms.join(", ")
        },
        probes["invalidations_by_task"],
        n(&totals["races"]),
        n(&totals["retries"])
    ))
}

/// Runs a test binary that needs a peer in the second guest of a pair while the first serves
/// it; whether it and the serving side passed, and the counts.
fn pair_tests(
    opts: &TestOpts,
    guest: &vm::Guest,
    name: &str,
    binary: &Path,
    binaries: &[PathBuf],
) -> Result<(bool, Counts)> {
    println!("== two guests: {name} against odp-ctl serve on the other");
    let testing = format!(
        "export {PEER_ENV}=$ODP_VM_PEER {PINNED_PEER_ENV}=$ODP_VM_PEER:{PINNED_PORT}\n         n=0\n         until /job/bin/odp-ctl register --peer $ODP_VM_PEER --size 64K >/dev/null 2>&1 \\\n             && /job/bin/odp-ctl register --peer ${PINNED_PEER_ENV} --size 64K >/dev/null 2>&1; do\n         n=$((n + 1)); [ $n -ge 60 ] && {{ echo \"no odp-ctl serve on $ODP_VM_PEER (ODP and pinned)\"; break; }}\n         /usr/bin/busybox sleep 1\n         done\n{}",
        vm_test_script(&[name.to_string()], opts.filter.as_deref(), "none", &[])
    );
    let serving = crate::job(
        &opts.vm_opts,
        SERVE_WHILE_PEER_LIVES
            .replace("SERVED_MIB", &SERVED_MIB.to_string())
            .replace("PINNED_PORT", &PINNED_PORT.to_string()),
        binaries.to_vec(),
    );
    let mut tester_binaries = vec![binary.to_path_buf()];
    tester_binaries.extend(binaries.iter().filter(|b| b.ends_with("odp-ctl")).cloned());
    let tester = crate::job(&opts.vm_opts, testing, tester_binaries);
    let [served, _] = vm::run_pair(guest, [&serving, &tester])?;
    let share = vm::pair_job_dir(2);
    let skips = read_skips(&share.join(VM_RESULTS).join(VM_SKIPS))?;
    let mut ok = skips.is_empty() && served.status == 0;
    if served.status != 0 {
        println!(
            "== two guests: odp-ctl serve exited {} (see {})",
            served.status,
            vm::pair_job_dir(1).join("output.log").display()
        );
    }
    // perftest's servers ran only if the tester's perftest test did.
    if opts.filter.is_none() {
        match perftest_serving_side(&vm::pair_job_dir(1)) {
            Ok(line) => println!("== two guests: perftest's servers, traced: {line}"),
            Err(e) => {
                ok = false;
                println!("== two guests: perftest's servers: {e:#}");
            }
        }
    }
    match serving_side(&vm::pair_job_dir(1).join("serve.jsonl")) {
        Ok(line) => println!("== two guests: the serving side's probes saw {line}"),
        Err(e) => {
            ok = false;
            println!("== two guests: the serving side: {e:#}");
        }
    }
    let mut counts = Counts::default();
    match finished_binaries(&share, &[name.to_string()]).pop() {
        Some((_, result)) => {
            counts = result.counts;
            ok &= result.status == 0;
            for test in &result.failed {
                println!("== two guests: FAILED {name}: {test}");
            }
        }
        None => {
            ok = false;
            println!(
                "== two guests: {name} left no result (see {})",
                share.display()
            );
        }
    }
    let counts = counts.with_skips(&skips);
    println!(
        "== two guests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.skipped
    );
    Ok((ok, counts))
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
step "odp-ctl export --perfetto: the same recording as a Perfetto timeline (tracks per process and MR, races as arrows; open it at ui.perfetto.dev)"
odp-ctl export --perfetto /tmp/monitor.pftrace /tmp/monitor.jsonl
step "odp-ctl stress: RDMA WRITE and READ while MADV_DONTNEED drops the same pages 1000 times a second; every byte checked, every drop matched to the kernel's invalidation"
odp-ctl stress /job/bin/dontneed-storm.toml
step "odp-ctl exporter: the engine always on, as Prometheus metrics, scraped while a workload faults"
odp-ctl exporter --listen 127.0.0.1:10087 2>/tmp/exporter.log & e=$!
until wget -q -O /dev/null http://127.0.0.1:10087/metrics 2>/dev/null; do sleep 0.5; done
odp-ctl register --size 4M --traffic --message-size 256K >/dev/null
sleep 2
wget -q -O - http://127.0.0.1:10087/metrics | grep -E '^odp_(faults|fault_pages|races|retries)_total|^odp_fault_duration_seconds_(count|sum)|^odp_exporter_missed_runs_total' || true
kill -TERM $e; wait $e
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

/// The demo's second part, in each of two linked guests: odp-ctl across hosts, then perftest.
const DEMO_PAIR: &str = r#"
bb=/usr/bin/busybox
step() { echo; echo "=== vm$ODP_VM_HOST: $*"; }
n=0
until $bb ping -c1 -W1 $ODP_VM_PEER >/dev/null 2>&1; do n=$((n + 1)); [ $n -ge 120 ] && exit 3; done
if [ "$ODP_VM_HOST" = 1 ]; then
    step "odp-ctl serve: a 16 MiB ODP MR offered to the other host over rdma_cm; it checks what lands"
    odp-ctl serve --listen $ODP_VM_ADDRESS --size 16M --once --duration 120s
    step "odp-ctl serve --probes: again, watching this host's ODP paths, for a scenario and the other host's questions"
    odp-ctl serve --probes --listen $ODP_VM_ADDRESS --size 16M --once --duration 120s
    step "ib_write_bw --odp -R: perftest's server, its buffer an ODP MR too"
    ib_write_bw --odp -R -d rxe0 -s 65536 -n 500
else
    n=0
    until odp-ctl register --peer $ODP_VM_PEER --size 16M --message-size 64K >/tmp/peer.log 2>&1; do
        n=$((n + 1)); [ $n -ge 60 ] && { cat /tmp/peer.log; exit 4; }; $bb sleep 1
    done
    step "odp-ctl register --peer: RDMA WRITE and SEND into the other host's ODP MR, READ out of it, every byte checked where it landed"
    cat /tmp/peer.log
    # The storm scenario with a short ACK timer (4 ms): the other host's slow faults show here
    # as retransmissions.
    { cat /job/bin/dontneed-storm.toml; printf '\n[peer]\nack_timeout = 10\n'; } >/tmp/across.toml
    odp-ctl monitor --summary --peer $ODP_VM_PEER --duration 60s >/tmp/monitor.log 2>&1 & m=$!
    # Until the second serve listens (exit 8: refused); any other failure is the demo's.
    n=0
    until odp-ctl stress --peer $ODP_VM_PEER /tmp/across.toml --duration 8s >/tmp/stress.log 2>&1; do
        rc=$?
        [ $rc = 8 ] && [ $n -lt 60 ] || { cat /tmp/stress.log; exit 6; }
        n=$((n + 1)); $bb sleep 1
    done
    step "odp-ctl stress --peer: the DONTNEED storm scenario across hosts: the storm runs there, the traffic here, every byte checked where it landed, each retry's cause asked of the other host"
    cat /tmp/stress.log
    kill -INT $m; wait $m
    step "odp-ctl monitor --peer: meanwhile, a monitor here asked the other host, live, what caused this host's retries"
    $bb grep -A6 '^peer ' /tmp/monitor.log
    step "ib_write_bw --odp -R: perftest between the two hosts over rdma_cm"
    n=0
    until ib_write_bw --odp -R -d rxe0 -s 65536 -n 500 $ODP_VM_PEER; do
        n=$((n + 1)); [ $n -ge 20 ] && exit 5; $bb sleep 1
    done
fi
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
    let job = crate::job(
        vm_opts,
        DEMO.to_string(),
        vec![
            odp_ctl,
            workspace_root().join("scenarios/dontneed-storm.toml"),
        ],
    );
    let mut boot = 1;
    let outcome = loop {
        match vm::run_job(&guest, &job) {
            Err(err) if boot < VM_BOOTS => {
                let Some(oops) = vm::emulator_oops(&vm::job_dir()) else {
                    return Err(err);
                };
                println!(
                    "=== the guest died: {oops} (multi-threaded TCG ran code while it was \
                     being patched, docs/FINDINGS.md #6); running the demo again"
                );
                boot += 1;
            }
            other => break other?,
        }
    };
    if outcome.status != 0 {
        bail!("the demo failed in the VM (status {})", outcome.status);
    }
    println!("\n=== two hosts: two guests linked by their own Ethernet, rxe on each");
    let pair_job = crate::job(vm_opts, DEMO_PAIR.to_string(), job.binaries.clone());
    for (host, outcome) in (1..).zip(vm::run_pair(&guest, [&pair_job, &pair_job])?) {
        if outcome.status != 0 {
            bail!(
                "the two-host demo failed in vm{host} (status {})",
                outcome.status
            );
        }
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
        c.observe("test foo ... SKIP devices_and_caps_show_odp_support: no RDMA device");
        c.observe("test foo ... ok");
        assert_eq!(
            c,
            Counts {
                passed: 14,
                failed: 1,
                skipped: 0
            },
            "SKIP lines are for people; skips are counted from their records"
        );
        let skip = Skip {
            test: "devices_and_caps_show_odp_support".into(),
            reason: "no RDMA device".into(),
        };
        assert_eq!(
            c.with_skips(&[skip]),
            Counts {
                passed: 13,
                failed: 1,
                skipped: 1
            },
            "a skipped test is not also a pass"
        );
        assert!(Counts::default().ran_nothing());
    }

    #[test]
    fn failed_tests_are_the_names_libtest_lists_last() {
        let log = "test a ... ok <1.0s>\ntest b ... FAILED <2.0s>\n\nfailures:\n\n\
                   ---- b stdout ----\n\nthread 'b' panicked at x.rs:1:1:\n    indented text\n\
                   stack backtrace:\n   0: core::panicking\n\n\nfailures:\n    b\n    \
                   c_too\n\ntest result: FAILED. 1 passed; 2 failed; 0 ignored\n";
        assert_eq!(failed_tests(log), ["b", "c_too"]);
        assert!(failed_tests("test a ... ok\n\ntest result: ok. 1 passed\n").is_empty());
    }
}
