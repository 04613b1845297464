//! The two ends of one event across hosts: a requester's transport retry (or RNR wait, or
//! retry exhaustion) and the responder's ODP fault that made it wait.
//!
//! The hosts' clocks are not compared. A retry names its QP's peer (`dest_qp`) and the send
//! window it had outstanding, `[psn, next_psn)`: packets sent and not acknowledged when the
//! ACK timer gave up. The responder's faults carry the QP and the PSN of the packet they served.
//! A fault on the peer QP at a PSN inside that window happened while the requester waited for
//! that packet's ACK (the responder answers a packet only after its fault is over), so it is a
//! cause of the wait; of several, the one at the lowest PSN held up every later packet, and it
//! is the one named. A retry with no such fault waited for something else (a lost packet, a
//! slow responder without faults) and is reported as not caused by ODP.

use bpf_common::{Arg, Kind, OdpEvent};
use serde::Serialize;

/// PSNs are 24 bits and wrap.
const PSN_MASK: u32 = 0x00ff_ffff;

/// Whether `psn` lies in the window `[lo, hi)` of 24-bit sequence numbers.
pub fn psn_in_window(psn: u32, lo: u32, hi: u32) -> bool {
    let width = hi.wrapping_sub(lo) & PSN_MASK;
    (psn.wrapping_sub(lo) & PSN_MASK) < width
}

/// A device fault the responder took while answering a peer's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResponderFault {
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
    /// A fault event taken inside the responder (the probes tag those with their QP).
    pub fn from_event(e: &OdpEvent) -> Option<ResponderFault> {
        if e.point()?.kind() != Kind::Fault {
            return None;
        }
        let qp = u32::try_from(e.arg(Arg::ResponderQp)?).ok()?;
        if qp == 0 {
            return None;
        }
        Some(ResponderFault {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// The fault, among the responder's in the order it took them, that held up a retry's window:
/// on the peer QP, at the lowest PSN from the window's start; the first such at that PSN.
pub fn cause<'a>(
    retry: &RequesterRetry,
    faults: impl IntoIterator<Item = &'a ResponderFault>,
) -> Option<&'a ResponderFault> {
    let mut best: Option<(u32, &ResponderFault)> = None;
    for fault in faults {
        if fault.qp != retry.dest_qp || !psn_in_window(fault.psn, retry.psn, retry.next_psn) {
            continue;
        }
        let offset = fault.psn.wrapping_sub(retry.psn) & PSN_MASK;
        if best.is_none_or(|(b, _)| offset < b) {
            best = Some((offset, fault));
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

impl std::fmt::Display for ResponderFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the peer's ODP fault on its QP {} at PSN {} over [{:#x}+{:#x}), {} ({})",
            self.qp,
            self.psn,
            self.start,
            self.len,
            crate::analysis::fmt_ns(self.duration_ns),
            if self.ret < 0 {
                format!("failed, ret {}", self.ret)
            } else {
                format!("{} pages", self.ret)
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(qp: u32, psn: u32, start: u64) -> ResponderFault {
        ResponderFault {
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
    fn the_fault_at_the_lowest_psn_of_the_window_on_the_peer_qp_is_the_cause() {
        let faults = [
            fault(40, 110, 0x1000), // in the window, later PSN
            fault(41, 100, 0x2000), // another QP
            fault(40, 99, 0x3000),  // before the window: acknowledged already
            fault(40, 104, 0x4000), // the first in the window
            fault(40, 104, 0x5000), // same PSN, later: a re-executed READ
            fault(40, 116, 0x6000), // past the window: not sent yet
        ];
        let found = cause(&retry(40, 100, 116), &faults).expect("a cause");
        assert_eq!(found.start, 0x4000);
        assert_eq!(cause(&retry(42, 100, 116), &faults), None);
        assert_eq!(cause(&retry(40, 111, 116), &faults), None);
    }

    #[test]
    fn a_window_across_the_wrap_finds_its_fault_past_zero() {
        let faults = [fault(9, 3, 0x1000), fault(9, PSN_MASK - 10, 0x2000)];
        let found = cause(&retry(9, PSN_MASK - 2, 8), &faults).expect("a cause");
        assert_eq!(found.start, 0x1000);
    }

    #[test]
    fn a_report_sums_every_run_and_names_the_exhaustion() {
        let mut runs = vec![retry(40, 100, 116); 3];
        runs[2].retries = 0;
        runs[2].exceeded = 1;
        let faults = [fault(40, 101, 0x7000)];
        let report =
            RetryReport::build(&runs, |r| Ok(cause(r, &faults).copied())).expect("report");
        assert_eq!((report.retries, report.exceeded), (2, 1));
        assert_eq!(report.caused_by_odp_faults, 3);
        let last = report.exhaustion().expect("the exhaustion");
        assert_eq!(last.cause.map(|f| f.start), Some(0x7000));
    }
}
