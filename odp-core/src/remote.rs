//! The two ends of one event across hosts: a requester's transport retry (or RNR wait, or
//! retry exhaustion) and the responder's ODP fault that made it wait.
//!
//! The hosts' clocks are not compared. A retry names its QP's peer (`dest_qp`) and the send
//! window it had outstanding, `[psn, next_psn)`: packets sent and not acknowledged when the
//! ACK timer gave up. The responder's faults carry the QP and the PSN of the packet they served.
//! A fault on the peer QP at a PSN inside that window happened while the requester waited for
//! that packet's ACK (the responder answers a packet only after its fault is over), so it is a
//! cause of the wait. The responder takes a QP's packets in order, so each delay in the window
//! held up every packet after it; of several, the longest is named (a fault of microseconds
//! does not by itself outlast an ACK timer of milliseconds). Without a fault, a copy into the
//! MR at such a PSN that stalled while an invalidation of the same MR ran (the responder's own
//! clock says so: the driver's copy waits for the invalidation to let go of the MR) is the
//! cause. A retry with neither waited for
//! something else (a lost packet, a descheduled responder) and is reported as not caused by
//! ODP.

use std::collections::VecDeque;

use bpf_common::{Arg, Kind, OdpEvent};
use serde::Serialize;

/// PSNs are 24 bits and wrap.
const PSN_MASK: u32 = 0x00ff_ffff;

/// Whether `psn` lies in the window `[lo, hi)` of 24-bit sequence numbers.
pub fn psn_in_window(psn: u32, lo: u32, hi: u32) -> bool {
    let width = hi.wrapping_sub(lo) & PSN_MASK;
    (psn.wrapping_sub(lo) & PSN_MASK) < width
}

/// What held the responder up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delay {
    /// A device fault.
    Fault,
    /// A copy into the MR that stalled behind an invalidation of it.
    InvalidationWait,
}

/// A copy this slow (rxe's copy of one packet takes microseconds) is a stall.
pub const STALL_NS: u64 = 1_000_000;

/// A device fault the responder took while answering a peer's request, or a stalled copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResponderFault {
    pub delay: Delay,
    /// The responder's QP number.
    pub qp: u32,
    /// The PSN of the request (or read response) the fault served.
    pub psn: u32,
    pub start: u64,
    pub len: u64,
    pub duration_ns: u64,
    /// Pages mapped, or -errno.
    pub ret: i64,
}

impl ResponderFault {
    /// A fault, or a stalled copy, inside the responder (the probes tag those with their QP).
    pub fn from_event(e: &OdpEvent) -> Option<ResponderFault> {
        let delay = match e.point()?.kind() {
            Kind::Fault => Delay::Fault,
            Kind::DriverCopy if e.duration_ns >= STALL_NS => Delay::InvalidationWait,
            _ => return None,
        };
        let qp = u32::try_from(e.arg(Arg::ResponderQp)?).ok()?;
        if qp == 0 {
            return None;
        }
        Some(ResponderFault {
            delay,
            qp,
            psn: e.arg(Arg::ResponderPsn)? as u32 & PSN_MASK,
            start: e.start,
            len: e.end.saturating_sub(e.start),
            duration_ns: e.duration_ns,
            ret: e.ret,
        })
    }
}

/// One completer run that gave up waiting on a requester QP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequesterRetry {
    pub qp: u32,
    /// The peer's QP number.
    pub dest_qp: u32,
    /// The first unacknowledged PSN: the retry sends again from here.
    pub psn: u32,
    /// The next PSN the requester would have sent: the window's end.
    pub next_psn: u32,
    /// Transport retries (the ACK timer expired with packets outstanding).
    pub retries: u8,
    /// The retry count ran out: the request fails with "transport retry counter exceeded".
    pub exceeded: u8,
    /// RNR NAKs received (the responder was not ready; mlx5 answers its ODP faults so).
    pub rnr_naks: u8,
    /// The RNR retry count ran out.
    pub rnr_exceeded: u8,
}

