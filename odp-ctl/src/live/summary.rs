//! The summary: the engine's aggregates as tables (or one JSON document), and the progress line
//! a summary run shows on a terminal meanwhile.

use std::time::{Duration, Instant};

use odp_core::analysis::{fmt_ns, Engine, LatencySummary, Summary};

use super::{Flow, PeerCauses, Sink, State};
use crate::output::{table, Output};

/// Rows of MRs, processes and tasks the text summary shows; `--json` has them all.
const TEXT_ROWS: usize = 20;
/// The newest retries with a fault named that the text summary shows.
const CAUSES_SHOWN: usize = 5;

/// What a completer run that gave up came to, as the start of a sentence.
fn retry_kind(r: &odp_core::remote::RequesterRetry) -> &'static str {
    if r.exceeded > 0 || r.rnr_exceeded > 0 {
        "failed for retries; "
    } else if r.rnr_naks > 0 {
        "RNR wait; "
    } else {
        "retry; "
    }
}

/// One stderr line a second while a summary run goes on (only on a terminal).
pub struct Progress {
    next: Option<Instant>,
}

impl Progress {
    pub fn on_terminal() -> Progress {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Progress {
            next: tty.then(|| Instant::now() + Duration::from_secs(1)),
        }
    }
}

impl Sink for Progress {
    fn tick(&mut self, engine: &Engine, _state: &State) -> anyhow::Result<Flow> {
        if let Some(next) = &mut self.next {
            if Instant::now() >= *next {
                let c = &engine.total().counts;
                eprint!(
                    "\r{} events, {} faults, {} invalidations, {} races, {} retries   ",
                    engine.events(),
                    c.faults,
                    c.invalidations,
                    c.races,
                    c.retries
                );
                *next += Duration::from_secs(1);
            }
        }
        Ok(Flow::Continue)
    }

