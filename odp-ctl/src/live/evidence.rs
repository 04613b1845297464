//! The two-host evidence on one host: the responder faults it took answering peers and the
//! retries of its requester QPs, collected from the live stream for the peer protocol to ask
//! about (`odp_core::remote` attributes them).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpf_common::OdpEvent;
use odp_core::analysis::{Engine, LIVE_HOLD_NS};
use odp_core::remote::Evidence;

use super::{Flow, Sink, State};

/// Past the reordering hold, the time the probes' reader may take to bring an event in.
const READER_LAG: Duration = Duration::from_millis(250);
/// The longest a question waits for the stream to catch up (a stalled pump answers with what
/// it has).
const SETTLE_BOUND: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct SharedEvidence {
    evidence: Mutex<Evidence>,
    /// When the pump last delivered everything it held back.
    last_tick: Mutex<Option<Instant>>,
}

impl SharedEvidence {
    /// Waits until every event of a call that ended before now has reached the evidence.
    pub fn settle(&self) {
        let now = Instant::now();
        let caught_up = now + Duration::from_nanos(LIVE_HOLD_NS) + READER_LAG;
        while now.elapsed() < SETTLE_BOUND {
            let ticked = self.last_tick.lock().ok().and_then(|t| *t);
            if ticked.is_some_and(|t| t >= caught_up) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the evidence (a poisoned lock reads as empty: the pump that held it failed, and
    /// says so itself).
    pub fn with<T>(&self, read: impl FnOnce(&Evidence) -> T) -> T {
        match self.evidence.lock() {
            Ok(e) => read(&e),
            Err(_) => read(&Evidence::default()),
        }
    }
}

/// The sink that fills a SharedEvidence.
pub struct EvidenceSink(pub Arc<SharedEvidence>);

impl Sink for EvidenceSink {
    fn event(&mut self, e: &OdpEvent, _engine: &Engine) -> anyhow::Result<()> {
        if !Evidence::concerns(e) {
            return Ok(());
        }
        if let Ok(mut evidence) = self.0.evidence.lock() {
            evidence.event(e);
        }
        Ok(())
    }

    fn tick(&mut self, _engine: &Engine, _state: &State) -> anyhow::Result<Flow> {
        if let Ok(mut t) = self.0.last_tick.lock() {
            *t = Some(Instant::now());
        }
        Ok(Flow::Continue)
    }
}