impl RequesterRetry {
    pub fn from_event(e: &OdpEvent) -> Option<RequesterRetry> {
        if e.point()?.kind() != Kind::RequesterRetry {
            return None;
        }
        let byte = |i: u32| (e.aux >> (8 * i)) as u8;
        Some(RequesterRetry {
            qp: e.arg(Arg::QpNum)? as u32,
            dest_qp: e.arg(Arg::DestQp)? as u32,
            psn: e.arg(Arg::Psn)? as u32 & PSN_MASK,
            next_psn: e.arg(Arg::NextPsn)? as u32 & PSN_MASK,
            retries: byte(0),
            exceeded: byte(1),
            rnr_naks: byte(2),
            rnr_exceeded: byte(3),
        })
    }
}

/// The delay, among the responder's in the order it took them, that held up a retry's window
/// most: on the peer QP, a fault before a stall, the longest; of equals, the one at the lowest
/// PSN from the window's start, the first such at that PSN.
pub fn cause<'a>(
    retry: &RequesterRetry,
    delays: impl IntoIterator<Item = &'a ResponderFault>,
) -> Option<&'a ResponderFault> {
    // Lower is more to blame: a fault before a stall, then the longer, then the lower PSN.
    type Rank = (bool, std::cmp::Reverse<u64>, u32);
    let mut best: Option<(Rank, &ResponderFault)> = None;
    for delay in delays {
        if delay.qp != retry.dest_qp || !psn_in_window(delay.psn, retry.psn, retry.next_psn) {
            continue;
        }
        let rank = (
            delay.delay != Delay::Fault,
            std::cmp::Reverse(delay.duration_ns),
            delay.psn.wrapping_sub(retry.psn) & PSN_MASK,
        );
        if best.is_none_or(|(b, _)| rank < b) {
            best = Some((rank, delay));
        }
    }
    best.map(|(_, f)| f)
}

/// A requester retry and the responder fault found to have caused it, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Attributed {
    pub retry: RequesterRetry,
    pub cause: Option<ResponderFault>,
}

/// What a run's retries came to: the totals (to hold against the port's counters) and each
/// retry with its cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetryReport {
    pub retries: u64,
    pub exceeded: u64,
    pub rnr_naks: u64,
    pub rnr_exceeded: u64,
    /// Completer runs that gave up, each with the fault that caused it.
    pub attributed: Vec<Attributed>,
    /// Of them, those with a responder fault named.
    pub caused_by_odp_faults: u64,
    /// Runs past the ones asked about (the report keeps its first ATTRIBUTED_KEPT).
    pub not_asked: u64,
}

/// Retries asked about per run: each costs a round trip to the peer.
pub const ATTRIBUTED_KEPT: usize = 1024;

impl RetryReport {
    /// Sums `retries` and attributes each through `find` (which asks the responder).
    pub fn build(
        retries: &[RequesterRetry],
        mut find: impl FnMut(&RequesterRetry) -> crate::Result<Option<ResponderFault>>,
    ) -> crate::Result<RetryReport> {
        let mut report = RetryReport::default();
        for (i, r) in retries.iter().enumerate() {
            report.retries += u64::from(r.retries);
            report.exceeded += u64::from(r.exceeded);
            report.rnr_naks += u64::from(r.rnr_naks);
            report.rnr_exceeded += u64::from(r.rnr_exceeded);
            if i >= ATTRIBUTED_KEPT {
                report.not_asked += 1;
                continue;
            }
            let cause = find(r)?;
            report.caused_by_odp_faults += u64::from(cause.is_some());
            report.attributed.push(Attributed { retry: *r, cause });
        }
        Ok(report)
    }

    /// The fault behind the run that exhausted the retries, if one did and was attributed.
    pub fn exhaustion(&self) -> Option<&Attributed> {
        self.attributed
            .iter()
            .find(|a| a.retry.exceeded > 0 || a.retry.rnr_exceeded > 0)
    }
}

/// Responder faults and requester retries seen on this host, per QP number, bounded: the
/// newest QPs and, in each, the newest entries.
#[derive(Debug, Default)]
pub struct Evidence {
    faults: VecDeque<(u32, VecDeque<ResponderFault>)>,
    /// Stalled copies with their umem and [start, end) on this host's clock, until an
    /// invalidation of the umem is found to overlap them.
    stalls: VecDeque<(UmemSpan, ResponderFault)>,
    /// Recent invalidations: umem and [start, end).
    invalidations: VecDeque<UmemSpan>,
    retries: VecDeque<(u32, VecDeque<RequesterRetry>)>,
}

