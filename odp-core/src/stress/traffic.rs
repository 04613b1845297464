//! RDMA WRITE, READ and SEND workers: each keeps a lane of transfers in flight on its own loopback
//! QP and checks every byte the device moved against the pattern.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::{Mismatch, TrafficStats, WcError};
use super::scenario::{TrafficSpec, Window};
use super::{
    pattern, sleep_until, Counters, RunControl, Shared, Target, TrafficOp, ERRORS_KEPT,
    MISMATCHES_KEPT,
};
use crate::error::{Error, Result};
use crate::memory::{Backing, Mapping};
use crate::trace::monotonic_ns;
use crate::verbs::{Access, LoopbackConfig, LoopbackRc, MemoryRegion, Opcode};

/// One operation in flight.
pub(super) struct InFlight {
    wr_id: u64,
    /// The RECV's id for SEND (its completion is the one that says the data landed).
    recv_id: Option<u64>,
    slot: usize,
    chunk: usize,
    generation: u32,
    seqs: Vec<u32>,
    posted_ns: u64,
}

/// What every traffic worker has: its QP pair, its pace, and a way back after an error
/// completion.
pub(super) struct Lane<'a> {
    pub(super) lb: LoopbackRc,
    pub(super) pd: &'a Arc<crate::verbs::ProtectionDomain>,
    pub(super) loopback: &'a LoopbackConfig,
    pub(super) interval: Option<Duration>,
    pub(super) next_post: Instant,
}

