//! The one live pipeline: a source (probes or a recording) → the correlation engine → sinks.
//! `trace`, `monitor` and `stress` each pick a source and their sinks and hand them to `run`;
//! the pump, its pacing, its stop rules and its loss accounting are written once, here.
//!
//! A new consumer of the stream (an exporter, a timeline writer) is one new `Sink`.

mod causes;
mod evidence;
mod metrics;
mod recorder;
#[cfg(test)]
mod replay_fuzz;
mod source;
mod summary;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bpf_common::OdpEvent;
use odp_core::analysis::{Activity, Engine, Reorder};

pub use causes::{CauseAsker, PeerCauses, SharedCauses};
pub use evidence::{EvidenceSink, SharedEvidence};
pub use metrics::{serve_while, Latest, Publisher, Server};
pub use recorder::{ClockLine, Recorder};
#[cfg(test)]
pub use source::{read_recording, Line};
pub use source::{Losses, ProbeEnd, Source};
pub use summary::{print_summary, rarer_losses, Progress};

/// How often the pump drains the source when it is not busy.
const PUMP_INTERVAL: Duration = Duration::from_millis(20);
/// A drain at least this large means the source is busy: drain again without sleeping.
const BUSY_BATCH: usize = 1024;
/// Events fed between two ticks: a consumer that lags (a slow engine behind a full queue)
/// still answers keys and signals within one slice, not one queue's worth.
const FEED_SLICE: usize = 4096;

/// Whether a sink wants the run to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// A consumer of the stream. Every method runs on the pump's thread.
pub trait Sink {
    /// Each event, in order of event time (within the reordering window), after the engine
    /// has ingested it.
    fn event(&mut self, _e: &OdpEvent, _engine: &Engine) -> anyhow::Result<()> {
        Ok(())
    }

    /// Whether this sink takes the engine's records of faults, invalidations and races.
    fn wants_activity(&self) -> bool {
        false
    }

    /// The engine's records of faults, invalidations and races as it judges them (a race after
    /// both its ends), right after the event that completed them; only to sinks that want them.
    fn activity(&mut self, _records: &[Activity], _engine: &Engine) -> anyhow::Result<()> {
        Ok(())
    }

    /// After each drain (at least every 20 ms while the source runs, and once it has ended):
    /// the moment to flush output, redraw, read keys.
    fn tick(&mut self, _engine: &Engine, _state: &State) -> anyhow::Result<Flow> {
        Ok(Flow::Continue)
    }

    /// The run is stopping: release what must not wait for the last drain (the terminal).
    fn close(&mut self) {}

    /// Once, after the last event, with the engine's final state (losses recorded).
    fn finish(&mut self, _engine: &Engine) -> anyhow::Result<()> {
        Ok(())
    }
}

/// What the pump knows of its source, for sinks to show.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The source has ended (a recording read, the probes detached).
    pub source_done: bool,
    pub losses: Losses,
}

/// When the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// When the source ends (a signal or the deadline ends the source first).
    SourceEnds,
    /// When a sink says so or on a signal or the deadline: a live view stays up for study
    /// after its source has ended.
    SinkStops,
}

pub struct Run<'a> {
    /// Set by SIGINT/SIGTERM (and a traced command's exit).
    pub stop: &'a AtomicBool,
    pub deadline: Option<Instant>,
    pub until: Until,
    /// Runs once the run is stopping, before the source is stopped (a stress run's workers
    /// must stop before the probes detach).
    pub before_detach: &'a dyn Fn(),
}

