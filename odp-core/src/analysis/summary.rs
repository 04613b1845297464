//! The aggregates: totals, rates, per device, process and MR, and the findings kept.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Engine, Finding, Mr, SourceFacts, StatsSummary, Summarised};

impl Engine {
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
            summarised: self.summarised,
        }
    }
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
    /// What was kept in less detail to bound memory (absent when nothing was).
    #[serde(skip_serializing_if = "Summarised::is_empty")]
    pub summarised: Summarised,
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
