//! The engine's state as Prometheus metrics: a sink that takes a snapshot of the engine once a
//! second, and an HTTP server that encodes the latest snapshot on each scrape, in the
//! Prometheus text format or OpenMetrics as the scraper asks (fastmetrics does the encoding).
//!
//! Counters are labelled by device and process name (the top PROCESS_LABELS by faults; the rest
//! as "other"), summed from the engine's per-MR counts, which every MR keeps exactly; latency
//! histograms are per device, from the engine's exact bucket counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastmetrics::encoder::{EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder};
use fastmetrics::format::text::{self, TextProfile};
use fastmetrics::metrics::counter::Counter;
use fastmetrics::metrics::family::Family;
use fastmetrics::metrics::gauge::Gauge;
use fastmetrics::raw::bucket::Bucket;
use fastmetrics::raw::{LabelSetSchema, MetricLabelSet, MetricType, TypedMetric};
use fastmetrics::registry::Registry;
use odp_core::analysis::{Counts, Engine, Latency, SourceFacts, BUCKET_BOUNDS_NS, CAUSES};
use odp_core::driver_counters::{DeviceMrs, RdmaNetlink};

use super::{Flow, PeerCauses, SharedCauses, Sink, State};

/// Process names labelled apart; the rest are summed under OTHER_PROCESSES, so a host with
/// thousands of short-lived processes does not grow a series per process.
pub const PROCESS_LABELS: usize = 20;
const OTHER_PROCESSES: &str = "other";

/// How often the sink takes a snapshot: scrapes see the engine at most this stale.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Counts for one (device, process) pair.
#[derive(Debug, Default, Clone, Copy)]
struct PairCounts {
    counts: Counts,
    live_mrs: u64,
    live_bytes: u64,
}

/// One latency histogram as exported: counts per BUCKET_BOUNDS_NS slot, the total and the sum.
#[derive(Debug, Clone, Default)]
struct Histo {
    slots: Vec<u64>,
    count: u64,
    sum_ns: u128,
}

impl Histo {
    fn of(l: &Latency) -> Self {
        Histo {
            slots: l.bucket_counts().to_vec(),
            count: l.count(),
            sum_ns: l.sum_ns(),
        }
    }
}

/// The engine's state at one moment, in the shape the metrics need.
#[derive(Debug, Default)]
pub struct Snapshot {
    events: u64,
    source: SourceFacts,
    pairs: BTreeMap<(String, String), PairCounts>,
    /// Per device: fault, invalidation, collision-wait and prefetch durations.
    latency: BTreeMap<String, [Histo; 4]>,
    /// (point, method, status) of each probe point; empty for a recording.
    probes: Vec<ProbeState>,
    /// The busiest live MRs' own counts, when asked for.
    mrs: Vec<(MrLabels, Counts)>,
    /// The drivers' own per-MR counters (RDMA netlink), for live probes.
    driver: Vec<DeviceMrs>,
    /// The most MRs whose driver counters are served one by one (--mr-series).
    mr_series: usize,
    /// The engine's totals: this host's requester retries belong to QPs, not MRs.
    totals: Counts,
    /// What the peer said of this host's retries (--peer).
    peer: Option<PeerCauses>,
}

/// Which process names have series of their own. A name, once labelled, keeps its label for the
/// exporter's life and never goes back to "other", and what "other" had already served of it
/// stays there: so no counter of any series ever goes back, which Prometheus would read as a
/// reset and a burst.
#[derive(Debug, Default)]
struct ProcessLabels {
    named: std::collections::BTreeSet<String>,
    /// Counts each (device, name) had when its name was labelled: served in "other" before.
    baseline: BTreeMap<(String, String), Counts>,
    /// The counts last served per labelled (device, name).
    served: BTreeMap<(String, String), Counts>,
    /// The exact counts of the unlabelled (device, name) pairs inside the last "other" served.
    in_other: BTreeMap<(String, String), Counts>,
}

impl ProcessLabels {
    /// Labels the busiest names not yet labelled, while there is room.
    fn promote(&mut self, ranked: &[(&str, u64)]) {
        for (name, faults) in ranked {
            if self.named.len() >= PROCESS_LABELS {
                break;
            }
            // The catch-all names (the engine's and ours) are never a process of their own.
            if *faults == 0
                || *name == odp_core::analysis::OTHER_PROCESSES
                || *name == OTHER_PROCESSES
            {
                continue;
            }
            if self.named.insert(name.to_string()) {
                for (key, counts) in &self.in_other {
                    if key.1 == *name {
                        self.baseline.insert(key.clone(), *counts);
                    }
                }
            }
        }
    }

