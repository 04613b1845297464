//! A scenario against a peer (`stress --peer`): the peer (`odp-ctl serve`) owns the region the
//! scenario's [[mr]] describes and runs its storm (its one action); this side's traffic workers
//! take turns on one connection, each turn a pass over the worker's range in its message size
//! with a pattern of its own, checked where it landed (WRITE and SEND by the peer, READ here). A
//! page a DONTNEED or FREE storm dropped while a pass's data landed may read as zeros;
//! every other byte must match.
//! With `[peer] cold_pages`, the peer leaves that share of the pages under each WRITE and SEND
//! pass never touched before it, so the device faults them in as the data lands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::scenario::{TrafficOp, Window};
use super::{Progress, Scenario, MISMATCHES_KEPT};
use crate::error::{Error, Result};
use crate::peer::{Offer, Passes, RemoteStorm};
use crate::traffic::Mismatch;
use crate::verbs::{MemoryRegion, Opcode, PeerRc};

/// What one traffic worker's passes came to.
#[derive(Debug, Clone, Serialize)]
pub struct PeerWorker {
    pub worker: String,
    pub op: TrafficOp,
    pub range: Window,
    pub message: usize,
    pub passes: u64,
    pub messages: u64,
    pub bytes: u64,
    /// Time spent moving data (the control messages around each pass not counted).
    pub elapsed_us: u128,
    /// Pages the peer's storm dropped after a pass's data landed, found zeroed (legitimate).
    pub zeroed_pages: u64,
    /// Pages the peer left never touched before a pass, for the device to fault in.
    pub cold_pages: u64,
    /// Passes that found wrong bytes, and the first few of them.
    pub mismatched_passes: u64,
    pub mismatches: Vec<PassMismatch>,
}

/// The first wrong byte of a pass, and how many were wrong.
#[derive(Debug, Clone, Serialize)]
pub struct PassMismatch {
    pub pass: u64,
    #[serde(flatten)]
    pub mismatch: Mismatch,
}

/// A scenario's run against a peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRun {
    pub scenario: String,
    pub seed: u64,
    pub duration_s: f64,
    pub stopped_early: bool,
    /// The storm the peer ran on its region, if the scenario has one.
    pub storm: Option<RemoteStorm>,
    pub late_receives_ms: Option<u128>,
    /// The share of the pages under each WRITE and SEND pass left cold.
    pub cold_pages: Option<f64>,
    pub workers: Vec<PeerWorker>,
}

impl PeerRun {
    pub fn mismatched_passes(&self) -> u64 {
        self.workers.iter().map(|w| w.mismatched_passes).sum()
    }
}

/// Runs `scenario` (checked with `Scenario::parse_across_hosts`) over `conn` until its duration
/// has passed or `stop` is set, between `local` (this side's MR, as large as the scenario's)
/// and the peer's region; `progress` is called about once a second. The workers take turns in
/// rounds, and the round in progress when the time is up is finished: every worker has as many
/// passes as every other, at least one.
pub fn run_against_peer(
    conn: &mut PeerRc,
    local: &MemoryRegion,
    offer: &Offer,
    scenario: &Scenario,
    stop: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<PeerRun> {
    let size = scenario.mrs.first().map_or(local.len(), |m| m.size.0);
    let storm = scenario.actions.first().map(|a| RemoteStorm {
        action: a.action,
        rate: a.rate.round().max(1.0) as u64,
        length: a.length.0,
    });
    let late_receives = scenario.peer.late_receives.map(|s| s.0);
    let cold_pages = scenario.peer.cold_pages;
    let passes = Passes::new(conn, local, offer, storm, late_receives, cold_pages)?;
    let mut workers: Vec<PeerWorker> = scenario
        .traffic
        .iter()
        .enumerate()
        .map(|(i, t)| PeerWorker {
            worker: t
                .name
                .clone()
                .unwrap_or_else(|| format!("traffic#{}", i + 1)),
            op: t.op,
            range: t.range.unwrap_or(Window {
                offset: 0,
                len: size,
            }),
            message: t.message.0,
            passes: 0,
            messages: 0,
            bytes: 0,
            elapsed_us: 0,
            zeroed_pages: 0,
            cold_pages: 0,
            mismatched_passes: 0,
            mismatches: Vec::new(),
        })
        .collect();
    let total = scenario.total_duration();
    let started = Instant::now();
    let mut next_progress = started + Duration::from_secs(1);
    let mut pass = 0u64;
    let mut totals = Progress {
        total,
        ..Progress::default()
    };
    'run: while started.elapsed() < total {
        for w in &mut workers {
            if stop.load(Ordering::Relaxed) {
                break 'run;
            }
            pass += 1;
            // Each pass its own pattern: bytes left from an earlier pass do not pass for new.
            let seed = scenario.seed.wrapping_mul(0x9e37_79b9).wrapping_add(pass);
            let op = match w.op {
                TrafficOp::Write => Opcode::Write,
                TrafficOp::Read => Opcode::Read,
                TrafficOp::Send => Opcode::Send,
                TrafficOp::FetchAdd => {
                    return Err(Error::invalid("fetch-add runs on one host only so far"))
                }
            };
            let result = passes.run(conn, op, (w.range.offset, w.range.len), w.message, seed)?;
            w.passes += 1;
            w.messages += result.messages as u64;
            w.bytes += result.bytes as u64;
            w.elapsed_us += result.elapsed_us;
            w.zeroed_pages += result.zeroed_pages.unwrap_or(0);
            w.cold_pages += result.cold_pages.unwrap_or(0);
            if let Some(mismatch) = result.mismatch {
                w.mismatched_passes += 1;
                totals.mismatches += 1;
                if w.mismatches.len() < MISMATCHES_KEPT {
                    w.mismatches.push(PassMismatch { pass, mismatch });
                }
            }
            totals.ops += result.messages as u64;
            totals.bytes += result.bytes as u64;
            if Instant::now() >= next_progress {
                totals.elapsed = started.elapsed();
                progress(&totals);
                next_progress = Instant::now() + Duration::from_secs(1);
            }
        }
    }
    Ok(PeerRun {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        duration_s: started.elapsed().as_secs_f64(),
        stopped_early: stop.load(Ordering::Relaxed),
        storm,
        late_receives_ms: late_receives.map(|d| d.as_millis()),
        cold_pages,
        workers,
    })
}
