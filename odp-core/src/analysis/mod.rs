//! The correlation engine: turns the probe event stream into MRs, faults, invalidations, races,
//! retries and timeouts. Pure: fed `OdpEvent`s (live from the ring buffer, or replayed from a
//! recording through `Record::to_event`), no BPF, no I/O, no clock of its own.
//!
//! Events arrive when a call returns and carry its entry time and duration, so a fault and an
//! invalidation that overlapped can arrive in either order. Each side keeps a short, time-bounded
//! window of the other per address space, and a pair is judged by whichever arrives second.

mod ranges;
mod stats;

use std::collections::{BTreeMap, VecDeque};

use bpf_common::{mmu_event_name, Kind, OdpEvent};
use rustc_hash::FxHashMap;
use serde::Serialize;

pub use ranges::RangeSet;
pub use stats::{Counts, Latency, LatencySummary, Stats, StatsSummary, CAUSES};

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

/// What the engine found worth pointing at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Race,
    Retry,
    HmmTimeout,
    Unresolved,
    Slow,
}

impl FindingKind {
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::Race => "race",
            FindingKind::Retry => "retry",
            FindingKind::HmmTimeout => "hmm-timeout",
            FindingKind::Unresolved => "unresolved",
            FindingKind::Slow => "slow",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub ts_ns: u64,
    pub kind: FindingKind,
    pub mr: Option<u64>,
    pub pid: u32,
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub start: u64,
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub end: u64,
    pub detail: String,
}

/// One ODP MR as the kernel sees it: a root umem (implicit children fold into their root).
#[derive(Debug, Clone)]
pub struct Mr {
    pub id: u64,
    pub umem: u64,
    pub mm: u64,
    pub device: String,
    pub pid: u32,
    pub comm: String,
    pub start: u64,
    pub end: u64,
    pub access: u64,
    pub implicit: bool,
    /// false when first seen through a fault (registered before the trace began).
    pub registration_seen: bool,
    pub registered_ns: u64,
    pub released_ns: Option<u64>,
    pub lkey: Option<u32>,
    pub rkey: Option<u32>,
    pub stats: Stats,
    prefetched: RangeSet,
    device_index: usize,
}

#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub stats: Stats,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub stats: Stats,
}

/// Activity per second of event time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub second: u64,
    pub events: u64,
    pub faults: u64,
    pub invalidations: u64,
    pub races: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub prefetches: u64,
}

#[derive(Debug, Clone, Copy)]
struct FaultSpan {
    start_ts: u64,
    end_ts: u64,
    lo: u64,
    hi: u64,
    mr: u64,
    raced: bool,
}

#[derive(Debug, Clone, Copy)]
struct InvSpan {
    start_ts: u64,
    end_ts: u64,
    lo: u64,
    hi: u64,
    /// Some(mr) for a driver callback on that MR; None for an mm-wide notifier range.
    mr: Option<u64>,
    cause: u32,
    pid: u32,
}

/// Recent activity in one address space, for matching faults with invalidations.
#[derive(Debug, Default, Clone)]
struct Space {
    pid: u32,
    comm: String,
    mrs: Vec<u64>,
    faults: VecDeque<FaultSpan>,
    invalidations: VecDeque<InvSpan>,
}

/// Calls a thread made inside a fault, waiting for the fault's own event (which comes last).
#[derive(Debug, Clone, Copy)]
struct SubCall {
    ts: u64,
    duration: u64,
    umem: u64,
    read_begin: bool,
}

#[derive(Debug, Clone, Copy)]
struct PendingRange {
    ts: u64,
    duration: u64,
    mm: u64,
    lo: u64,
    hi: u64,
    cause: u32,
    pid: u32,
}

/// Facts about the event source the engine cannot see in the events.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SourceFacts {
    pub drops: u64,
    /// Program runs the kernel skipped (its recursion protection): events that never existed.
    pub missed: u64,
    /// Events shed between the source and the engine because the consumer lagged.
    pub overflow: u64,
    pub probes_attached: usize,
    pub probes_total: usize,
}

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
    /// rxe_mr -> umem, learned from rxe map/copy events.
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
}

