//! `odp-ctl monitor`: the live view (or a summary) of ODP faults, invalidations, races, retries
//! and timeouts, from live probes or a recording.

mod app;
pub(crate) mod feed;
mod view;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use odp_core::analysis::{fmt_ns, AnalysisConfig, Engine, LatencySummary, Summary};
use ratatui::crossterm::event::{self, Event};

use super::launch::{report_child_status, spawn_gated, stop_on_signals, Gated, ProbeFilter};
use crate::output::{table, Output};
use app::{Action, App};
use feed::Feed;
use odp_core::units::parse_duration;

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
    /// Run this command and monitor it (implies --pid of the child); the source ends when it exits.
    #[arg(last = true, conflicts_with = "replay")]
    pub command: Vec<String>,
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    if !(args.speed.is_finite() && args.speed >= 0.0) {
        return Err(odp_core::Error::invalid("--speed must be 0 (no pacing) or positive").into());
    }
    let config = AnalysisConfig {
        slow_fault_ns: args.slow.as_nanos().min(u128::from(u64::MAX)) as u64,
        ..AnalysisConfig::default()
    };
    let stop = stop_on_signals()?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    if let Some(path) = &args.replay {
        if args.summary {
            // No pacing, no thread: as fast as the file reads.
            let mut engine = Engine::new(config);
            feed::read_recording(path, &stop, |e| engine.ingest(&e))?;
            return print_summary(out, &engine.summary());
        }
        let source_stop = Arc::new(AtomicBool::new(false));
        let feed = feed::replay(path.clone(), args.speed, Arc::clone(&source_stop))?;
        return watch(
            feed,
            config,
            &stop,
            &source_stop,
            deadline,
            args.fps,
            &mut |_| {},
            &|| {},
        )
        .map(drop);
    }

    args.filter.check_command(&args.command)?;
    args.filter.config(None)?;
    let mut gated = if args.command.is_empty() {
        None
    } else {
        Some(spawn_gated(&args.command)?)
    };
    let session_config = args.filter.config(gated.as_ref().map(Gated::pid))?;
    // Signals quit; the command's end only stops the source (the view stays for study).
    let source_stop = Arc::new(AtomicBool::new(false));
    let feed = match feed::live(
        session_config,
        args.record.as_deref(),
        Arc::clone(&source_stop),
        deadline,
    ) {
        Ok(f) => f,
        Err(e) => {
            if let Some(g) = &mut gated {
                g.abort();
            }
            return Err(e);
        }
    };
    eprintln!(
        "monitoring with {}/{} probes attached",
        feed.probes_attached, feed.probes_total
    );
    let watcher = match &mut gated {
        Some(g) => {
            g.release()?;
            Some(g.watch(&source_stop))
        }
        None => None,
    };
    let result = if args.summary {
        summarize_live(out, feed, config, &stop, &source_stop)
    } else {
        watch(
            feed,
            config,
            &stop,
            &source_stop,
            deadline,
            args.fps,
            &mut |_| {},
            &|| {},
        )
        .map(drop)
    };
    // The view may end first (q): the child keeps running, so only reap it if it is done.
    let status = watcher.and_then(|w| w.is_finished().then(|| w.join().ok()).flatten());
    report_child_status(status);
    result
}

