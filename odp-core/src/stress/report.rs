//! What a stress run reports: per worker and action kind, the first mismatches and failed work
//! requests (with the faults that explain them), and how many actions the probes saw reach the
//! driver.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::pattern;
use super::{Action, Target, TrafficOp, ERRORS_KEPT, MISMATCHES_KEPT, NEARBY_NS};
use crate::trace::monotonic_ns;

/// One CPU-side action as done, timed on the probes' clock (CLOCK_MONOTONIC).
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub action: Action,
    pub worker: Arc<str>,
    pub mr: Arc<str>,
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub addr: u64,
    pub len: usize,
    pub start_ns: u64,
    pub end_ns: u64,
    /// For migrate: pages actually moved; for ksm: pages merged (0: nothing changed, nothing
    /// to invalidate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages_moved: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Wrong bytes after a transfer.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub worker: String,
    pub op: TrafficOp,
    pub mr: String,
    /// Offset in the MR of the page that went wrong, and of its first wrong word.
    pub page_offset: usize,
    pub first_bad: usize,
    pub bad_bytes: usize,
    pub expected: pattern::Decoded,
    /// The first wrong word, decoded as if it were a pattern word, and raw.
    pub actual: pattern::Decoded,
    /// Raw words (for fetch-add: the count expected and the old value returned).
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub expected_raw: u64,
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub actual_raw: u64,
    pub generation: u32,
    pub posted_ns: u64,
    pub checked_ns: u64,
    /// Whether a content-destroying action overlapped this page during the transfer.
    pub page_was_invalidated: bool,
    /// CPU-side actions on this MR within 2 ms of the transfer.
    pub nearby_actions: Vec<ActionRecord>,
}

/// A work request that completed with an error (or never completed), and what it touched.
#[derive(Debug, Clone, Serialize)]
pub struct WcError {
    pub worker: String,
    pub op: TrafficOp,
    pub mr: String,
    /// The ODP memory the request made the device fault on: [addr, addr + len).
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub addr: u64,
    pub len: u64,
    pub posted_ns: u64,
    pub failed_ns: u64,
    pub message: String,
    /// Faults the probes saw give up on this request's memory while it was in flight (filled
    /// by `Report::explain_wc_errors`); empty when none was seen, or without probes.
    pub causes: Vec<crate::analysis::Finding>,
}

impl WcError {
    /// A request on `target` at `offset` (of `len` bytes) that failed just now.
    pub(super) fn now(
        worker: &str,
        op: TrafficOp,
        target: &Target,
        offset: usize,
        len: usize,
        posted_ns: u64,
        message: String,
    ) -> Self {
        WcError {
            worker: worker.to_string(),
            op,
            mr: target.name.clone(),
            addr: target.mapping.addr() + offset as u64,
            len: len as u64,
            posted_ns,
            failed_ns: monotonic_ns(),
            message,
            causes: Vec::new(),
        }
    }

