//! `odp-ctl export`: a recording as a timeline to open in Perfetto.

use std::path::PathBuf;

use odp_core::analysis::{AnalysisConfig, Engine};

use super::launch::stop_on_signals;
use crate::live::{self, Run, Sink, Source, Until};
use crate::output::Output;
use crate::perfetto::timeline::Timeline;

#[derive(clap::Args)]
pub struct Args {
    /// Write a Perfetto trace (protobuf) here: open it at ui.perfetto.dev or with
    /// trace_processor.
    #[arg(long, value_name = "OUT")]
    pub perfetto: PathBuf,
    /// The recording (from `trace --json`, `monitor --record` or `stress --record`); - reads
    /// standard input.
    #[arg(default_value = "-")]
    pub recording: PathBuf,
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    let stop = stop_on_signals()?;
    // /proc's view of the descriptor: minimal systems (the test guest) have no /dev/stdin.
    let recording = if args.recording.as_os_str() == "-" {
        PathBuf::from("/proc/self/fd/0")
    } else {
        args.recording.clone()
    };
    let source = Source::recording(recording, 0.0)?;
    let mut timeline = Timeline::create(&args.perfetto)?;
    let (engine, _) = live::run(
        source,
        Engine::new(AnalysisConfig::default()),
        &mut [&mut timeline as &mut dyn Sink],
        Run {
            stop: &stop,
            deadline: None,
            until: Until::SourceEnds,
            before_detach: &|| {},
        },
    )?;
    let written = timeline.written;
    if out.json {
        out.json(&serde_json::json!({
            "perfetto": args.perfetto,
            "events": engine.events(),
            "written": written,
        }))?;
    } else {
        println!(
            "{}: {} events -> {} device faults, {} prefetches, {} invalidations, {} races, {} \
             library calls, {} CPU faults ({} packets, {} bytes)",
            args.perfetto.display(),
            engine.events(),
            written.faults,
            written.prefetches,
            written.invalidations,
            written.races,
            written.library_calls,
            written.cpu_faults,
            written.packets,
            written.bytes
        );
    }
    Ok(())
}