    /// The counts to serve for every (device, label): a labelled name's own since it was
    /// labelled, never less than last served; per device, "other" is the rest of the device's
    /// exact total, so the series always add up to it.
    fn serve(
        &mut self,
        exact: BTreeMap<(String, String), PairCounts>,
    ) -> BTreeMap<(String, String), PairCounts> {
        let mut device_totals: BTreeMap<String, PairCounts> = BTreeMap::new();
        let mut out: BTreeMap<(String, String), PairCounts> = BTreeMap::new();
        let mut in_other = BTreeMap::new();
        for ((device, comm), pair) in exact {
            let total = device_totals.entry(device.clone()).or_default();
            total.counts.add(&pair.counts);
            let key = (device, comm);
            if self.named.contains(&key.1) {
                let baseline = self.baseline.get(&key).copied().unwrap_or_default();
                let served = self.served.entry(key.clone()).or_default();
                *served = served.max(&pair.counts.less(&baseline));
                out.insert(
                    key,
                    PairCounts {
                        counts: *served,
                        ..pair
                    },
                );
            } else {
                let other = total_other(&mut out, &key.0);
                other.live_mrs += pair.live_mrs;
                other.live_bytes += pair.live_bytes;
                in_other.insert(key, pair.counts);
            }
        }
        self.in_other = in_other;
        // A labelled pair whose MRs the engine no longer lists by name keeps its last counts.
        for (key, served) in &self.served {
            out.entry(key.clone()).or_insert_with(|| PairCounts {
                counts: *served,
                ..PairCounts::default()
            });
            device_totals.entry(key.0.clone()).or_default();
        }
        for (device, total) in device_totals {
            let labelled = out
                .iter()
                .filter(|((d, comm), _)| *d == device && comm != OTHER_PROCESSES)
                .fold(Counts::default(), |mut sum, (_, p)| {
                    sum.add(&p.counts);
                    sum
                });
            let rest = total.counts.less(&labelled);
            let other = total_other(&mut out, &device);
            other.counts = rest;
        }
        out
    }
}

fn total_other<'a>(
    out: &'a mut BTreeMap<(String, String), PairCounts>,
    device: &str,
) -> &'a mut PairCounts {
    out.entry((device.to_string(), OTHER_PROCESSES.to_string()))
        .or_default()
}

