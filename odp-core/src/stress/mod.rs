//! The stress engine: RDMA traffic over ODP MRs while other threads (and forked children) change
//! the CPU side of the same memory, with every byte the device moved checked afterwards.
//!
//! Verification has to tell a bug from the expected: a page dropped by MADV_DONTNEED after the
//! device wrote it legitimately reads back as zero. So each MR keeps a sequence number per page,
//! bumped before and after every action that destroys contents; a transfer whose pages' numbers
//! did not move between its start and its check must be exact, and a page whose number moved may
//! hold expected words and zero words only (dropped before, after, or while it was written).
//! Anything else (a stale generation, another offset's data, a zero word in a page no action
//! touched) is a mismatch.

pub mod pattern;
pub mod scenario;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::memory::{page_size, Backing, KsmDaemon, Mapping};
use crate::trace::monotonic_ns;
use crate::verbs::{Access, Advice, Context, LoopbackConfig, LoopbackRc, MemoryRegion, Opcode};
pub use scenario::{Action, Scenario, TrafficOp, DEFAULT_SCENARIO};
use scenario::{InvalidateSpec, PrefetchSpec, TrafficSpec, Window};

/// Kept in the report; the counts are always complete.
const MISMATCHES_KEPT: usize = 20;
const ERRORS_KEPT: usize = 20;
/// Actions this close to a mismatched transfer are listed with it.
const NEARBY_NS: u64 = 2_000_000;

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
    fn now(
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

#[derive(Debug, Clone, Serialize)]
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

/// Running totals for a progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub elapsed: Duration,
    pub total: Duration,
    pub phase: usize,
    pub ops: u64,
    pub bytes: u64,
    pub actions: u64,
    pub mismatches: u64,
    pub wc_errors: u64,
}

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    bytes: AtomicU64,
    actions: AtomicU64,
    mismatches: AtomicU64,
    wc_errors: AtomicU64,
}

/// Whether an action leaves the pages it covered reading as zero.
fn destroys_contents(action: Action, backing: &Backing) -> bool {
    let private = matches!(
        backing,
        Backing::Anonymous | Backing::Thp | Backing::Hugetlb
    );
    match action {
        Action::Dontneed | Action::Free | Action::Mremap | Action::Ksm => private,
        Action::Remap => private || *backing == Backing::Shared,
        Action::Pageout
        | Action::Cold
        | Action::Mprotect
        | Action::Fork
        | Action::Collapse
        | Action::Split
        | Action::Migrate => false,
    }
}

/// An ODP MR with what the workers share about it.
struct Target {
    name: String,
    number: u8,
    mapping: Arc<Mapping>,
    mr: MemoryRegion,
    /// Offset of the mapping inside the MR (non-zero for implicit MRs, whose offsets are VAs).
    base: usize,
    /// Per page: bumped before and after every content-destroying action on it.
    destroy_seq: Vec<AtomicU32>,
    /// CPU writes into the MR hold it shared; mprotect's read-only window holds it exclusively.
    cpu_writes: RwLock<()>,
}

impl Target {
    fn seqs(&self, offset: usize, len: usize, page: usize) -> Vec<u32> {
        (offset / page..(offset + len).div_ceil(page))
            .map(|p| self.destroy_seq[p].load(Ordering::Acquire))
            .collect()
    }

    /// Holds CPU writes into the MR off until the guard drops.
    fn exclusive_cpu_writes(&self) -> Result<std::sync::RwLockWriteGuard<'_, ()>> {
        self.cpu_writes
            .write()
            .map_err(|_| Error::invalid("a worker panicked"))
    }

    fn bump(&self, offset: usize, len: usize, page: usize) {
        for p in offset / page..(offset + len).div_ceil(page) {
            self.destroy_seq[p].fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Where the run is: which phase, and whether to stop.
struct Clock<'a> {
    phases: &'a [scenario::PhaseSpec],
    phase: AtomicUsize,
    stop: &'a AtomicBool,
    abort: AtomicBool,
}

impl Clock<'_> {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.abort.load(Ordering::Relaxed)
    }

    fn active(&self, name: Option<&str>) -> bool {
        let Some(phase) = self.phases.get(self.phase.load(Ordering::Relaxed)) else {
            return true;
        };
        match (&phase.workers, name) {
            (None, _) => true,
            (Some(list), Some(n)) => list.iter().any(|w| w == n),
            (Some(_), None) => false,
        }
    }
}