/// A umem busy over [from, to) on this host's clock: a stalled copy into it, or an
/// invalidation of it.
#[derive(Debug, Clone, Copy)]
struct UmemSpan {
    umem: u64,
    from: u64,
    to: u64,
}

impl UmemSpan {
    fn of(e: &OdpEvent) -> Option<UmemSpan> {
        Some(UmemSpan {
            umem: e.umem()?,
            from: e.ts_ns,
            to: e.ts_ns.saturating_add(e.duration_ns),
        })
    }

    fn overlaps(&self, other: &UmemSpan) -> bool {
        self.umem == other.umem && self.from < other.to && other.from < self.to
    }
}

/// Stalled copies and invalidations kept for matching.
const SPANS_KEPT: usize = 8192;

/// QPs kept, each side.
pub const QPS_KEPT: usize = 16;
/// Responder faults kept per QP (a 64 MiB region faulted page by page: 16,384).
pub const FAULTS_KEPT: usize = 65_536;
/// Requester retries kept per QP.
pub const RETRIES_KEPT: usize = 4096;

fn bounded_push<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() >= SPANS_KEPT {
        list.pop_front();
    }
    list.push_back(item);
}

fn keep<T>(lists: &mut VecDeque<(u32, VecDeque<T>)>, qp: u32, item: T, cap: usize) {
    let at = match lists.iter().position(|(q, _)| *q == qp) {
        Some(at) => at,
        None => {
            if lists.len() >= QPS_KEPT {
                lists.pop_front();
            }
            lists.push_back((qp, VecDeque::new()));
            lists.len() - 1
        }
    };
    let list = &mut lists[at].1;
    if list.len() >= cap {
        list.pop_front();
    }
    list.push_back(item);
}

impl Evidence {
    /// Whether `e` is of a kind `event` keeps anything of: the rest of the stream is passed
    /// over without taking the evidence's lock.
    pub fn concerns(e: &OdpEvent) -> bool {
        e.point().is_some_and(|p| {
            matches!(
                p.kind(),
                Kind::Fault | Kind::DriverCopy | Kind::RequesterRetry | Kind::DriverInvalidate
            )
        })
    }

    pub fn event(&mut self, e: &OdpEvent) {
        if let Some(f) = ResponderFault::from_event(e) {
            match (f.delay, UmemSpan::of(e)) {
                (Delay::Fault, _) => keep(&mut self.faults, f.qp, f, FAULTS_KEPT),
                (Delay::InvalidationWait, Some(stall)) => {
                    if self.invalidations.iter().any(|inv| inv.overlaps(&stall)) {
                        keep(&mut self.faults, f.qp, f, FAULTS_KEPT);
                    } else {
                        bounded_push(&mut self.stalls, (stall, f));
                    }
                }
                (Delay::InvalidationWait, None) => {}
            }
        } else if let Some(r) = RequesterRetry::from_event(e) {
            keep(&mut self.retries, r.qp, r, RETRIES_KEPT);
        } else if e
            .point()
            .is_some_and(|p| p.kind() == Kind::DriverInvalidate)
        {
            if let Some(inv) = UmemSpan::of(e) {
                bounded_push(&mut self.invalidations, inv);
                self.match_stalls(&inv);
            }
        }
    }

    /// Stalled copies `inv` overlapped become delays of their QP (a stall may arrive before
    /// the invalidation it waited for: events come in order of their start).
    fn match_stalls(&mut self, inv: &UmemSpan) {
        if !self.stalls.iter().any(|(stall, _)| inv.overlaps(stall)) {
            return;
        }
        let (matched, waiting): (Vec<_>, Vec<_>) = self
            .stalls
            .drain(..)
            .partition(|(stall, _)| inv.overlaps(stall));
        self.stalls = waiting.into();
        for (_, f) in matched {
            keep(&mut self.faults, f.qp, f, FAULTS_KEPT);
        }
    }

