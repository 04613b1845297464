//! BPF probes on the mmu-notifier, ib_core ODP, rxe and mlx5 paths, and their loader.
//!
//! Owns: the CO-RE C programs, per-kernel discovery (fentry, then kprobe, else a reason to
//! skip), attach/detach and the ring-buffer reader with drop accounting.
//! Must not: interpret events (that is odp-core's analysis) or talk to verbs.
//!
//! Not yet written: the probe work (issue "Kernel probes on the ODP fault and invalidation
//! paths") fills this crate.
