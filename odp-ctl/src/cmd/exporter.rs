//! `odp-ctl exporter`: the correlation engine, always on, served as Prometheus metrics.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpf_common::Point;
use odp_core::analysis::{AnalysisConfig, Engine};
use odp_core::peer::parse_address;
use odp_core::units::parse_duration;

use super::launch::{stop_on_signals, ProbeFilter};
use crate::live::{self, CauseAsker, Latest, Publisher, Run, Server, Sink, Source, Until};
use crate::output::Output;

/// Where the metrics are served unless told: every interface, port 10087. Prometheus's list of
/// exporter ports filled 9100-9999 by 2023; this one is outside it and is to be checked against
/// and registered on that list before a release.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:10087";

/// The most MRs --mr-series serves one by one: past a few hundred series per host, a fleet's
/// Prometheus pays more than per-MR detail is worth.
const MR_SERIES_MAX: i64 = 1000;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub filter: ProbeFilter,
    /// Address to serve /metrics (and a status page at /) on; port 0 picks a free one.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Also probe CPU page faults (off by default: the point fires at every process's fault
    /// rate).
    #[arg(long)]
    pub cpu_faults: bool,
    /// Only these points (comma-separated names or groups, see `odp-ctl probes`); the CPU
    /// page-fault point only when named or with --cpu-faults.
    #[arg(long, value_delimiter = ',')]
    pub points: Vec<String>,
    /// Serve the totals of a recording (from `trace --json`, `monitor --record`) instead of
    /// live probes; the metrics stay up until Ctrl-C or SIGTERM.
    #[arg(long, conflicts_with_all = ["pid", "comm", "device", "range", "all_mms", "cpu_faults", "attach", "points"])]
    pub replay: Option<PathBuf>,
    /// Also serve per-MR counters (odp_mr_*_total, labelled by MR, pid and range) for the N
    /// busiest live MRs; each MR is a series of its own, so N is capped.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=MR_SERIES_MAX))]
    pub mr_series: u16,
    /// Stop after this long (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Ask `odp-ctl serve --probes` on this host (ADDR or ADDR:PORT) which of its ODP faults
    /// caused each retry run of this host's requesters, and serve the answers
    /// (odp_peer_retry_runs_*_total{peer}).
    #[arg(long, value_name = "ADDR[:PORT]", conflicts_with = "replay")]
    pub peer: Option<String>,
}

pub fn run(_out: &Output, args: &Args) -> anyhow::Result<()> {
    let stop = stop_on_signals()?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    let peer = args.peer.as_deref().map(parse_address).transpose()?;
    let server = Server::bind(&args.listen)?;
    let source = match &args.replay {
        Some(path) => Source::recording(path.clone(), 0.0)?,
        None => {
            let mut config = args.filter.config(None)?;
            let named = super::launch::select_points(&args.points)?;
            let cpu_faults = args.cpu_faults
                || named
                    .as_ref()
                    .is_some_and(|n| n.contains(&Point::PageFaultUser));
            let mut points: Vec<Point> = named
                .unwrap_or_else(|| Point::ALL.to_vec())
                .into_iter()
                .filter(|&p| cpu_faults || p != Point::PageFaultUser)
                .collect();
            // The retries the peer is asked about are the completer's.
            if peer.is_some() && !points.contains(&Point::RxeCompleter) {
                points.push(Point::RxeCompleter);
            }
            config.points = Some(points);
            Source::probes(config, deadline)?
        }
    };
    let label = source.label.clone();
    let attached = format!(
        "{}/{} probes attached",
        source.probes_attached(),
        source.plans.len()
    );
    eprintln!(
        "odp-ctl exporter: serving http://{}/metrics ({label}{})",
        server.addr,
        if args.replay.is_some() {
            String::new()
        } else {
            format!(", {attached}")
        }
    );
    let latest = Arc::new(Latest::default());
    let mut causes = peer.map(CauseAsker::start).transpose()?;
    let mut publisher = Publisher::new(Arc::clone(&latest), &source.plans)
        .with_mr_series(usize::from(args.mr_series))
        .with_peer_causes(causes.as_ref().map(CauseAsker::shared));
    if args.replay.is_none() {
        publisher = publisher.with_driver_counters();
    }
    let addr = server.addr;
    let status = move || {
        format!(
            "odp-ctl exporter {}\nsource: {label}\nmetrics: http://{addr}/metrics \
             (Prometheus text, or OpenMetrics when asked)\n",
            env!("CARGO_PKG_VERSION")
        )
    };
    let (result, answered) = live::serve_while(Some(&server), &latest, &status, || {
        // The asker first, so each snapshot has its count of the retries it holds.
        let mut sinks: Vec<&mut dyn Sink> = Vec::new();
        if let Some(c) = causes.as_mut() {
            sinks.push(c);
        }
        sinks.push(&mut publisher);
        let result = live::run(
            source,
            Engine::new(AnalysisConfig::default()),
            &mut sinks,
            Run {
                stop: &stop,
                deadline,
                until: Until::SourceEnds,
                before_detach: &|| {},
            },
        );
        // A recording's totals stay served until a signal or the deadline.
        if result.is_ok() && args.replay.is_some() {
            while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        result
    })?;
    eprintln!("odp-ctl exporter: stopped after {answered} requests");
    result.map(|_| ())
}