/// Sleeps until `when` in slices, so a stop is noticed quickly.
fn sleep_until(when: Instant, clock: &Clock) {
    while !clock.stopping() {
        let left = when.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

struct Shared<'a> {
    clock: Clock<'a>,
    counters: Counters,
    log: Mutex<Vec<ActionRecord>>,
    page: usize,
}

/// Runs a scenario on `device` (or the scenario's, or the first) until it ends or `stop` is
/// raised; `progress` is called about once a second from the calling thread.
pub fn run(
    scenario: &Scenario,
    stop: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<Report> {
    let ctx = Context::open(scenario.device.name.as_deref())?;
    if scenario.traffic.iter().any(|t| t.op == TrafficOp::FetchAdd)
        && !ctx.attributes().odp.rc.atomic
    {
        return Err(Error::os(
            "fetch-add traffic: the device does not advertise RC ODP atomics",
            libc::EOPNOTSUPP,
        ));
    }
    let pd = ctx.alloc_pd()?;
    let page = page_size();
    let mut targets = Vec::new();
    for (i, spec) in scenario.mrs.iter().enumerate() {
        let backing = Backing::parse(&spec.backing, None)?;
        let mapping = Arc::new(Mapping::new(spec.size.0, backing)?);
        if spec.populate {
            mapping.touch();
        }
        let access = Access::parse(&spec.access)? | Access::ON_DEMAND;
        let (mr, base) = if spec.implicit {
            let mr = MemoryRegion::register_implicit(&pd, access)?;
            (mr, mapping.addr() as usize)
        } else {
            (
                MemoryRegion::register(&pd, &mapping, 0, spec.size.0, access)?,
                0,
            )
        };
        targets.push(Target {
            name: spec.name.clone(),
            number: u8::try_from(i + 1)
                .map_err(|_| Error::invalid("at most 255 MRs per scenario"))?,
            destroy_seq: (0..spec.size.0 / page).map(|_| AtomicU32::new(0)).collect(),
            mapping,
            mr,
            base,
            cpu_writes: RwLock::new(()),
        });
    }
    let loopback = LoopbackConfig {
        port: scenario.device.port,
        gid_index: scenario.device.gid_index,
        path_mtu: scenario.device.mtu,
        depth: scenario.device.qp_depth,
        ..LoopbackConfig::default()
    };
    // Fail on a bad port or GID before any thread starts.
    drop(LoopbackRc::new(&pd, &loopback)?);
    let _ksmd = if scenario
        .invalidations
        .iter()
        .any(|a| a.action == Action::Ksm)
    {
        Some(KsmDaemon::start()?)
    } else {
        None
    };

    let shared = Shared {
        clock: Clock {
            phases: &scenario.phases,
            phase: AtomicUsize::new(0),
            stop,
            abort: AtomicBool::new(false),
        },
        counters: Counters::default(),
        log: Mutex::new(Vec::new()),
        page,
    };
    let total = scenario.total_duration();
    let started = Instant::now();
    let worker_errors = Mutex::new(Vec::new());
    let fail = |who: String, e: Error| {
        if let Ok(mut errors) = worker_errors.lock() {
            errors.push(format!("{who}: {e}"));
        }
        shared.clock.abort.store(true, Ordering::Relaxed);
    };

    let (traffic, prefetch) = std::thread::scope(|scope| {
        let traffic: Vec<_> = scenario
            .traffic
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let target = &targets[scenario.mr_index(&spec.mr).unwrap_or(0)];
                let (shared, pd, loopback, fail) = (&shared, &pd, &loopback, &fail);
                let name = spec
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("traffic#{}", i + 1));
                scope.spawn(move || {
                    let mut stats = TrafficStats {
                        worker: name.clone(),
                        op: Some(spec.op),
                        mr: target.name.clone(),
                        ..TrafficStats::default()
                    };
                    let mut mismatches = Vec::new();
                    let mut wc_errors = Vec::new();
                    let worker = if spec.op == TrafficOp::FetchAdd {
                        atomic_worker
                    } else {
                        traffic_worker
                    };
                    let result = worker(
                        spec,
                        target,
                        pd,
                        loopback,
                        shared,
                        &mut stats,
                        &mut mismatches,
                        &mut wc_errors,
                    );
                    if let Err(e) = result {
                        fail(name, e);
                    }
                    (stats, mismatches, wc_errors)
                })
            })
            .collect();
        let actions: Vec<_> = scenario
            .invalidations
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let target = &targets[scenario.mr_index(&spec.mr).unwrap_or(0)];
                let (shared, fail) = (&shared, &fail);
                let seed = scenario.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1));
                scope.spawn(move || {
                    let name = spec
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{}#{}", spec.action.name(), i + 1));
                    if let Err(e) = action_worker(spec, &name, target, shared, seed) {
                        fail(name, e);
                    }
                })
            })
            .collect();
        let prefetch: Vec<_> = scenario
            .prefetch
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let target = &targets[scenario.mr_index(&spec.mr).unwrap_or(0)];
                let (shared, fail) = (&shared, &fail);
                let seed = scenario.seed ^ (0xd1b5_4a32_d192_ed03u64.wrapping_mul(i as u64 + 1));
                scope.spawn(move || {
                    let name = spec
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("prefetch#{}", i + 1));
                    let mut stats = PrefetchStats {
                        worker: name.clone(),
                        ..PrefetchStats::default()
                    };
                    if let Err(e) = prefetch_worker(spec, target, shared, seed, &mut stats) {
                        fail(name, e);
                    }
                    stats
                })
            })
            .collect();

        // The conductor: phases, the end, and progress.
        let phase_ends: Vec<Duration> = scenario
            .phases
            .iter()
            .scan(Duration::ZERO, |t, p| {
                *t += p.duration.0;
                Some(*t)
            })
            .collect();
        let mut next_progress = started + Duration::from_secs(1);
        loop {
            let elapsed = started.elapsed();
            if elapsed >= total || shared.clock.stopping() {
                break;
            }
            let phase = phase_ends.iter().take_while(|end| elapsed >= **end).count();
            shared.clock.phase.store(phase, Ordering::Relaxed);
            if Instant::now() >= next_progress {
                let c = &shared.counters;
                progress(&Progress {
                    elapsed,
                    total,
                    phase,
                    ops: c.ops.load(Ordering::Relaxed),
                    bytes: c.bytes.load(Ordering::Relaxed),
                    actions: c.actions.load(Ordering::Relaxed),
                    mismatches: c.mismatches.load(Ordering::Relaxed),
                    wc_errors: c.wc_errors.load(Ordering::Relaxed),
                });
                next_progress += Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        shared.clock.abort.store(true, Ordering::Relaxed);
        let traffic: Vec<_> = traffic
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        for h in actions {
            let _ = h.join();
        }
        let prefetch: Vec<_> = prefetch
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        (traffic, prefetch)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let log = shared.log.into_inner().unwrap_or_default();
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
        s.per_s = s.done as f64 / elapsed.max(1e-9);
    }
    let mut report = Report {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        device: ctx.name().to_string(),
        duration_s: elapsed,
        stopped_early: stop.load(Ordering::Relaxed),
        mrs: targets
            .iter()
            .zip(&scenario.mrs)
            .map(|(t, spec)| MrInfo {
                name: t.name.clone(),
                addr: t.mapping.addr(),
                len: t.mapping.len(),
                backing: t.mapping.backing().name(),
                implicit: spec.implicit,
                lkey: t.mr.lkey(),
                rkey: t.mr.rkey(),
            })
            .collect(),
        traffic: Vec::new(),
        actions: by_action,
        prefetch,
        mismatches: 0,
        wc_errors: 0,
        first_mismatches: Vec::new(),
        first_wc_errors: Vec::new(),
        worker_errors: worker_errors.into_inner().unwrap_or_default(),
        action_log: Vec::new(),
    };
    for (mut stats, mut mismatches, errors) in traffic {
        stats.mb_per_s = stats.bytes as f64 / elapsed.max(1e-9) / 1e6;
        report.mismatches += stats.mismatches;
        report.wc_errors += stats.wc_errors;
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
        report
            .first_mismatches
            .extend(mismatches.into_iter().take(MISMATCHES_KEPT));
        report.first_wc_errors.extend(errors);
        report.traffic.push(stats);
    }
    report.first_mismatches.truncate(MISMATCHES_KEPT);
    report.first_wc_errors.truncate(ERRORS_KEPT);
    report.action_log = log;
    Ok(report)
}

