//! Device faults: the calls made inside one (sequence reads, HMM walks), its retries, collision
//! waits, timeouts and races, and prefetches, which take the same path but are not faults.

use bpf_common::{mmu_event_name, Arg, OdpEvent};

use super::activity::{Activity, FaultActivity};
use super::invalidations::{overlaps, InvSpan};
use super::{
    fmt_ns, fmt_range, push_window, Engine, FindingKind, EBUSY, PAGE, REORDER_NS, SUBCALLS_KEPT,
};

#[derive(Debug, Clone, Copy)]
pub(super) struct FaultSpan {
    pub(super) id: u64,
    pub(super) start_ts: u64,
    pub(super) end_ts: u64,
    pub(super) lo: u64,
    pub(super) hi: u64,
    pub(super) mr: u64,
    pub(super) raced: bool,
}

/// The attempts inside one fault: its sequence reads and HMM walks, and the retries they show.
struct Attempts {
    calls: Vec<SubCall>,
    read_begins: u64,
    hmm_calls: u64,
    retries: u64,
}

/// Calls a thread made inside a fault, waiting for the fault's own event (which comes last).
#[derive(Debug, Clone, Copy)]
pub(super) struct SubCall {
    pub(super) ts: u64,
    pub(super) duration: u64,
    pub(super) umem: u64,
    pub(super) read_begin: bool,
}

impl Engine {
    /// A call inside a fault: a sequence read (one per attempt) or an HMM walk.
    pub(super) fn on_subcall(&mut self, e: &OdpEvent, read_begin: bool) {
        let calls = self.threads.entry(e.tid).or_default();
        if calls.len() >= SUBCALLS_KEPT {
            calls.remove(0);
        }
        calls.push(SubCall {
            ts: e.ts_ns,
            duration: e.duration_ns,
            umem: e.obj,
            read_begin,
        });
        if !read_begin && e.has_ret() && e.ret == EBUSY {
            let mr = self.umems.get(&e.obj).copied();
            match mr {
                Some(mr) => self.account(mr, |s| s.counts.hmm_busy += 1),
                None => self.total.counts.hmm_busy += 1,
            }
        }
    }

    pub(super) fn on_fault(&mut self, e: &OdpEvent) {
        let mr = self.mr_for_umem(e.obj, e);
        let (lo, hi) = (e.start, e.end);
        let fault_end = e.ts_ns.saturating_add(e.duration_ns);
        let pages = pages(lo, hi);
        let failed = e.has_ret() && e.ret < 0;
        let attempts = self.attempts_inside(e);
        let waits = self.collision_waits(e.mm, mr, lo, hi, &attempts.calls);

        let prefetch = e.in_prefetch();
        let hmm_timeout = !prefetch
            && e.has_ret()
            && e.ret == EBUSY
            && e.duration_ns >= self.config.hmm_timeout_ns;
        let is_slow = !prefetch && !hmm_timeout && e.duration_ns >= self.config.slow_fault_ns;
        let faulted_anyway = self.note_pages(mr, lo, hi, prefetch, failed);
        let duration = e.duration_ns;
        let retries = attempts.retries;
        let for_peer = e.arg(Arg::ResponderQp).is_some_and(|qp| qp != 0);
        self.account(mr, |s| {
            let c = &mut s.counts;
            if prefetch {
                if !failed {
                    c.prefetched_pages += pages;
                }
            } else {
                c.faults += 1;
                c.peer_faults += u64::from(for_peer);
                c.fault_pages += pages;
                c.fault_errors += u64::from(failed);
                c.prefetched_then_faulted_pages += faulted_anyway;
                s.fault.record(duration);
            }
            if prefetch {
                // A prefetch takes the fault path but is not a device fault (README): its
                // attempts and waits stay out of the faults' figures.
                c.prefetch_retries += retries;
                return;
            }
            c.retries += retries;
            c.retried_faults += u64::from(retries > 0);
            c.hmm_timeouts += u64::from(hmm_timeout);
            c.slow += u64::from(is_slow);
            c.collision_waits += waits.len() as u64;
            for (_, w) in &waits {
                s.collision_wait.record(*w);
            }
        });
        if !prefetch {
            let b = self.bucket(fault_end);
            b.faults += 1;
            b.retries += retries;
            b.timeouts += u64::from(hmm_timeout || is_slow);
        }
        self.fault_findings(e, mr, &attempts, prefetch, hmm_timeout, is_slow);
        let id = self.span_id();
        self.note_activity(|| {
            Activity::Fault(FaultActivity {
                id,
                mr,
                tid: e.tid,
                task: e.comm(),
                start_ns: e.ts_ns,
                end_ns: fault_end,
                lo,
                hi,
                prefetch,
                ret: e.has_ret().then_some(e.ret),
                retries_at: attempts
                    .calls
                    .iter()
                    .filter(|c| c.read_begin)
                    .skip(1)
                    .map(|c| c.ts)
                    .collect(),
                waits,
                timeout: if hmm_timeout {
                    Some(FindingKind::HmmTimeout)
                } else if is_slow {
                    Some(FindingKind::Slow)
                } else {
                    None
                },
            })
        });
        if prefetch {
            // Races are faults the device was waiting on; a prefetch's map is not one.
            return;
        }
        self.race_with_finished_invalidations(
            e.mm,
            FaultSpan {
                id,
                start_ts: e.ts_ns,
                end_ts: fault_end,
                lo,
                hi,
                mr,
                raced: false,
            },
        );
    }