impl Snapshot {
    fn of(
        engine: &Engine,
        probes: &[ProbeState],
        labels: &mut ProcessLabels,
        mr_series: usize,
    ) -> Snapshot {
        // Exact counts by (device, process name): every MR kept, and those retired.
        let mut exact: BTreeMap<(String, String), PairCounts> = BTreeMap::new();
        for mr in engine.mrs() {
            let pair = exact
                .entry((mr.device.clone(), mr.comm.clone()))
                .or_default();
            pair.counts.add(&mr.stats.counts);
            if mr.released_ns.is_none() {
                pair.live_mrs += 1;
                pair.live_bytes += mr.end.saturating_sub(mr.start);
            }
        }
        for ((device, comm), counts) in engine.retired() {
            exact
                .entry((device.clone(), comm.clone()))
                .or_default()
                .counts
                .add(counts);
        }
        let mut by_process: BTreeMap<&str, u64> = BTreeMap::new();
        for ((_, comm), pair) in &exact {
            *by_process.entry(comm.as_str()).or_default() += pair.counts.faults;
        }
        let mut ranked: Vec<(&str, u64)> = by_process.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        labels.promote(&ranked);
        let pairs = labels.serve(exact);
        let latency = engine
            .devices()
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    [
                        Histo::of(&d.stats.fault),
                        Histo::of(&d.stats.invalidation),
                        Histo::of(&d.stats.collision_wait),
                        Histo::of(&d.stats.prefetch),
                    ],
                )
            })
            .collect();
        let mut live: Vec<&odp_core::analysis::Mr> = if mr_series == 0 {
            Vec::new()
        } else {
            engine.mrs().filter(|m| m.released_ns.is_none()).collect()
        };
        live.sort_by(|a, b| {
            b.stats
                .counts
                .faults
                .cmp(&a.stats.counts.faults)
                .then(a.id.cmp(&b.id))
        });
        let mrs = live
            .into_iter()
            .take(mr_series)
            .map(|m| {
                (
                    MrLabels {
                        device: m.device.clone(),
                        process: m.comm.clone(),
                        pid: m.pid.to_string(),
                        mr: m.id.to_string(),
                        start: format!("{:#x}", m.start),
                        length: m.end.saturating_sub(m.start).to_string(),
                    },
                    m.stats.counts,
                )
            })
            .collect();
        Snapshot {
            events: engine.events(),
            source: engine.source.clone(),
            pairs,
            latency,
            probes: probes.to_vec(),
            mrs,
            driver: Vec::new(),
            mr_series,
            totals: engine.total().counts,
            peer: None,
        }
    }

    /// The snapshot in the Prometheus text format or OpenMetrics.
    pub fn encode(self: &Arc<Self>, profile: TextProfile) -> anyhow::Result<String> {
        let registry = self.registry()?;
        let mut out = String::new();
        text::encode(&mut out, &registry, profile)
            .map_err(|e| anyhow::anyhow!("encoding the metrics: {e}"))?;
        Ok(out)
    }

    fn registry(self: &Arc<Self>) -> anyhow::Result<Registry> {
        let fail = |e: fastmetrics::error::Error| anyhow::anyhow!("registering metrics: {e}");
        let mut registry = Registry::builder()
            .with_namespace("odp")
            .build()
            .map_err(fail)?;
        let counter = |registry: &mut Registry,
                       name: &'static str,
                       help: &'static str,
                       value: &dyn Fn(&PairCounts) -> u64|
         -> anyhow::Result<()> {
            let family = Family::<DeviceProcess, Counter>::default();
            for ((device, process), pair) in &self.pairs {
                let labels = DeviceProcess {
                    device: device.clone(),
                    process: process.clone(),
                };
                family.with_or_new(&labels, |c| c.inc_by(value(pair)));
            }
            registry.register(name, help, family).map_err(fail)?;
            Ok(())
        };
        counter(
            &mut registry,
            "faults_total",
            "Device page faults (ODP map calls not made by a prefetch).",
            &|p| p.counts.faults,
        )?;
        counter(
            &mut registry,
            "fault_pages_total",
            "4 KiB pages the device faults covered.",
            &|p| p.counts.fault_pages,
        )?;
        counter(
            &mut registry,
            "fault_errors_total",
            "Device faults that returned an error (timeouts included).",
            &|p| p.counts.fault_errors,
        )?;
        counter(
            &mut registry,
            "races_total",
            "Device faults an overlapping invalidation ran into while they were in flight.",
            &|p| p.counts.races,
        )?;
        counter(
            &mut registry,
            "retries_total",
            "Extra attempts inside device faults (sequence reads beyond the first).",
            &|p| p.counts.retries,
        )?;
        counter(
            &mut registry,
            "collision_waits_total",
            "Sequence reads that slept behind a running invalidation.",
            &|p| p.counts.collision_waits,
        )?;
        counter(
            &mut registry,
            "prefetch_pages_total",
            "4 KiB pages mapped by prefetches (ibv_advise_mr).",
            &|p| p.counts.prefetched_pages,
        )?;
        counter(
            &mut registry,
            "prefetch_pages_faulted_anyway_total",
            "Prefetched pages the device faulted on later anyway.",
            &|p| p.counts.prefetched_then_faulted_pages,
        )?;
        counter(
            &mut registry,
            "peer_faults_total",
            "Of the device faults, those taken answering a peer's requests (rxe's responder).",
            &|p| p.counts.peer_faults,
        )?;
        counter(
            &mut registry,
            "invalidated_bytes_total",
            "Bytes of device mappings invalidated.",
            &|p| p.counts.invalidated_bytes,
        )?;
        let invalidations = Family::<DeviceProcessCause, Counter>::default();
        let timeouts = Family::<DeviceProcessKind, Counter>::default();
        let live_mrs = Family::<DeviceProcess, Gauge<i64>>::default();
        let live_bytes = Family::<DeviceProcess, Gauge<i64>>::default();
        for ((device, process), pair) in &self.pairs {
            for cause in 0..=CAUSES {
                let n = pair.counts.invalidations_by_cause[cause];
                if n > 0 {
                    let labels = DeviceProcessCause {
                        device: device.clone(),
                        process: process.clone(),
                        cause: bpf_common::mmu_event_name(cause as u32),
                    };
                    invalidations.with_or_new(&labels, |c| c.inc_by(n));
                }
            }
            for (kind, n) in [
                ("hmm", pair.counts.hmm_timeouts),
                ("unresolved", pair.counts.unresolved),
                ("slow", pair.counts.slow),
            ] {
                let labels = DeviceProcessKind {
                    device: device.clone(),
                    process: process.clone(),
                    kind,
                };
                timeouts.with_or_new(&labels, |c| c.inc_by(n));
            }
            let labels = DeviceProcess {
                device: device.clone(),
                process: process.clone(),
            };
            live_mrs.with_or_new(&labels, |g| {
                g.set(i64::try_from(pair.live_mrs).unwrap_or(i64::MAX))
            });
            live_bytes.with_or_new(&labels, |g| {
                g.set(i64::try_from(pair.live_bytes).unwrap_or(i64::MAX))
            });
        }
        registry
            .register(
                "invalidations_total",
                "Driver invalidate callbacks (device mappings zapped), by notifier cause.",
                invalidations,
            )
            .map_err(fail)?;
        registry
            .register(
                "timeouts_total",
                "Device faults that gave up: after the HMM limit (hmm), left unresolved by the \
                 driver (unresolved), or slower than the slow threshold (slow).",
                timeouts,
            )
            .map_err(fail)?;
        registry
            .register("live_mrs", "ODP MRs registered and not released.", live_mrs)
            .map_err(fail)?;
        registry
            .register(
                "live_mr_bytes",
                "Bytes covered by the live ODP MRs (implicit MRs: what their children cover).",
                live_bytes,
            )
            .map_err(fail)?;
        for (i, (name, help)) in [
            ("fault_duration_seconds", "How long device faults took."),
            (
                "invalidation_duration_seconds",
                "How long driver invalidations took.",
            ),
            (
                "collision_wait_seconds",
                "How long sequence reads slept behind a running invalidation.",
            ),
            ("prefetch_duration_seconds", "How long prefetch calls took."),
        ]
        .into_iter()
        .enumerate()
        {
            let snapshot = Arc::clone(self);
            let family = Family::<DeviceOnly, Histogram>::new_with_labels(move |labels| {
                Histogram(
                    snapshot
                        .latency
                        .get(&labels.device)
                        .map(|h| h[i].clone())
                        .unwrap_or_default(),
                )
            });
            for device in self.latency.keys() {
                family.with_or_new(
                    &DeviceOnly {
                        device: device.clone(),
                    },
                    |_| (),
                );
            }
            registry.register(name, help, family).map_err(fail)?;
        }
        self.register_mrs(&mut registry)?;
        self.register_driver(&mut registry)?;
        self.register_health(&mut registry)?;
        Ok(registry)
    }

    /// The busiest live MRs' own counters (--mr-series): exact per MR, so a series that leaves
    /// the top and comes back resumes where it was.
    fn register_mrs(&self, registry: &mut Registry) -> anyhow::Result<()> {
        if self.mrs.is_empty() {
            return Ok(());
        }
        let fail = |e: fastmetrics::error::Error| anyhow::anyhow!("registering metrics: {e}");
        for (name, help, value) in [
            (
                "mr_faults_total",
                "Device page faults on this MR.",
                (|c: &Counts| c.faults) as fn(&Counts) -> u64,
            ),
            (
                "mr_fault_pages_total",
                "4 KiB pages the device faults on this MR covered.",
                |c| c.fault_pages,
            ),
            (
                "mr_invalidations_total",
                "Driver invalidate callbacks on this MR.",
                |c| c.invalidations,
            ),
            (
                "mr_races_total",
                "Device faults on this MR an invalidation ran into.",
                |c| c.races,
            ),
            (
                "mr_retries_total",
                "Extra attempts inside device faults on this MR.",
                |c| c.retries,
            ),
        ] {
            let family = Family::<MrLabels, Counter>::default();
            for (labels, counts) in &self.mrs {
                family.with_or_new(labels, |c| c.inc_by(value(counts)));
            }
            registry.register(name, help, family).map_err(fail)?;
        }
        Ok(())
    }

    /// The drivers' own per-MR ODP counters, as `rdma stat show mr` prints them (mlx5); none
    /// where a driver keeps none (rxe). Summed over each device's live MRs as gauges (an MR's
    /// counts leave with it), and per MR for the --mr-series busiest.
    fn register_driver(&self, registry: &mut Registry) -> anyhow::Result<()> {
        let fail = |e: fastmetrics::error::Error| anyhow::anyhow!("registering metrics: {e}");
        let listed = Family::<DeviceOnly, Gauge<i64>>::default();
        let sums = Family::<DeviceCounter, Gauge<i64>>::default();
        let mut per_mr: Vec<(u64, &str, &odp_core::driver_counters::MrCounters)> = Vec::new();
        for device in &self.driver {
            let Ok(mrs) = &device.mrs else { continue };
            listed.with_or_new(
                &DeviceOnly {
                    device: device.device.clone(),
                },
                |g| g.set(i64::try_from(mrs.len()).unwrap_or(i64::MAX)),
            );
            for mr in mrs {
                for (counter, value) in &mr.counters {
                    let labels = DeviceCounter {
                        device: device.device.clone(),
                        counter: counter.clone(),
                    };
                    let value = i64::try_from(*value).unwrap_or(i64::MAX);
                    sums.with_or_new(&labels, |g| g.set(g.get().saturating_add(value)));
                }
                if !mr.counters.is_empty() {
                    let total = mr.counters.iter().map(|(_, v)| *v).sum();
                    per_mr.push((total, &device.device, mr));
                }
            }
        }
        registry
            .register(
                "exporter_driver_mrs",
                "MRs the driver listed over RDMA netlink at the last read (with or without \
                 counters of their own).",
                listed,
            )
            .map_err(fail)?;
        registry
            .register(
                "driver_live_mr_counters",
                "The driver's own per-MR ODP counters (rdma stat show mr: page_faults, \
                 page_invalidations, page_prefetch on mlx5), summed over the device's live MRs; \
                 a gauge, since an MR's counts leave with it. None where the driver keeps none.",
                sums,
            )
            .map_err(fail)?;
        if self.mr_series > 0 {
            per_mr.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.mrn.cmp(&b.2.mrn)));
            let family = Family::<DeviceMrnCounter, Counter>::default();
            for (_, device, mr) in per_mr.into_iter().take(self.mr_series) {
                for (counter, value) in &mr.counters {
                    let labels = DeviceMrnCounter {
                        device: device.to_string(),
                        mrn: mr.mrn.to_string(),
                        counter: counter.clone(),
                    };
                    family.with_or_new(&labels, |c| c.inc_by(*value));
                }
            }
            registry
                .register(
                    "driver_mr_counter_total",
                    "The driver's own ODP counters of one MR (mrn as rdma stat show mr prints \
                     it), for the busiest ones.",
                    family,
                )
                .map_err(fail)?;
        }
        Ok(())
    }

    /// The exporter's own health: what it saw, lost and attached.
    fn register_health(&self, registry: &mut Registry) -> anyhow::Result<()> {
        let fail = |e: fastmetrics::error::Error| anyhow::anyhow!("registering metrics: {e}");
        let s = &self.source;
        for (name, help, value) in [
            (
                "exporter_events_total",
                "Events the engine took in.",
                self.events,
            ),
            (
                "exporter_ring_drops_total",
                "Events lost because the ring buffer was full.",
                s.drops,
            ),
            (
                "exporter_queue_overflow_total",
                "Events shed between the probes and the engine (the consumer lagged).",
                s.overflow,
            ),
            (
                "exporter_unpaired_calls_total",
                "Calls whose entry the kernel side could not record.",
                s.unpaired,
            ),
            (
                "exporter_late_events_total",
                "Events that came too late to place in time order.",
                s.order.late,
            ),
            (
                "requester_retries_total",
                "Transport retries of this host's requester QPs: the ACK timer expired with \
                 requests outstanding (rxe's completer_retry_err, seen per QP).",
                self.totals.transport_retries,
            ),
            (
                "requester_retry_exceeded_total",
                "Requests this host's QPs failed for running out of (RNR) retries.",
                self.totals.retry_exceeded,
            ),
            (
                "requester_rnr_naks_total",
                "RNR NAKs this host's requester QPs received.",
                self.totals.rnr_naks,
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(value);
            registry.register(name, help, c).map_err(fail)?;
        }
        if let Some(peer) = &self.peer {
            for (name, help, value) in [
                (
                    "peer_retry_runs_asked_total",
                    "This host's requester retry runs (completer runs that gave up waiting: \
                     retries, RNR waits, failures) the peer answered about.",
                    peer.asked,
                ),
                (
                    "peer_retry_runs_caused_by_odp_faults_total",
                    "Of them, those the peer named one of its ODP faults (or a copy stalled \
                     behind an invalidation) for.",
                    peer.caused_by_odp_faults,
                ),
                (
                    "peer_retry_runs_not_asked_total",
                    "Retry runs the peer was not asked about (unreachable, without probes, or \
                     more than the queue to it holds).",
                    peer.not_asked,
                ),
            ] {
                let family = Family::<PeerOnly, Counter>::default();
                family.with_or_new(
                    &PeerOnly {
                        peer: peer.peer.clone(),
                    },
                    |c| c.inc_by(value),
                );
                registry.register(name, help, family).map_err(fail)?;
            }
        }
        let missed = Family::<PointOnly, Counter>::default();
        // Every attached point has its series from the start, so rate() sees the first miss.
        let attached = self
            .probes
            .iter()
            .filter(|p| p.status == "attached")
            .map(|p| (&p.point, &0));
        for (point, n) in attached.chain(&s.missed_per_point) {
            missed.with_or_new(
                &PointOnly {
                    point: point.clone(),
                },
                |c| c.inc_by(*n),
            );
        }
        registry
            .register(
                "exporter_missed_runs_total",
                "Probe program runs the kernel skipped, per point.",
                missed,
            )
            .map_err(fail)?;
        let probes = Family::<ProbeState, Gauge<i64>>::default();
        for labels in &self.probes {
            probes.with_or_new(labels, |g| g.set(1));
        }
        registry
            .register(
                "exporter_probe",
                "Each probe point: how it is attached (method) and its state (attached, or \
                 skipped/failed with the reason).",
                probes,
            )
            .map_err(fail)?;
        let build = Family::<BuildInfo, Gauge<i64>>::default();
        build.with_or_new(
            &BuildInfo {
                version: env!("CARGO_PKG_VERSION"),
                kernel: kernel_release(),
            },
            |g| g.set(1),
        );
        registry
            .register(
                "exporter_build_info",
                "odp-ctl's version and the running kernel.",
                build,
            )
            .map_err(fail)?;
        Ok(())
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A histogram whose bucket counts come from the engine, in seconds.
#[derive(Debug, Clone, Default)]
struct Histogram(Histo);

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl MetricLabelSet for Histogram {
    type LabelSet = ();
}

impl EncodeMetric for Histogram {
    fn encode(&self, encoder: &mut dyn MetricEncoder) -> fastmetrics::error::Result<()> {
        let h = &self.0;
        let mut buckets: Vec<Bucket> = BUCKET_BOUNDS_NS
            .iter()
            .zip(&h.slots)
            .map(|(&bound, &n)| Bucket::new(bound as f64 / 1e9, n))
            .collect();
        buckets.push(Bucket::new(
            f64::INFINITY,
            h.slots.get(BUCKET_BOUNDS_NS.len()).copied().unwrap_or(0),
        ));
        encoder.encode_histogram(&buckets, None, h.count, h.sum_ns as f64 / 1e9, None)
    }
}

/// A label set: the struct, its names, and how it encodes.
macro_rules! label_set {
    ($name:ident { $($field:ident: $ty:ty),* }) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        struct $name {
            $($field: $ty),*
        }

        impl LabelSetSchema for $name {
            fn names() -> Option<&'static [&'static str]> {
                Some(&[$(stringify!($field)),*])
            }
        }

        impl EncodeLabelSet for $name {
            fn encode(&self, encoder: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
                $(encoder.encode(&(stringify!($field), &self.$field))?;)*
                Ok(())
            }
        }
    };
}

