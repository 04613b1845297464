//! Support for tests that need a real RDMA device: they run for real where one exists (the
//! soft-RoCE VM, an RDMA host) and print a named skip elsewhere, unless the environment demands
//! a device (`ODP_REQUIRE_DEVICE=1`, set by `cargo xtask test` in the VM), where absence fails.

use std::io::Write;
use std::process::Command;

use crate::verbs;

/// Whether this environment must have a device (so a missing one is a failure, not a skip).
pub fn device_required() -> bool {
    std::env::var_os("ODP_REQUIRE_DEVICE").is_some_and(|v| v == "1")
}

/// The first device's name, or None after printing `SKIP <test>: <reason>`.
pub fn device_or_skip(test: &str) -> Option<String> {
    let reason = match verbs::list_devices() {
        Ok(devices) if !devices.is_empty() => return Some(devices[0].name.clone()),
        Ok(_) => "no RDMA device".to_string(),
        Err(e) => e.to_string(),
    };
    assert!(
        !device_required(),
        "{test}: a device is required here but: {reason}"
    );
    // Written to stderr directly: libtest captures print!/eprint! output of passing tests, and a
    // skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: {reason} (runs in the soft-RoCE VM: cargo xtask test)"
    );
    None
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