/// Live, without a screen: until Ctrl-C, the deadline, or the command's end.
fn summarize_live(
    out: &Output,
    feed: Feed,
    config: AnalysisConfig,
    stop: &AtomicBool,
    source_stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut engine = Engine::new(config);
    engine.source.probes_attached = feed.probes_attached;
    engine.source.probes_total = feed.probes_total;
    let mut batch = Vec::new();
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut next_progress = Instant::now() + Duration::from_secs(1);
    loop {
        let done = feed.done();
        feed.drain(&mut batch);
        for e in &batch {
            engine.ingest(e);
        }
        if done {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            source_stop.store(true, Ordering::Relaxed);
        }
        if progress && Instant::now() >= next_progress {
            let c = &engine.total().counts;
            eprint!(
                "\r{} events, {} faults, {} invalidations, {} races, {} retries   ",
                engine.events(),
                c.faults,
                c.invalidations,
                c.races,
                c.retries
            );
            next_progress += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if progress {
        eprintln!();
    }
    feed.record_losses(&mut engine.source);
    feed.finish()?;
    print_summary(out, &engine.summary())
}

/// Puts the terminal back however the view ends (return, error, panic via ratatui's hook).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The live screen until q, a signal or the deadline; every event also goes to `tap`, and
/// `before_detach` runs once the screen is gone but before the probes are. Returns the engine,
/// for a report.
#[allow(clippy::too_many_arguments)]
pub(crate) fn watch(
    feed: Feed,
    config: AnalysisConfig,
    stop: &AtomicBool,
    source_stop: &AtomicBool,
    deadline: Option<Instant>,
    fps: u32,
    tap: &mut dyn FnMut(&bpf_common::OdpEvent),
    before_detach: &dyn Fn(),
) -> anyhow::Result<Engine> {
    let mut engine = Engine::new(config);
    engine.source.probes_attached = feed.probes_attached;
    engine.source.probes_total = feed.probes_total;
    let mut app = App::new(feed.label.clone(), feed.probes_attached, feed.probes_total);
    let mut terminal = ratatui::try_init()?;
    let guard = TerminalGuard;
    let frame = Duration::from_secs(1) / fps.max(1);
    let mut next_frame = Instant::now();
    let mut batch = Vec::new();
    let result = loop {
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break Ok(());
        }
        app.source_done = feed.done();
        feed.drain(&mut batch);
        for e in &batch {
            engine.ingest(e);
            app.push(e);
            tap(e);
        }
        app.drops = feed.drops();
        engine.source.drops = app.drops;
        let now = Instant::now();
        if now >= next_frame {
            if let Err(e) = terminal.draw(|f| view::draw(f, &app, &engine)) {
                break Err(e.into());
            }
            next_frame = now + frame;
        }
        let wait = next_frame.saturating_duration_since(Instant::now());
        match event::poll(wait) {
            Ok(true) => match event::read() {
                Ok(Event::Key(key)) => {
                    if app.on_key(key, &engine) == Action::Quit {
                        break Ok(());
                    }
                    next_frame = Instant::now();
                }
                Ok(Event::Resize(..)) => next_frame = Instant::now(),
                Ok(_) => {}
                Err(e) => break Err(e.into()),
            },
            Ok(false) => {}
            Err(e) => break Err(e.into()),
        }
    };
    drop(guard);
    before_detach();
    // Ends the source thread: live probes detach, a replay stops reading.
    source_stop.store(true, Ordering::Relaxed);
    feed.record_losses(&mut engine.source);
    feed.finish()?;
    result.map(|()| engine)
}

fn latency_cell(l: &Option<LatencySummary>) -> [String; 4] {
    match l {
        Some(l) => [
            l.count.to_string(),
            fmt_ns(l.p50_ns),
            fmt_ns(l.p99_ns),
            fmt_ns(l.max_ns),
        ],
        None => ["0".into(), "-".into(), "-".into(), "-".into()],
    }
}

pub(crate) fn print_summary(out: &Output, s: &Summary) -> anyhow::Result<()> {
    if out.json {
        return out.json(s);
    }
    let c = &s.totals.counts;
    println!(
        "{} events over {:.2}s, {} drops, {} missed{}",
        s.events,
        s.duration_s,
        s.source.drops,
        s.source.missed,
        if s.source.probes_total > 0 {
            format!(
                ", {}/{} probes attached",
                s.source.probes_attached, s.source.probes_total
            )
        } else {
            String::new()
        }
    );
    println!(
        "faults {} ({:.1}/s, {} pages, {} errors)  invalidations {} ({:.1}/s)  races {}  retries {} (in {} faults)  timeouts {} (hmm {}, unresolved {}, slow {})",
        c.faults,
        s.rates.faults,
        c.fault_pages,
        c.fault_errors,
        c.invalidations,
        s.rates.invalidations,
        c.races,
        c.retries,
        c.retried_faults,
        s.totals.timeouts,
        c.hmm_timeouts,
        c.unresolved,
        c.slow
    );
    println!(
        "prefetches {}: {} pages, {} faulted anyway; hmm busy {}; collision waits {}; cpu faults {}",
        c.prefetches,
        c.prefetched_pages,
        c.prefetched_then_faulted_pages,
        c.hmm_busy,
        c.collision_waits,
        c.cpu_faults
    );
    let mut lat = table(&["latency", "count", "p50", "p99", "max"]);
    for (name, l) in [
        ("fault", &s.totals.latency.fault),
        ("invalidation", &s.totals.latency.invalidation),
        ("prefetch", &s.totals.latency.prefetch),
        ("collision wait", &s.totals.latency.collision_wait),
    ] {
        let [n, p50, p99, max] = latency_cell(l);
        lat.add_row(vec![name.to_string(), n, p50, p99, max]);
    }
    println!("{lat}");
    let causes = c.causes();
    if !causes.is_empty() {
        let parts: Vec<String> = causes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("invalidations by cause: {}", parts.join(", "));
        let parts: Vec<String> = s
            .invalidations_by_task
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("invalidations by task: {}", parts.join(", "));
    }
    if !s.mrs.is_empty() {
        let mut mrs = table(&[
            "MR",
            "dev",
            "pid",
            "comm",
            "range",
            "faults",
            "fault p99",
            "inval",
            "races",
            "retries",
            "timeouts",
        ]);
        for m in &s.mrs {
            mrs.add_row(vec![
                format!("#{}{}", m.id, if m.released { " (released)" } else { "" }),
                m.device.clone(),
                m.pid.to_string(),
                m.comm.clone(),
                if m.implicit {
                    "implicit".into()
                } else {
                    format!("{:#x}+{:#x}", m.start, m.end.saturating_sub(m.start))
                },
                m.stats.counts.faults.to_string(),
                m.stats
                    .latency
                    .fault
                    .map_or_else(|| "-".into(), |l| fmt_ns(l.p99_ns)),
                m.stats.counts.invalidations.to_string(),
                m.stats.counts.races.to_string(),
                m.stats.counts.retries.to_string(),
                m.stats.timeouts.to_string(),
            ]);
        }
        println!("{mrs}");
    }
    for p in &s.processes {
        println!(
            "process {} ({}): faults {}, invalidations {}, races {}, retries {}, timeouts {}, prefetches {}",
            p.pid,
            p.comm,
            p.stats.counts.faults,
            p.stats.counts.invalidations,
            p.stats.counts.races,
            p.stats.counts.retries,
            p.stats.timeouts,
            p.stats.counts.prefetches
        );
    }
    for d in &s.devices {
        println!(
            "device {}: faults {}, invalidations {}, races {}, retries {}, timeouts {}",
            d.device,
            d.stats.counts.faults,
            d.stats.counts.invalidations,
            d.stats.counts.races,
            d.stats.counts.retries,
            d.stats.timeouts
        );
    }
    for f in s.findings.iter().rev().take(10).rev() {
        println!("{} {}", f.kind.name(), f.detail);
    }
    Ok(())
}