    /// The calls this thread made inside the fault `e` (its attempts: sequence reads and HMM
    /// walks), taken out of the thread's pending calls.
    fn attempts_inside(&mut self, e: &OdpEvent) -> Attempts {
        let fault_end = e.ts_ns.saturating_add(e.duration_ns);
        let calls: Vec<SubCall> = self
            .threads
            .get_mut(&e.tid)
            .map(|calls| {
                let inside = calls
                    .iter()
                    .copied()
                    .filter(|c| c.ts >= e.ts_ns && c.ts <= fault_end)
                    .filter(|c| c.umem == e.obj || c.umem == 0)
                    .collect();
                calls.clear();
                inside
            })
            .unwrap_or_default();
        let read_begins = calls.iter().filter(|c| c.read_begin).count() as u64;
        let hmm_calls = calls.len() as u64 - read_begins;
        let retries = if read_begins > 0 {
            read_begins - 1
        } else {
            hmm_calls.saturating_sub(1)
        };
        Attempts {
            calls,
            read_begins,
            hmm_calls,
            retries,
        }
    }

    /// Waits behind an invalidation: the durations of the sequence reads that overlapped one
    /// on this range of this MR (or an mm-wide one).
    fn collision_waits(
        &self,
        mm: u64,
        mr: u64,
        lo: u64,
        hi: u64,
        calls: &[SubCall],
    ) -> Vec<(u64, u64)> {
        let mut waits = Vec::new();
        let Some(space) = self.spaces.get(&mm) else {
            return waits;
        };
        for call in calls.iter().filter(|c| c.read_begin) {
            let call_end = call.ts.saturating_add(call.duration);
            // inv.end_ts + REORDER_NS >= call.ts, with the bound worked out once per call.
            let since = call.ts.saturating_sub(REORDER_NS);
            // Newest first, and only as far back as could still overlap the call: a full scan
            // of the window per call was the engine's hottest loop.
            let collided = space
                .invalidations
                .iter()
                .rev()
                .take_while(|inv| inv.end_ts >= since)
                .any(|inv| {
                    inv.start_ts < call_end
                        && call.ts < inv.end_ts
                        && inv.lo < hi
                        && lo < inv.hi
                        && inv.mr.is_none_or(|m| m == mr)
                });
            if collided {
                waits.push((call.ts, call.duration));
            }
        }
        waits
    }

    /// Records what a prefetch mapped, or takes what a fault hit out of it (returning those
    /// pages: prefetched, then faulted anyway), and widens the extent of an MR known only from
    /// its faults.
    fn note_pages(&mut self, mr: u64, lo: u64, hi: u64, prefetch: bool, failed: bool) -> u64 {
        let Some(m) = self.mrs.get_mut(&mr) else {
            return 0;
        };
        // Saturating: a recorded end address near the top of the address space must not wrap.
        let (page_lo, page_hi) = (lo & !(PAGE - 1), hi.div_ceil(PAGE).saturating_mul(PAGE));
        let mut faulted_anyway = 0;
        if prefetch {
            if !failed {
                m.prefetched.insert(page_lo, page_hi);
            }
        } else {
            faulted_anyway = m.prefetched.take(page_lo, page_hi) / PAGE;
        }
        if m.end == 0 && !m.implicit {
            // First seen through a fault: the MR spans at least what it faulted.
            m.start = lo;
            m.end = hi;
        } else if !m.registration_seen {
            m.start = m.start.min(lo);
            m.end = m.end.max(hi);
        }
        faulted_anyway
    }

