//! Support for tests that need what a machine may lack (an RDMA device, root, tmux, a module):
//! they run for real where it exists (the soft-RoCE VM, an RDMA host) and skip by name
//! elsewhere, through `skip`, the one way a test skips. A skip is also a record the test driver
//! reads (`ODP_SKIP_LOG`), so it is counted apart from passes; where the environment demands
//! every test run (`ODP_REQUIRE_DEVICE=1`, set by `cargo xtask test` in the VM), a skip fails.

pub mod mutation;

use std::io::Write;
use std::process::Command;

use crate::verbs;

/// The file, named by the test driver, where each skip appends one JSON line.
pub const SKIP_LOG_ENV: &str = "ODP_SKIP_LOG";

/// Whether this environment must run every test (so a skip is a failure).
pub fn device_required() -> bool {
    std::env::var_os("ODP_REQUIRE_DEVICE").is_some_and(|v| v == "1")
}

/// Skips `test` for `reason`: a failure where every test must run; otherwise a `SKIP` line on
/// stderr for people and a record in the driver's skip log.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !device_required(),
        "{test}: must run here, but would skip: {reason}"
    );
    // Written to stderr directly: libtest captures print!/eprint! output of passing tests, and
    // a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
    let record = serde_json::json!({ "test": test, "reason": reason });
    append_to_log(SKIP_LOG_ENV, &record.to_string(), test);
}

/// The file, named by the test driver, listing the tests `host_suffices` recorded.
pub const HOST_SUFFICES_LOG_ENV: &str = "ODP_HOST_SUFFICES_LOG";

/// Records that the calling test ran to its end here and depends on nothing the VM adds (no
/// device, no root, no probes: the same code on the same input), so `cargo xtask test` leaves
/// it out of the VM stage, whose time is dear. A test's last statement: a test that skipped or
/// failed on the host is not recorded, and runs in the VM. The name is the one libtest gave
/// the test's thread, so it is the one the VM stage's `--skip` must match.
pub fn host_suffices() {
    let thread = std::thread::current();
    let Some(test) = thread.name().filter(|name| *name != "main") else {
        panic!(
            "host_suffices: not called from a test's own thread (libtest names it after the test)"
        );
    };
    append_to_log(HOST_SUFFICES_LOG_ENV, test, test);
}

/// Appends `line` to the file the driver named in `env`, if it named one.
fn append_to_log(env: &str, line: &str, test: &str) {
    let Some(path) = std::env::var_os(env) else {
        return;
    };
    // One short append per line: lines from tests running in parallel stay whole.
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    assert!(
        appended.is_ok(),
        "{test}: cannot record it in {}: {appended:?}",
        std::path::Path::new(&path).display()
    );
}

/// The first device's name, or None after skipping `test`.
pub fn device_or_skip(test: &str) -> Option<String> {
    let reason = match verbs::list_devices() {
        Ok(devices) if !devices.is_empty() => return Some(devices[0].name.clone()),
        Ok(_) => "no RDMA device".to_string(),
        Err(e) => e.to_string(),
    };
    skip(
        test,
        &format!("{reason} (runs in the soft-RoCE VM: cargo xtask test)"),
    );
    None
}

/// Where the tests find `odp-ctl serve` on another host (ADDR or ADDR:PORT).
pub const PEER_ENV: &str = "ODP_PEER";

/// The address of a host serving this one (`odp-ctl serve`), after skipping `test` if there is
/// none.
pub fn peer_or_skip(test: &str) -> Option<String> {
    address_or_skip(test, PEER_ENV, "peer host")
}

/// Where the tests find `odp-ctl serve --pinned` on another host (ADDR:PORT): a peer without
/// ODP.
pub const PINNED_PEER_ENV: &str = "ODP_PINNED_PEER";

/// The address of a host serving a pinned MR, after skipping `test` if there is none.
pub fn pinned_peer_or_skip(test: &str) -> Option<String> {
    address_or_skip(test, PINNED_PEER_ENV, "pinned peer")
}

/// The address in `env`, after skipping `test` if it is unset (`what` names the host missing).
fn address_or_skip(test: &str, env: &str, what: &str) -> Option<String> {
    match std::env::var(env) {
        Ok(address) if !address.is_empty() => Some(address),
        _ => {
            skip(
                test,
                &format!("no {what} in {env} (runs between two guests: cargo xtask test)"),
            );
            None
        }
    }
}

/// Whether this process is root, after skipping `test` if it is not (`what` needs root).
pub fn root_or_skip(test: &str, what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(test, &format!("{what} needs root"));
    false
}

/// The calling thread's id: the kernel's resource tracking records the *thread* that created an
/// object, and test harnesses run each test on a thread of its own.
pub fn current_tid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    u32::try_from(tid).unwrap_or(0)
}

/// How many restrack objects of `kind` (mr, qp, cq, pd) task `pid` created, per the kernel's
/// own accounting (`rdma resource show`), so leak checks do not trust our bookkeeping.
pub fn kernel_resource_count(kind: &str, pid: u32) -> Result<usize, String> {
    let out = Command::new("rdma")
        .args(["-j", "resource", "show", kind])
        .output()
        .map_err(|e| format!("running rdma: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rdma resource show {kind}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("rdma resource show {kind} printed no JSON: {e}"))?;
    Ok(doc.as_array().map_or(0, |objects| {
        objects.iter().filter(|o| o["pid"] == pid).count()
    }))
}
