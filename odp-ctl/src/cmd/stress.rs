//! `odp-ctl stress`: a scenario of RDMA traffic over ODP MRs while the CPU side invalidates the
//! same memory, every byte checked, with the probes watching the kernel meanwhile.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bpf_common::{Kind, OdpEvent, Point};
use odp_core::analysis::{AnalysisConfig, Engine, Summary};
use odp_core::stress::{self, Action, Matching, Report, Scenario, SeenInvalidation};
use odp_core::units::parse_duration;
use serde::Serialize;

use super::launch::{needs_a_terminal, stop_on_signals};
use crate::live::{self, print_summary, Recorder, Run, Sink, Source, Until};
use crate::output::{table, AlreadyReported, DataMismatch, Output};
use crate::perfetto::timeline::Timeline;
use crate::tui::Tui;

#[derive(clap::Args)]
pub struct Args {
    /// Scenario file (TOML; see scenarios/README.md). Default: the built-in scenario.
    pub scenario: Option<PathBuf>,
    /// RDMA device (overrides the scenario's).
    #[arg(short, long)]
    pub device: Option<String>,
    /// Run length (overrides the scenario's duration; not allowed with phases).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Seed for every random choice (overrides the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Show the live monitor while the scenario runs (q ends the run early).
    #[arg(long)]
    pub monitor: bool,
    /// Run without the probes (no root needed; no kernel-side figures).
    #[arg(long)]
    pub no_probes: bool,
    /// Also write every probe event to this file (the `trace --json` format).
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Also write the run as a Perfetto timeline here (see `odp-ctl export`).
    #[arg(long, value_name = "OUT", conflicts_with = "no_probes")]
    pub perfetto: Option<PathBuf>,
    /// Print the built-in scenario (a starting point for your own) and exit.
    #[arg(long)]
    pub print_default: bool,
    /// Check the scenario (syntax and meaning) and exit: nothing is registered or run.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub attach: super::launch::AttachArgs,
    /// Run against `odp-ctl serve` on another host (ADDR or ADDR:PORT): the peer owns the region
    /// and runs the scenario's storm (its one action), this side drives the traffic (its
    /// workers take turns on one connection) with the scenario's [peer] knobs.
    #[arg(long, value_name = "ADDR[:PORT]", conflicts_with_all = ["monitor", "record", "perfetto", "device"])]
    pub peer: Option<String>,
}

/// What the probes saw, or why there are no probe figures.
#[derive(Serialize)]
struct Probes {
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Summary>,
    /// Per action kind: actions on registered memory, and how many an invalidation event matched.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    matching: BTreeMap<Action, Matching>,
    /// Invalidations past the matching bound, counted but not matched.
    #[serde(skip_serializing_if = "odp_core::units::is_zero")]
    invalidations_not_kept: u64,
}

#[derive(Serialize)]
struct Document<'a> {
    #[serde(flatten)]
    report: &'a Report,
    probes: &'a Probes,
}

fn load(args: &Args) -> anyhow::Result<Scenario> {
    let (text, origin) = match &args.scenario {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| {
                odp_core::Error::invalid(format!("cannot read {}: {e}", path.display()))
            })?,
            path.display().to_string(),
        ),
        None => (
            stress::DEFAULT_SCENARIO.to_string(),
            "built-in scenario".into(),
        ),
    };
    let mut scenario = if args.peer.is_some() {
        Scenario::parse_across_hosts(&text, &origin)?
    } else {
        Scenario::parse(&text, &origin)?
    };
    if let Some(d) = &args.device {
        scenario.device.name = Some(d.clone());
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(d) = args.duration {
        if !scenario.phases.is_empty() {
            return Err(odp_core::Error::invalid(
                "--duration cannot override a scenario with phases (set their durations)",
            )
            .into());
        }
        if d.is_zero() {
            return Err(odp_core::Error::invalid("--duration must be more than 0").into());
        }
        scenario.duration.0 = d;
    }
    Ok(scenario)
}

/// Invalidations kept for matching, at most (48 MiB): minutes of the fastest storm the VM
/// examples run; past it, invalidations are counted, not kept.
const SEEN_KEPT: usize = 1 << 20;

/// The invalidations one point reported, for matching against the actions afterwards, and the
/// address space the actions ran in (learned from this process's own registrations).
struct SeenInvalidations {
    /// The point whose events stand for the actions: the driver's invalidation where attached
    /// (what reached the device), else the notifier's range start.
    point: Point,
    own_pid: u32,
    own_mm: Option<u64>,
    kept: Vec<SeenInvalidation>,
    /// Past SEEN_KEPT: not kept, so actions they would have matched show as unseen.
    shed: u64,
}

