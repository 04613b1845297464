//! The recorder sink: every event the engine saw, as the JSON Lines `trace --json` writes and
//! `--replay` reads.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use bpf_common::OdpEvent;
use odp_core::analysis::Engine;
use odp_core::trace::{write_clock_line, write_json_line};

use super::{Flow, Sink, State};

/// A recording's first line, the host's clock reading, written once the source has one
/// (before the first event, or at the end of a run without events).
#[derive(Default)]
pub struct ClockLine {
    written: bool,
}

impl ClockLine {
    pub fn write(&mut self, out: &mut impl Write, engine: &Engine) -> std::io::Result<()> {
        if self.written {
            return Ok(());
        }
        self.written = true;
        match &engine.source.clocks {
            Some(clocks) => write_clock_line(out, clocks),
            None => Ok(()),
        }
    }
}

pub struct Recorder {
    out: BufWriter<File>,
    clock_line: ClockLine,
    /// The first write error: reported at the end, so a full disk does not cut the run short.
    error: Option<std::io::Error>,
}

impl Recorder {
    /// Creates the file now, so a bad path fails before any probe is attached.
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let file = File::create(path).map_err(|e| {
            odp_core::Error::invalid(format!("cannot create {}: {e}", path.display()))
        })?;
        Ok(Recorder {
            out: BufWriter::new(file),
            clock_line: ClockLine::default(),
            error: None,
        })
    }
}

impl Sink for Recorder {
    fn event(&mut self, e: &OdpEvent, engine: &Engine) -> anyhow::Result<()> {
        if self.error.is_none() {
            if let Err(err) = self
                .clock_line
                .write(&mut self.out, engine)
                .and_then(|()| write_json_line(&mut self.out, e))
            {
                self.error = Some(err);
            }
        }
        Ok(())
    }

    fn tick(&mut self, _engine: &Engine, _state: &State) -> anyhow::Result<Flow> {
        if self.error.is_none() {
            if let Err(err) = self.out.flush() {
                self.error = Some(err);
            }
        }
        Ok(Flow::Continue)
    }

    /// Ends the recording with the line a replay reads back for what this run lost and
    /// attached (the names `trace --json`'s closing line uses).
    fn finish(&mut self, engine: &Engine) -> anyhow::Result<()> {
        let f = &engine.source;
        let closing = serde_json::json!({ "summary": {
            "events": engine.events(),
            "drops": f.drops,
            "missed": f.missed,
            "missed_per_point": f.missed_per_point,
            "unpaired": f.unpaired,
            "unflushed": f.unflushed,
            "overflow": f.overflow,
            "attached": f.probes_attached,
            "probes_total": f.probes_total,
        }});
        if self.error.is_none() {
            if let Err(err) = self
                .clock_line
                .write(&mut self.out, engine)
                .and_then(|()| serde_json::to_writer(&mut self.out, &closing).map_err(Into::into))
                .and_then(|()| self.out.write_all(b"\n"))
            {
                self.error = Some(err);
            }
        }
        if let Err(err) = self.out.flush() {
            self.error.get_or_insert(err);
        }
        match self.error.take() {
            Some(err) => Err(anyhow::Error::from(err).context("writing the recording")),
            None => Ok(()),
        }
    }
}
