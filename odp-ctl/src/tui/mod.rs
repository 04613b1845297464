//! The live screen (monitor, stress --monitor) as a sink of the pipeline: events go to the app
//! state (app.rs), each tick draws a frame when one is due (view.rs) and answers the keys that
//! came meanwhile.

mod app;
mod view;

use std::time::{Duration, Instant};

use bpf_common::OdpEvent;
use odp_core::analysis::Engine;
use ratatui::crossterm::event::{self, Event};
use ratatui::DefaultTerminal;

use crate::live::{Flow, Sink, Source, State};
use app::App;

pub struct Tui {
    app: App,
    /// None once the terminal is given back.
    terminal: Option<DefaultTerminal>,
    frame: Duration,
    next_frame: Instant,
}

impl Tui {
    /// Takes over the terminal; it is restored when the run stops, on error and on panic
    /// (ratatui's hook).
    /// With `peer_causes`, the header shows what the peer said of this host's retries.
    pub fn start(
        source: &Source,
        fps: u32,
        peer_causes: Option<crate::live::SharedCauses>,
    ) -> anyhow::Result<Tui> {
        let mut app = App::new(
            source.label.clone(),
            source.probes_attached(),
            source.plans.len(),
        );
        app.peer_causes = peer_causes;
        Ok(Tui {
            app,
            terminal: Some(ratatui::try_init()?),
            frame: Duration::from_secs(1) / fps.max(1),
            next_frame: Instant::now(),
        })
    }
}

impl Sink for Tui {
    fn event(&mut self, e: &OdpEvent, _engine: &Engine) -> anyhow::Result<()> {
        self.app.push(e);
        Ok(())
    }

    fn tick(&mut self, engine: &Engine, state: &State) -> anyhow::Result<Flow> {
        let Some(terminal) = &mut self.terminal else {
            return Ok(Flow::Stop);
        };
        self.app.source_done = state.source_done;
        self.app.drops = state.losses.drops;
        while event::poll(Duration::ZERO)? {
            match event::read()? {
                Event::Key(key) => {
                    if self.app.on_key(key, engine) == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                    self.next_frame = Instant::now();
                }
                Event::Resize(..) => self.next_frame = Instant::now(),
                _ => {}
            }
        }
        let now = Instant::now();
        if now >= self.next_frame {
            terminal.draw(|f| view::draw(f, &self.app, engine))?;
            self.next_frame = now + self.frame;
        }
        Ok(Flow::Continue)
    }

    fn close(&mut self) {
        if self.terminal.take().is_some() {
            ratatui::restore();
        }
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        self.close();
    }
}
