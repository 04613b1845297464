//! `odp-ctl trace`: decoded probe events as lines or JSON Lines, with a closing count.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bpf_common::OdpEvent;
use odp_core::analysis::{AnalysisConfig, Engine};
use odp_core::trace::{monotonic_ns, write_json_line, Record};
use odp_ebpf::{Config, Status};
use serde::Serialize;

use super::launch::{
    attach_before, child_outcome, spawn_gated, stop_on_signals, Gated, ProbeFilter,
};
use crate::live::{self, ClockLine, Flow, Run, Sink, State, Until};
use crate::output::Output;
use crate::perfetto::timeline::Timeline;
use odp_core::units::parse_duration;

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this long (e.g. 10s, 500ms, 2m); default: until Ctrl-C or the command exits.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub filter: ProbeFilter,
    /// Only these points (comma-separated names, see `odp-ctl probes`).
    #[arg(long, value_delimiter = ',')]
    pub points: Vec<String>,
    /// Also write the run as a Perfetto timeline here (see `odp-ctl export`).
    #[arg(long, value_name = "OUT", conflicts_with = "count_only")]
    pub perfetto: Option<PathBuf>,
    /// Write events here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Count in the kernel only; print the counts at the end.
    #[arg(long)]
    pub count_only: bool,
    /// Run this command and trace it (implies --pid of the child); tracing ends when it exits.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Serialize)]
struct Summary {
    events: u64,
    drops: u64,
    /// Program runs the kernel skipped (recursion protection); their events never existed.
    missed: u64,
    /// The same, per point that had any.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    missed_per_point: BTreeMap<&'static str, u64>,
    /// Calls whose entry the kernel side could not record (its in-flight map was full).
    unpaired: u64,
    /// CPU-fault records still batched in the kernel when reading stopped.
    unflushed: u64,
    /// Events shed between the probes and the writer because the writer lagged.
    overflow: u64,
    duration_s: f64,
    per_point: BTreeMap<&'static str, u64>,
    attached: usize,
    skipped: BTreeMap<&'static str, String>,
}

/// Decoded events, as lines or JSON Lines, to stdout or a file.
struct Writer {
    out: BufWriter<Box<dyn Write>>,
    json: bool,
    clock_line: ClockLine,
    /// The session's start, on the events' clock.
    t0: u64,
    events: u64,
}

impl Sink for Writer {
    fn event(&mut self, e: &OdpEvent, engine: &Engine) -> anyhow::Result<()> {
        self.events += 1;
        let written = if self.json {
            self.clock_line
                .write(&mut self.out, engine)
                .and_then(|()| write_json_line(&mut self.out, e))
        } else {
            writeln!(self.out, "{}", Record::from_event(e).human(self.t0))
        };
        written.map_err(|err| anyhow::anyhow!("writing events: {err}"))
    }

    /// Each drain is flushed, so a quiet stream is seen as it happens.
    fn tick(&mut self, _engine: &Engine, _state: &State) -> anyhow::Result<Flow> {
        self.out
            .flush()
            .map_err(|err| anyhow::anyhow!("writing events: {err}"))?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, engine: &Engine) -> anyhow::Result<()> {
        if self.json {
            self.clock_line
                .write(&mut self.out, engine)
                .map_err(|err| anyhow::anyhow!("writing events: {err}"))?;
        }
        self.out
            .flush()
            .map_err(|err| anyhow::anyhow!("writing events: {err}"))
    }
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    let points = super::launch::select_points(&args.points)?;
    args.filter.check_command(&args.command)?;
    if args.count_only && args.filter.range.is_some() {
        // Calls are counted when they start, before their range is known.
        return Err(odp_core::Error::invalid(
            "--range filters events as they complete; it does not combine with --count-only",
        )
        .into());
    }
    // Validated before anything is started.
    args.filter.config(None)?;
    // The output first: an unwritable path fails before anything is attached or started.
    let destination: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(File::create(path).map_err(|e| {
            odp_core::Error::invalid(format!("cannot create {}: {e}", path.display()))
        })?),
        None => Box::new(std::io::stdout().lock()),
    };
    let stop = stop_on_signals()?;
    let mut gated = if args.command.is_empty() {
        None
    } else {
        Some(spawn_gated(&args.command)?)
    };
    let config = Config {
        points,
        emit_events: !args.count_only,
        ..args.filter.config(gated.as_ref().map(Gated::pid))?
    };
    let mut timeline = args.perfetto.as_deref().map(Timeline::create).transpose()?;
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let source = attach_before(gated.as_mut(), config, deadline)?;
    let mut writer = Writer {
        // The buffer outside the trait object: serde_json writes each event in many small
        // pieces, and a BufWriter of known type takes them inline.
        out: BufWriter::with_capacity(1 << 16, destination),
        json: out.json,
        clock_line: ClockLine::default(),
        t0: monotonic_ns(),
        events: 0,
    };
    // On stderr in every mode, so scripts (and people) know the probes are live.
    eprintln!(
        "tracing {} points; Ctrl-C to stop",
        source.probes_attached()
    );
    let plans = source.plans.clone();
    // Let the child run now that every probe is in place.
    if let Some(g) = &mut gated {
        g.release()?;
    }
    let watcher = gated.as_ref().map(|g| g.watch(&stop));
    let run = Run {
        stop: &stop,
        deadline,
        until: Until::SourceEnds,
        before_detach: &|| {},
    };
    let mut sinks: Vec<&mut dyn Sink> = vec![&mut writer];
    if let Some(t) = timeline.as_mut() {
        sinks.push(t);
    }
    let result = live::run(
        source,
        Engine::new(AnalysisConfig::default()),
        &mut sinks,
        run,
    );
    drop(sinks);
    let child_status = match (&gated, watcher) {
        (Some(g), Some(w)) => g.end(w),
        _ => None,
    };
    let (engine, end) = result?;
    drop(writer);
    let rarer = live::rarer_losses(&engine.source);
    let summary = Summary {
        events: engine.events(),
        drops: engine.source.drops,
        missed: engine.source.missed,
        missed_per_point: end
            .missed
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(p, n)| (p.name(), *n))
            .collect(),
        unpaired: engine.source.unpaired,
        unflushed: engine.source.unflushed,
        overflow: engine.source.overflow,
        duration_s: started.elapsed().as_secs_f64(),
        per_point: end.hits.iter().map(|(p, n)| (p.name(), *n)).collect(),
        attached: plans
            .iter()
            .filter(|p| p.status == Status::Attached)
            .count(),
        skipped: plans
            .iter()
            .filter_map(|p| match &p.status {
                Status::Skipped(r) | Status::Failed(r) if r != "not selected" => {
                    Some((p.point.name(), r.clone()))
                }
                _ => None,
            })
            .collect(),
    };
    if out.json {
        let line = serde_json::to_string(&serde_json::json!({ "summary": summary }))?;
        match &args.output {
            Some(path) => {
                let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
                writeln!(f, "{line}")?;
                println!("{line}");
            }
            None => println!("{line}"),
        }
    } else {
        let counts: Vec<String> = summary
            .per_point
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| format!("{p}={n}"))
            .collect();
        eprintln!(
            "summary: {} events, {} drops, {} missed{} in {:.1}s; calls: {}",
            summary.events,
            summary.drops,
            summary.missed,
            rarer,
            summary.duration_s,
            if counts.is_empty() {
                "none".into()
            } else {
                counts.join(" ")
            }
        );
    }
    child_outcome(child_status)
}