    /// Whether a kernel-side finding could have caused this error: it is on the request's
    /// range and began between the post (less the ring buffer's cross-CPU reordering slack)
    /// and the failed completion.
    pub fn could_be_caused_by(&self, f: &crate::analysis::Finding) -> bool {
        const SLACK_NS: u64 = 10_000_000;
        f.start < self.addr + self.len
            && self.addr < f.end
            && f.ts_ns + SLACK_NS >= self.posted_ns
            && f.ts_ns <= self.failed_ns
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TrafficStats {
    pub worker: String,
    pub op: Option<TrafficOp>,
    pub mr: String,
    pub ops: u64,
    pub bytes: u64,
    pub mb_per_s: f64,
    pub pages_checked: u64,
    /// Pages that read back as zero because an action dropped them mid-transfer (expected).
    pub pages_zeroed_by_actions: u64,
    /// Pages partly zero for the same reason: dropped while being written (expected).
    pub pages_torn_by_actions: u64,
    pub mismatches: u64,
    pub wc_errors: u64,
    /// QPs rebuilt after an error completion left them in the error state.
    pub qp_rebuilds: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ActionStats {
    pub done: u64,
    pub failed: u64,
    pub bytes: u64,
    pub per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PrefetchStats {
    pub worker: String,
    pub calls: u64,
    pub failed: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MrInfo {
    pub name: String,
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub addr: u64,
    pub len: usize,
    pub backing: &'static str,
    pub implicit: bool,
    pub lkey: u32,
    pub rkey: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub device: String,
    pub duration_s: f64,
    pub stopped_early: bool,
    pub mrs: Vec<MrInfo>,
    pub traffic: Vec<TrafficStats>,
    pub actions: BTreeMap<Action, ActionStats>,
    pub prefetch: Vec<PrefetchStats>,
    pub mismatches: u64,
    pub wc_errors: u64,
    pub first_mismatches: Vec<Mismatch>,
    pub first_wc_errors: Vec<WcError>,
    /// Workers that failed outright (not a completion error: a post, a syscall setup).
    pub worker_errors: Vec<String>,
    /// Every action, for matching against probe events; not printed.
    #[serde(skip)]
    pub action_log: Vec<ActionRecord>,
}

impl Report {
    /// The report of a finished run: `self` carries the run's facts, the workers' results and
    /// the action log fill in the rest (mismatches listed with the actions near them).
    pub(super) fn with_results(
        mut self,
        traffic: Vec<(TrafficStats, Vec<Mismatch>, Vec<WcError>)>,
        prefetch: Vec<PrefetchStats>,
        log: Vec<ActionRecord>,
    ) -> Report {
        let elapsed = self.duration_s.max(1e-9);
        let mut by_action: BTreeMap<Action, ActionStats> = BTreeMap::new();
        for r in &log {
            let s = by_action.entry(r.action).or_default();
            if r.error.is_some() {
                s.failed += 1;
            } else {
                s.done += 1;
                s.bytes += r.len as u64;
            }
        }
        for s in by_action.values_mut() {
            s.per_s = s.done as f64 / elapsed;
        }
        self.actions = by_action;
        self.prefetch = prefetch;
        for (mut stats, mut mismatches, errors) in traffic {
            stats.mb_per_s = stats.bytes as f64 / elapsed / 1e6;
            self.mismatches += stats.mismatches;
            self.wc_errors += stats.wc_errors;
            for m in &mut mismatches {
                m.nearby_actions = log
                    .iter()
                    .filter(|a| {
                        *a.mr == *m.mr
                            && a.start_ns < m.checked_ns + NEARBY_NS
                            && m.posted_ns < a.end_ns + NEARBY_NS
                    })
                    .take(10)
                    .cloned()
                    .collect();
            }
            self.first_mismatches
                .extend(mismatches.into_iter().take(MISMATCHES_KEPT));
            self.first_wc_errors.extend(errors);
            self.traffic.push(stats);
        }
        self.first_mismatches.truncate(MISMATCHES_KEPT);
        self.first_wc_errors.truncate(ERRORS_KEPT);
        self.action_log = log;
        self
    }

    /// Ties each failed work request to the faults that gave up on its memory meanwhile.
    pub fn explain_wc_errors(&mut self, gave_up: &[crate::analysis::Finding]) {
        for e in &mut self.first_wc_errors {
            e.causes = gave_up
                .iter()
                .filter(|f| e.could_be_caused_by(f))
                .cloned()
                .collect();
        }
    }

    /// Data survived and nothing failed.
    pub fn clean(&self) -> bool {
        self.mismatches == 0 && self.wc_errors == 0 && self.worker_errors.is_empty()
    }
}

/// For each kind of action, how many of those on registered memory the probes saw: an
/// invalidation event of one point (the driver's, where attached) in the action's address
/// space, of a cause the action produces, over its range and starting inside its time window;
/// each event stands for one action at most.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Matching {
    /// The point whose events were matched (its skipped runs are what may leave actions unseen).
    pub point: &'static str,
    pub actions: u64,
    pub matched: u64,
    /// Actions known to have changed nothing (a migrate that moved no page, a ksm that merged
    /// none); not counted above.
    pub no_change: u64,
    /// The first few actions no event matched, to look up in a recording.
    pub unmatched: Vec<ActionRecord>,
}

/// An invalidation the probes reported: its time span, address range, address space, cause
/// and whether a kernel thread made it.
#[derive(Debug, Clone, Copy)]
pub struct SeenInvalidation {
    pub start_ns: u64,
    pub end_ns: u64,
    pub lo: u64,
    pub hi: u64,
    pub mm: u64,
    /// `enum mmu_notifier_event` name.
    pub cause: &'static str,
    pub kthread: bool,
}

/// Matches each action that should invalidate to one event of `seen` (all from `point`, in the
/// address space `mm` the actions ran in). Actions are taken in start order and each takes the
/// earliest unused event that fits, so one event never counts for two actions.
pub fn match_actions(
    log: &[ActionRecord],
    seen: &[SeenInvalidation],
    mm: u64,
    point: &'static str,
) -> BTreeMap<Action, Matching> {
    let mut sorted: Vec<SeenInvalidation> = seen.iter().filter(|s| s.mm == mm).copied().collect();
    sorted.sort_by_key(|s| s.start_ns);
    let mut used = vec![false; sorted.len()];
    let mut actions: Vec<&ActionRecord> = log
        .iter()
        .filter(|a| a.error.is_none() && !a.action.invalidation_causes().is_empty())
        .collect();
    actions.sort_by_key(|a| a.start_ns);
    let mut out: BTreeMap<Action, Matching> = BTreeMap::new();
    for a in actions {
        let m = out.entry(a.action).or_insert_with(|| Matching {
            point,
            ..Matching::default()
        });
        if a.pages_moved == Some(0) {
            m.no_change += 1;
            continue;
        }
        m.actions += 1;
        let lo = a.addr;
        let hi = a.addr.saturating_add(a.len as u64);
        let causes = a.action.invalidation_causes();
        let by_kthread = a.action.invalidated_by_kernel_thread();
        // Events that started inside the action's window (the action causes them).
        let first = sorted.partition_point(|s| s.start_ns < a.start_ns);
        let hit = sorted[first..]
            .iter()
            .take_while(|s| s.start_ns <= a.end_ns)
            .zip(first..)
            .find(|(s, i)| {
                !used[*i]
                    && s.lo < hi
                    && lo < s.hi
                    && causes.contains(&s.cause)
                    && (!by_kthread || s.kthread)
            })
            .map(|(_, i)| i);
        match hit {
            Some(i) => {
                used[i] = true;
                m.matched += 1;
            }
            None if m.unmatched.len() < 5 => m.unmatched.push(a.clone()),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{Finding, FindingKind};

    fn gave_up(ts_ns: u64, start: u64, end: u64) -> Finding {
        Finding {
            ts_ns,
            kind: FindingKind::HmmTimeout,
            mr: Some(1),
            pid: 7,
            start,
            end,
            detail: format!("fault at {start:#x}"),
        }
    }

    #[test]
    fn a_failed_request_is_explained_only_by_faults_on_its_memory_while_it_was_in_flight() {
        let error = WcError {
            worker: "reader".into(),
            op: TrafficOp::Read,
            mr: "buf".into(),
            addr: 0x10_0000,
            len: 0x1_0000,
            posted_ns: 5_000_000_000,
            failed_ns: 6_500_000_000,
            message: "reader: read of buf+0x0: remote access error".into(),
            causes: Vec::new(),
        };
        let findings = [
            // On its last page, begun after the post: the cause.
            gave_up(5_100_000_000, 0x10_f000, 0x11_0000),
            // Just inside the reordering slack before the post: still a cause.
            gave_up(4_995_000_000, 0x10_0000, 0x10_1000),
            // Adjacent range, right time: another request's memory.
            gave_up(5_100_000_000, 0x11_0000, 0x11_1000),
            // Right range, but begun long before this request was posted.
            gave_up(4_000_000_000, 0x10_0000, 0x10_1000),
            // Right range, begun after the failure was already seen.
            gave_up(6_600_000_000, 0x10_0000, 0x10_1000),
        ];
        let mut report = Report {
            scenario: "s".into(),
            seed: 1,
            device: "rxe0".into(),
            duration_s: 1.0,
            stopped_early: false,
            mrs: Vec::new(),
            traffic: Vec::new(),
            actions: BTreeMap::new(),
            prefetch: Vec::new(),
            mismatches: 0,
            wc_errors: 1,
            first_mismatches: Vec::new(),
            first_wc_errors: vec![error],
            worker_errors: Vec::new(),
            action_log: Vec::new(),
        };
        report.explain_wc_errors(&findings);
        let causes: Vec<u64> = report.first_wc_errors[0]
            .causes
            .iter()
            .map(|f| f.ts_ns)
            .collect();
        assert_eq!(causes, vec![5_100_000_000, 4_995_000_000]);
        report.explain_wc_errors(&[]);
        assert!(report.first_wc_errors[0].causes.is_empty());
    }

    fn record(action: Action, addr: u64, len: usize, start_ns: u64, end_ns: u64) -> ActionRecord {
        ActionRecord {
            action,
            worker: "w".into(),
            mr: "buf".into(),
            addr,
            len,
            start_ns,
            end_ns,
            pages_moved: None,
            error: None,
        }
    }

    const OURS: u64 = 0xffff_8880_0000_1000;

    fn seen(start_ns: u64, lo: u64, hi: u64, cause: &'static str) -> SeenInvalidation {
        SeenInvalidation {
            start_ns,
            end_ns: start_ns + 10,
            lo,
            hi,
            mm: OURS,
            cause,
            kthread: false,
        }
    }

    #[test]
    fn actions_match_only_overlapping_events_inside_their_window() {
        let log = [
            record(Action::Dontneed, 0x1000, 0x1000, 100, 200),
            record(Action::Dontneed, 0x5000, 0x1000, 300, 400),
            record(Action::Remap, 0x9000, 0x2000, 500, 600),
        ];
        let seen = [
            // Inside the first action's window and range.
            seen(150, 0x1000, 0x2000, "CLEAR"),
            // Right time for the second, adjacent range (0x6000 is where it ends): no match.
            seen(350, 0x6000, 0x7000, "CLEAR"),
            // Right range for the third, but before it started.
            seen(450, 0x9000, 0xb000, "UNMAP"),
        ];
        let mut no_op = record(Action::Migrate, 0x1000, 0x1000, 120, 130);
        no_op.pages_moved = Some(0);
        let mut log = log.to_vec();
        log.push(no_op);
        let m = match_actions(&log, &seen, OURS, "rxe_invalidate");
        assert_eq!(
            m[&Action::Migrate].no_change,
            1,
            "a migrate that moved nothing"
        );
        assert_eq!(m[&Action::Migrate].actions, 0);
        assert_eq!(m[&Action::Dontneed].actions, 2);
        assert_eq!(m[&Action::Dontneed].matched, 1);
        assert_eq!(m[&Action::Dontneed].point, "rxe_invalidate");
        assert_eq!(m[&Action::Remap].matched, 0);
        assert_eq!(m[&Action::Remap].unmatched[0].start_ns, 500);
    }

    #[test]
    fn an_action_matches_only_its_own_cause_in_its_own_address_space_once() {
        let log = [
            // Two dontneeds over the same range at once: one event is one action only.
            record(Action::Dontneed, 0x1000, 0x1000, 100, 200),
            record(Action::Dontneed, 0x1000, 0x1000, 110, 210),
            // An mprotect sees only PROTECTION_VMA, whatever else hits its range.
            record(Action::Mprotect, 0x4000, 0x1000, 300, 400),
            // A remap's UNMAP in another process's address space is not its own.
            record(Action::Remap, 0x8000, 0x1000, 500, 600),
            // Cold invalidates nothing and is not matched at all.
            record(Action::Cold, 0x1000, 0x1000, 100, 200),
        ];
        let mut other_mm = seen(550, 0x8000, 0x9000, "UNMAP");
        other_mm.mm = OURS + 0x1000;
        let events = [
            seen(150, 0x1000, 0x2000, "CLEAR"),
            seen(350, 0x4000, 0x5000, "CLEAR"),
            other_mm,
        ];
        let m = match_actions(&log, &events, OURS, "rxe_invalidate");
        assert_eq!(
            (m[&Action::Dontneed].actions, m[&Action::Dontneed].matched),
            (2, 1)
        );
        assert_eq!(m[&Action::Mprotect].matched, 0, "CLEAR is not mprotect's");
        assert_eq!(m[&Action::Remap].matched, 0, "another address space");
        assert!(!m.contains_key(&Action::Cold));

        // With the right cause and address space, both are seen.
        let mut events = events.to_vec();
        events.push(seen(160, 0x1000, 0x2000, "CLEAR"));
        events.push(seen(360, 0x4000, 0x5000, "PROTECTION_VMA"));
        events.push(seen(560, 0x8000, 0x9000, "UNMAP"));
        let m = match_actions(&log, &events, OURS, "rxe_invalidate");
        for a in [Action::Dontneed, Action::Mprotect, Action::Remap] {
            assert_eq!(m[&a].matched, m[&a].actions, "{a:?}");
        }
    }

    #[test]
    fn ksm_is_seen_by_ksmds_merge_not_by_its_own_unmerge() {
        let mut ksm = record(Action::Ksm, 0x1000, 0x4000, 100, 900);
        ksm.pages_moved = Some(4);
        // The unmerge: CPU faults of the acting task breaking the merge.
        let unmerge = seen(800, 0x1000, 0x2000, "CLEAR");
        let m = match_actions(
            std::slice::from_ref(&ksm),
            &[unmerge],
            OURS,
            "rxe_invalidate",
        );
        assert_eq!(m[&Action::Ksm].matched, 0);
        let mut merge = seen(400, 0x2000, 0x3000, "CLEAR");
        merge.kthread = true;
        let m = match_actions(&[ksm], &[unmerge, merge], OURS, "rxe_invalidate");
        assert_eq!(m[&Action::Ksm].matched, 1);
    }
}
