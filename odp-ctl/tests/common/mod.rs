//! What the CLI tests share: the binary under test, and a real terminal for the TUI tests (a
//! detached tmux session, read with capture-pane, killed on drop, also when an assertion
//! fails). Each test file uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The binary under test: the one cargo built, or ODP_CTL where the tests run elsewhere (the VM).
pub fn odp_ctl_path() -> String {
    std::env::var("ODP_CTL").unwrap_or_else(|_| env!("CARGO_BIN_EXE_odp-ctl").to_string())
}

pub fn odp_ctl() -> Command {
    Command::new(odp_ctl_path())
}

pub struct Terminal {
    name: String,
}

fn tmux(args: &[&str]) -> Output {
    Command::new("tmux")
        // tmux refuses to start without a UTF-8 locale; C.UTF-8 is built into glibc.
        .env("LC_ALL", "C.UTF-8")
        .args(args)
        .output()
        .expect("tmux")
}

impl Terminal {
    /// None (after printing a named skip) where tmux is missing.
    pub fn start(test: &str, width: u16, height: u16, command: &str) -> Option<Terminal> {
        if Command::new("tmux").arg("-V").output().is_err() {
            odp_core::testing::skip(test, "no tmux");
            return None;
        }
        let name = format!("odp-{}-{}", std::process::id(), test.len());
        let (w, h) = (width.to_string(), height.to_string());
        let started = tmux(&[
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            &w,
            "-y",
            &h,
            command,
        ]);
        assert!(started.status.success(), "tmux: {started:?}");
        Some(Terminal { name })
    }

    /// The visible screen, plus `history` lines of scrollback.
    pub fn text(&self, history: u32) -> String {
        let start = format!("-{history}");
        let out = tmux(&["capture-pane", "-p", "-S", &start, "-t", &self.name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits up to `secs` for `what` on the screen (or in scrollback) and returns what shows.
    pub fn wait_for(&self, what: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.text(500);
            if text.contains(what) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn keys(&self, keys: &str) {
        tmux(&["send-keys", "-t", &self.name, keys]);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.name]);
    }
}

/// A capture from the soft-RoCE VM (7.3 kernel, rxe): RDMA WRITEs into an ODP MR while another
/// thread drops its pages with MADV_DONTNEED; made with `monitor --record` by the VM test below.
pub fn fixture() -> PathBuf {
    const NAME: &str = "rxe-dontneed-race.jsonl";
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(NAME);
    if source.exists() {
        return source;
    }
    // In the VM the source tree is not there: the copy built into this binary is.
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("odp-ctl-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fixture dir");
        let path = dir.join(NAME);
        std::fs::write(&path, include_bytes!("../data/rxe-dontneed-race.jsonl")).expect("fixture");
        path
    })
    .clone()
}

/// A recording made up for a test: MRs registered, faulted and released, as `trace --json`
/// writes them, one line per event, timestamps 10 us apart.
pub struct Synthetic {
    pub text: String,
    pub events: u64,
    ts: u64,
    mrs: u64,
}

impl Default for Synthetic {
    fn default() -> Self {
        Synthetic {
            text: String::new(),
            events: 0,
            ts: 1_000_000_000,
            mrs: 0,
        }
    }
}