impl SeenInvalidations {
    fn for_plans(plans: &[odp_ebpf::PointPlan]) -> Self {
        let attached = |kind: Kind| {
            plans
                .iter()
                .find(|p| p.status == odp_ebpf::Status::Attached && p.point.kind() == kind)
                .map(|p| p.point)
        };
        SeenInvalidations {
            point: attached(Kind::DriverInvalidate)
                .or(attached(Kind::NotifierStart))
                .unwrap_or(Point::InvRangeStart),
            own_pid: std::process::id(),
            own_mm: None,
            kept: Vec::new(),
            shed: 0,
        }
    }

    fn matching(&self, log: &[stress::ActionRecord]) -> BTreeMap<Action, Matching> {
        match self.own_mm {
            Some(mm) => stress::match_actions(log, &self.kept, mm, self.point.name()),
            None => BTreeMap::new(),
        }
    }
}

impl Sink for SeenInvalidations {
    fn event(&mut self, e: &OdpEvent, _engine: &Engine) -> anyhow::Result<()> {
        let Some(point) = e.point() else {
            return Ok(());
        };
        if matches!(point.kind(), Kind::Register { .. }) && e.pid == self.own_pid && e.mm != 0 {
            self.own_mm = Some(e.mm);
        }
        if point != self.point {
            return Ok(());
        }
        if self.kept.len() >= SEEN_KEPT {
            self.shed += 1;
            return Ok(());
        }
        self.kept.push(SeenInvalidation {
            start_ns: e.ts_ns,
            end_ns: e.ts_ns.saturating_add(e.duration_ns),
            lo: e.start,
            hi: e.end,
            mm: e.mm,
            cause: e.mmu_event().map_or("UNKNOWN", bpf_common::mmu_event_name),
            kthread: e.in_kernel_thread(),
        });
        Ok(())
    }
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    if args.print_default {
        print!("{}", stress::DEFAULT_SCENARIO.trim_start());
        return Ok(());
    }
    let scenario = load(args)?;
    if args.check {
        let summary = serde_json::json!({
            "scenario": scenario.name,
            "mrs": scenario.mrs.len(),
            "traffic": scenario.traffic.len(),
            "invalidate": scenario.actions.len(),
            "prefetch": scenario.prefetch.len(),
            "phases": scenario.phases.len(),
            "duration_s": scenario.total_duration().as_secs_f64(),
        });
        if out.json {
            return out.json(&summary);
        }
        println!(
            "scenario {:?} is valid: {} MRs, {} traffic, {} invalidate, {} prefetch workers, \
             {} phases, {:.1}s",
            scenario.name,
            scenario.mrs.len(),
            scenario.traffic.len(),
            scenario.actions.len(),
            scenario.prefetch.len(),
            scenario.phases.len(),
            scenario.total_duration().as_secs_f64()
        );
        return Ok(());
    }
    if let Some(peer) = &args.peer {
        let probes = !args.no_probes && odp_ebpf::is_root();
        if !args.no_probes && !probes {
            eprintln!("odp-ctl: probes skipped: loading BPF needs root (or run with --no-probes)");
        }
        return super::stress_peer::run(out, &scenario, peer, probes);
    }
    needs_a_terminal(!args.monitor, "--monitor")?;
    let stop = stop_on_signals()?;
    let mut recorder = None;
    let mut timeline = None;
    let source = if args.no_probes {
        Err("off (--no-probes)".to_string())
    } else if !odp_ebpf::is_root() {
        Err("skipped: loading BPF needs root (or run with --no-probes)".to_string())
    } else {
        recorder = args.record.as_deref().map(Recorder::create).transpose()?;
        timeline = args.perfetto.as_deref().map(Timeline::create).transpose()?;
        let config = odp_ebpf::Config {
            pid: Some(std::process::id()),
            attach: args.attach.attach,
            ..odp_ebpf::Config::default()
        };
        Source::probes(config, None).map_err(|e| format!("unavailable: {e:#}"))
    };
    if let Err(why) = &source {
        // Without probes there is nothing to show live.
        if args.monitor {
            return Err(odp_core::Error::invalid(format!(
                "--monitor needs the probes, which are {why}"
            ))
            .into());
        }
        eprintln!("odp-ctl: probes {why}");
    }
    let (source, probe_status) = match source {
        Ok(s) => (Some(s), "attached".to_string()),
        Err(why) => (None, why),
    };
    if let Some(s) = &source {
        eprintln!(
            "stress {:?}: {}/{} probes attached, running for {:.1}s",
            scenario.name,
            s.probes_attached(),
            s.plans.len(),
            scenario.total_duration().as_secs_f64()
        );
    }

