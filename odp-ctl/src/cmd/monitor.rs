//! `odp-ctl monitor`: the live view (or a summary) of ODP faults, invalidations, races, retries
//! and timeouts, from live probes or a recording.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpf_common::Point;
use odp_core::analysis::{AnalysisConfig, Engine};
use odp_core::peer::parse_address;
use odp_core::units::parse_duration;

use super::launch::{
    attach_before, child_outcome, needs_a_terminal, spawn_gated, stop_on_signals, Gated,
    ProbeFilter,
};
use crate::live::{
    self, print_summary, CauseAsker, Latest, Progress, Publisher, Recorder, Run, Server, Sink,
    Source, Until,
};
use crate::output::Output;
use crate::perfetto::timeline::Timeline;
use crate::tui::Tui;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub filter: ProbeFilter,
    /// Print the aggregates at the end (table, or --json) instead of the live view.
    #[arg(long)]
    pub summary: bool,
    /// Stop after this long (e.g. 30s, 5m); default: until q/Ctrl-C, the command exits, or the
    /// replay ends (--summary).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Also write every event to this file (the `trace --json` format) for a later --replay.
    #[arg(long, conflicts_with = "replay")]
    pub record: Option<PathBuf>,
    /// Study a recording (from `trace --json` or `monitor --record`) instead of live probes.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Replay pace: 1 as recorded, 10 ten times faster, 0 as fast as possible.
    #[arg(long, default_value = "1", requires = "replay")]
    pub speed: f64,
    /// A fault at least this slow counts as a timeout (kind "slow").
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub slow: Duration,
    /// Screen refreshes per second.
    #[arg(long, default_value = "10", value_parser = clap::value_parser!(u32).range(1..=60))]
    pub fps: u32,
    /// Also serve the engine's figures as Prometheus metrics on ADDR (as `exporter` does)
    /// while the monitor runs.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Also write the run as a Perfetto timeline here (see `odp-ctl export`).
    #[arg(long, value_name = "OUT")]
    pub perfetto: Option<PathBuf>,
    /// Ask `odp-ctl serve --probes` on this host (ADDR or ADDR:PORT) which of its ODP faults
    /// caused each transport retry, RNR wait or retry failure of this host's requesters,
    /// shown live and in the summary (attaches the requester's completer probe).
    #[arg(long, value_name = "ADDR[:PORT]", conflicts_with = "replay")]
    pub peer: Option<String>,
    /// Run this command and monitor it (implies --pid of the child); the source ends when it exits.
    #[arg(last = true, conflicts_with = "replay")]
    pub command: Vec<String>,
}

/// Replay paces from a thousandth of real time to a million times faster: slower would wait
/// for years between events, faster is what --speed 0 does.
const MIN_SPEED: f64 = 0.001;
const MAX_SPEED: f64 = 1e6;

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    if !(args.speed == 0.0 || (MIN_SPEED..=MAX_SPEED).contains(&args.speed)) {
        return Err(odp_core::Error::invalid(format!(
            "--speed must be 0 (no pacing) or from {MIN_SPEED} to {MAX_SPEED}"
        ))
        .into());
    }
    let config = AnalysisConfig {
        slow_fault_ns: args.slow.as_nanos().min(u128::from(u64::MAX)) as u64,
        ..AnalysisConfig::default()
    };
    let stop = stop_on_signals()?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    needs_a_terminal(args.summary, "the live view")?;
    let mut timeline = args.perfetto.as_deref().map(Timeline::create).transpose()?;
    if let Some(path) = &args.replay {
        // A summary reads as fast as the file allows.
        let speed = if args.summary { 0.0 } else { args.speed };
        let source = Source::recording(path.clone(), speed)?;
        return view_or_summarize(
            out,
            args,
            source,
            config,
            &stop,
            deadline,
            Extras {
                recorder: None,
                timeline: timeline.as_mut(),
                causes: None,
            },
        );
    }

    args.filter.check_command(&args.command)?;
    args.filter.config(None)?;
    let peer = args.peer.as_deref().map(parse_address).transpose()?;
    let mut recorder = args.record.as_deref().map(Recorder::create).transpose()?;
    let mut gated = if args.command.is_empty() {
        None
    } else {
        Some(spawn_gated(&args.command)?)
    };
    let mut session_config = args.filter.config(gated.as_ref().map(Gated::pid))?;
    if peer.is_some() {
        session_config.points = Some(Point::ALL.to_vec());
    }
    let source = attach_before(gated.as_mut(), session_config, deadline)?;
    eprintln!(
        "monitoring with {}/{} probes attached",
        source.probes_attached(),
        source.plans.len()
    );
    // Signals quit; the command's end only stops the source (the view stays for study).
    let watcher = match &mut gated {
        Some(g) => {
            g.release()?;
            Some(g.watch(&source.stopper()))
        }
        None => None,
    };
    let mut causes = peer.map(CauseAsker::start).transpose()?;
    let result = view_or_summarize(
        out,
        args,
        source,
        config,
        &stop,
        deadline,
        Extras {
            recorder: recorder.as_mut(),
            timeline: timeline.as_mut(),
            causes: causes.as_mut(),
        },
    );
    // The view may end first (q, a signal): a command still running is ended, not orphaned.
    let status = match (&gated, watcher) {
        (Some(g), Some(w)) => g.end(w),
        _ => None,
    };
    result?;
    child_outcome(status)
}

