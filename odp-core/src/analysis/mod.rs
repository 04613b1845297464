//! The correlation engine: turns the probe event stream into MRs, faults, invalidations, races,
//! retries and timeouts. Pure: fed `OdpEvent`s (live from the ring buffer, or replayed from a
//! recording through `Record::to_event`), no BPF, no I/O, no clock of its own.
//!
//! Events arrive when a call returns and carry its entry time and duration, so a fault and an
//! invalidation that overlapped can arrive in either order. Each side keeps a short, time-bounded
//! window of the other per address space, and a pair is judged by whichever arrives second.

mod activity;
mod faults;
mod invalidations;
mod model;
mod ranges;
mod reorder;
mod stats;
mod summary;

use std::collections::{BTreeMap, VecDeque};

use bpf_common::{Kind, OdpEvent};
use rustc_hash::FxHashMap;
use serde::Serialize;

pub use activity::{Activity, FaultActivity, InvalidationActivity};
pub use faults::pages;
use faults::SubCall;
use invalidations::PendingRange;
use model::Space;
pub use model::{Bucket, Device, Finding, FindingKind, Mr, Process, SourceFacts};
pub use ranges::RangeSet;
pub use reorder::{OrderFacts, Reorder, LEAP_NS, LIVE_HOLD_NS, RECORDING_WINDOW_NS};
pub use stats::{
    Counts, Latency, LatencySummary, Resolution, Stats, StatsSummary, BUCKET_BOUNDS_NS, CAUSES,
};
pub use summary::{
    DeviceSummary, MrSummary, PrefetchEffectiveness, ProcessSummary, Rates, Summary,
};

const EBUSY: i64 = -16;
const PAGE: u64 = 4096;

#[derive(Debug, Clone, Copy)]
pub struct AnalysisConfig {
    /// A fault at least this slow counts as a timeout of kind "slow".
    pub slow_fault_ns: u64,
    /// ib_core's HMM_RANGE_DEFAULT_TIMEOUT: -EBUSY after this long is the give-up.
    pub hmm_timeout_ns: u64,
    /// How many findings (races, retries, timeouts) to keep for display.
    pub findings_kept: usize,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            slow_fault_ns: 100_000_000,
            hmm_timeout_ns: 1_000_000_000,
            findings_kept: 512,
        }
    }
}

/// How long finished faults and invalidations stay matchable: longer than the 1 s HMM limit, so
/// a fault that waited it out still meets the invalidation it waited for.
const HORIZON_NS: u64 = 2_000_000_000;
/// Out-of-order tolerance between CPUs' events in the ring buffer.
const REORDER_NS: u64 = 10_000_000;
/// Bound on each window, whatever the rate.
const WINDOW_CAP: usize = 4096;
/// Seconds of per-second history kept for rate views.
const TIMELINE_SECONDS: usize = 600;

#[derive(Clone)]
pub struct Engine {
    config: AnalysisConfig,
    events: u64,
    first_ts: Option<u64>,
    last_ts: u64,
    next_mr: u64,
    mrs: BTreeMap<u64, Mr>,
    /// Live umem (root or child) -> MR id.
    umems: FxHashMap<u64, u64>,
    /// Address space (mm) -> its process and its recent faults and invalidations.
    spaces: FxHashMap<u64, Space>,
    processes: BTreeMap<u32, Process>,
    devices: Vec<Device>,
    total: Stats,
    by_task: BTreeMap<String, u64>,
    threads: FxHashMap<u32, Vec<SubCall>>,
    pending_ranges: FxHashMap<(u32, u64), PendingRange>,
    range_ends_seen: bool,
    timeline: VecDeque<Bucket>,
    findings: VecDeque<Finding>,
    findings_total: BTreeMap<FindingKind, u64>,
    /// The first faults that gave up (HMM timeouts, unresolved), kept apart from `findings`,
    /// where a storm of races and retries would push them out before anyone asks what made a
    /// work request fail.
    gave_up: Vec<Finding>,
    pub source: SourceFacts,
    summarised: Summarised,
    /// Released MR ids, oldest first, for retiring them past RELEASED_KEPT.
    released_order: VecDeque<u64>,
    /// Counts of retired MRs by (device, process name).
    retired: BTreeMap<(String, String), Counts>,
    /// Stream time of the last sweep of idle address spaces, threads and processes.
    last_sweep_ns: u64,
    /// Stream time of the last judgment of unfinished notifier ranges.
    last_expiry_ns: u64,
    /// Faults, invalidations and races as judged, when a view asked for them.
    activity: Option<Vec<Activity>>,
    /// Ids of faults and invalidations, for their activity records.
    next_span_id: u64,
}