    let progress_on_tty = !args.monitor && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let run_over = AtomicBool::new(false);
    let mut seen = SeenInvalidations::for_plans(source.as_ref().map_or(&[], |s| &s.plans[..]));
    let (report, engine) = std::thread::scope(|scope| {
        let stress_stop = Arc::clone(&stop);
        let source_stop = source.as_ref().map(Source::stopper);
        let run_over = &run_over;
        let worker = scope.spawn(move || {
            let result = stress::run(&scenario, &stress_stop, |p| {
                if progress_on_tty {
                    eprint!(
                        "\r{:>5.1}/{:.0}s phase {} ops {} ({:.1} MB) actions {} mismatches {} wc errors {}   ",
                        p.elapsed.as_secs_f64(),
                        p.total.as_secs_f64(),
                        p.phase + 1,
                        p.ops,
                        p.bytes as f64 / 1e6,
                        p.actions,
                        p.mismatches,
                        p.wc_errors
                    );
                }
            });
            if progress_on_tty {
                eprintln!();
            }
            // The run is over: let the probes drain and stop.
            run_over.store(true, Ordering::Release);
            if let Some(s) = source_stop {
                s.store(true, Ordering::Relaxed);
            }
            result
        });
        let engine = source.map(|source| {
            let mut sinks: Vec<&mut dyn Sink> = vec![&mut seen];
            if let Some(r) = recorder.as_mut() {
                sinks.push(r);
            }
            if let Some(t) = timeline.as_mut() {
                sinks.push(t);
            }
            let mut screen = if args.monitor {
                Some(Tui::start(&source, 10, None)?)
            } else {
                None
            };
            if let Some(s) = screen.as_mut() {
                sinks.push(s);
            }
            let run = Run {
                stop: &stop,
                deadline: None,
                until: if args.monitor {
                    Until::SinkStops
                } else {
                    Until::SourceEnds
                },
                // q or a signal ends the run too, and the workers stop before the probes
                // detach: taking a fentry trampoline off a function that other CPUs are
                // hammering is what the kernel's text patching has to get right, and in the
                // TCG guest it did not (an int3 oops in __mmu_notifier_invalidate_range_start).
                before_detach: &|| {
                    stop.store(true, Ordering::Relaxed);
                    while !run_over.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                },
            };
            live::run(
                source,
                Engine::new(AnalysisConfig::default()),
                &mut sinks,
                run,
            )
            .map(|(engine, _)| engine)
        });
        let report = worker.join().unwrap_or_else(|payload| {
            Err(odp_core::Error::invalid(format!(
                "the stress run panicked: {}",
                stress::panic_message(payload.as_ref())
            )))
        });
        (report, engine)
    });
    let mut report = report?;
    if let Some(Ok(engine)) = &engine {
        report.explain_wc_errors(engine.gave_up());
    }
    let probes = match engine {
        Some(Ok(engine)) => Probes {
            status: probe_status,
            summary: Some(engine.summary()),
            matching: seen.matching(&report.action_log),
            invalidations_not_kept: seen.shed,
        },
        Some(Err(e)) => Probes {
            status: format!("failed: {e:#}"),
            summary: None,
            matching: BTreeMap::new(),
            invalidations_not_kept: 0,
        },
        None => Probes {
            status: probe_status,
            summary: None,
            matching: BTreeMap::new(),
            invalidations_not_kept: 0,
        },
    };
    print_report(out, &report, &probes)?;
    // The report says it all already; in --json a second document would break the promise
    // of one document per command.
    verdict(&report).map_err(|e| AlreadyReported(e).into())
}

fn verdict(report: &Report) -> anyhow::Result<()> {
    if !report.worker_errors.is_empty() {
        anyhow::bail!(
            "{} worker(s) failed: {}",
            report.worker_errors.len(),
            report.worker_errors.join("; ")
        );
    }
    if report.mismatches > 0 || report.wc_errors > 0 {
        return Err(DataMismatch(format!(
            "{} mismatched pages, {} failed work completions",
            report.mismatches, report.wc_errors
        ))
        .into());
    }
    Ok(())
}

