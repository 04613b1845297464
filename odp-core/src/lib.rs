//! ODP through verbs: device and ODP capability queries, memory backings, explicit, implicit and
//! hugetlb ODP registration, prefetch with every advice, and loopback RC traffic.
//!
//! Owns: every call into libibverbs and every mapping the toolkit makes for RDMA.
//! Must not: print, parse command lines, or know about BPF; callers decide how to present
//! results and errors.

pub mod analysis;
pub mod driver_counters;
pub mod error;
pub mod memory;
pub mod peer;
pub mod remote;
pub mod stress;
pub mod testing;
pub mod trace;
pub mod traffic;
pub mod units;
pub mod verbs;

pub use error::{Error, ErrorKind, Result};