/// The sinks a monitor adds when asked to.
struct Extras<'a> {
    recorder: Option<&'a mut Recorder>,
    timeline: Option<&'a mut Timeline>,
    causes: Option<&'a mut CauseAsker>,
}

/// The live screen until q, a signal or the deadline; or, with --summary, the aggregates once
/// the source ends.
fn view_or_summarize(
    out: &Output,
    args: &Args,
    source: Source,
    config: AnalysisConfig,
    stop: &std::sync::atomic::AtomicBool,
    deadline: Option<Instant>,
    extras: Extras<'_>,
) -> anyhow::Result<()> {
    let Extras {
        recorder,
        timeline,
        causes,
    } = extras;
    let peer_causes = causes.as_ref().map(|c| c.shared());
    let server = args.metrics.as_deref().map(Server::bind).transpose()?;
    let latest = Arc::new(Latest::default());
    let mut publisher = server.as_ref().map(|_| {
        let publisher = Publisher::new(Arc::clone(&latest), &source.plans)
            .with_peer_causes(peer_causes.clone());
        if args.replay.is_none() {
            publisher.with_driver_counters()
        } else {
            publisher
        }
    });
    let label = source.label.clone();
    if let Some(server) = &server {
        eprintln!("monitor: serving http://{}/metrics", server.addr);
    }
    let mut progress = Progress::on_terminal();
    let mut screen = if args.summary {
        None
    } else {
        Some(Tui::start(&source, args.fps, peer_causes.clone())?)
    };
    let mut sinks: Vec<&mut dyn Sink> = Vec::new();
    if let Some(r) = recorder {
        sinks.push(r);
    }
    if let Some(p) = publisher.as_mut() {
        sinks.push(p);
    }
    if let Some(t) = timeline {
        sinks.push(t);
    }
    // Before the screen, so a retry is counted by the time the screen draws.
    if let Some(c) = causes {
        sinks.push(c);
    }
    match screen.as_mut() {
        Some(screen) => sinks.push(screen),
        None => sinks.push(&mut progress),
    }
    let run = Run {
        stop,
        deadline,
        until: if args.summary {
            Until::SourceEnds
        } else {
            Until::SinkStops
        },
        before_detach: &|| {},
    };
    let status = || {
        format!(
            "odp-ctl monitor {}\nsource: {label}\n",
            env!("CARGO_PKG_VERSION")
        )
    };
    let (result, _) = live::serve_while(server.as_ref(), &latest, &status, || {
        live::run(source, Engine::new(config), &mut sinks, run)
    })?;
    let (engine, _) = result?;
    if args.summary {
        let causes = peer_causes.and_then(|c| c.lock().ok().map(|c| c.clone()));
        print_summary(out, &engine.summary(), causes.as_ref())?;
    }
    Ok(())
}