    /// The faults this host took answering on `qp`, in the order it took them.
    pub fn faults(&self, qp: u32) -> impl Iterator<Item = &ResponderFault> {
        self.faults
            .iter()
            .filter(move |(q, _)| *q == qp)
            .flat_map(|(_, list)| list.iter())
    }

    /// The retries of this host's requester QP `qp`, in order.
    pub fn retries(&self, qp: u32) -> Vec<RequesterRetry> {
        self.retries
            .iter()
            .filter(|(q, _)| *q == qp)
            .flat_map(|(_, list)| list.iter().copied())
            .collect()
    }

    /// The cause of a peer's retry among this host's responder faults.
    pub fn cause(&self, retry: &RequesterRetry) -> Option<ResponderFault> {
        cause(retry, self.faults(retry.dest_qp)).copied()
    }
}

impl std::fmt::Display for ResponderFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = format!(
            "on its QP {} at PSN {} over [{:#x}+{:#x}), {}",
            self.qp,
            self.psn,
            self.start,
            self.len,
            crate::analysis::fmt_ns(self.duration_ns)
        );
        match self.delay {
            Delay::Fault if self.ret < 0 => {
                write!(f, "the peer's ODP fault {at} (failed, ret {})", self.ret)
            }
            Delay::Fault => write!(f, "the peer's ODP fault {at} ({} pages)", self.ret),
            Delay::InvalidationWait => write!(
                f,
                "the peer's copy into its ODP MR, waiting behind an invalidation of it, {at}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(qp: u32, psn: u32, start: u64) -> ResponderFault {
        ResponderFault {
            delay: Delay::Fault,
            qp,
            psn,
            start,
            len: 4096,
            duration_ns: 5_000_000,
            ret: 1,
        }
    }

    fn retry(dest_qp: u32, psn: u32, next_psn: u32) -> RequesterRetry {
        RequesterRetry {
            qp: 17,
            dest_qp,
            psn,
            next_psn,
            retries: 1,
            exceeded: 0,
            rnr_naks: 0,
            rnr_exceeded: 0,
        }
    }

    #[test]
    fn windows_of_24_bit_psns_wrap() {
        assert!(psn_in_window(5, 5, 6));
        assert!(!psn_in_window(6, 5, 6));
        assert!(!psn_in_window(4, 5, 6));
        assert!(psn_in_window(PSN_MASK, PSN_MASK - 1, 2));
        assert!(psn_in_window(0, PSN_MASK - 1, 2));
        assert!(psn_in_window(1, PSN_MASK - 1, 2));
        assert!(!psn_in_window(2, PSN_MASK - 1, 2));
        // An empty window (nothing outstanding) holds nothing.
        assert!(!psn_in_window(7, 7, 7));
    }

    #[test]
    fn the_longest_fault_of_the_window_on_the_peer_qp_is_the_cause() {
        let long = |qp, psn, start| ResponderFault {
            duration_ns: 40_000_000,
            ..fault(qp, psn, start)
        };
        let faults = [
            fault(40, 104, 0x1000), // in the window, first, short
            long(41, 100, 0x2000),  // another QP
            long(40, 99, 0x3000),   // before the window: acknowledged already
            long(40, 110, 0x4000),  // the longest in the window
            long(40, 110, 0x5000),  // as long, same PSN, later: a re-executed READ
            long(40, 116, 0x6000),  // past the window: not sent yet
        ];
        let found = cause(&retry(40, 100, 116), &faults).expect("a cause");
        assert_eq!(found.start, 0x4000);
        // Of equally long ones, the lowest PSN: it held up the other.
        let equal = [fault(40, 108, 0x7000), fault(40, 102, 0x8000)];
        assert_eq!(cause(&retry(40, 100, 116), &equal), Some(&equal[1]));
        assert_eq!(cause(&retry(42, 100, 116), &faults), None);
        assert_eq!(cause(&retry(40, 111, 116), &faults), None);
    }

    #[test]
    fn a_fault_anywhere_in_the_window_comes_before_an_invalidation_wait() {
        let wait = ResponderFault {
            delay: Delay::InvalidationWait,
            ..fault(40, 100, 0x1000)
        };
        let faults = [wait, fault(40, 107, 0x2000)];
        let found = cause(&retry(40, 100, 116), &faults).expect("a cause");
        assert_eq!(found.start, 0x2000);
        assert_eq!(cause(&retry(40, 100, 104), &faults), Some(&wait));
    }

    #[test]
    fn a_window_across_the_wrap_finds_its_fault_past_zero() {
        let faults = [fault(9, 3, 0x1000), fault(9, PSN_MASK - 10, 0x2000)];
        let found = cause(&retry(9, PSN_MASK - 2, 8), &faults).expect("a cause");
        assert_eq!(found.start, 0x1000);
    }

    fn event(point: bpf_common::Point, ts_ns: u64, duration_ns: u64) -> OdpEvent {
        OdpEvent {
            ts_ns,
            duration_ns,
            point: point as u16,
            ..OdpEvent::default()
        }
    }

    /// rxe's copy of the packet at `psn` on QP 40 into umem 0xaa, [ts, ts + duration).
    fn copy(psn: u64, ts_ns: u64, duration_ns: u64) -> OdpEvent {
        OdpEvent {
            obj: 0x1,
            start: 0x7000,
            end: 0x8000,
            args: [0, 0xaa, 40, psn],
            ..event(bpf_common::Point::RxeMrCopy, ts_ns, duration_ns)
        }
    }

    fn invalidation(umem: u64, ts_ns: u64, duration_ns: u64) -> OdpEvent {
        OdpEvent {
            obj: umem,
            ..event(bpf_common::Point::RxeInvalidate, ts_ns, duration_ns)
        }
    }

    #[test]
    fn a_stalled_copy_is_a_cause_only_when_an_invalidation_of_its_mr_overlapped_it() {
        let mut evidence = Evidence::default();
        // Stalled, and an invalidation of the same umem that started later overlaps it.
        evidence.event(&copy(100, 1_000_000, 5_000_000));
        evidence.event(&invalidation(0xaa, 2_000_000, 1_000_000));
        // Stalled, overlapped only by another MR's invalidation.
        evidence.event(&invalidation(0xbb, 10_000_000, 1_000_000));
        evidence.event(&copy(101, 10_000_000, 5_000_000));
        // Quick: not a stall at all.
        evidence.event(&copy(102, 20_000_000, 10_000));
        let found: Vec<u32> = evidence.faults(40).map(|f| f.psn).collect();
        assert_eq!(found, vec![100]);
        let cause = evidence.cause(&retry(40, 100, 103)).expect("a cause");
        assert_eq!(cause.delay, Delay::InvalidationWait);
        assert_eq!(evidence.cause(&retry(40, 101, 103)), None);
    }

    #[test]
    fn events_it_does_not_concern_itself_with_leave_the_evidence_untouched() {
        for &point in bpf_common::Point::ALL {
            let mut evidence = Evidence::default();
            // Every argument set, long enough to be a stall: whatever the point could carry.
            let e = OdpEvent {
                obj: 0xaa,
                start: 0x7000,
                end: 0x8000,
                args: [40, 0xaa, 40, 100],
                aux: 0x0101_0101,
                ..event(point, 1_000_000, 5_000_000)
            };
            evidence.event(&e);
            let kept = !(evidence.faults.is_empty()
                && evidence.stalls.is_empty()
                && evidence.invalidations.is_empty()
                && evidence.retries.is_empty());
            assert!(
                Evidence::concerns(&e) || !kept,
                "{point:?} is kept but passed over unlocked"
            );
        }
    }

    #[test]
    fn a_report_sums_every_run_and_names_the_exhaustion() {
        let mut runs = vec![retry(40, 100, 116); 3];
        runs[2].retries = 0;
        runs[2].exceeded = 1;
        let faults = [fault(40, 101, 0x7000)];
        let report = RetryReport::build(&runs, |r| Ok(cause(r, &faults).copied())).expect("report");
        assert_eq!((report.retries, report.exceeded), (2, 1));
        assert_eq!(report.caused_by_odp_faults, 3);
        let last = report.exhaustion().expect("the exhaustion");
        assert_eq!(last.cause.map(|f| f.start), Some(0x7000));
    }
}
