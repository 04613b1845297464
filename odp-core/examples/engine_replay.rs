//! Engine throughput on a real capture: decodes a recording (`trace --json`, `monitor --record`)
//! once, repeats it back to back until at least `MIN_EVENTS` events (later copies shifted in
//! time, as if the workload ran on), then times only `Engine::ingest` over them on one core.
//!
//! Usage: engine_replay RECORDING [MIN_EVENTS]
//! Prints `events=N ns=T mrs=M faults=F races=R` for `cargo xtask bench monitor`.

use std::io::BufRead;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bpf_common::OdpEvent;
use odp_core::analysis::{AnalysisConfig, Engine};
use odp_core::trace::Record;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        bail!("usage: engine_replay RECORDING [MIN_EVENTS]");
    };
    let min_events: usize = match args.next() {
        Some(n) => n.parse().context("MIN_EVENTS")?,
        None => 4_000_000,
    };
    let file = std::fs::File::open(&path).with_context(|| path.clone())?;
    let mut capture: Vec<OdpEvent> = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() || line.starts_with("{\"summary\"") {
            continue;
        }
        let record: Record = serde_json::from_str(&line).context("not a trace event")?;
        capture.extend(record.to_event());
    }
    let (Some(first), Some(last)) = (capture.first(), capture.last()) else {
        bail!("{path}: no events");
    };
    // A gap of a second between copies keeps each copy's races and retries its own.
    let period = last.ts_ns - first.ts_ns + 1_000_000_000;
    let copies = min_events.div_ceil(capture.len());
    let mut stream = Vec::with_capacity(copies * capture.len());
    for copy in 0..copies as u64 {
        stream.extend(capture.iter().map(|e| OdpEvent {
            ts_ns: e.ts_ns + copy * period,
            ..*e
        }));
    }
    let mut engine = Engine::new(AnalysisConfig::default());
    let started = Instant::now();
    for e in &stream {
        engine.ingest(e);
    }
    let ns = started.elapsed().as_nanos();
    let summary = engine.summary();
    println!(
        "events={} ns={ns} mrs={} faults={} races={}",
        engine.events(),
        summary.mrs.len(),
        summary.totals.counts.faults,
        summary.totals.counts.races
    );
    Ok(())
}
