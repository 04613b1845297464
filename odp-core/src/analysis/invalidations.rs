//! Invalidations: the driver's callback on an MR, and mm-wide notifier ranges (start and end
//! paired per thread), each matched against the faults it may have run into.

use bpf_common::OdpEvent;

use super::activity::{Activity, InvalidationActivity};
use super::faults::FaultSpan;
use super::{
    push_window, Engine, CAUSES, OTHER_TASKS, RANGE_END_WAIT_NS, REORDER_NS, TASK_NAMES_KEPT,
};

#[derive(Debug, Clone, Copy)]
pub(super) struct InvSpan {
    pub(super) id: u64,
    pub(super) start_ts: u64,
    pub(super) end_ts: u64,
    pub(super) lo: u64,
    pub(super) hi: u64,
    /// Some(mr) for a driver callback on that MR; None for an mm-wide notifier range.
    pub(super) mr: Option<u64>,
    pub(super) cause: u32,
    pub(super) pid: u32,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct PendingRange {
    pub(super) ts: u64,
    pub(super) duration: u64,
    pub(super) mm: u64,
    pub(super) lo: u64,
    pub(super) hi: u64,
    pub(super) cause: u32,
    pub(super) pid: u32,
    pub(super) task: [u8; 16],
}

impl PendingRange {
    /// A notifier range as one of its events (start or end) describes it.
    fn of(e: &OdpEvent) -> Self {
        PendingRange {
            ts: e.ts_ns,
            duration: e.duration_ns,
            mm: e.mm,
            lo: e.start,
            hi: e.end,
            cause: e.aux,
            pid: e.pid,
            task: e.comm,
        }
    }
}

impl Engine {
    /// An invalidation is complete: match it against faults that finished before it did.
    pub(super) fn invalidation_done(&mut self, mm: u64, inv: InvSpan, task: &[u8; 16]) {
        let owner_pid = self.spaces.get(&mm).map_or(0, |s| s.pid);
        self.note_activity(|| {
            Activity::Invalidation(InvalidationActivity {
                id: inv.id,
                mr: inv.mr,
                mm,
                owner_pid,
                pid: inv.pid,
                task: comm_string(task),
                start_ns: inv.start_ts,
                end_ns: inv.end_ts,
                lo: inv.lo,
                hi: inv.hi,
                cause: inv.cause,
            })
        });
        let mut raced = Vec::new();
        let since = inv.start_ts.saturating_sub(REORDER_NS);
        if let Some(space) = self.spaces.get_mut(&mm) {
            for fault in space
                .faults
                .iter_mut()
                .rev()
                .take_while(|f| f.end_ts >= since)
            {
                if !fault.raced && overlaps(fault, &inv) {
                    fault.raced = true;
                    raced.push(*fault);
                }
            }
        }
        for fault in raced {
            self.race(&fault, &inv);
        }
        let last_ts = self.last_ts;
        let space = self.space(mm);
        push_window(&mut space.invalidations, inv, last_ts, |i| i.end_ts);
    }

    pub(super) fn on_callback(&mut self, e: &OdpEvent) {
        let mr = self.mr_for_umem(e.obj, e);
        let (mr_lo, mr_hi) = self
            .mrs
            .get(&mr)
            .map_or((e.start, e.end), |m| (m.start, m.end));
        let bytes = if mr_hi > mr_lo {
            e.end.min(mr_hi).saturating_sub(e.start.max(mr_lo))
        } else {
            e.end.saturating_sub(e.start)
        };
        let cause = (e.aux as usize).min(CAUSES);
        let duration = e.duration_ns;
        self.account(mr, |s| {
            s.counts.invalidations += 1;
            s.counts.invalidated_bytes += bytes;
            s.counts.invalidations_by_cause[cause] += 1;
            s.invalidation.record(duration);
        });
        let comm = e.comm();
        if self.by_task.len() < TASK_NAMES_KEPT || self.by_task.contains_key(&comm) {
            *self.by_task.entry(comm).or_default() += 1;
        } else {
            *self.by_task.entry(OTHER_TASKS.to_string()).or_default() += 1;
            self.summarised.invalidations_of_other_tasks += 1;
        }
        self.bucket(e.ts_ns.saturating_add(e.duration_ns))
            .invalidations += 1;
        let id = self.span_id();
        self.invalidation_done(
            e.mm,
            InvSpan {
                id,
                start_ts: e.ts_ns,
                end_ts: e.ts_ns.saturating_add(e.duration_ns),
                lo: e.start,
                hi: e.end,
                mr: Some(mr),
                cause: e.aux,
                pid: e.pid,
            },
            &e.comm,
        );
    }

    pub(super) fn on_range_start(&mut self, e: &OdpEvent) {
        let pending = PendingRange::of(e);
        if self.range_ends_seen || self.pending_ranges.len() < 64 {
            self.pending_ranges.insert((e.tid, e.obj), pending);
        } else {
            // No range_end probe: the start call alone is the window we can see.
            self.range_done(pending, e.ts_ns.saturating_add(e.duration_ns));
        }
    }

    pub(super) fn on_range_end(&mut self, e: &OdpEvent) {
        self.range_ends_seen = true;
        let end_ts = e.ts_ns.saturating_add(e.duration_ns);
        let pending = self
            .pending_ranges
            .remove(&(e.tid, e.obj))
            .unwrap_or_else(|| PendingRange::of(e));
        self.range_done(pending, end_ts);
    }

    pub(super) fn range_done(&mut self, r: PendingRange, end_ts: u64) {
        let touches_mr = self.spaces.get(&r.mm).is_some_and(|s| {
            s.mrs.iter().any(|id| {
                self.mrs
                    .get(id)
                    .is_some_and(|m| m.implicit || (r.lo < m.end && m.start < r.hi))
            })
        });
        if !touches_mr {
            return;
        }
        let id = self.span_id();
        let task = r.task;
        self.invalidation_done(
            r.mm,
            InvSpan {
                id,
                start_ts: r.ts,
                end_ts: end_ts.max(r.ts.saturating_add(r.duration)),
                lo: r.lo,
                hi: r.hi,
                mr: None,
                cause: r.cause,
                pid: r.pid,
            },
            &task,
        );
    }

    /// Starts whose end has not come in RANGE_END_WAIT_NS (range_end not probed, or lost):
    /// judge them as they are.
    pub(super) fn expire_pending_ranges(&mut self) {
        let horizon = self.last_ts.saturating_sub(RANGE_END_WAIT_NS);
        let stale: Vec<(u32, u64)> = self
            .pending_ranges
            .iter()
            .filter(|(_, p)| p.ts < horizon)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(p) = self.pending_ranges.remove(&key) {
                self.range_done(p, p.ts.saturating_add(p.duration));
            }
        }
    }
}

/// A task name as the kernel recorded it (NUL-padded).
fn comm_string(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

pub(super) fn overlaps(f: &FaultSpan, inv: &InvSpan) -> bool {
    inv.start_ts < f.end_ts
        && f.start_ts < inv.end_ts
        && inv.lo < f.hi
        && f.lo < inv.hi
        && inv.mr.is_none_or(|m| m == f.mr)
}