    /// The findings one fault can give: a retry, and an HMM timeout or a slow fault.
    fn fault_findings(
        &mut self,
        e: &OdpEvent,
        mr: u64,
        attempts: &Attempts,
        prefetch: bool,
        hmm_timeout: bool,
        is_slow: bool,
    ) {
        let (lo, hi, duration) = (e.start, e.end, e.duration_ns);
        if attempts.retries > 0 {
            self.finding(
                FindingKind::Retry,
                e.ts_ns,
                Some(mr),
                lo,
                hi,
                format!(
                    "{} {} retried {}x ({} read_begin, {} hmm) in {}",
                    if prefetch { "prefetch" } else { "fault" },
                    fmt_range(lo, hi),
                    attempts.retries,
                    attempts.read_begins,
                    attempts.hmm_calls,
                    fmt_ns(duration)
                ),
            );
        }
        if hmm_timeout {
            self.finding(
                FindingKind::HmmTimeout,
                e.ts_ns,
                Some(mr),
                lo,
                hi,
                format!(
                    "fault {} gave up with EBUSY after {}",
                    fmt_range(lo, hi),
                    fmt_ns(duration)
                ),
            );
        } else if is_slow {
            self.finding(
                FindingKind::Slow,
                e.ts_ns,
                Some(mr),
                lo,
                hi,
                format!(
                    "fault {} took {} (threshold {})",
                    fmt_range(lo, hi),
                    fmt_ns(duration),
                    fmt_ns(self.config.slow_fault_ns)
                ),
            );
        }
    }

    /// Did an invalidation that already finished run into this fault? Then the fault joins its
    /// address space's window, for invalidations still to come.
    fn race_with_finished_invalidations(&mut self, mm: u64, mut span: FaultSpan) {
        let since = span.start_ts.saturating_sub(REORDER_NS);
        let hit = self.spaces.get(&mm).and_then(|space| {
            space
                .invalidations
                .iter()
                .rev()
                .take_while(|inv| inv.end_ts >= since)
                .find(|inv| overlaps(&span, inv))
                .copied()
        });
        if let Some(inv) = hit {
            span.raced = true;
            self.race(&span, &inv);
        }
        let last_ts = self.last_ts;
        let space = self.space(mm);
        push_window(&mut space.faults, span, last_ts, |f| f.end_ts);
    }

    pub(super) fn race(&mut self, fault: &FaultSpan, inv: &InvSpan) {
        self.note_activity(|| Activity::Race {
            fault: fault.id,
            invalidation: inv.id,
        });
        let mr = fault.mr;
        self.account(mr, |s| s.counts.races += 1);
        self.bucket(fault.end_ts.max(inv.end_ts)).races += 1;
        let by = match inv.mr {
            Some(_) => "driver invalidation",
            None => "notifier range",
        };
        self.finding(
            FindingKind::Race,
            fault.start_ts.max(inv.start_ts),
            Some(mr),
            fault.lo.max(inv.lo),
            fault.hi.min(inv.hi),
            format!(
                "fault {} ({}) overlapped {by} {} event={} from pid {}",
                fmt_range(fault.lo, fault.hi),
                fmt_ns(fault.end_ts - fault.start_ts),
                fmt_range(inv.lo, inv.hi),
                mmu_event_name(inv.cause),
                inv.pid
            ),
        );
    }

    pub(super) fn on_advise(&mut self, e: &OdpEvent) {
        self.total.counts.prefetches += 1;
        // Synchronous advice (IB_UVERBS_ADVISE_MR_FLAG_FLUSH) does the work in the call; the
        // asynchronous kind is timed by its work item instead.
        let sync = e.advise_flags().is_some_and(|f| f & 1 != 0);
        if sync {
            self.total.prefetch.record(e.duration_ns);
        }
        let comm = e.comm();
        let p = self.process_entry(e.pid, &comm);
        p.stats.counts.prefetches += 1;
        if sync {
            p.stats.prefetch.record(e.duration_ns);
        }
        self.bucket(e.ts_ns.saturating_add(e.duration_ns))
            .prefetches += 1;
    }

    pub(super) fn unresolved(&mut self, e: &OdpEvent, mr: Option<u64>, detail: String) {
        match mr {
            Some(mr) => self.account(mr, |s| s.counts.unresolved += 1),
            None => self.total.counts.unresolved += 1,
        }
        self.bucket(e.ts_ns.saturating_add(e.duration_ns)).timeouts += 1;
        self.note_activity(|| Activity::Unresolved {
            mr,
            at_ns: e.ts_ns,
            detail: detail.clone(),
        });
        self.finding(FindingKind::Unresolved, e.ts_ns, mr, e.start, e.end, detail);
    }
}

/// The 4 KiB pages a byte range touches.
pub fn pages(lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return 0;
    }
    hi.div_ceil(PAGE) - lo / PAGE
}