/// What the engine kept in less detail than the rest, so that its memory stays bounded however
/// many MRs, processes and task names a run has (a recording of 50,000 MRs once took 3.7 GB).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summarised {
    /// MRs past the first FINE_LATENCY whose quantiles are one-digit (within 1/16).
    pub mrs_with_coarse_latency: u64,
    /// Processes past the first FINE_LATENCY whose quantiles are one-digit.
    pub processes_with_coarse_latency: u64,
    /// MRs past the first MRS_WITH_LATENCY: counts only, no latency histograms.
    pub mrs_without_latency: u64,
    /// Processes past the first PROCESSES_WITH_LATENCY: counts only.
    pub processes_without_latency: u64,
    /// Invalidations by tasks whose names came past TASK_NAMES_KEPT, counted under OTHER_TASKS.
    pub invalidations_of_other_tasks: u64,
    /// Released MRs past the last RELEASED_KEPT: folded into counts per device and process
    /// name (`Engine::retired`), no longer listed one by one.
    pub mrs_retired: u64,
    /// Processes forgotten once none of their MRs was kept and their address space had been
    /// idle for IDLE_SPACE_NS: their counts live on in the totals and the retired counts.
    pub processes_retired: u64,
    /// Retired MRs whose process name came past RETIRED_NAMES_KEPT, counted under
    /// OTHER_PROCESSES.
    pub mrs_retired_under_other_names: u64,
}

impl Summarised {
    pub fn is_empty(&self) -> bool {
        *self == Summarised::default()
    }
}

/// MRs and processes (each in order of appearance) whose histograms have two significant digits,
/// as the totals' do; past them, one.
pub const FINE_LATENCY: usize = 64;
/// MRs (in order of appearance) that get their own latency histograms.
pub const MRS_WITH_LATENCY: usize = 4096;
/// Processes (in order of appearance) that get their own latency histograms.
pub const PROCESSES_WITH_LATENCY: usize = 1024;
/// Released MRs kept one by one (for the views); older ones are retired into counts.
pub const RELEASED_KEPT: usize = 1024;
/// Distinct process names retired MRs are counted under; later names share OTHER_PROCESSES.
pub const RETIRED_NAMES_KEPT: usize = 256;
/// Where retired MRs of the process names past RETIRED_NAMES_KEPT are counted.
pub const OTHER_PROCESSES: &str = "(other processes)";
/// Stream time between judgments of notifier ranges whose end has not come.
const EXPIRY_EVERY_NS: u64 = 250_000_000;
/// A notifier range whose end has not come this long after its start is judged as its start
/// call saw it: well inside HORIZON_NS, so the faults it may have run into are still in their
/// window (a later judgment finds them gone).
const RANGE_END_WAIT_NS: u64 = HORIZON_NS / 2;
/// Stream time between sweeps of idle address spaces, threads and processes.
const SWEEP_EVERY_NS: u64 = 10_000_000_000;
/// An address space without MRs is forgotten after this long without an event of its own:
/// long past any fault or invalidation that could still be matched with it.
const IDLE_SPACE_NS: u64 = 60_000_000_000;
/// Distinct task names counted apart in invalidations by task.
pub const TASK_NAMES_KEPT: usize = 256;
/// Where invalidations by the task names past TASK_NAMES_KEPT are counted.
pub const OTHER_TASKS: &str = "(other tasks)";

/// How many faults that gave up are kept for explaining failed work requests.
const GAVE_UP_KEPT: usize = 256;

/// Calls kept per thread while its fault is in flight (a fault that retries this often has
/// long been reported as a timeout).
const SUBCALLS_KEPT: usize = 64;

impl Engine {
    pub fn new(config: AnalysisConfig) -> Self {
        Engine {
            config,
            events: 0,
            first_ts: None,
            last_ts: 0,
            next_mr: 1,
            mrs: BTreeMap::new(),
            umems: FxHashMap::default(),
            spaces: FxHashMap::default(),
            processes: BTreeMap::new(),
            devices: Vec::new(),
            total: Stats::default(),
            by_task: BTreeMap::new(),
            threads: FxHashMap::default(),
            pending_ranges: FxHashMap::default(),
            range_ends_seen: false,
            timeline: VecDeque::new(),
            findings: VecDeque::new(),
            findings_total: BTreeMap::new(),
            gave_up: Vec::new(),
            source: SourceFacts::default(),
            summarised: Summarised::default(),
            released_order: VecDeque::new(),
            retired: BTreeMap::new(),
            last_sweep_ns: 0,
            last_expiry_ns: 0,
            activity: None,
            next_span_id: 1,
        }
    }

