//! Fetch-and-add workers: each word counts its own adds, so a lost or doubled atomic shows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::report::{Mismatch, TrafficStats, WcError};
use super::scenario::{TrafficSpec, Window};
use super::traffic::Lane;
use super::{pattern, Shared, Target, TrafficOp, MISMATCHES_KEPT};
use crate::error::{Error, Result};
use crate::memory::{Backing, Mapping};
use crate::trace::monotonic_ns;
use crate::verbs::{Access, LoopbackConfig, MemoryRegion};

/// One fetch-and-add in flight.
pub(super) struct AtomicInFlight {
    wr_id: u64,
    slot: usize,
    page: usize,
    /// The page's destroy sequence number when the previous operation on it was posted: drops
    /// after that one landed reset the count, and it landed after that post.
    seq_before: u32,
    posted_ns: u64,
}

/// Fetch-and-add of 1 on the first word of each page of the range in turn. The old value that
/// comes back must be the count of earlier adds to that word, or 0 where a content-destroying
/// action could have dropped the page since the previous add.
#[allow(clippy::too_many_arguments)]
pub(super) fn atomic_worker(
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
    let depth = spec.depth as usize;
    let window = spec.range.unwrap_or(Window {
        offset: 0,
        len: target.mapping.len(),
    });
    let pages = window.len / page;
    let staging_map = Arc::new(Mapping::new(page, Backing::Anonymous)?);
    let staging = MemoryRegion::register(pd, &staging_map, 0, page, Access::FULL)?;
    let mut lane = Lane::new(spec, pd, loopback)?;
    let seq = |p: usize| target.seqs(window.offset + p * page, page, page)[0];
    // Per page: the count the word should hold (None after an error left it unknown).
    let mut expected: Vec<Option<u64>> = vec![Some(0); pages];
    let mut seq_at_last_post: Vec<u32> = (0..pages).map(seq).collect();
    let mut in_flight: std::collections::VecDeque<AtomicInFlight> = Default::default();
    let mut free_slots: Vec<usize> = (0..depth).rev().collect();
    let mut next_page = 0usize;
    let name = stats.worker.clone();
    loop {
        let stopping = shared.control.stopping();
        let active = !stopping && shared.control.active(spec.name.as_deref());
        while active && !free_slots.is_empty() && lane.due() {
            let Some(slot) = free_slots.pop() else { break };
            let p = next_page % pages;
            next_page += 1;
            let seq_before = std::mem::replace(&mut seq_at_last_post[p], seq(p));
            staging_map.write(slot * 8, &[0xee; 8])?;
            let wr_id = lane.lb.post_fetch_add(
                &staging,
                slot * 8,
                &target.mr,
                target.base + window.offset + p * page,
                1,
            )?;
            in_flight.push_back(AtomicInFlight {
                wr_id,
                slot,
                page: p,
                seq_before,
                posted_ns: monotonic_ns(),
            });
            lane.posted();
        }
        let Some(op) = in_flight.pop_front() else {
            if lane.idle(active, stopping, &shared.control) {
                return Ok(());
            }
            continue;
        };
        match lane.lb.wait(op.wr_id) {
            Ok(_) => {}
            Err(e @ (Error::Completion { .. } | Error::CompletionTimeout { .. })) => {
                let offset = window.offset + op.page * page;
                let message = format!("{name}: fetch-add on {}+{offset:#x}: {e}", target.name);
                let what = WcError::now(
                    &name,
                    TrafficOp::FetchAdd,
                    target,
                    offset,
                    8,
                    op.posted_ns,
                    message,
                );
                lane.recover(what, stats, &shared.counters, wc_errors)?;
                // Whether the flushed adds happened is unknown: those words resynchronise.
                expected[op.page] = None;
                for other in in_flight.drain(..) {
                    expected[other.page] = None;
                }
                free_slots = (0..depth).rev().collect();
                continue;
            }
            Err(e) => return Err(e),
        }
        let mut word = [0u8; 8];
        staging_map.read(op.slot * 8, &mut word)?;
        let old = u64::from_le_bytes(word);
        let now = seq(op.page);
        let moved = op.seq_before != now || op.seq_before % 2 == 1 || now % 2 == 1;
        let offset = window.offset + op.page * page;
        match expected[op.page] {
            Some(e) if old == e => {}
            Some(e) if old == 0 && moved => {
                stats.pages_zeroed_by_actions += u64::from(e != 0);
            }
            Some(e) => {
                stats.mismatches += 1;
                shared.counters.mismatches.fetch_add(1, Ordering::Relaxed);
                if mismatches.len() < MISMATCHES_KEPT {
                    mismatches.push(Mismatch {
                        worker: name.clone(),
                        op: spec.op,
                        mr: target.name.clone(),
                        page_offset: offset,
                        first_bad: offset,
                        bad_bytes: 8,
                        expected: pattern::decode(e),
                        actual: pattern::decode(old),
                        expected_raw: e,
                        actual_raw: old,
                        generation: 0,
                        posted_ns: op.posted_ns,
                        checked_ns: monotonic_ns(),
                        page_was_invalidated: moved,
                        nearby_actions: Vec::new(),
                    });
                }
            }
            None => {}
        }
        expected[op.page] = Some(old.wrapping_add(1));
        stats.pages_checked += 1;
        stats.ops += 1;
        stats.bytes += 8;
        shared.counters.ops.fetch_add(1, Ordering::Relaxed);
        shared.counters.bytes.fetch_add(8, Ordering::Relaxed);
        free_slots.push(op.slot);
    }
}