/// One operation in flight.
struct InFlight {
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
struct Lane<'a> {
    lb: LoopbackRc,
    pd: &'a Arc<crate::verbs::ProtectionDomain>,
    loopback: &'a LoopbackConfig,
    interval: Option<Duration>,
    next_post: Instant,
}

impl<'a> Lane<'a> {
    fn new(
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
    fn due(&self) -> bool {
        self.interval
            .is_none_or(|_| Instant::now() >= self.next_post)
    }

    fn posted(&mut self) {
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
    fn idle(&self, active: bool, stopping: bool, clock: &Clock) -> bool {
        if stopping {
            return true;
        }
        if active {
            sleep_until(self.next_post, clock);
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// An error completion: counted and kept, then a new QP pair, since the old one is in the
    /// error state and flushes everything else in flight.
    fn recover(
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
fn traffic_worker(
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
        let stopping = shared.clock.stopping();
        let active = !stopping && shared.clock.active(spec.name.as_deref());
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
            if lane.idle(active, stopping, &shared.clock) {
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
        let after = target.seqs(op.chunk, msg, page);
        let checks = pattern::check_pages(&buf, target.number, op.generation, op.chunk, page);
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
                        worker: name.clone(),
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
        stats.pages_checked += checks.len() as u64;
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

/// One fetch-and-add in flight.
struct AtomicInFlight {
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
fn atomic_worker(
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
        let stopping = shared.clock.stopping();
        let active = !stopping && shared.clock.active(spec.name.as_deref());
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
            if lane.idle(active, stopping, &shared.clock) {
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

fn action_worker(
    spec: &InvalidateSpec,
    name: &str,
    target: &Target,
    shared: &Shared,
    seed: u64,
) -> Result<()> {
    let page = shared.page;
    let window = spec.range.unwrap_or(Window {
        offset: 0,
        len: target.mapping.len(),
    });
    let len = spec.length.0;
    let step = spec.align.map_or(page, |a| a.0);
    let slots = (window.len - len) / step + 1;
    let mut rng = SmallRng::seed_from_u64(seed);
    let interval = 1.0 / spec.rate;
    let destroys = destroys_contents(spec.action, target.mapping.backing());
    let nodes = if spec.action == Action::Migrate {
        let nodes = numa_nodes_with_memory();
        if nodes.len() < 2 {
            return Err(Error::os(
                "migrate needs two NUMA nodes with memory (see /sys/devices/system/node/has_memory)",
                libc::EOPNOTSUPP,
            ));
        }
        nodes
    } else {
        Vec::new()
    };
    let mut migrations = 0usize;
    // Shared, not copied, into every record: an allocation per action showed in the rate.
    let worker: Arc<str> = name.into();
    let mr_name: Arc<str> = target.name.as_str().into();
    // The schedule runs on the same clock as the action timestamps, so pacing costs no clock
    // reads of its own (they dominated the generator's overhead in the VM).
    let mut next_ns = monotonic_ns();
    while !shared.clock.stopping() {
        if !shared.clock.active(spec.name.as_deref()) {
            std::thread::sleep(Duration::from_millis(5));
            next_ns = monotonic_ns();
            continue;
        }
        let offset = window.offset + rng.random_range(0..slots) * step;
        if destroys {
            target.bump(offset, len, page);
        }
        let start_ns = monotonic_ns();
        let m = &target.mapping;
        let mut pages_moved = None;
        let result = match spec.action {
            Action::Dontneed => {
                m.madvise(offset, len, libc::MADV_DONTNEED, "madvise(MADV_DONTNEED)")
            }
            Action::Free => m.madvise(offset, len, libc::MADV_FREE, "madvise(MADV_FREE)"),
            Action::Pageout => m.madvise(offset, len, libc::MADV_PAGEOUT, "madvise(MADV_PAGEOUT)"),
            Action::Cold => m.madvise(offset, len, libc::MADV_COLD, "madvise(MADV_COLD)"),
            Action::Remap => m.remap(offset, len),
            Action::Mprotect => {
                // CPU writes into the MR wait out the read-only window instead of faulting.
                let _exclusive = target.exclusive_cpu_writes()?;
                m.protect(offset, len, false).and_then(|()| {
                    std::thread::sleep(spec.hold());
                    m.protect(offset, len, true)
                })
            }
            Action::Fork => m.fork_and_touch(offset, len),
            Action::Collapse => {
                m.madvise(offset, len, libc::MADV_COLLAPSE, "madvise(MADV_COLLAPSE)")
            }
            Action::Split => m.split_huge_pages(offset, len),
            Action::Migrate => {
                migrations += 1;
                m.migrate(offset, len, nodes[migrations % nodes.len()])
                    .map(|moved| pages_moved = Some(moved))
            }
            Action::Mremap => m.move_pages_out(offset, len),
            Action::Ksm => {
                // CPU fills would make the zeroed pages differ before ksmd compares them.
                let _exclusive = target.exclusive_cpu_writes()?;
                m.ksm_merge(offset, len, spec.hold())
                    .map(|merged| pages_moved = Some(merged))
            }
        };
        let end_ns = monotonic_ns();
        if destroys {
            target.bump(offset, len, page);
        }
        // A failed mprotect back to read-write would fault every later CPU write: stop.
        let fatal = spec.action == Action::Mprotect && result.is_err();
        let record = ActionRecord {
            action: spec.action,
            worker: Arc::clone(&worker),
            mr: Arc::clone(&mr_name),
            addr: m.addr() + offset as u64,
            len,
            start_ns,
            end_ns,
            pages_moved,
            error: result.as_ref().err().map(|e| e.to_string()),
        };
        if let Ok(mut log) = shared.log.lock() {
            log.push(record);
        }
        shared.counters.actions.fetch_add(1, Ordering::Relaxed);
        if fatal {
            return result;
        }
        let spread = 1.0 + spec.jitter * (rng.random::<f64>() * 2.0 - 1.0);
        next_ns += (interval * spread * 1e9) as u64;
        if next_ns + 1_000_000_000 < end_ns {
            // Behind by more than a second: do not try to catch up in a burst.
            next_ns = end_ns;
        } else if next_ns > end_ns {
            sleep_until(
                Instant::now() + Duration::from_nanos(next_ns - end_ns),
                &shared.clock,
            );
        }
    }
    Ok(())
}

/// NUMA nodes with memory, from sysfs ("0-1", "0,2-3").
fn numa_nodes_with_memory() -> Vec<i32> {
    let text = std::fs::read_to_string("/sys/devices/system/node/has_memory").unwrap_or_default();
    text.trim()
        .split(',')
        .filter(|part| !part.is_empty())
        .flat_map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            match (lo.parse::<i32>(), hi.parse::<i32>()) {
                (Ok(lo), Ok(hi)) => (lo..=hi).collect(),
                _ => Vec::new(),
            }
        })
        .collect()
}

fn prefetch_worker(
    spec: &PrefetchSpec,
    target: &Target,
    shared: &Shared,
    seed: u64,
    stats: &mut PrefetchStats,
) -> Result<()> {
    let page = shared.page;
    let advice = Advice::parse(&spec.advice)?;
    let window = spec.range.unwrap_or(Window {
        offset: 0,
        len: target.mapping.len(),
    });
    let len = spec.length.0;
    let slots = (window.len - len) / page + 1;
    let mut rng = SmallRng::seed_from_u64(seed);
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let mut next = Instant::now();
    while !shared.clock.stopping() {
        if shared.clock.active(spec.name.as_deref()) {
            let offset = window.offset + rng.random_range(0..slots) * page;
            stats.calls += 1;
            match target
                .mr
                .advise(advice, spec.sync, &[(target.base + offset, len)])
            {
                Ok(()) => stats.bytes += len as u64,
                Err(_) => stats.failed += 1,
            }
        }
        next += interval;
        if next + Duration::from_secs(1) < Instant::now() {
            next = Instant::now();
        }
        sleep_until(next, &shared.clock);
    }
    Ok(())
}

/// For each kind of action, how many of those on registered memory the probes saw reach the
/// driver: an invalidation event (`rxe_invalidate`/`mlx5_invalidate` on the MR, or a notifier
/// range in our address space) overlapping the action's range and inside its time window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Matching {
    pub actions: u64,
    pub matched: u64,
    /// Actions known to have changed nothing (a migrate that moved no page); not counted above.
    pub no_change: u64,
    /// The first few actions no event matched, to look up in a recording.
    pub unmatched: Vec<ActionRecord>,
}

/// An invalidation the probes reported: its time span and address range.
#[derive(Debug, Clone, Copy)]
pub struct SeenInvalidation {
    pub start_ns: u64,
    pub end_ns: u64,
    pub lo: u64,
    pub hi: u64,
}

pub fn match_actions(
    log: &[ActionRecord],
    seen: &[SeenInvalidation],
) -> BTreeMap<Action, Matching> {
    let mut sorted: Vec<SeenInvalidation> = seen.to_vec();
    sorted.sort_by_key(|s| s.start_ns);
    let mut out: BTreeMap<Action, Matching> = BTreeMap::new();
    for a in log.iter().filter(|a| a.error.is_none()) {
        let m = out.entry(a.action).or_default();
        if a.pages_moved == Some(0) {
            m.no_change += 1;
            continue;
        }
        m.actions += 1;
        let lo = a.addr;
        let hi = a.addr + a.len as u64;
        // Events that started inside the action's window (the action causes them).
        let first = sorted.partition_point(|s| s.start_ns < a.start_ns);
        let hit = sorted[first..]
            .iter()
            .take_while(|s| s.start_ns <= a.end_ns)
            .any(|s| s.lo < hi && lo < s.hi);
        if hit {
            m.matched += 1;
        } else if m.unmatched.len() < 5 {
            m.unmatched.push(a.clone());
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

    #[test]
    fn actions_match_only_overlapping_events_inside_their_window() {
        let log = [
            record(Action::Dontneed, 0x1000, 0x1000, 100, 200),
            record(Action::Dontneed, 0x5000, 0x1000, 300, 400),
            record(Action::Remap, 0x9000, 0x2000, 500, 600),
        ];
        let seen = [
            // Inside the first action's window and range.
            SeenInvalidation {
                start_ns: 150,
                end_ns: 160,
                lo: 0x1000,
                hi: 0x2000,
            },
            // Right time for the second, adjacent range (0x6000 is where it ends): no match.
            SeenInvalidation {
                start_ns: 350,
                end_ns: 360,
                lo: 0x6000,
                hi: 0x7000,
            },
            // Right range for the third, but before it started.
            SeenInvalidation {
                start_ns: 450,
                end_ns: 460,
                lo: 0x9000,
                hi: 0xb000,
            },
        ];
        let mut no_op = record(Action::Migrate, 0x1000, 0x1000, 120, 130);
        no_op.pages_moved = Some(0);
        let mut log = log.to_vec();
        log.push(no_op);
        let m = match_actions(&log, &seen);
        assert_eq!(
            m[&Action::Migrate].no_change,
            1,
            "a migrate that moved nothing"
        );
        assert_eq!(m[&Action::Migrate].actions, 0);
        assert_eq!(m[&Action::Dontneed].actions, 2);
        assert_eq!(m[&Action::Dontneed].matched, 1);
        assert_eq!(m[&Action::Remap].matched, 0);
        assert_eq!(m[&Action::Remap].unmatched[0].start_ns, 500);
    }

    #[test]
    fn only_private_memory_reads_back_zero_after_dropping() {
        assert!(destroys_contents(Action::Dontneed, &Backing::Anonymous));
        assert!(!destroys_contents(Action::Dontneed, &Backing::Shared));
        assert!(!destroys_contents(Action::Dontneed, &Backing::File(None)));
        assert!(destroys_contents(Action::Remap, &Backing::Shared));
        assert!(!destroys_contents(Action::Remap, &Backing::File(None)));
        assert!(!destroys_contents(Action::Fork, &Backing::Anonymous));
        assert!(!destroys_contents(Action::Mprotect, &Backing::Thp));
    }
}