/// Pumps `source` through `engine` into `sinks` until the run ends; returns the engine with the
/// source's losses and probe counts recorded.
pub fn run(
    source: Source,
    mut engine: Engine,
    sinks: &mut [&mut dyn Sink],
    run: Run<'_>,
) -> anyhow::Result<(Engine, ProbeEnd)> {
    engine.source.probes_attached = source.probes_attached();
    engine.source.probes_total = source.plans.len();
    if sinks.iter().any(|s| s.wants_activity()) {
        engine.record_activity();
    }
    let mut batch = Vec::new();
    // How much of `batch` has been fed. The source is drained again only once all of it has:
    // the source's bounded queue, where a lagging consumer's excess is shed and counted,
    // stays the one bound on what waits.
    let mut fed = 0;
    let mut order = InOrder::new(source.live);
    let mut state = State::default();
    // When the run began stopping (a signal, the deadline): the source's grace counts from it.
    let mut stopped_at: Option<Instant> = None;
    let mut failure = None;
    loop {
        let mut source_done = false;
        if fed == batch.len() {
            source_done = source.done();
            source.drain(&mut batch);
            fed = 0;
        }
        if engine.source.clocks.is_none() {
            // Set before any event is queued, so in place before the first reaches a sink.
            engine.source.clocks = source.clocks();
        }
        let slice = (batch.len() - fed).min(FEED_SLICE);
        if let Err(e) = order.feed(&mut engine, sinks, &batch[fed..fed + slice]) {
            failure = Some(e);
            break;
        }
        fed += slice;
        state.source_done = source_done && fed == batch.len();
        state.losses = source.losses();
        engine.source.drops = state.losses.drops;
        engine.source.overflow = state.losses.overflow;
        if state.source_done && run.until == Until::SourceEnds {
            break;
        }
        let signalled =
            run.stop.load(Ordering::Relaxed) || run.deadline.is_some_and(|d| Instant::now() >= d);
        if signalled && run.until == Until::SinkStops {
            break;
        }
        if signalled && stopped_at.is_none() {
            (run.before_detach)();
            source.stop();
            stopped_at = Some(Instant::now());
        }
        if stopped_at.is_some_and(|t| t.elapsed() > source.grace()) {
            // The source does not end (a read blocked in the kernel): finish reports it.
            break;
        }
        match tick(&engine, sinks, &state) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if slice < BUSY_BATCH {
            std::thread::sleep(PUMP_INTERVAL);
        }
    }
    for sink in sinks.iter_mut() {
        sink.close();
    }
    if stopped_at.is_none() {
        (run.before_detach)();
    }
    source.stop();
    let drain_until = stopped_at.unwrap_or_else(Instant::now) + source.grace();
    // What arrived before the stop still reaches the engine and the sinks.
    if failure.is_none() {
        if let Err(e) = order.feed(&mut engine, sinks, &batch[fed..]) {
            failure = Some(e);
        }
    }
    while failure.is_none() {
        let done = source.done();
        source.drain(&mut batch);
        if let Err(e) = order.feed(&mut engine, sinks, &batch) {
            failure = Some(e);
        }
        if done || Instant::now() > drain_until {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if failure.is_none() {
        if let Err(e) = order.finish(&mut engine, sinks) {
            failure = Some(e);
        }
    }
    engine.finish();
    if failure.is_none() {
        // Ranges whose end never came are judged at the finish: their records too.
        if let Err(e) = deliver_activity(&mut engine, sinks) {
            failure = Some(e);
        }
    }
    let losses = source.losses();
    let recorded = source.recorded();
    engine.source.lines_skipped = source.lines_skipped();
    let end = source.finish(drain_until);
    engine.source.drops = losses.drops;
    engine.source.missed = losses.missed;
    engine.source.unpaired = losses.unpaired;
    engine.source.unflushed = losses.unflushed;
    engine.source.overflow = losses.overflow;
    if let Some(e) = failure {
        return Err(e);
    }
    let end = end?;
    engine.source.missed_per_point = end
        .missed
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| (p.name().to_string(), *n))
        .collect();
    if let Some(recorded) = recorded {
        engine.source.missed_per_point = recorded.missed_per_point.clone();
        engine.source.probes_attached = recorded.attached;
        engine.source.probes_total = recorded.probes_total();
    }
    for sink in sinks.iter_mut() {
        sink.finish(&engine)?;
    }
    Ok((engine, end))
}

/// Runs `work` on this thread while the pump feeds `source` through a new engine into `sink` on
/// another; once `work` is over (or a signal sets `stop`, which `work` should heed), the probes
/// detach. Returns what `work` returned and the run's engine.
pub fn alongside<T>(
    source: Source,
    sink: &mut (dyn Sink + Send),
    stop: &AtomicBool,
    work: impl FnOnce() -> T,
) -> (T, anyhow::Result<(Engine, ProbeEnd)>) {
    let source_stop = source.stopper();
    let work_over = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let pump = scope.spawn(|| {
            run(
                source,
                Engine::new(odp_core::analysis::AnalysisConfig::default()),
                &mut [sink as &mut dyn Sink],
                Run {
                    stop,
                    deadline: None,
                    until: Until::SourceEnds,
                    // The work stops before the probes detach.
                    before_detach: &|| {
                        stop.store(true, Ordering::Relaxed);
                        while !work_over.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    },
                },
            )
        });
        let done = work();
        work_over.store(true, Ordering::Release);
        source_stop.store(true, Ordering::Relaxed);
        let engine = pump
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the probe pump panicked")));
        (done, engine)
    })
}

