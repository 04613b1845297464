//! What the engine knows exists: MRs (registered, found through their first fault, released),
//! the processes and devices they belong to, address spaces, per-second buckets and findings.

use std::collections::VecDeque;

use bpf_common::OdpEvent;
use serde::Serialize;

use super::faults::FaultSpan;
use super::invalidations::InvSpan;
use super::stats::Resolution;
use super::{
    Engine, RangeSet, Stats, FINE_LATENCY, HORIZON_NS, IDLE_SPACE_NS, MRS_WITH_LATENCY,
    OTHER_PROCESSES, PROCESSES_WITH_LATENCY, RELEASED_KEPT, RETIRED_NAMES_KEPT,
};

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
    pub(super) prefetched: RangeSet,
    pub(super) device_index: usize,
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

/// Recent activity in one address space, for matching faults with invalidations.
#[derive(Debug, Default, Clone)]
pub(super) struct Space {
    pub(super) pid: u32,
    pub(super) comm: String,
    pub(super) mrs: Vec<u64>,
    pub(super) faults: VecDeque<FaultSpan>,
    pub(super) invalidations: VecDeque<InvSpan>,
    /// Stream time of the newest event seen in this address space.
    pub(super) last_seen_ns: u64,
}

/// Facts about the event source the engine cannot see in the events.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SourceFacts {
    pub drops: u64,
    /// Program runs the kernel skipped (its recursion protection): events that never existed.
    pub missed: u64,
    /// Program runs skipped, per point that had any.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub missed_per_point: std::collections::BTreeMap<String, u64>,
    /// Calls whose entry the kernel side could not record (its in-flight map was full).
    pub unpaired: u64,
    /// CPU-fault records still batched in the kernel when reading stopped.
    pub unflushed: u64,
    /// Events shed between the source and the engine because the consumer lagged.
    pub overflow: u64,
    /// Events the reordering window could not place (late, repeated, out of the stream's span).
    #[serde(flatten)]
    pub order: super::OrderFacts,
    /// A recording's lines that were not events, by reason.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lines_skipped: std::collections::BTreeMap<String, u64>,
    pub probes_attached: usize,
    pub probes_total: usize,
    /// The host's clocks when the source began (live) or as its recording says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clocks: Option<crate::trace::ClockReading>,
}

impl SourceFacts {
    /// Events the kernel made or meant to make that never reached the engine: with any, an
    /// answer of "not seen" may be wrong.
    pub fn events_lost(&self) -> u64 {
        self.drops + self.missed + self.unpaired + self.unflushed + self.overflow
    }
}

/// How finely the latencies of the entity with `before` others ahead of it are kept: the first
/// FINE_LATENCY as the totals are, then one digit up to `with_latency`, then none; each entity
/// kept in less detail is counted in `coarse` or `off`.
fn resolution_for(
    before: usize,
    with_latency: usize,
    coarse: &mut u64,
    off: &mut u64,
) -> Resolution {
    if before < FINE_LATENCY {
        Resolution::Fine
    } else if before < with_latency {
        *coarse += 1;
        Resolution::Coarse
    } else {
        *off += 1;
        Resolution::Off
    }
}

impl Engine {
    /// A user call names the process behind an address space, for MRs found without their
    /// registration.
    pub(super) fn learn_space(&mut self, e: &OdpEvent) {
        if e.mm == 0 || e.in_kernel_thread() {
            return;
        }
        let space = self.spaces.entry(e.mm).or_default();
        space.last_seen_ns = space.last_seen_ns.max(e.ts_ns);
        if space.pid == 0 {
            space.pid = e.pid;
            space.comm = e.comm();
        }
    }

    pub(super) fn space(&mut self, mm: u64) -> &mut Space {
        self.spaces.entry(mm).or_default()
    }

    pub(super) fn process_entry(&mut self, pid: u32, comm: &str) -> &mut Process {
        let known = self.processes.len();
        let summarised = &mut self.summarised;
        self.processes.entry(pid).or_insert_with(|| {
            let resolution = resolution_for(
                known,
                PROCESSES_WITH_LATENCY,
                &mut summarised.processes_with_coarse_latency,
                &mut summarised.processes_without_latency,
            );
            Process {
                pid,
                comm: comm.to_string(),
                stats: Stats::with_resolution(resolution),
            }
        })
    }