fn print_report(out: &Output, report: &Report, probes: &Probes) -> anyhow::Result<()> {
    if out.json {
        return out.json(&Document { report, probes });
    }
    println!(
        "scenario {:?} on {}, seed {}, {:.2}s{}",
        report.scenario,
        report.device,
        report.seed,
        report.duration_s,
        if report.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    let mut traffic = table(&[
        "worker",
        "op",
        "MR",
        "ops",
        "MB/s",
        "pages checked",
        "zeroed/torn by actions",
        "mismatches",
        "wc errors",
    ]);
    for t in &report.traffic {
        traffic.add_row(vec![
            t.worker.clone(),
            t.op.map_or("-", |o| o.name()).to_string(),
            t.mr.clone(),
            t.ops.to_string(),
            format!("{:.1}", t.mb_per_s),
            t.pages_checked.to_string(),
            format!("{}/{}", t.pages_zeroed_by_actions, t.pages_torn_by_actions),
            t.mismatches.to_string(),
            t.wc_errors.to_string(),
        ]);
    }
    println!("{traffic}");
    if !report.actions.is_empty() {
        let mut actions = table(&["action", "done", "failed", "per s", "seen by probes"]);
        for (action, s) in &report.actions {
            let seen = probes.matching.get(action).map_or_else(
                || "-".to_string(),
                |m| {
                    let mut text = format!("{}/{}", m.matched, m.actions);
                    if m.no_change > 0 {
                        text.push_str(&format!(" (+{} changed nothing)", m.no_change));
                    }
                    text
                },
            );
            actions.add_row(vec![
                action.name().to_string(),
                s.done.to_string(),
                s.failed.to_string(),
                format!("{:.0}", s.per_s),
                seen,
            ]);
        }
        println!("{actions}");
        if let Some(m) = probes.matching.values().next() {
            println!(
                "(seen: one {} event in the action's address space, of the cause it makes, over \
                 its range and inside its window)",
                m.point
            );
        }
        if probes.invalidations_not_kept > 0 {
            println!(
                "({} invalidations past the matching bound were counted, not matched)",
                probes.invalidations_not_kept
            );
        }
    }
    for p in &report.prefetch {
        println!(
            "prefetch {}: {} calls, {} failed, {:.1} MB advised",
            p.worker,
            p.calls,
            p.failed,
            p.bytes as f64 / 1e6
        );
    }
    for m in &report.first_mismatches {
        if m.op == stress::TrafficOp::FetchAdd {
            println!(
                "MISMATCH {} fetch-add {} word {:#x}: expected count {}, found {:#x}{}",
                m.worker,
                m.mr,
                m.first_bad,
                m.expected_raw,
                m.actual_raw,
                if m.page_was_invalidated {
                    "; the page was invalidated meanwhile"
                } else {
                    ""
                }
            );
            continue;
        }
        println!(
            "MISMATCH {} {} {} page {:#x}: {} bad bytes from {:#x}; expected MR {} gen {} offset {:#x}, found {:#018x} (MR {} gen {} offset {:#x}){}",
            m.worker,
            m.op.name(),
            m.mr,
            m.page_offset,
            m.bad_bytes,
            m.first_bad,
            m.expected.mr,
            m.expected.generation,
            m.expected.offset,
            m.actual_raw,
            m.actual.mr,
            m.actual.generation,
            m.actual.offset,
            if m.page_was_invalidated { "; the page was invalidated meanwhile" } else { "" }
        );
        for a in &m.nearby_actions {
            println!(
                "    nearby: {} {:#x}+{:#x} at {}..{} ns",
                a.action.name(),
                a.addr,
                a.len,
                a.start_ns,
                a.end_ns
            );
        }
    }
    for e in &report.first_wc_errors {
        println!("WC ERROR {}", e.message);
        for f in &e.causes {
            println!("    cause: {} {}", f.kind.name(), f.detail);
        }
        if let (true, Some(summary)) = (e.causes.is_empty(), &probes.summary) {
            let lost = summary.source.events_lost();
            println!(
                "    cause: no fault that gave up on this memory was seen by the probes{}",
                if lost > 0 {
                    format!(" ({lost} events never reached the analysis: it may be among those)")
                } else {
                    String::new()
                }
            );
        }
    }
    for e in &report.worker_errors {
        println!("WORKER FAILED {e}");
    }
    println!();
    match &probes.summary {
        Some(summary) => {
            println!("kernel side (probes):");
            print_summary(out, summary, None)?;
        }
        None => println!("kernel side: probes {}", probes.status),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpf_common::Point;

    #[test]
    fn invalidations_past_the_bound_are_counted_not_kept() {
        let engine = Engine::new(AnalysisConfig::default());
        let mut seen = SeenInvalidations::for_plans(&[]);
        seen.point = Point::RxeInvalidate;
        let invalidation = OdpEvent {
            point: Point::RxeInvalidate as u16,
            ..OdpEvent::default()
        };
        let unrelated = OdpEvent {
            point: Point::MapDma as u16,
            ..OdpEvent::default()
        };
        for _ in 0..SEEN_KEPT + 3 {
            seen.event(&invalidation, &engine).expect("sink");
        }
        seen.event(&unrelated, &engine).expect("sink");
        assert_eq!(seen.kept.len(), SEEN_KEPT);
        assert_eq!(seen.shed, 3, "a fault is not an invalidation, shed or kept");
    }
}