/// Waits until `thread` has finished or `deadline` has passed; whether it finished.
pub fn finished_by<T>(thread: &std::thread::JoinHandle<T>, deadline: Instant) -> bool {
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    thread.is_finished()
}

/// The stream between the source and its consumers, put in order of event time within a
/// bounded window (see `odp_core::analysis::Reorder`), with what it could not place counted.
struct InOrder {
    reorder: Reorder,
    /// Live events are on the monotonic clock, so a quiet stream is let through by the clock.
    live: bool,
    ordered: Vec<OdpEvent>,
}

impl InOrder {
    fn new(live: bool) -> Self {
        InOrder {
            reorder: if live {
                Reorder::for_live()
            } else {
                Reorder::for_recording()
            },
            live,
            ordered: Vec::new(),
        }
    }

    fn feed(
        &mut self,
        engine: &mut Engine,
        sinks: &mut [&mut dyn Sink],
        batch: &[OdpEvent],
    ) -> anyhow::Result<()> {
        self.ordered.clear();
        for e in batch {
            self.reorder.push(e, &mut self.ordered);
        }
        if self.live {
            self.reorder
                .release_before(odp_core::trace::monotonic_ns(), &mut self.ordered);
        }
        self.deliver(engine, sinks)
    }

    fn finish(&mut self, engine: &mut Engine, sinks: &mut [&mut dyn Sink]) -> anyhow::Result<()> {
        self.ordered.clear();
        self.reorder.finish(&mut self.ordered);
        self.deliver(engine, sinks)
    }

    fn deliver(&mut self, engine: &mut Engine, sinks: &mut [&mut dyn Sink]) -> anyhow::Result<()> {
        engine.source.order = self.reorder.facts;
        for e in &self.ordered {
            engine.ingest(e);
            for sink in sinks.iter_mut() {
                sink.event(e, engine)?;
            }
            deliver_activity(engine, sinks)?;
        }
        Ok(())
    }
}

/// Hands the engine's new activity records to the sinks that want them.
fn deliver_activity(engine: &mut Engine, sinks: &mut [&mut dyn Sink]) -> anyhow::Result<()> {
    let records = engine.take_activity();
    if records.is_empty() {
        return Ok(());
    }
    for sink in sinks.iter_mut().filter(|s| s.wants_activity()) {
        sink.activity(&records, engine)?;
    }
    Ok(())
}