    pub(super) fn device_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.devices.iter().position(|d| d.name == name) {
            return i;
        }
        self.devices.push(Device {
            name: name.to_string(),
            stats: Stats::default(),
        });
        self.devices.len() - 1
    }

    pub(super) fn new_mr(
        &mut self,
        umem: u64,
        mm: u64,
        pid: u32,
        comm: String,
        device: String,
    ) -> u64 {
        let id = self.next_mr;
        self.next_mr += 1;
        // By the MRs kept now, not ever seen: a host that churns MRs for months still gives
        // its newest ones histograms once the old ones are retired.
        let resolution = resolution_for(
            self.mrs.len(),
            MRS_WITH_LATENCY,
            &mut self.summarised.mrs_with_coarse_latency,
            &mut self.summarised.mrs_without_latency,
        );
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
                stats: Stats::with_resolution(resolution),
                prefetched: RangeSet::default(),
                device_index,
            },
        );
        self.umems.insert(umem, id);
        let space = self.space(mm);
        space.mrs.push(id);
        id
    }

    pub(super) fn on_register(&mut self, e: &OdpEvent, implicit: bool) {
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

    pub(super) fn on_child(&mut self, e: &OdpEvent) {
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

    pub(super) fn on_release(&mut self, e: &OdpEvent) {
        let Some(id) = self.umems.remove(&e.obj) else {
            return;
        };
        if let Some(mr) = self.mrs.get_mut(&id) {
            if mr.umem == e.obj {
                mr.released_ns = Some(e.ts_ns.saturating_add(e.duration_ns));
                let mm = mr.mm;
                if let Some(space) = self.spaces.get_mut(&mm) {
                    space.mrs.retain(|m| *m != id);
                }
                self.released_order.push_back(id);
                self.retire_old_releases();
            }
        }
    }

    /// Keeps the last RELEASED_KEPT released MRs apart; older ones are folded into their
    /// (device, process name)'s retired counts, so totals stay whole (counters never go back)
    /// while memory stays bounded however many MRs come and go.
    fn retire_old_releases(&mut self) {
        while self.released_order.len() > RELEASED_KEPT {
            let Some(id) = self.released_order.pop_front() else {
                break;
            };
            let Some(mr) = self.mrs.remove(&id) else {
                continue;
            };
            let mut key = (mr.device, mr.comm);
            if !self.retired.contains_key(&key) && self.retired.len() >= RETIRED_NAMES_KEPT {
                key.1 = OTHER_PROCESSES.to_string();
                self.summarised.mrs_retired_under_other_names += 1;
            }
            self.retired.entry(key).or_default().add(&mr.stats.counts);
            self.summarised.mrs_retired += 1;
        }
    }

    /// Forgets what only served address spaces, threads and processes that went idle, so a
    /// host where processes come and go for months keeps the engine's memory bounded: an
    /// address space with no MRs and no event for IDLE_SPACE_NS, a thread's calls past the
    /// matching horizon, a process with neither a kept MR nor a kept address space (unfinished
    /// notifier ranges are judged on their own clock, expire_pending_ranges).
    pub(super) fn sweep(&mut self, now: u64) {
        let idle_before = now.saturating_sub(IDLE_SPACE_NS);
        let expired_before = now.saturating_sub(HORIZON_NS);
        self.spaces.retain(|_, space| {
            let newest_window = space
                .faults
                .back()
                .map(|f| f.end_ts)
                .into_iter()
                .chain(space.invalidations.back().map(|i| i.end_ts))
                .max()
                .unwrap_or(0);
            !space.mrs.is_empty() || space.last_seen_ns.max(newest_window) >= idle_before
        });
        self.threads.retain(|_, calls| {
            calls
                .last()
                .is_some_and(|c| c.ts.saturating_add(c.duration) >= expired_before)
        });
        let kept: rustc_hash::FxHashSet<u32> = self
            .mrs
            .values()
            .map(|m| m.pid)
            .chain(self.spaces.values().map(|s| s.pid))
            .collect();
        let before = self.processes.len();
        self.processes.retain(|pid, _| kept.contains(pid));
        self.summarised.processes_retired += (before - self.processes.len()) as u64;
    }

    /// An MR registered before the trace started, first seen through one of its events.
    pub(super) fn unknown_mr(&mut self, umem: u64, e: &OdpEvent) -> u64 {
        let (pid, comm) = match self.spaces.get(&e.mm) {
            Some(s) if s.pid != 0 => (s.pid, s.comm.clone()),
            _ if !e.in_kernel_thread() => (e.pid, e.comm()),
            _ => (0, "?".into()),
        };
        self.new_mr(umem, e.mm, pid, comm, "?".into())
    }

    pub(super) fn mr_for_umem(&mut self, umem: u64, e: &OdpEvent) -> u64 {
        match self.umems.get(&umem) {
            Some(&id) => id,
            None => self.unknown_mr(umem, e),
        }
    }

    /// Ties the user's ibv_reg_mr call (and its keys) to the umem registered inside it.
    pub(super) fn on_verbs_reg(&mut self, e: &OdpEvent) {
        if e.ret != 0 {
            return;
        }
        let end = e.ts_ns.saturating_add(e.duration_ns);
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
}
