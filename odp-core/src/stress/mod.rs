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

mod across;
pub(crate) mod actions;
mod atomics;
pub mod pattern;
mod prefetch;
mod report;
pub mod scenario;
mod traffic;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::memory::{page_size, Backing, KsmDaemon, Mapping};
use crate::verbs::{Access, Context, LoopbackConfig, LoopbackRc, MemoryRegion, ProtectionDomain};
pub use across::{run_against_peer, PassMismatch, PeerRun, PeerWorker};
use actions::action_worker;
use atomics::atomic_worker;
use prefetch::prefetch_worker;
pub use report::{
    match_actions, ActionRecord, ActionStats, Matching, Mismatch, MrInfo, PrefetchStats, Report,
    SeenInvalidation, TrafficStats, WcError,
};
pub use scenario::{Action, Scenario, TrafficOp, DEFAULT_SCENARIO};
use traffic::traffic_worker;

/// Kept in the report; the counts are always complete.
pub(super) const MISMATCHES_KEPT: usize = 20;
pub(super) const ERRORS_KEPT: usize = 20;
/// Actions this close to a mismatched transfer are listed with it.
pub(super) const NEARBY_NS: u64 = 2_000_000;

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
pub(super) struct Counters {
    ops: AtomicU64,
    bytes: AtomicU64,
    actions: AtomicU64,
    mismatches: AtomicU64,
    wc_errors: AtomicU64,
}

/// An ODP MR with what the workers share about it.
pub(super) struct Target {
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
pub(super) struct RunControl<'a> {
    phases: &'a [scenario::PhaseSpec],
    phase: AtomicUsize,
    stop: &'a AtomicBool,
    abort: AtomicBool,
}

impl RunControl<'_> {
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

/// Held by every worker: a worker that panics stops the others, so the run ends now, reports
/// the panic, and does not go on for its full length without that worker.
struct StopOthersOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOthersOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// The message a panic carried (what `panic!` and failed `expect`s pass).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Sleeps until `when` in slices, so a stop is noticed quickly.
pub(super) fn sleep_until(when: Instant, control: &RunControl) {
    while !control.stopping() {
        let left = when.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

pub(super) struct Shared<'a> {
    control: RunControl<'a>,
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
    let targets = register_targets(scenario, &pd, page)?;
    let loopback = LoopbackConfig {
        port: scenario.device.port,
        gid_index: scenario.device.gid_index,
        path_mtu: scenario.device.mtu,
        depth: scenario.device.qp_depth,
        ack_timeout: scenario
            .device
            .ack_timeout
            .unwrap_or(LoopbackConfig::default().ack_timeout),
        ..LoopbackConfig::default()
    };
    // Fail on a bad port or GID before any thread starts.
    drop(LoopbackRc::new(&pd, &loopback)?);
    let _ksmd = if scenario.actions.iter().any(|a| a.action == Action::Ksm) {
        Some(KsmDaemon::start()?)
    } else {
        None
    };

    let shared = Shared {
        control: RunControl {
            phases: &scenario.phases,
            phase: AtomicUsize::new(0),
            stop,
            abort: AtomicBool::new(false),
        },
        counters: Counters::default(),
        log: Mutex::new(Vec::new()),
        page,
    };
    let started = Instant::now();
    let worker_errors = Mutex::new(Vec::new());
    let fail = |who: String, e: Error| {
        if let Ok(mut errors) = worker_errors.lock() {
            errors.push(format!("{who}: {e}"));
        }
        shared.control.abort.store(true, Ordering::Relaxed);
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
                let handle = scope.spawn({
                    let name = name.clone();
                    move || {
                        let _stop_others = StopOthersOnPanic(&shared.control.abort);
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
                    }
                });
                (name, handle)
            })
            .collect();
        let actions: Vec<_> = scenario
            .actions
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let target = &targets[scenario.mr_index(&spec.mr).unwrap_or(0)];
                let (shared, fail) = (&shared, &fail);
                let seed = scenario.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1));
                let name = spec
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}#{}", spec.action.name(), i + 1));
                let handle = scope.spawn({
                    let name = name.clone();
                    move || {
                        let _stop_others = StopOthersOnPanic(&shared.control.abort);
                        if let Err(e) = action_worker(spec, &name, target, shared, seed) {
                            fail(name, e);
                        }
                    }
                });
                (name, handle)
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
                let name = spec
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("prefetch#{}", i + 1));
                let handle = scope.spawn({
                    let name = name.clone();
                    move || {
                        let _stop_others = StopOthersOnPanic(&shared.control.abort);
                        let mut stats = PrefetchStats {
                            worker: name.clone(),
                            ..PrefetchStats::default()
                        };
                        if let Err(e) = prefetch_worker(spec, target, shared, seed, &mut stats) {
                            fail(name, e);
                        }
                        stats
                    }
                });
                (name, handle)
            })
            .collect();

        conduct(scenario, &shared, started, &mut progress);
        shared.control.abort.store(true, Ordering::Relaxed);
        // A worker that panicked fails the run by name, with its message; its figures are lost.
        let panicked = |name: String, payload: Box<dyn std::any::Any + Send>| {
            if let Ok(mut errors) = worker_errors.lock() {
                errors.push(format!(
                    "{name}: panicked: {}",
                    panic_message(payload.as_ref())
                ));
            }
        };
        let traffic: Vec<_> = traffic
            .into_iter()
            .filter_map(|(name, h)| h.join().map_err(|p| panicked(name, p)).ok())
            .collect();
        for (name, h) in actions {
            if let Err(p) = h.join() {
                panicked(name, p);
            }
        }
        let prefetch: Vec<_> = prefetch
            .into_iter()
            .filter_map(|(name, h)| h.join().map_err(|p| panicked(name, p)).ok())
            .collect();
        (traffic, prefetch)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let log = shared.log.into_inner().unwrap_or_default();
    let worker_errors = worker_errors.into_inner().unwrap_or_default();
    let header = Report {
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
        worker_errors,
        ..Report::default()
    };
    Ok(header.with_results(traffic, prefetch, log))
}