fn tick(engine: &Engine, sinks: &mut [&mut dyn Sink], state: &State) -> anyhow::Result<Flow> {
    let mut flow = Flow::Continue;
    for sink in sinks.iter_mut() {
        if sink.tick(engine, state)? == Flow::Stop {
            flow = Flow::Stop;
        }
    }
    Ok(flow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use odp_core::analysis::AnalysisConfig;

    const CAPTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rxe-dontneed-race.jsonl"
    );

    /// Counts what reaches it, and can ask to stop after a number of ticks.
    #[derive(Default)]
    struct Counter {
        events: u64,
        ticks: u64,
        /// The most events fed between two ticks.
        most_between_ticks: u64,
        events_at_last_tick: u64,
        stop_after_ticks: Option<u64>,
        closed: bool,
        finished_with: Option<u64>,
    }

    impl Sink for Counter {
        fn event(&mut self, _e: &OdpEvent, engine: &Engine) -> anyhow::Result<()> {
            self.events += 1;
            assert_eq!(
                engine.events(),
                self.events,
                "the engine sees each event first"
            );
            Ok(())
        }

        fn tick(&mut self, _engine: &Engine, _state: &State) -> anyhow::Result<Flow> {
            self.ticks += 1;
            self.most_between_ticks = self
                .most_between_ticks
                .max(self.events - self.events_at_last_tick);
            self.events_at_last_tick = self.events;
            Ok(match self.stop_after_ticks {
                Some(n) if self.ticks >= n => Flow::Stop,
                _ => Flow::Continue,
            })
        }

        fn close(&mut self) {
            self.closed = true;
        }

        fn finish(&mut self, engine: &Engine) -> anyhow::Result<()> {
            self.finished_with = Some(engine.events());
            Ok(())
        }
    }

    fn run_capture(speed: f64, until: Until, sink: &mut Counter) -> Engine {
        let source = Source::recording(CAPTURE.into(), speed).expect("capture");
        run_source(source, until, sink)
    }

    fn run_source(source: Source, until: Until, sink: &mut Counter) -> Engine {
        let stop = AtomicBool::new(false);
        let (engine, _) = run(
            source,
            Engine::new(AnalysisConfig::default()),
            &mut [sink],
            Run {
                stop: &stop,
                deadline: None,
                until,
                before_detach: &|| {},
            },
        )
        .expect("run");
        engine
    }

    #[test]
    fn every_event_of_a_recording_reaches_the_engine_and_each_sink_once() {
        let mut sink = Counter::default();
        let engine = run_capture(0.0, Until::SourceEnds, &mut sink);
        let lines = std::fs::read_to_string(CAPTURE)
            .expect("read")
            .lines()
            .count() as u64;
        assert_eq!(sink.events, lines);
        assert_eq!(engine.events(), lines);
        assert_eq!(sink.finished_with, Some(lines));
        assert!(sink.closed);
        let c = &engine.total().counts;
        assert_eq!(
            (c.faults, c.invalidations, c.races, c.retries),
            (1473, 195, 4, 45)
        );
        assert_eq!(engine.source.overflow, 0);
    }

    #[test]
    fn a_sink_that_stops_ends_a_paced_run_early() {
        // Paced at real time the capture lasts about 0.6 s; a stop after two ticks comes first.
        let mut sink = Counter {
            stop_after_ticks: Some(2),
            ..Counter::default()
        };
        let started = Instant::now();
        run_capture(1.0, Until::SinkStops, &mut sink);
        assert_eq!(sink.ticks, 2);
        assert!(sink.closed);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_full_queue_is_fed_a_slice_at_a_time_with_ticks_between() {
        // The whole capture (8,836 events) queued before the pump starts, as behind a lagging
        // consumer: the sinks are still ticked (keys read, signals seen) every slice.
        let source = Source::recording(CAPTURE.into(), 0.0).expect("capture");
        let queued = Instant::now();
        while !source.done() && queued.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut sink = Counter::default();
        let engine = run_source(source, Until::SourceEnds, &mut sink);
        assert_eq!(engine.events(), 8836);
        assert!(
            sink.most_between_ticks <= FEED_SLICE as u64 && sink.ticks >= 2,
            "{} ticks, up to {} events between two",
            sink.ticks,
            sink.most_between_ticks
        );
    }
}
