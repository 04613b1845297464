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

use super::{Flow, Sink, State};

/// Process names labelled apart; the rest are summed under OTHER_PROCESSES, so a host with
/// thousands of short-lived processes does not grow a series per process.
pub const PROCESS_LABELS: usize = 20;
const OTHER_PROCESSES: &str = "other";

/// How often the sink takes a snapshot: scrapes see the engine at most this stale.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Counts for one (device, process) pair.
#[derive(Debug, Default, Clone)]
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
    probes: Vec<(String, String, String)>,
}

impl Snapshot {
    pub fn of(engine: &Engine, probes: &[(String, String, String)]) -> Snapshot {
        // Process names ranked by faults over every MR seen, retired ones included; past the
        // top ones, "other".
        let mut by_process: BTreeMap<&str, u64> = BTreeMap::new();
        for mr in engine.mrs() {
            *by_process.entry(mr.comm.as_str()).or_default() += mr.stats.counts.faults;
        }
        for ((_, comm), counts) in engine.retired() {
            *by_process.entry(comm.as_str()).or_default() += counts.faults;
        }
        let mut ranked: Vec<(&str, u64)> = by_process.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let named: std::collections::HashSet<&str> = ranked
            .iter()
            .take(PROCESS_LABELS)
            .map(|(name, _)| *name)
            .collect();
        let label = |comm: &str| {
            if named.contains(comm) {
                comm.to_string()
            } else {
                OTHER_PROCESSES.to_string()
            }
        };
        let mut pairs: BTreeMap<(String, String), PairCounts> = BTreeMap::new();
        for mr in engine.mrs() {
            let pair = pairs
                .entry((mr.device.clone(), label(&mr.comm)))
                .or_default();
            pair.counts.add(&mr.stats.counts);
            if mr.released_ns.is_none() {
                pair.live_mrs += 1;
                pair.live_bytes += mr.end.saturating_sub(mr.start);
            }
        }
        // MRs retired after their release still count.
        for ((device, comm), counts) in engine.retired() {
            pairs
                .entry((device.clone(), label(comm)))
                .or_default()
                .counts
                .add(counts);
        }
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
        Snapshot {
            events: engine.events(),
            source: engine.source.clone(),
            pairs,
            latency,
            probes: probes.to_vec(),
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
        self.register_health(&mut registry)?;
        Ok(registry)
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
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(value);
            registry.register(name, help, c).map_err(fail)?;
        }
        let missed = Family::<PointOnly, Counter>::default();
        // Every attached point has its series from the start, so rate() sees the first miss.
        let attached = self
            .probes
            .iter()
            .filter(|(_, _, status)| status == "attached")
            .map(|(point, _, _)| (point, &0));
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
        for (point, method, status) in &self.probes {
            let labels = ProbeState {
                point: point.clone(),
                method: method.clone(),
                status: status.clone(),
            };
            probes.with_or_new(&labels, |g| g.set(1));
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
label_set!(ProbeState {
    point: String,
    method: String,
    status: String
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
    probes: Vec<(String, String, String)>,
    next: Instant,
}

impl Publisher {
    pub fn new(latest: Arc<Latest>, plans: &[odp_ebpf::PointPlan]) -> Publisher {
        let probes = plans
            .iter()
            .map(|p| {
                let (status, _) = match &p.status {
                    odp_ebpf::Status::Attached => ("attached", String::new()),
                    odp_ebpf::Status::Planned => ("planned", String::new()),
                    odp_ebpf::Status::Skipped(r) => ("skipped", r.clone()),
                    odp_ebpf::Status::Failed(r) => ("failed", r.clone()),
                };
                (
                    p.point.name().to_string(),
                    p.method.map_or("-", |m| m.name()).to_string(),
                    status.to_string(),
                )
            })
            .collect();
        Publisher {
            latest,
            probes,
            next: Instant::now(),
        }
    }
}

impl Sink for Publisher {
    fn tick(&mut self, engine: &Engine, _state: &State) -> anyhow::Result<Flow> {
        if Instant::now() >= self.next {
            self.latest.set(Snapshot::of(engine, &self.probes));
            self.next = Instant::now() + SNAPSHOT_EVERY;
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, engine: &Engine) -> anyhow::Result<()> {
        self.latest.set(Snapshot::of(engine, &self.probes));
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
}