/// Maps and registers the scenario's MRs, each with the per-page sequence the checks read.
fn register_targets(
    scenario: &Scenario,
    pd: &Arc<ProtectionDomain>,
    page: usize,
) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for (i, spec) in scenario.mrs.iter().enumerate() {
        let backing = Backing::parse(&spec.backing, None)?;
        let mapping = Arc::new(Mapping::new(spec.size.0, backing)?);
        if spec.populate {
            mapping.touch();
        }
        let access = Access::parse(&spec.access)? | Access::ON_DEMAND;
        let (mr, base) = if spec.implicit {
            let mr = MemoryRegion::register_implicit(pd, access)?;
            (mr, mapping.addr() as usize)
        } else {
            (
                MemoryRegion::register(pd, &mapping, 0, spec.size.0, access)?,
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
    Ok(targets)
}

/// The conductor: moves the run through its phases, reports progress about once a second,
/// and returns at the end or on a stop.
fn conduct(
    scenario: &Scenario,
    shared: &Shared,
    started: Instant,
    progress: &mut impl FnMut(&Progress),
) {
    let total = scenario.total_duration();
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
        if elapsed >= total || shared.control.stopping() {
            break;
        }
        let phase = phase_ends.iter().take_while(|end| elapsed >= **end).count();
        shared.control.phase.store(phase, Ordering::Relaxed);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_panics_stops_the_others_and_says_why() {
        let abort = AtomicBool::new(false);
        let result = std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                let _stop_others = StopOthersOnPanic(&abort);
                panic!("the page count")
            });
            worker.join()
        });
        assert!(
            abort.load(Ordering::Relaxed),
            "a panic must stop the other workers"
        );
        let payload = result.expect_err("the worker panicked");
        assert_eq!(panic_message(payload.as_ref()), "the page count");
        assert_eq!(panic_message(&String::from("formatted 7")), "formatted 7");
        assert_eq!(panic_message(&7u32), "a panic without a message");

        let untouched = AtomicBool::new(false);
        drop(StopOthersOnPanic(&untouched));
        assert!(
            !untouched.load(Ordering::Relaxed),
            "a worker that ends normally stops no one"
        );
    }
}
