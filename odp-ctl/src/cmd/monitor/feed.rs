//! Where the monitor's events come from: live probes or a recording, delivered in batches from a
//! background thread so the screen never waits on the source (nor the source on the screen).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bpf_common::OdpEvent;
use odp_core::trace::{write_json_line, Record};
use odp_ebpf::{Config, Delivery, Session, Status};

/// Shared between the source thread and the consumer.
#[derive(Default)]
struct Shared {
    pending: Mutex<Vec<OdpEvent>>,
    drops: AtomicU64,
    missed: AtomicU64,
    done: AtomicBool,
    error: Mutex<Option<anyhow::Error>>,
}

pub struct Feed {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// What the header shows as the source.
    pub label: String,
    pub probes_attached: usize,
    pub probes_total: usize,
}

impl Feed {
    /// Moves whatever arrived since the last call into `into` (cleared first).
    pub fn drain(&self, into: &mut Vec<OdpEvent>) {
        into.clear();
        if let Ok(mut pending) = self.shared.pending.lock() {
            std::mem::swap(&mut *pending, into);
        }
    }

    pub fn drops(&self) -> u64 {
        self.shared.drops.load(Ordering::Relaxed)
    }

    /// Writes what the source lost (ring-buffer drops, program runs the kernel skipped) into
    /// the engine's facts about it.
    pub fn record_losses(&self, source: &mut odp_core::analysis::SourceFacts) {
        source.drops = self.drops();
        source.missed = self.shared.missed.load(Ordering::Relaxed);
    }

    /// The source has nothing more to give (replay at its end, live probes stopped).
    pub fn done(&self) -> bool {
        self.shared.done.load(Ordering::Acquire)
    }

    /// Waits for the source thread and reports its failure, if any.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match self.shared.error.lock().ok().and_then(|mut e| e.take()) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

fn fail(shared: &Shared, err: anyhow::Error) {
    if let Ok(mut e) = shared.error.lock() {
        *e = Some(err);
    }
}

/// Live probes in a thread of their own (the session is not Send: it lives and dies there).
/// Returns once every probe is attached, or with the reason none could be.
pub fn live(
    config: Config,
    record: Option<&Path>,
    stop: Arc<AtomicBool>,
    deadline: Option<Instant>,
) -> anyhow::Result<Feed> {
    let mut recorder = match record {
        Some(path) => {
            Some(BufWriter::new(File::create(path).map_err(|e| {
                anyhow::anyhow!("cannot create {}: {e}", path.display())
            })?))
        }
        None => None,
    };
    let shared = Arc::new(Shared::default());
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(usize, usize), odp_ebpf::Error>>();
    let thread = {
        let shared = Arc::clone(&shared);
        // Named so that per-thread CPU (top -H, the benchmark) tells source from screen.
        std::thread::Builder::new()
            .name("odp-probes".into())
            .spawn(move || {
                let session = match Session::start(&config) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        shared.done.store(true, Ordering::Release);
                        return;
                    }
                };
                let plans = session.plans();
                let attached = plans
                    .iter()
                    .filter(|p| p.status == Status::Attached)
                    .count();
                let _ = ready_tx.send(Ok((attached, plans.len())));
                let mut since_drops = 0u32;
                let mut write_error = None;
                let result = session.run(&stop, deadline, |delivery| {
                    let e = match delivery {
                        Delivery::Event(e) => e,
                        Delivery::Drained => {
                            if let (Some(w), None) = (recorder.as_mut(), &write_error) {
                                if let Err(err) = w.flush() {
                                    write_error = Some(err);
                                }
                            }
                            return;
                        }
                    };
                    if let Ok(mut pending) = shared.pending.lock() {
                        pending.push(*e);
                    }
                    if let Some(w) = recorder.as_mut() {
                        if write_error.is_none() {
                            if let Err(err) = write_json_line(w, e) {
                                write_error = Some(err);
                            }
                        }
                    }
                    // Drops only happen while events flow, so sampling here keeps the count fresh.
                    since_drops += 1;
                    if since_drops >= 4096 {
                        since_drops = 0;
                        shared.drops.store(session.drops(), Ordering::Relaxed);
                    }
                });
                shared.drops.store(session.drops(), Ordering::Relaxed);
                shared.missed.store(session.missed(), Ordering::Relaxed);
                if let Err(e) = result {
                    fail(
                        &shared,
                        anyhow::Error::from(e).context("reading probe events"),
                    );
                }
                if let Some(mut w) = recorder {
                    if let Err(e) = w.flush() {
                        write_error.get_or_insert(e);
                    }
                }
                if let Some(e) = write_error {
                    fail(
                        &shared,
                        anyhow::Error::from(e).context("writing the recording"),
                    );
                }
                shared.done.store(true, Ordering::Release);
            })?
    };
    match ready_rx.recv() {
        Ok(Ok((attached, total))) => Ok(Feed {
            shared,
            thread: Some(thread),
            label: "live".into(),
            probes_attached: attached,
            probes_total: total,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e.into())
        }
        Err(_) => {
            let _ = thread.join();
            Err(anyhow::anyhow!("the probe thread ended before attaching"))
        }
    }
}