impl Synthetic {
    /// One more MR (1 MiB, on rxe0) of process `comm` (pid `pid`, its address space one per
    /// pid): registered, faulted `faults` times, and released if `release`.
    pub fn mr(&mut self, comm: &str, pid: u64, faults: u32, release: bool) {
        let i = self.mrs;
        self.mrs += 1;
        let common = format!(
            r#""group":"ib_core","method":"kprobe","pid":{pid},"tid":{pid},"comm":"{comm}","obj":"{:#x}","mm":"{:#x}","start":"{:#x}","end":"{:#x}""#,
            0xff00_0000_0000_0000u64 + i * 0x200,
            0xff10_0000_0000_0000u64 + pid * 0x1000,
            0x7f00_0000_0000u64 + i * 0x10_0000,
            0x7f00_0000_0000u64 + i * 0x10_0000 + 0x10_0000,
        );
        self.line(
            "umem_get",
            &common,
            // The device name travels in args[2..4], as the probes record it.
            r#","device":"rxe0","args":[79,0,811956338,0],"ret":0"#,
        );
        for _ in 0..faults {
            self.line("fault", &common, r#","args":[0,0,0,0],"ret":1"#);
        }
        if release {
            self.line("umem_release", &common, r#","args":[0,0,0,0]"#);
        }
    }

    fn line(&mut self, point: &str, common: &str, extra: &str) {
        self.text.push_str(&format!(
            r#"{{"ts_ns":{},"duration_ns":1000,"point":"{point}",{common}{extra},"aux":0}}"#,
            self.ts
        ));
        self.text.push('\n');
        self.ts += 10_000;
        self.events += 1;
    }

    /// Writes the recording to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.text).expect("write the recording");
    }
}

/// A FIFO in `dir`, for a recording fed while the test watches.
pub fn fifo(dir: &Path) -> PathBuf {
    let fifo = dir.join("events.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    fifo
}

/// The DONTNEED storm example scenario, written into `dir` for a stress run.
pub fn dontneed_storm(dir: &Path) -> PathBuf {
    let path = dir.join("dontneed-storm.toml");
    std::fs::write(
        &path,
        include_str!("../../../scenarios/dontneed-storm.toml"),
    )
    .expect("write the scenario");
    path
}

/// The committed capture's first `lines` lines with a malformed event inserted as line
/// `bad_line` (1-based), written into `dir`: a recording that fails to parse there.
pub fn broken_capture(dir: &Path, lines: usize, bad_line: usize) -> PathBuf {
    let capture = std::fs::read_to_string(fixture()).expect("capture");
    let mut kept: Vec<&str> = capture.lines().take(lines).collect();
    kept.insert(bad_line - 1, "{\"ts_ns\": \"soon\"}");
    let path = dir.join("broken.jsonl");
    std::fs::write(&path, kept.join("\n")).expect("write the broken recording");
    path
}

/// Why a probed `stress --json` run that exited 7 (failed completions) failed, when every
/// failure is one rxe is known for and no byte is wrong: a fault starved past HMM's 1 s limit
/// fails its request with "remote access error", the probes having seen the timeout unless its
/// event was among those lost on a slow guest; and rxe now and then fails an RDMA WRITE with
/// "remote invalid request" and no fault error when its requester retransmitted while the
/// responder faulted (docs/FINDINGS.md #7), a rare event at the default ACK timeout: more than
/// `FINDING_7_AT_MOST` in one run is not it.
/// Err names what is not so explained.
pub fn rxe_failures_explained(
    status: std::process::ExitStatus,
    report: &serde_json::Value,
) -> Result<String, String> {
    const FINDING_7_AT_MOST: u64 = 3;
    let errors = report["first_wc_errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let hmm_timeouts = count(&report["probes"]["summary"]["totals"]["hmm_timeouts"]);
    let source = &report["probes"]["summary"]["source"];
    let lost: u64 = ["drops", "missed", "unpaired", "unflushed", "overflow"]
        .iter()
        .map(|k| count(&source[*k]))
        .sum();
    let finding_7 = |e: &serde_json::Value| {
        e["op"] == "write"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("remote invalid request error (9)"))
    };
    let hmm_timeout = |e: &serde_json::Value| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("remote access error (10)"))
            && (hmm_timeouts > 0 || lost > 0)
    };
    let finding_7_count = errors.iter().filter(|e| finding_7(e)).count() as u64;
    if status.code() == Some(7)
        && report["mismatches"] == 0
        && !errors.is_empty()
        && errors.iter().all(|e| finding_7(e) || hmm_timeout(e))
        && finding_7_count <= FINDING_7_AT_MOST
    {
        Ok(format!(
            "{} failed completion(s), explained by {hmm_timeouts} HMM timeout(s), {lost} events \
             lost, or finding #7 ({finding_7_count})",
            report["wc_errors"]
        ))
    } else {
        Err(format!(
            "exit {status}, {} mismatches, HMM timeouts {hmm_timeouts}, events lost {lost}, \
             failed completions {errors:?}",
            report["mismatches"]
        ))
    }
}

/// A probed `stress --json` run's report, for a test that compares what it counted: the run
/// passed, or failed only as rxe is known to (`rxe_failures_explained`, named on stderr for
/// `test`); anything else panics with what was not explained.
pub fn stress_report(test: &str, out: &std::process::Output) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stress exited {} with no report ({e}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if !out.status.success() {
        match rxe_failures_explained(out.status, &report) {
            Ok(why) => {
                let _ = writeln!(std::io::stderr(), "{test}: {why}");
            }
            Err(what) => panic!(
                "{test}: stress: {what}\n{}\nfirst mismatches: {}",
                String::from_utf8_lossy(&out.stderr),
                serde_json::to_string_pretty(&report["first_mismatches"]).unwrap_or_default()
            ),
        }
    }
    report
}

/// One HTTP GET over loopback, to a server that may not be listening yet: (status, content
/// type, body).
pub fn try_get(
    addr: &str,
    path: &str,
    accept: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

/// Samples by their full name with labels, e.g. `odp_faults_total{device="rxe0",...}`.
pub fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}