impl<'a> Lane<'a> {
    pub(super) fn new(
        spec: &TrafficSpec,
        pd: &'a Arc<crate::verbs::ProtectionDomain>,
        loopback: &'a LoopbackConfig,
    ) -> Result<Self> {
        Ok(Lane {
            lb: LoopbackRc::new(pd, loopback)?,
            pd,
            loopback,
            interval: (spec.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / spec.rate)),
            next_post: Instant::now(),
        })
    }

    /// The rate allows another post now.
    pub(super) fn due(&self) -> bool {
        self.interval
            .is_none_or(|_| Instant::now() >= self.next_post)
    }

    pub(super) fn posted(&mut self) {
        if let Some(i) = self.interval {
            self.next_post += i;
            // Behind by more than a second: do not try to catch up in a burst.
            if self.next_post + Duration::from_secs(1) < Instant::now() {
                self.next_post = Instant::now();
            }
        }
    }

    /// Nothing in flight: true when the worker is done, else it waits for the next post time
    /// (or for a phase that wants it).
    pub(super) fn idle(&self, active: bool, stopping: bool, control: &RunControl) -> bool {
        if stopping {
            return true;
        }
        if active {
            sleep_until(self.next_post, control);
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// An error completion: counted and kept, then a new QP pair, since the old one is in the
    /// error state and flushes everything else in flight.
    pub(super) fn recover(
        &mut self,
        what: WcError,
        stats: &mut TrafficStats,
        counters: &Counters,
        wc_errors: &mut Vec<WcError>,
    ) -> Result<()> {
        stats.wc_errors += 1;
        counters.wc_errors.fetch_add(1, Ordering::Relaxed);
        if wc_errors.len() < ERRORS_KEPT {
            wc_errors.push(what);
        }
        self.lb = LoopbackRc::new(self.pd, self.loopback)?;
        stats.qp_rebuilds += 1;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn traffic_worker(
    spec: &TrafficSpec,
    target: &Target,
    pd: &Arc<crate::verbs::ProtectionDomain>,
    loopback: &LoopbackConfig,
    shared: &Shared,
    stats: &mut TrafficStats,
    mismatches: &mut Vec<Mismatch>,
    wc_errors: &mut Vec<WcError>,
) -> Result<()> {
    let page = shared.page;
    let msg = spec.message.0;
    let depth = spec.depth as usize;
    let window = spec.range.unwrap_or(Window {
        offset: 0,
        len: target.mapping.len(),
    });
    let chunks = window.len / msg;
    let staging_map = Arc::new(Mapping::new(depth * msg, Backing::Anonymous)?);
    let staging = MemoryRegion::register(pd, &staging_map, 0, depth * msg, Access::FULL)?;
    let mut lane = Lane::new(spec, pd, loopback)?;
    let mut in_flight: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
    let mut free_slots: Vec<usize> = (0..depth).rev().collect();
    let mut next_chunk = 0usize;
    let mut generation = 0u32;
    let mut buf = vec![0u8; msg];
    let poison = vec![0xeeu8; msg];
    let name = stats.worker.clone();

    loop {
        let stopping = shared.control.stopping();
        let active = !stopping && shared.control.active(spec.name.as_deref());
        // Post while there is room, the phase allows it and the rate says so.
        while active && !free_slots.is_empty() && lane.due() {
            let Some(slot) = free_slots.pop() else { break };
            let lb = &mut lane.lb;
            let chunk = window.offset + (next_chunk % chunks) * msg;
            next_chunk += 1;
            generation = generation % 0xff_fffe + 1;
            let slot_off = slot * msg;
            let remote_off = target.base + chunk;
            pattern::fill(&mut buf, target.number, generation, chunk);
            let posted_ns = monotonic_ns();
            let (wr_id, recv_id, seqs) = match spec.op {
                TrafficOp::Write => {
                    staging_map.write(slot_off, &buf)?;
                    let seqs = target.seqs(chunk, msg, page);
                    let id = lb.post_rdma(
                        Opcode::Write,
                        &staging,
                        slot_off,
                        &target.mr,
                        remote_off,
                        msg,
                    )?;
                    (id, None, seqs)
                }
                TrafficOp::Read => {
                    staging_map.write(slot_off, &poison)?;
                    let seqs = {
                        let _writing = target
                            .cpu_writes
                            .read()
                            .map_err(|_| Error::invalid("a worker panicked"))?;
                        let seqs = target.seqs(chunk, msg, page);
                        target.mapping.write(chunk, &buf)?;
                        seqs
                    };
                    let id = lb.post_rdma(
                        Opcode::Read,
                        &staging,
                        slot_off,
                        &target.mr,
                        remote_off,
                        msg,
                    )?;
                    (id, None, seqs)
                }
                TrafficOp::FetchAdd => {
                    return Err(Error::invalid("fetch-add runs in the atomic worker"))
                }
                TrafficOp::Send => {
                    staging_map.write(slot_off, &buf)?;
                    let seqs = target.seqs(chunk, msg, page);
                    let recv = lb.post_recv(&target.mr, remote_off, msg)?;
                    let send = lb.post_send(&staging, slot_off, msg)?;
                    (send, Some(recv), seqs)
                }
            };
            in_flight.push_back(InFlight {
                wr_id,
                recv_id,
                slot,
                chunk,
                generation,
                seqs,
                posted_ns,
            });
            lane.posted();
        }
        let Some(op) = in_flight.pop_front() else {
            if lane.idle(active, stopping, &shared.control) {
                return Ok(());
            }
            continue;
        };
        // RC completes in order: the oldest finishes first.
        let mut done = lane.lb.wait(op.wr_id);
        if let (Ok(_), Some(recv)) = (&done, op.recv_id) {
            done = lane.lb.wait(recv);
        }
        match done {
            Ok(_) => {}
            Err(e @ (Error::Completion { .. } | Error::CompletionTimeout { .. })) => {
                let message = format!(
                    "{name}: {} of {}+{:#x} (generation {}): {e}",
                    spec.op.name(),
                    target.name,
                    op.chunk,
                    op.generation
                );
                let what =
                    WcError::now(&name, spec.op, target, op.chunk, msg, op.posted_ns, message);
                lane.recover(what, stats, &shared.counters, wc_errors)?;
                in_flight.clear();
                free_slots = (0..depth).rev().collect();
                continue;
            }
            Err(e) => return Err(e),
        }
        // The bytes to check: the ODP MR for writes and sends, the staging buffer for reads.
        match spec.op {
            TrafficOp::Write | TrafficOp::Send => target.mapping.read(op.chunk, &mut buf)?,
            TrafficOp::Read | TrafficOp::FetchAdd => staging_map.read(op.slot * msg, &mut buf)?,
        }
        let checked_ns = monotonic_ns();
        let pages = judge_transfer(
            &buf, &op, spec, target, shared, &name, checked_ns, stats, mismatches,
        );
        stats.pages_checked += pages;
        stats.ops += 1;
        stats.bytes += msg as u64;
        shared.counters.ops.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .bytes
            .fetch_add(msg as u64, Ordering::Relaxed);
        free_slots.push(op.slot);
    }
}

/// Judges the bytes of one finished transfer page by page: exact, or zero or torn where a
/// content-destroying action moved the page's sequence meanwhile (legitimate); anything else
/// is a mismatch, counted, the first few kept. Returns the pages checked.
#[allow(clippy::too_many_arguments)]
fn judge_transfer(
    buf: &[u8],
    op: &InFlight,
    spec: &TrafficSpec,
    target: &Target,
    shared: &Shared,
    name: &str,
    checked_ns: u64,
    stats: &mut TrafficStats,
    mismatches: &mut Vec<Mismatch>,
) -> u64 {
    let page = shared.page;
    let after = target.seqs(op.chunk, buf.len(), page);
    let checks = pattern::check_pages(buf, target.number, op.generation, op.chunk, page);
    for (p, check) in checks.iter().enumerate() {
        // Only content-destroying actions move the numbers, so a moved one allows zeros.
        let moved = op.seqs[p] != after[p] || op.seqs[p] % 2 == 1;
        let bad = match *check {
            pattern::PageCheck::Exact => None,
            pattern::PageCheck::Zero if moved => {
                stats.pages_zeroed_by_actions += 1;
                None
            }
            pattern::PageCheck::Torn { .. } if moved => {
                stats.pages_torn_by_actions += 1;
                None
            }
            pattern::PageCheck::Torn { zero_bytes } => Some((
                op.chunk + p * page,
                zero_bytes,
                pattern::word(target.number, op.generation, op.chunk + p * page),
                0,
            )),
            pattern::PageCheck::Zero => Some((
                op.chunk + p * page,
                page,
                pattern::word(target.number, op.generation, op.chunk + p * page),
                0,
            )),
            pattern::PageCheck::Wrong {
                first_bad,
                bad_bytes,
                expected,
                actual,
            } => Some((first_bad, bad_bytes, expected, actual)),
        };
        if let Some((first_bad, bad_bytes, expected, actual)) = bad {
            stats.mismatches += 1;
            shared.counters.mismatches.fetch_add(1, Ordering::Relaxed);
            if mismatches.len() < MISMATCHES_KEPT {
                mismatches.push(Mismatch {
                    worker: name.to_string(),
                    op: spec.op,
                    mr: target.name.clone(),
                    page_offset: op.chunk + p * page,
                    first_bad,
                    bad_bytes,
                    expected: pattern::decode(expected),
                    actual: pattern::decode(actual),
                    expected_raw: expected,
                    actual_raw: actual,
                    generation: op.generation,
                    posted_ns: op.posted_ns,
                    checked_ns,
                    page_was_invalidated: moved,
                    nearby_actions: Vec::new(),
                });
            }
        }
    }
    checks.len() as u64
}