label_set!(DeviceProcess {
    device: String,
    process: String
});
label_set!(DeviceProcessCause { device: String, process: String, cause: &'static str });
label_set!(DeviceProcessKind { device: String, process: String, kind: &'static str });
label_set!(DeviceOnly { device: String });
label_set!(PointOnly { point: String });
label_set!(PeerOnly { peer: String });
label_set!(DeviceCounter {
    device: String,
    counter: String
});
label_set!(DeviceMrnCounter {
    device: String,
    mrn: String,
    counter: String
});
label_set!(MrLabels {
    device: String,
    process: String,
    pid: String,
    mr: String,
    start: String,
    length: String
});
label_set!(ProbeState {
    point: String,
    method: String,
    status: String,
    reason: String
});
label_set!(BuildInfo { version: &'static str, kernel: String });

/// The latest snapshot, shared between the sink (writer) and the server (reader).
#[derive(Default)]
pub struct Latest(Mutex<Option<Arc<Snapshot>>>);

impl Latest {
    fn set(&self, s: Snapshot) {
        if let Ok(mut latest) = self.0.lock() {
            *latest = Some(Arc::new(s));
        }
    }

    fn get(&self) -> Option<Arc<Snapshot>> {
        self.0.lock().ok().and_then(|l| l.clone())
    }
}

/// The sink: a snapshot of the engine every SNAPSHOT_EVERY and at the end.
pub struct Publisher {
    latest: Arc<Latest>,
    probes: Vec<ProbeState>,
    labels: ProcessLabels,
    mr_series: usize,
    /// RDMA netlink, for the drivers' own counters (live probes only).
    driver: Option<RdmaNetlink>,
    peer_causes: Option<SharedCauses>,
    next: Instant,
}

impl Publisher {
    pub fn new(latest: Arc<Latest>, plans: &[odp_ebpf::PointPlan]) -> Publisher {
        let probes = plans
            .iter()
            .map(|p| {
                let (status, reason) = match &p.status {
                    odp_ebpf::Status::Attached => ("attached", String::new()),
                    odp_ebpf::Status::Planned => ("planned", String::new()),
                    odp_ebpf::Status::Skipped(r) => ("skipped", r.clone()),
                    odp_ebpf::Status::Failed(r) => ("failed", r.clone()),
                };
                ProbeState {
                    point: p.point.name().to_string(),
                    method: p.method.map_or("-", |m| m.name()).to_string(),
                    status: status.to_string(),
                    reason,
                }
            })
            .collect();
        Publisher {
            latest,
            probes,
            labels: ProcessLabels::default(),
            mr_series: 0,
            driver: None,
            peer_causes: None,
            next: Instant::now(),
        }
    }

    /// Also serve the drivers' own per-MR counters, read over RDMA netlink at each snapshot;
    /// where RDMA netlink cannot be opened, says why and serves without them.
    pub fn with_driver_counters(mut self) -> Publisher {
        match RdmaNetlink::open() {
            Ok(netlink) => self.driver = Some(netlink),
            Err(e) => {
                eprintln!("odp-ctl: the drivers' per-MR counters are not served: RDMA netlink: {e}")
            }
        }
        self
    }

    /// Also serve what the peer said of this host's retries (monitor/exporter --peer).
    pub fn with_peer_causes(mut self, causes: Option<SharedCauses>) -> Publisher {
        self.peer_causes = causes;
        self
    }

    fn snapshot(&mut self, engine: &Engine) -> Snapshot {
        let mut snapshot = Snapshot::of(engine, &self.probes, &mut self.labels, self.mr_series);
        snapshot.peer = self
            .peer_causes
            .as_ref()
            .and_then(|c| c.lock().ok().map(|c| c.clone()));
        if let Some(netlink) = &mut self.driver {
            match netlink.all_mr_counters() {
                Ok(devices) => snapshot.driver = devices,
                Err(e) => {
                    eprintln!("odp-ctl: reading the drivers' per-MR counters stopped: {e}");
                    self.driver = None;
                }
            }
        }
        snapshot
    }

    /// Also serve the `n` busiest live MRs' own counters.
    pub fn with_mr_series(mut self, n: usize) -> Publisher {
        self.mr_series = n;
        self
    }
}

impl Sink for Publisher {
    fn tick(&mut self, engine: &Engine, _state: &State) -> anyhow::Result<Flow> {
        if Instant::now() >= self.next {
            let snapshot = self.snapshot(engine);
            self.latest.set(snapshot);
            self.next = Instant::now() + SNAPSHOT_EVERY;
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, engine: &Engine) -> anyhow::Result<()> {
        let snapshot = self.snapshot(engine);
        self.latest.set(snapshot);
        Ok(())
    }
}

/// Which text format a scraper asked for (its Accept header, with q-values): OpenMetrics when
/// it prefers that, else the Prometheus text format.
pub fn negotiate(accept: Option<&str>) -> TextProfile {
    let mut best_open = -1.0f64;
    let mut best_text = -1.0f64;
    for range in accept.unwrap_or("*/*").split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|v| v.parse::<f64>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => best_open = best_open.max(q),
            "text/plain" | "text/*" | "*/*" => best_text = best_text.max(q),
            _ => {}
        }
    }
    if best_open > 0.0 && best_open >= best_text {
        TextProfile::OpenMetricsV1_0_0 {
            escaping_scheme: Default::default(),
        }
    } else {
        TextProfile::PrometheusV0_0_4
    }
}

/// Serves `/metrics` and a status page at `/` on `listen` until `stop` is set.
pub struct Server {
    server: Arc<tiny_http::Server>,
    pub addr: SocketAddr,
}

impl Server {
    pub fn bind(listen: &str) -> anyhow::Result<Server> {
        let server = tiny_http::Server::http(listen)
            .map_err(|e| odp_core::Error::invalid(format!("cannot listen on {listen}: {e}")))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("{listen} is not an IP address"))?;
        Ok(Server {
            server: Arc::new(server),
            addr,
        })
    }

    /// Answers requests until `stop` is set; returns the number answered.
    fn serve(&self, latest: &Latest, stop: &AtomicBool, status: &dyn Fn() -> String) -> u64 {
        let mut answered = 0;
        while !stop.load(Ordering::Relaxed) {
            let request = match self.server.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(_) => break,
            };
            answered += 1;
            let accept = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Accept"))
                .map(|h| h.value.as_str().to_string());
            let path = request.url().split('?').next().unwrap_or("").to_string();
            let (code, content_type, body) = match path.as_str() {
                "/metrics" => match latest.get() {
                    Some(snapshot) => {
                        let profile = negotiate(accept.as_deref());
                        match snapshot.encode(profile) {
                            Ok(body) => (200, profile.content_type(), body),
                            Err(e) => (500, "text/plain; charset=utf-8", format!("{e:#}\n")),
                        }
                    }
                    None => (
                        503,
                        "text/plain; charset=utf-8",
                        "the engine has no snapshot yet\n".to_string(),
                    ),
                },
                "/" => (200, "text/plain; charset=utf-8", status()),
                _ => (404, "text/plain; charset=utf-8", "not found\n".to_string()),
            };
            let mut response = tiny_http::Response::from_string(body).with_status_code(code);
            if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type) {
                response = response.with_header(h);
            }
            // A scraper that went away is its own business.
            let _ = request.respond(response);
        }
        answered
    }
}

/// Runs `work` while `server` (if any) answers scrapes from `latest` on a thread of its own, and
/// stops the server once `work` returns. Gives what `work` returned and the requests answered;
/// a panic of the server's thread fails with its message.
pub fn serve_while<R>(
    server: Option<&Server>,
    latest: &Latest,
    status: &(dyn Fn() -> String + Sync),
    work: impl FnOnce() -> R,
) -> anyhow::Result<(R, u64)> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let serving = server.map(|server| scope.spawn(|| server.serve(latest, &stop, status)));
        let result = work();
        stop.store(true, Ordering::Relaxed);
        let answered = match serving {
            Some(handle) => handle.join().map_err(|payload| {
                anyhow::anyhow!(
                    "the metrics server panicked: {}",
                    odp_core::stress::panic_message(payload.as_ref())
                )
            })?,
            None => 0,
        };
        Ok((result, answered))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scraper_gets_the_format_it_prefers() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(matches!(
            negotiate(Some(prometheus)),
            TextProfile::OpenMetricsV1_0_0 { .. }
        ));
        assert_eq!(negotiate(None), TextProfile::PrometheusV0_0_4);
        assert_eq!(negotiate(Some("*/*")), TextProfile::PrometheusV0_0_4);
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0.2, text/plain;q=0.9")),
            TextProfile::PrometheusV0_0_4
        );
        assert_eq!(
            negotiate(Some("application/json")),
            TextProfile::PrometheusV0_0_4
        );
    }

    #[test]
    fn served_counters_never_go_back_and_always_add_up_per_device() {
        // 60 names on two devices come and go over 400 snapshots, with uneven rates; now and
        // then the engine folds a name's retired counts under its catch-all name (past its
        // kept names), which lowers that name's exact count.
        let mut labels = ProcessLabels::default();
        let mut exact: BTreeMap<(String, String), PairCounts> = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut last: BTreeMap<(String, String), Counts> = BTreeMap::new();
        for step in 0..400u64 {
            for _ in 0..next(20) {
                let name = format!("job-{}", next(60.min(step / 4 + 1)));
                let device = ["rxe0", "mlx5_0"][next(2) as usize].to_string();
                let pair = exact.entry((device, name)).or_default();
                // Some names count races before their first fault: they sit in "other" first.
                pair.counts.faults += next(1 + step % 7) * u64::from(step > 50 || next(3) == 0);
                pair.counts.races += next(2);
            }
            if next(10) == 0 {
                let keys: Vec<_> = exact.keys().cloned().collect();
                let victim = keys[next(keys.len() as u64) as usize].clone();
                if let Some(folded) = exact.remove(&victim) {
                    let catch_all = (
                        victim.0.clone(),
                        odp_core::analysis::OTHER_PROCESSES.to_string(),
                    );
                    exact
                        .entry(catch_all)
                        .or_default()
                        .counts
                        .add(&folded.counts);
                }
            }
            let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
            for ((_, comm), p) in &exact {
                *by_name.entry(comm).or_default() += p.counts.faults;
            }
            let mut ranked: Vec<(&str, u64)> = by_name.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            labels.promote(&ranked);
            let served = labels.serve(exact.clone());
            let processes: std::collections::BTreeSet<&str> =
                served.keys().map(|(_, p)| p.as_str()).collect();
            assert!(processes.len() <= PROCESS_LABELS + 1, "{processes:?}");
            for device in ["rxe0", "mlx5_0"] {
                let sum = |m: &BTreeMap<(String, String), Counts>| {
                    m.iter()
                        .filter(|((d, _), _)| d == device)
                        .map(|(_, c)| c.faults)
                        .sum::<u64>()
                };
                let exact_total: u64 = exact
                    .iter()
                    .filter(|((d, _), _)| d == device)
                    .map(|(_, p)| p.counts.faults)
                    .sum();
                let served_counts: BTreeMap<_, _> =
                    served.iter().map(|(k, p)| (k.clone(), p.counts)).collect();
                assert_eq!(sum(&served_counts), exact_total, "step {step} {device}");
            }
            for (key, pair) in &served {
                let before = last.get(key).copied().unwrap_or_default();
                assert!(
                    pair.counts.faults >= before.faults && pair.counts.races >= before.races,
                    "step {step}: {key:?} went back from {} to {}",
                    before.faults,
                    pair.counts.faults
                );
                last.insert(key.clone(), pair.counts);
            }
            // A series served once is served ever after.
            for key in last.keys() {
                assert!(served.contains_key(key), "step {step}: {key:?} vanished");
            }
        }
        assert_eq!(labels.named.len(), PROCESS_LABELS);
    }
}
