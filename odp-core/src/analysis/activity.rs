//! What the engine decided about each fault and invalidation, one record each, with the races
//! between them, for views that draw them in time (a Perfetto timeline). Off unless asked
//! (`Engine::record_activity`): other views need only the counts.

use serde::Serialize;

use super::FindingKind;

/// One device fault (or prefetch, which takes the same path) as the engine judged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultActivity {
    /// Unique among the run's faults and invalidations.
    pub id: u64,
    pub mr: u64,
    /// The task that ran the fault (a kworker, rxe's responder, or the process itself).
    pub tid: u32,
    pub task: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub lo: u64,
    pub hi: u64,
    pub prefetch: bool,
    /// The call's return value, where recorded (pages mapped, or -errno).
    pub ret: Option<i64>,
    /// When each sequence read beyond the first began: the fault's retries.
    pub retries_at: Vec<u64>,
    /// Sequence reads that slept behind a running invalidation: (start, duration).
    pub waits: Vec<(u64, u64)>,
    /// A timeout the fault ended in: HmmTimeout or Slow.
    pub timeout: Option<FindingKind>,
}

/// One invalidation: a driver's callback on an MR, or an mm-wide notifier range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvalidationActivity {
    pub id: u64,
    /// The MR a driver callback zapped; None for a notifier range.
    pub mr: Option<u64>,
    pub mm: u64,
    /// The process owning the address space (0 where the engine has not learned it).
    pub owner_pid: u32,
    /// The task that invalidated (madvise, munmap, ksmd, ...).
    pub pid: u32,
    pub task: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub lo: u64,
    pub hi: u64,
    /// `enum mmu_notifier_event`.
    pub cause: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Activity {
    Fault(FaultActivity),
    Invalidation(InvalidationActivity),
    /// An invalidation overlapped a fault in flight on the same memory.
    Race {
        fault: u64,
        invalidation: u64,
    },
    /// The driver left a fault unresolved (mlx5 resumed it with an error, rxe could not map).
    Unresolved {
        mr: Option<u64>,
        at_ns: u64,
        detail: String,
    },
}
