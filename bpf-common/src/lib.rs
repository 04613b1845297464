//! The event ABI shared by the BPF C programs and Rust.
//!
//! Owns: the one C header with the event structs and their Rust mirror, with layout tests.
//! Must not: load BPF, decode events into analysis, or depend on any other workspace crate.
//!
//! Not yet written: the probe work (issue "Kernel probes on the ODP fault and invalidation
//! paths") fills this crate.