    /// Counts of the MRs retired after their release, by (device, process name): with the
    /// MRs still kept, they add up to everything the engine saw.
    pub fn retired(&self) -> &BTreeMap<(String, String), Counts> {
        &self.retired
    }

    /// From now on, keep a record of each fault, invalidation and race for `take_activity`.
    pub fn record_activity(&mut self) {
        self.activity.get_or_insert_with(Vec::new);
    }

    /// The records kept since the last call, in the order the engine judged them (a race comes
    /// after both its fault and its invalidation).
    pub fn take_activity(&mut self) -> Vec<Activity> {
        self.activity
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub(super) fn note_activity(&mut self, record: impl FnOnce() -> Activity) {
        if let Some(records) = &mut self.activity {
            records.push(record());
        }
    }

    pub(super) fn span_id(&mut self) -> u64 {
        let id = self.next_span_id;
        self.next_span_id += 1;
        id
    }

    pub fn config(&self) -> &AnalysisConfig {
        &self.config
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn total(&self) -> &Stats {
        &self.total
    }

    pub fn mrs(&self) -> impl Iterator<Item = &Mr> {
        self.mrs.values()
    }

    pub fn mr(&self, id: u64) -> Option<&Mr> {
        self.mrs.get(&id)
    }

    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.processes.values()
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn timeline(&self) -> &VecDeque<Bucket> {
        &self.timeline
    }

    pub fn findings(&self) -> &VecDeque<Finding> {
        &self.findings
    }

    /// The first faults that gave up (HMM timeouts and unresolved faults), in event order.
    pub fn gave_up(&self) -> &[Finding] {
        &self.gave_up
    }

    pub fn invalidations_by_task(&self) -> &BTreeMap<String, u64> {
        &self.by_task
    }

    /// Event time covered so far, in nanoseconds.
    pub fn span_ns(&self) -> u64 {
        self.first_ts.map_or(0, |t| self.last_ts.saturating_sub(t))
    }

    pub fn last_ts(&self) -> u64 {
        self.last_ts
    }

    /// The MR an event concerns, if the engine knows it.
    pub fn mr_of_event(&self, e: &OdpEvent) -> Option<u64> {
        let umem = e.umem()?;
        self.umems.get(&umem).copied().or_else(|| {
            // A released MR's events still belong to it for display.
            self.mrs
                .values()
                .rev()
                .find(|m| m.umem == umem)
                .map(|m| m.id)
        })
    }

    pub fn ingest(&mut self, e: &OdpEvent) {
        self.events += 1;
        let end_ts = e.ts_ns.saturating_add(e.duration_ns);
        if self.first_ts.is_none() {
            self.first_ts = Some(e.ts_ns);
        }
        self.last_ts = self.last_ts.max(end_ts);
        self.bucket(end_ts).events += 1;
        let Some(point) = e.point() else {
            return;
        };
        // Every kind is handled or passed over here by name: a new kind is a compile error.
        match point.kind() {
            Kind::Register { implicit } => self.on_register(e, implicit),
            Kind::RegisterChild => self.on_child(e),
            Kind::Release => self.on_release(e),
            Kind::Fault => self.on_fault(e),
            Kind::SequenceRead => self.on_subcall(e, true),
            Kind::HmmFault => self.on_subcall(e, false),
            Kind::DriverInvalidate => self.on_callback(e),
            Kind::NotifierStart => self.on_range_start(e),
            Kind::NotifierEnd => self.on_range_end(e),
            Kind::Advise => self.on_advise(e),
            Kind::PrefetchWork => self.total.prefetch.record(e.duration_ns),
            Kind::DriverMap => {
                if e.has_ret() && e.ret < 0 {
                    let mr = e.umem().and_then(|u| self.umems.get(&u).copied());
                    self.unresolved(e, mr, format!("rxe could not map the range: ret {}", e.ret));
                }
            }
            Kind::FaultResume => {
                if e.aux != 0 {
                    self.unresolved(e, None, "mlx5 resumed the fault with an error".into())
                }
            }
            Kind::VerbsRegister => {
                self.learn_space(e);
                self.on_verbs_reg(e)
            }
            Kind::VerbsCall => self.learn_space(e),
            Kind::CpuFault => {
                self.learn_space(e);
                self.total.counts.cpu_faults += 1;
                if let Some(p) = self.processes.get_mut(&e.pid) {
                    p.stats.counts.cpu_faults += 1;
                }
            }
            Kind::RequesterRetry => {
                if let Some(r) = crate::remote::RequesterRetry::from_event(e) {
                    let c = &mut self.total.counts;
                    c.transport_retries += u64::from(r.retries);
                    c.retry_exceeded += u64::from(r.exceeded) + u64::from(r.rnr_exceeded);
                    c.rnr_naks += u64::from(r.rnr_naks);
                }
            }
            // Timed by their own events only; the fault they serve carries the verdict.
            Kind::Unmap | Kind::DriverRegister | Kind::DriverFault | Kind::DriverCopy => {}
        }
        if end_ts >= self.last_sweep_ns.saturating_add(SWEEP_EVERY_NS) {
            self.last_sweep_ns = end_ts;
            self.sweep(end_ts);
        }
        if end_ts >= self.last_expiry_ns.saturating_add(EXPIRY_EVERY_NS) {
            self.last_expiry_ns = end_ts;
            self.expire_pending_ranges();
        }
    }

    fn bucket(&mut self, ts: u64) -> &mut Bucket {
        let second = ts / 1_000_000_000;
        let newest = self.timeline.back().map_or(0, |b| b.second);
        if self.timeline.is_empty() || second > newest {
            // Seconds without events still count as seconds in a rate view.
            let from = if self.timeline.is_empty() {
                second
            } else {
                (newest + 1).max(second.saturating_sub(TIMELINE_SECONDS as u64))
            };
            for s in from..=second {
                self.timeline.push_back(Bucket {
                    second: s,
                    ..Bucket::default()
                });
            }
            while self.timeline.len() > TIMELINE_SECONDS {
                self.timeline.pop_front();
            }
        }
        let newest = self.timeline.back().map_or(second, |b| b.second);
        let back = (newest.saturating_sub(second) as usize).min(self.timeline.len() - 1);
        let index = self.timeline.len() - 1 - back;
        &mut self.timeline[index]
    }

    /// Applies `f` to the totals, the MR, its device and its process.
    fn account(&mut self, mr: u64, f: impl Fn(&mut Stats)) {
        f(&mut self.total);
        let Some(m) = self.mrs.get_mut(&mr) else {
            return;
        };
        f(&mut m.stats);
        let (pid, device) = (m.pid, m.device_index);
        if let Some(d) = self.devices.get_mut(device) {
            f(&mut d.stats);
        }
        if let Some(p) = self.processes.get_mut(&pid) {
            f(&mut p.stats);
        }
    }

    fn finding(
        &mut self,
        kind: FindingKind,
        ts: u64,
        mr: Option<u64>,
        lo: u64,
        hi: u64,
        detail: String,
    ) {
        *self.findings_total.entry(kind).or_default() += 1;
        let pid = mr.and_then(|m| self.mrs.get(&m)).map_or(0, |m| m.pid);
        let finding = Finding {
            ts_ns: ts,
            kind,
            mr,
            pid,
            start: lo,
            end: hi,
            detail,
        };
        if matches!(kind, FindingKind::HmmTimeout | FindingKind::Unresolved)
            && self.gave_up.len() < GAVE_UP_KEPT
        {
            self.gave_up.push(finding.clone());
        }
        self.findings.push_back(finding);
        while self.findings.len() > self.config.findings_kept {
            self.findings.pop_front();
        }
    }

    /// The stream has ended: notifier ranges whose end never came (the end probe missing, or
    /// lost) are judged as they are, so a race they hold is not left uncounted.
    pub fn finish(&mut self) {
        let mut open: Vec<PendingRange> = self.pending_ranges.drain().map(|(_, p)| p).collect();
        open.sort_by_key(|p| p.ts);
        for p in open {
            self.range_done(p, p.ts.saturating_add(p.duration));
        }
    }

    pub fn findings_total(&self, kind: FindingKind) -> u64 {
        self.findings_total.get(&kind).copied().unwrap_or(0)
    }
}

/// Appends to a window and drops what can no longer overlap anything still to come.
fn push_window<T>(window: &mut VecDeque<T>, item: T, now: u64, end: impl Fn(&T) -> u64) {
    // end + HORIZON_NS < now, with the bound worked out once.
    let expired_before = now.saturating_sub(HORIZON_NS);
    window.push_back(item);
    while window
        .front()
        .is_some_and(|f| end(f) < expired_before || window.len() > WINDOW_CAP)
    {
        window.pop_front();
    }
}

/// A latency in the unit that keeps it short; the bounds sit where rounding would otherwise
/// print "1000.0us" or "1000.00ms".
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_949 => format!("{:.1}us", ns as f64 / 1e3),
        999_950..=999_994_999 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

fn fmt_range(lo: u64, hi: u64) -> String {
    format!("[{lo:#x}+{:#x})", hi.saturating_sub(lo))
}

#[cfg(test)]
mod tests;