/// Reads a recording (`trace --json`, `monitor --record`): one Record per line; the closing
/// summary line and blank lines are skipped. Calls `on_event` in file order.
pub fn read_recording(
    path: &Path,
    stop: &AtomicBool,
    mut on_event: impl FnMut(OdpEvent),
) -> anyhow::Result<u64> {
    let file = File::open(path).map_err(|e| {
        odp_core::Error::invalid(format!("cannot open the recording {}: {e}", path.display()))
    })?;
    let mut events = 0;
    for (index, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let line = line.map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let text = line.trim();
        if text.is_empty() || text.starts_with("{\"summary\"") {
            continue;
        }
        let record: Record = serde_json::from_str(text).map_err(|e| {
            odp_core::Error::invalid(format!(
                "{}:{}:{}: not a trace event: {e}",
                path.display(),
                index + 1,
                e.column()
            ))
        })?;
        // Points this build does not know are skipped, not fatal: recordings outlive builds.
        if let Some(event) = record.to_event() {
            on_event(event);
            events += 1;
        }
    }
    Ok(events)
}

/// How far ahead of its schedule a paced replay may run before it sleeps; well under a frame.
const REPLAY_SLACK: Duration = Duration::from_millis(2);
/// Events handed to the screen at once when the replay is not sleeping.
const REPLAY_BATCH: usize = 4096;

/// Replays a recording paced by its timestamps (`speed` times as fast; 0: no pacing).
pub fn replay(path: PathBuf, speed: f64, stop: Arc<AtomicBool>) -> anyhow::Result<Feed> {
    // Fail on a missing file before the screen is taken over.
    File::open(&path).map_err(|e| {
        odp_core::Error::invalid(format!("cannot open the recording {}: {e}", path.display()))
    })?;
    let shared = Arc::new(Shared::default());
    let label = format!(
        "replay {}{}",
        path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into()
        ),
        if speed > 0.0 {
            format!(" x{speed}")
        } else {
            " (max speed)".into()
        }
    );
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("odp-replay".into())
            .spawn(move || {
                let started = Instant::now();
                let mut first_ts = None;
                // Events go over in batches, and the thread sleeps only when it is a few
                // milliseconds ahead: a lock and a sleep per event cost more than the parse.
                let mut batch = Vec::new();
                let hand_over = |batch: &mut Vec<OdpEvent>| {
                    if let Ok(mut pending) = shared.pending.lock() {
                        pending.append(batch);
                    }
                };
                let result = read_recording(&path, &stop, |e| {
                    let t0 = *first_ts.get_or_insert(e.ts_ns);
                    if speed > 0.0 {
                        let due = Duration::from_secs_f64(
                            e.ts_ns.saturating_sub(t0) as f64 / 1e9 / speed,
                        );
                        if due.saturating_sub(started.elapsed()) >= REPLAY_SLACK {
                            hand_over(&mut batch);
                            // In slices, so a quit is not held up by a long gap.
                            while !stop.load(Ordering::Relaxed) {
                                let left = due.saturating_sub(started.elapsed());
                                if left.is_zero() {
                                    break;
                                }
                                std::thread::sleep(left.min(Duration::from_millis(50)));
                            }
                        }
                    }
                    batch.push(e);
                    if batch.len() >= REPLAY_BATCH {
                        hand_over(&mut batch);
                    }
                });
                hand_over(&mut batch);
                if let Err(e) = result {
                    fail(&shared, e);
                }
                shared.done.store(true, Ordering::Release);
            })?
    };
    Ok(Feed {
        shared,
        thread: Some(thread),
        label,
        probes_attached: 0,
        probes_total: 0,
    })
}