    fn close(&mut self) {
        if self.next.take().is_some() {
            eprintln!();
        }
    }
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

/// The losses that are zero in a healthy run, named only when they are not: per-point misses,
/// unpaired calls, CPU faults left in a batch, events shed by a lagging consumer.
pub fn rarer_losses(f: &odp_core::analysis::SourceFacts) -> String {
    let mut text = String::new();
    if !f.missed_per_point.is_empty() {
        let per: Vec<String> = f
            .missed_per_point
            .iter()
            .map(|(p, n)| format!("{p}={n}"))
            .collect();
        text.push_str(&format!(" ({})", per.join(" ")));
    }
    for (n, what) in [
        (f.unpaired, "calls unpaired (in-flight map full)"),
        (f.unflushed, "CPU faults left in a batch"),
        (f.overflow, "shed by a lagging consumer"),
        (f.order.late, "too late to place in time order (left out)"),
        (f.order.duplicates, "exact repeats (left out)"),
        (
            f.order.out_of_span,
            "with a timestamp far outside the stream (left out)",
        ),
    ] {
        if n > 0 {
            text.push_str(&format!(", {n} {what}"));
        }
    }
    text
}

pub fn print_summary(out: &Output, s: &Summary, causes: Option<&PeerCauses>) -> anyhow::Result<()> {
    if out.json {
        let Some(causes) = causes else {
            return out.json(s);
        };
        let mut document = serde_json::to_value(s)?;
        if let Some(fields) = document.as_object_mut() {
            fields.insert("peer_causes".into(), serde_json::to_value(causes)?);
        }
        return out.json(&document);
    }
    let c = &s.totals.counts;
    println!(
        "{} events over {:.2}s, {} drops, {} missed{}{}",
        s.events,
        s.duration_s,
        s.source.drops,
        s.source.missed,
        rarer_losses(&s.source),
        if s.source.probes_total > 0 {
            format!(
                ", {}/{} probes attached",
                s.source.probes_attached, s.source.probes_total
            )
        } else {
            String::new()
        }
    );
    if !s.source.lines_skipped.is_empty() {
        let parts: Vec<String> = s
            .source
            .lines_skipped
            .iter()
            .map(|(why, n)| format!("{why} {n}"))
            .collect();
        println!("recording lines not replayed: {}", parts.join(", "));
    }
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
    if c.peer_faults + c.transport_retries + c.retry_exceeded + c.rnr_naks > 0 {
        println!(
            "two hosts: {} device faults answering a peer's requests; this host's requesters \
             {} transport retries, {} RNR NAKs, {} requests failed for retries",
            c.peer_faults, c.transport_retries, c.rnr_naks, c.retry_exceeded
        );
    }
    if let Some(causes) = causes {
        println!("{}", causes.line());
        for a in causes.named.iter().rev().take(CAUSES_SHOWN) {
            let r = &a.retry;
            if let Some(fault) = a.cause {
                println!(
                    "  QP {} -> {} PSNs {}..{}: {}{fault}",
                    r.qp,
                    r.dest_qp,
                    r.psn,
                    r.next_psn,
                    retry_kind(r)
                );
            }
        }
    }
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
        let mut tasks: Vec<(&String, &u64)> = s.invalidations_by_task.iter().collect();
        tasks.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut parts: Vec<String> = tasks
            .iter()
            .take(TEXT_ROWS)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if tasks.len() > TEXT_ROWS {
            parts.push(format!("and {} more", tasks.len() - TEXT_ROWS));
        }
        println!("invalidations by task: {}", parts.join(", "));
    }
    let summarised = &s.summarised;
    if summarised.mrs_with_coarse_latency + summarised.processes_with_coarse_latency > 0 {
        println!(
            "coarser latency: {} MRs and {} processes past the first {} each have one-digit \
             quantiles (within 1/16; min, max and mean exact)",
            summarised.mrs_with_coarse_latency,
            summarised.processes_with_coarse_latency,
            odp_core::analysis::FINE_LATENCY,
        );
    }
    if summarised.mrs_retired > 0 {
        println!(
            "retired: {} released MRs past the last {} are counted by device and process name, \
             no longer listed",
            summarised.mrs_retired,
            odp_core::analysis::RELEASED_KEPT
        );
    }
    if summarised.processes_retired > 0 {
        println!(
            "retired: {} processes with no MR left and an address space idle for a minute are \
             counted in the totals and by process name, no longer listed",
            summarised.processes_retired
        );
    }
    if summarised.mrs_retired_under_other_names > 0 {
        println!(
            "retired: {} MRs of process names past the first {} are counted under \"{}\"",
            summarised.mrs_retired_under_other_names,
            odp_core::analysis::RETIRED_NAMES_KEPT,
            odp_core::analysis::OTHER_PROCESSES
        );
    }
    if summarised.mrs_without_latency
        + summarised.processes_without_latency
        + summarised.invalidations_of_other_tasks
        > 0
    {
        println!(
            "kept in less detail (bounded memory): {} MRs and {} processes past the first {} and {} \
             without latency histograms; {} invalidations by tasks past the first {} names under {:?}",
            summarised.mrs_without_latency,
            summarised.processes_without_latency,
            odp_core::analysis::MRS_WITH_LATENCY,
            odp_core::analysis::PROCESSES_WITH_LATENCY,
            summarised.invalidations_of_other_tasks,
            odp_core::analysis::TASK_NAMES_KEPT,
            odp_core::analysis::OTHER_TASKS,
        );
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
        let mut busiest: Vec<_> = s.mrs.iter().collect();
        busiest.sort_by_key(|m| std::cmp::Reverse(m.stats.counts.faults));
        for m in busiest.iter().take(TEXT_ROWS) {
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
        if s.mrs.len() > TEXT_ROWS {
            println!(
                "(the {TEXT_ROWS} MRs with the most faults of {}; --json lists all)",
                s.mrs.len()
            );
        }
    }
    let mut busiest: Vec<_> = s.processes.iter().collect();
    busiest.sort_by_key(|p| std::cmp::Reverse(p.stats.counts.faults));
    for p in busiest.iter().take(TEXT_ROWS) {
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
    if busiest.len() > TEXT_ROWS {
        println!(
            "(the {TEXT_ROWS} processes with the most faults of {}; --json lists all)",
            busiest.len()
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
