//! The recorder sink: every event the engine saw, as the JSON Lines `trace --json` writes and
//! `--replay` reads.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use bpf_common::OdpEvent;
use odp_core::analysis::Engine;
use odp_core::trace::write_json_line;

use super::{Flow, Sink, State};

pub struct Recorder {
    out: BufWriter<File>,
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
            error: None,
        })
    }
}

impl Sink for Recorder {
    fn event(&mut self, e: &OdpEvent, _engine: &Engine) -> anyhow::Result<()> {
        if self.error.is_none() {
            if let Err(err) = write_json_line(&mut self.out, e) {
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
            if let Err(err) = serde_json::to_writer(&mut self.out, &closing)
                .map_err(std::io::Error::from)
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