/// How many faults that gave up are kept for explaining failed work requests.
const GAVE_UP_KEPT: usize = 256;

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
        }
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
            // Timed by their own events only; the fault they serve carries the verdict.
            Kind::Unmap | Kind::DriverRegister | Kind::DriverFault | Kind::DriverCopy => {}
        }
        if self.events % 4096 == 0 {
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

    /// A user call names the process behind an address space, for MRs found without their
    /// registration.
    fn learn_space(&mut self, e: &OdpEvent) {
        if e.mm == 0 || e.in_kernel_thread() {
            return;
        }
        let space = self.spaces.entry(e.mm).or_default();
        if space.pid == 0 {
            space.pid = e.pid;
            space.comm = e.comm();
        }
    }

    fn space(&mut self, mm: u64) -> &mut Space {
        self.spaces.entry(mm).or_default()
    }

    fn process_entry(&mut self, pid: u32, comm: &str) -> &mut Process {
        self.processes.entry(pid).or_insert_with(|| Process {
            pid,
            comm: comm.to_string(),
            stats: Stats::default(),
        })
    }

    fn device_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.devices.iter().position(|d| d.name == name) {
            return i;
        }
        self.devices.push(Device {
            name: name.to_string(),
            stats: Stats::default(),
        });
        self.devices.len() - 1
    }

    fn new_mr(&mut self, umem: u64, mm: u64, pid: u32, comm: String, device: String) -> u64 {
        let id = self.next_mr;
        self.next_mr += 1;
        let device_index = self.device_index(&device);
        self.process_entry(pid, &comm);
        self.mrs.insert(
            id,
            Mr {
                id,
                umem,
                mm,
                device,
                pid,
                comm,
                start: 0,
                end: 0,
                access: 0,
                implicit: false,
                registration_seen: false,
                registered_ns: 0,
                released_ns: None,
                lkey: None,
                rkey: None,
                stats: Stats::default(),
                prefetched: RangeSet::default(),
                device_index,
            },
        );
        self.umems.insert(umem, id);
        let space = self.space(mm);
        space.mrs.push(id);
        id
    }

    fn on_register(&mut self, e: &OdpEvent, implicit: bool) {
        if e.obj == 0 {
            return; // the registration failed
        }
        let comm = e.comm();
        let device = e.device().unwrap_or_else(|| "?".into());
        {
            let space = self.space(e.mm);
            space.pid = e.pid;
            space.comm = comm.clone();
        }
        let id = self.new_mr(e.obj, e.mm, e.pid, comm, device);
        if let Some(mr) = self.mrs.get_mut(&id) {
            mr.registration_seen = true;
            mr.registered_ns = e.ts_ns;
            mr.access = e.access().unwrap_or(0);
            mr.implicit = implicit;
            if !mr.implicit {
                mr.start = e.start;
                mr.end = e.end;
            }
        }
    }

    fn on_child(&mut self, e: &OdpEvent) {
        if e.obj == 0 {
            return;
        }
        let Some(root) = e.root_umem() else {
            return;
        };
        let id = match self.umems.get(&root) {
            Some(&id) => id,
            None => self.unknown_mr(root, e),
        };
        self.umems.insert(e.obj, id);
        if let Some(mr) = self.mrs.get_mut(&id) {
            // An implicit MR's extent is what its children cover.
            if mr.end == 0 || e.start < mr.start {
                mr.start = e.start;
            }
            mr.end = mr.end.max(e.end);
        }
    }

    fn on_release(&mut self, e: &OdpEvent) {
        let Some(id) = self.umems.remove(&e.obj) else {
            return;
        };
        if let Some(mr) = self.mrs.get_mut(&id) {
            if mr.umem == e.obj {
                mr.released_ns = Some(e.ts_ns + e.duration_ns);
                let mm = mr.mm;
                if let Some(space) = self.spaces.get_mut(&mm) {
                    space.mrs.retain(|m| *m != id);
                }
            }
        }
    }

    /// An MR registered before the trace started, first seen through one of its events.
    fn unknown_mr(&mut self, umem: u64, e: &OdpEvent) -> u64 {
        let (pid, comm) = match self.spaces.get(&e.mm) {
            Some(s) if s.pid != 0 => (s.pid, s.comm.clone()),
            _ if !e.in_kernel_thread() => (e.pid, e.comm()),
            _ => (0, "?".into()),
        };
        self.new_mr(umem, e.mm, pid, comm, "?".into())
    }

    fn mr_for_umem(&mut self, umem: u64, e: &OdpEvent) -> u64 {
        match self.umems.get(&umem) {
            Some(&id) => id,
            None => self.unknown_mr(umem, e),
        }
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

    /// A call inside a fault: a sequence read (one per attempt) or an HMM walk.
    fn on_subcall(&mut self, e: &OdpEvent, read_begin: bool) {
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

    fn on_fault(&mut self, e: &OdpEvent) {
        let mr = self.mr_for_umem(e.obj, e);
        let (lo, hi) = (e.start, e.end);
        let fault_end = e.ts_ns + e.duration_ns;
        let pages = pages(lo, hi);
        let failed = e.has_ret() && e.ret < 0;

        // Calls this thread made inside this fault.
        let subcalls: Vec<SubCall> = self
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
        let read_begins = subcalls.iter().filter(|c| c.read_begin).count() as u64;
        let hmm_calls = subcalls.len() as u64 - read_begins;
        let retries = if read_begins > 0 {
            read_begins - 1
        } else {
            hmm_calls.saturating_sub(1)
        };

        // Waits behind an invalidation: read_begin calls that overlapped one on this range.
        let mm = e.mm;
        let mut waits = Vec::new();
        if let Some(space) = self.spaces.get(&mm) {
            for call in subcalls.iter().filter(|c| c.read_begin) {
                let call_end = call.ts + call.duration;
                // Newest first, and only as far back as could still overlap the call: a
                // full scan of the window per call was the engine's hottest loop.
                let collided = space
                    .invalidations
                    .iter()
                    .rev()
                    .take_while(|inv| inv.end_ts + REORDER_NS >= call.ts)
                    .any(|inv| {
                        inv.start_ts < call_end
                            && call.ts < inv.end_ts
                            && inv.lo < hi
                            && lo < inv.hi
                            && inv.mr.is_none_or(|m| m == mr)
                    });
                if collided {
                    waits.push(call.duration);
                }
            }
        }

        let prefetch = e.in_prefetch();
        let slow = self.config.slow_fault_ns;
        let hmm_timeout = !prefetch
            && e.has_ret()
            && e.ret == EBUSY
            && e.duration_ns >= self.config.hmm_timeout_ns;
        let is_slow = !prefetch && !hmm_timeout && e.duration_ns >= slow;
        let mut faulted_anyway = 0;
        if let Some(m) = self.mrs.get_mut(&mr) {
            if prefetch {
                if !failed {
                    m.prefetched
                        .insert(lo & !(PAGE - 1), hi.div_ceil(PAGE) * PAGE);
                }
            } else {
                faulted_anyway = m
                    .prefetched
                    .take(lo & !(PAGE - 1), hi.div_ceil(PAGE) * PAGE)
                    / PAGE;
            }
            if m.end == 0 && !m.implicit {
                // First seen through a fault: the MR spans at least what it faulted.
                m.start = lo;
                m.end = hi;
            } else if !m.registration_seen {
                m.start = m.start.min(lo);
                m.end = m.end.max(hi);
            }
        }
        let duration = e.duration_ns;
        self.account(mr, |s| {
            let c = &mut s.counts;
            if prefetch {
                if !failed {
                    c.prefetched_pages += pages;
                }
            } else {
                c.faults += 1;
                c.fault_pages += pages;
                c.fault_errors += u64::from(failed);
                c.prefetched_then_faulted_pages += faulted_anyway;
                s.fault.record(duration);
            }
            c.retries += retries;
            c.retried_faults += u64::from(retries > 0);
            c.hmm_timeouts += u64::from(hmm_timeout);
            c.slow += u64::from(is_slow);
            c.collision_waits += waits.len() as u64;
            for w in &waits {
                s.collision_wait.record(*w);
            }
        });
        {
            let b = self.bucket(fault_end);
            b.faults += u64::from(!prefetch);
            b.retries += retries;
            b.timeouts += u64::from(hmm_timeout || is_slow);
        }
        if retries > 0 {
            self.finding(
                FindingKind::Retry,
                e.ts_ns,
                Some(mr),
                lo,
                hi,
                format!(
                    "{} {} retried {retries}x ({read_begins} read_begin, {hmm_calls} hmm) in {}",
                    if prefetch { "prefetch" } else { "fault" },
                    fmt_range(lo, hi),
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
                    fmt_ns(slow)
                ),
            );
        }

        // Did an invalidation that already finished run into this fault?
        let span = FaultSpan {
            start_ts: e.ts_ns,
            end_ts: fault_end,
            lo,
            hi,
            mr,
            raced: false,
        };
        let hit = self.spaces.get(&mm).and_then(|space| {
            space
                .invalidations
                .iter()
                .rev()
                .take_while(|inv| inv.end_ts + REORDER_NS >= span.start_ts)
                .find(|inv| overlaps(&span, inv))
                .copied()
        });
        let mut span = span;
        if let Some(inv) = hit {
            span.raced = true;
            self.race(&span, &inv);
        }
        let last_ts = self.last_ts;
        let space = self.space(mm);
        push_window(&mut space.faults, span, last_ts, |f| f.end_ts);
    }

    fn race(&mut self, fault: &FaultSpan, inv: &InvSpan) {
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

    /// An invalidation is complete: match it against faults that finished before it did.
    fn invalidation_done(&mut self, mm: u64, inv: InvSpan) {
        let mut raced = Vec::new();
        if let Some(space) = self.spaces.get_mut(&mm) {
            for fault in space
                .faults
                .iter_mut()
                .rev()
                .take_while(|f| f.end_ts + REORDER_NS >= inv.start_ts)
            {
                if !fault.raced && overlaps(fault, &inv) {
                    fault.raced = true;
                    raced.push(*fault);
                }
            }
        }
        for fault in raced {
            self.race(&fault, &inv);
        }
        let last_ts = self.last_ts;
        let space = self.space(mm);
        push_window(&mut space.invalidations, inv, last_ts, |i| i.end_ts);
    }

    fn on_callback(&mut self, e: &OdpEvent) {
        let mr = self.mr_for_umem(e.obj, e);
        let (mr_lo, mr_hi) = self
            .mrs
            .get(&mr)
            .map_or((e.start, e.end), |m| (m.start, m.end));
        let bytes = if mr_hi > mr_lo {
            e.end.min(mr_hi).saturating_sub(e.start.max(mr_lo))
        } else {
            e.end.saturating_sub(e.start)
        };
        let cause = (e.aux as usize).min(CAUSES);
        let duration = e.duration_ns;
        self.account(mr, |s| {
            s.counts.invalidations += 1;
            s.counts.invalidated_bytes += bytes;
            s.counts.invalidations_by_cause[cause] += 1;
            s.invalidation.record(duration);
        });
        *self.by_task.entry(e.comm()).or_default() += 1;
        self.bucket(e.ts_ns + e.duration_ns).invalidations += 1;
        self.invalidation_done(
            e.mm,
            InvSpan {
                start_ts: e.ts_ns,
                end_ts: e.ts_ns + e.duration_ns,
                lo: e.start,
                hi: e.end,
                mr: Some(mr),
                cause: e.aux,
                pid: e.pid,
            },
        );
    }

    fn on_range_start(&mut self, e: &OdpEvent) {
        let pending = PendingRange {
            ts: e.ts_ns,
            duration: e.duration_ns,
            mm: e.mm,
            lo: e.start,
            hi: e.end,
            cause: e.aux,
            pid: e.pid,
        };
        if self.range_ends_seen || self.pending_ranges.len() < 64 {
            self.pending_ranges.insert((e.tid, e.obj), pending);
        } else {
            // No range_end probe: the start call alone is the window we can see.
            self.range_done(pending, e.ts_ns + e.duration_ns);
        }
    }

    fn on_range_end(&mut self, e: &OdpEvent) {
        self.range_ends_seen = true;
        let end_ts = e.ts_ns + e.duration_ns;
        let pending = self
            .pending_ranges
            .remove(&(e.tid, e.obj))
            .unwrap_or(PendingRange {
                ts: e.ts_ns,
                duration: e.duration_ns,
                mm: e.mm,
                lo: e.start,
                hi: e.end,
                cause: e.aux,
                pid: e.pid,
            });
        self.range_done(pending, end_ts);
    }

    fn range_done(&mut self, r: PendingRange, end_ts: u64) {
        let touches_mr = self.spaces.get(&r.mm).is_some_and(|s| {
            s.mrs.iter().any(|id| {
                self.mrs
                    .get(id)
                    .is_some_and(|m| m.implicit || (r.lo < m.end && m.start < r.hi))
            })
        });
        if !touches_mr {
            return;
        }
        self.invalidation_done(
            r.mm,
            InvSpan {
                start_ts: r.ts,
                end_ts: end_ts.max(r.ts + r.duration),
                lo: r.lo,
                hi: r.hi,
                mr: None,
                cause: r.cause,
                pid: r.pid,
            },
        );
    }

    /// Starts whose end never came (range_end not probed, or lost): judge them as they are.
    fn expire_pending_ranges(&mut self) {
        let horizon = self.last_ts.saturating_sub(HORIZON_NS);
        let stale: Vec<(u32, u64)> = self
            .pending_ranges
            .iter()
            .filter(|(_, p)| p.ts < horizon)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(p) = self.pending_ranges.remove(&key) {
                self.range_done(p, p.ts + p.duration);
            }
        }
    }

    fn on_advise(&mut self, e: &OdpEvent) {
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
        self.bucket(e.ts_ns + e.duration_ns).prefetches += 1;
    }

    fn unresolved(&mut self, e: &OdpEvent, mr: Option<u64>, detail: String) {
        match mr {
            Some(mr) => self.account(mr, |s| s.counts.unresolved += 1),
            None => self.total.counts.unresolved += 1,
        }
        self.bucket(e.ts_ns + e.duration_ns).timeouts += 1;
        self.finding(FindingKind::Unresolved, e.ts_ns, mr, e.start, e.end, detail);
    }

    /// Ties the user's ibv_reg_mr call (and its keys) to the umem registered inside it.
    fn on_verbs_reg(&mut self, e: &OdpEvent) {
        if e.ret != 0 {
            return;
        }
        let end = e.ts_ns + e.duration_ns;
        if let Some(mr) = self.mrs.values_mut().rev().find(|m| {
            m.pid == e.pid
                && m.lkey.is_none()
                && m.registered_ns >= e.ts_ns
                && m.registered_ns <= end
                && (m.implicit || (m.start == e.start && m.end == e.end))
        }) {
            mr.lkey = e.lkey();
            mr.rkey = e.rkey();
        }
    }

    pub fn findings_total(&self, kind: FindingKind) -> u64 {
        self.findings_total.get(&kind).copied().unwrap_or(0)
    }

    /// The aggregates, for `--summary` and tests.
    pub fn summary(&self) -> Summary {
        let span_s = self.span_ns() as f64 / 1e9;
        let rate = |n: u64| if span_s > 0.0 { n as f64 / span_s } else { 0.0 };
        let c = &self.total.counts;
        Summary {
            events: self.events,
            duration_s: span_s,
            source: self.source.clone(),
            totals: self.total.summary(),
            rates: Rates {
                faults: rate(c.faults),
                invalidations: rate(c.invalidations),
                races: rate(c.races),
                retries: rate(c.retries),
                timeouts: rate(c.timeouts()),
                prefetches: rate(c.prefetches),
            },
            invalidations_by_task: self.by_task.clone(),
            prefetch_effectiveness: PrefetchEffectiveness {
                prefetched_pages: c.prefetched_pages,
                faulted_anyway_pages: c.prefetched_then_faulted_pages,
            },
            devices: self
                .devices
                .iter()
                .map(|d| DeviceSummary {
                    device: d.name.clone(),
                    stats: d.stats.summary(),
                })
                .collect(),
            processes: self
                .processes
                .values()
                .map(|p| ProcessSummary {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    stats: p.stats.summary(),
                })
                .collect(),
            mrs: self.mrs.values().map(MrSummary::of).collect(),
            findings: self.findings.iter().cloned().collect(),
            gave_up: self.gave_up.clone(),
        }
    }
}

fn overlaps(f: &FaultSpan, inv: &InvSpan) -> bool {
    inv.start_ts < f.end_ts
        && f.start_ts < inv.end_ts
        && inv.lo < f.hi
        && f.lo < inv.hi
        && inv.mr.is_none_or(|m| m == f.mr)
}

/// Appends to a window and drops what can no longer overlap anything still to come.
fn push_window<T>(window: &mut VecDeque<T>, item: T, now: u64, end: impl Fn(&T) -> u64) {
    window.push_back(item);
    while window
        .front()
        .is_some_and(|f| end(f) + HORIZON_NS < now || window.len() > WINDOW_CAP)
    {
        window.pop_front();
    }
}

fn pages(lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return 0;
    }
    hi.div_ceil(PAGE) - lo / PAGE
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

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub events: u64,
    pub duration_s: f64,
    pub source: SourceFacts,
    pub totals: StatsSummary,
    /// Per second of event time covered.
    pub rates: Rates,
    pub invalidations_by_task: BTreeMap<String, u64>,
    pub prefetch_effectiveness: PrefetchEffectiveness,
    pub devices: Vec<DeviceSummary>,
    pub processes: Vec<ProcessSummary>,
    pub mrs: Vec<MrSummary>,
    pub findings: Vec<Finding>,
    /// The first faults that gave up, whatever `findings` had room for.
    pub gave_up: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rates {
    pub faults: f64,
    pub invalidations: f64,
    pub races: f64,
    pub retries: f64,
    pub timeouts: f64,
    pub prefetches: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefetchEffectiveness {
    pub prefetched_pages: u64,
    pub faulted_anyway_pages: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub device: String,
    #[serde(flatten)]
    pub stats: StatsSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub stats: StatsSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct MrSummary {
    pub id: u64,
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub umem: u64,
    pub device: String,
    pub pid: u32,
    pub comm: String,
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub start: u64,
    #[serde(serialize_with = "crate::trace::hex::serialize")]
    pub end: u64,
    pub implicit: bool,
    pub registration_seen: bool,
    pub released: bool,
    pub lkey: Option<u32>,
    pub rkey: Option<u32>,
    #[serde(flatten)]
    pub stats: StatsSummary,
}

impl MrSummary {
    fn of(m: &Mr) -> Self {
        MrSummary {
            id: m.id,
            umem: m.umem,
            device: m.device.clone(),
            pid: m.pid,
            comm: m.comm.clone(),
            start: m.start,
            end: m.end,
            implicit: m.implicit,
            registration_seen: m.registration_seen,
            released: m.released_ns.is_some(),
            lkey: m.lkey,
            rkey: m.rkey,
            stats: m.stats.summary(),
        }
    }
}

#[cfg(test)]
mod tests;
