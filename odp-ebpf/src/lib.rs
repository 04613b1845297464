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
