//! BPF probes on the mmu-notifier, ib_core ODP, rxe and mlx5 paths, and their loader.
//!
//! Owns: the CO-RE C programs, per-kernel discovery (fentry, then kprobe, else a reason to
//! skip), attach/detach and the ring-buffer reader with drop accounting.
//! Must not: interpret events (that is odp-core's analysis) or talk to verbs.

#[allow(clippy::all, clippy::pedantic, clippy::undocumented_unsafe_blocks)]
#[allow(unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/odp.skel.rs"));
}
#[allow(clippy::all, clippy::pedantic, clippy::undocumented_unsafe_blocks)]
#[allow(unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod feature_skel {
    include!(concat!(env!("OUT_DIR"), "/feature.skel.rs"));
}

mod discovery;
mod session;

use std::sync::Mutex;

pub use discovery::{find_libibverbs, KernelFacts, PointPlan, Status};
pub use session::{Config, Session};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tracing needs root (CAP_BPF and CAP_PERFMON); run with sudo")]
    NotRoot,
    #[error("invalid probe configuration: {0}")]
    InvalidConfig(String),
    #[error("loading the BPF probes failed: {0}")]
    Load(String),
    #[error("no probe point could be attached here: {0}")]
    NothingAttached(String),
    #[error("BPF: {0}")]
    Bpf(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// libbpf's own messages, kept out of the user's terminal and attached to errors instead.
static LIBBPF_LOG: Mutex<String> = Mutex::new(String::new());

fn capture(_level: libbpf_rs::PrintLevel, msg: String) {
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        // Bounded: only the tail matters for an error message.
        if log.len() > 64 << 10 {
            let cut = log.len() - (32 << 10);
            log.replace_range(..cut, "");
        }
        log.push_str(&msg);
    }
}

/// Runs `f` with libbpf's messages captured rather than printed.
pub(crate) fn quiet_libbpf<T>(f: impl FnOnce() -> T) -> T {
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, capture)));
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        log.clear();
    }
    f()
}

/// As `quiet_libbpf`, appending libbpf's last messages to an error.
pub(crate) fn quiet_libbpf_result<T>(
    f: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    quiet_libbpf(f).map_err(|e| {
        let tail: Vec<String> = LIBBPF_LOG
            .lock()
            .map(|log| log.lines().rev().take(6).map(String::from).collect())
            .unwrap_or_default();
        let tail: Vec<String> = tail.into_iter().rev().collect();
        if tail.is_empty() {
            e
        } else {
            format!("{e} (libbpf: {})", tail.join(" | "))
        }
    })
}

/// Whether this process may load BPF (root; capabilities are not inspected separately).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
