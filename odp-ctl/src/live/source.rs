//! Where the pipeline's events come from: live probes or a recording, read in a thread of their
//! own so that the consumer never waits on the source, nor the source on the consumer. Between
//! the two sits one bounded queue: live events past its bound are shed and counted (the kernel
//! side must never wait), a recording waits for room instead (nothing in a file need be lost).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bpf_common::{OdpEvent, Point};
use odp_core::trace::{ClockReading, Record};
use odp_ebpf::{Config, Delivery, PointPlan, Session, Status};

/// Events waiting between the source thread and the pump, at most (15 MB of events): several
/// seconds of the busiest stream seen in the VM, far more than one pump interval.
pub const QUEUE_EVENTS: usize = 1 << 17;

/// The bounded hand-over between the source thread and the pump.
#[derive(Default)]
struct Queue {
    pending: Mutex<Vec<OdpEvent>>,
    /// Signalled when the pump takes the pending events (a recording waits on it for room).
    room: Condvar,
    /// Live events shed because the queue was full.
    overflow: AtomicU64,
}

impl Queue {
    /// A live event: queued if there is room, else counted as shed.
    fn offer(&self, e: &OdpEvent) {
        match self.pending.lock() {
            Ok(mut pending) if pending.len() < QUEUE_EVENTS => pending.push(*e),
            _ => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A batch from a recording: waits for room rather than lose events (or until `stop`).
    fn put(&self, batch: &mut Vec<OdpEvent>, stop: &AtomicBool) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        while pending.len() >= QUEUE_EVENTS && !stop.load(Ordering::Relaxed) {
            match self.room.wait_timeout(pending, Duration::from_millis(50)) {
                Ok((guard, _)) => pending = guard,
                Err(_) => return,
            }
        }
        pending.append(batch);
    }

    fn take(&self, into: &mut Vec<OdpEvent>) {
        into.clear();
        if let Ok(mut pending) = self.pending.lock() {
            std::mem::swap(&mut *pending, into);
        }
        self.room.notify_all();
    }
}

/// What the source thread hands the pump: the queue, its losses, its end.
#[derive(Default)]
struct Inbox {
    queue: Queue,
    drops: AtomicU64,
    done: AtomicBool,
    error: Mutex<Option<anyhow::Error>>,
    end: Mutex<Option<ProbeEnd>>,
    /// A recording's own closing line, once read.
    recorded: Mutex<Option<Recorded>>,
    /// A recording's lines that were not events, by reason.
    lines_skipped: Mutex<std::collections::BTreeMap<String, u64>>,
    /// The host's clocks: read when live probes attach, or a recording's first line; set
    /// before any event is queued.
    clocks: Mutex<Option<ClockReading>>,
}

/// What the probes counted by the time they detached.
#[derive(Debug, Clone, Default)]
pub struct ProbeEnd {
    /// Calls counted in the kernel per attached point (streamed or not).
    pub hits: Vec<(Point, u64)>,
    /// Program runs the kernel skipped, per attached point.
    pub missed: Vec<(Point, u64)>,
    /// Calls whose entry could not be recorded, per attached point.
    pub unpaired: Vec<(Point, u64)>,
    /// CPU-fault records still in a batch when reading stopped.
    pub unflushed: u64,
}

impl ProbeEnd {
    fn total(counts: &[(Point, u64)]) -> u64 {
        counts.iter().map(|(_, n)| n).sum()
    }
}

/// What a recording's closing `{"summary": ...}` line says its source lost and attached (the
/// line `trace --json` and `--record` end with). A recording that lost events replays as one
/// that lost them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct Recorded {
    pub drops: u64,
    pub missed: u64,
    pub missed_per_point: std::collections::BTreeMap<String, u64>,
    pub unpaired: u64,
    pub unflushed: u64,
    pub overflow: u64,
    /// Points attached, and in all (trace's line names the skipped points instead).
    pub attached: usize,
    pub probes_total: Option<usize>,
    pub skipped: std::collections::BTreeMap<String, String>,
}

impl Recorded {
    /// Adds another closing line (recordings can be concatenated).
    fn add(&mut self, other: Recorded) {
        self.drops += other.drops;
        self.missed += other.missed;
        for (p, n) in other.missed_per_point {
            *self.missed_per_point.entry(p).or_default() += n;
        }
        self.unpaired += other.unpaired;
        self.unflushed += other.unflushed;
        self.overflow += other.overflow;
        self.attached = self.attached.max(other.attached);
        self.probes_total = self.probes_total.max(other.probes_total);
        self.skipped.extend(other.skipped);
    }

    pub fn probes_total(&self) -> usize {
        self.probes_total
            .unwrap_or(self.attached + self.skipped.len())
    }
}

/// What the source lost and counted, read when it has finished.
#[derive(Debug, Clone, Default)]
pub struct Losses {
    /// Events the ring buffer had no room for.
    pub drops: u64,
    /// Program runs the kernel skipped.
    pub missed: u64,
    /// Calls whose entry the kernel side could not record.
    pub unpaired: u64,
    /// CPU-fault records still batched when reading stopped.
    pub unflushed: u64,
    /// Events shed at the queue between the source and the pump.
    pub overflow: u64,
}

pub struct Source {
    inbox: Arc<Inbox>,
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// What a screen shows as the source.
    pub label: String,
    /// The probes' plan (empty for a recording).
    pub plans: Vec<PointPlan>,
    /// How long the source has to end once stopped before it is left behind.
    grace: Duration,
    /// Event times are the kernel's monotonic clock now (live probes), not a recording's past.
    pub live: bool,
}

fn fail(inbox: &Inbox, err: anyhow::Error) {
    if let Ok(mut e) = inbox.error.lock() {
        e.get_or_insert(err);
    }
}

impl Source {
    /// This process's probes on every point, the requester's completer too (its retries are
    /// read only by the two-host commands, whose peer is asked what caused them).
    pub fn own_with_retries() -> anyhow::Result<Source> {
        let config = Config {
            pid: Some(std::process::id()),
            points: Some(bpf_common::Point::ALL.to_vec()),
            ..Config::default()
        };
        Source::probes(config, None)
    }

    /// Live probes in a thread of their own (the session is not Send: it lives and dies there).
    /// Returns once every probe is attached, or with the reason none could be. The probes stop
    /// at `deadline`, or when `stop()` is called.
    pub fn probes(config: Config, deadline: Option<Instant>) -> anyhow::Result<Source> {
        let inbox = Arc::new(Inbox::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Vec<PointPlan>, odp_ebpf::Error>>();
        let thread = {
            let inbox = Arc::clone(&inbox);
            let stop = Arc::clone(&stop);
            // Named so that per-thread CPU (top -H, the benchmark) tells source from screen.
            std::thread::Builder::new()
                .name("odp-probes".into())
                .spawn(move || {
                    let session = match Session::start(&config) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            inbox.done.store(true, Ordering::Release);
                            return;
                        }
                    };
                    if let Ok(mut slot) = inbox.clocks.lock() {
                        *slot = Some(ClockReading::now());
                    }
                    let _ = ready_tx.send(Ok(session.plans().to_vec()));
                    let mut since_drops = 0u32;
                    let result = session.run(&stop, deadline, |delivery| {
                        let Delivery::Event(e) = delivery else {
                            return;
                        };
                        inbox.queue.offer(e);
                        // Drops only happen while events flow, so sampling here keeps the
                        // count fresh for a live header.
                        since_drops += 1;
                        if since_drops >= 4096 {
                            since_drops = 0;
                            inbox.drops.store(session.drops(), Ordering::Relaxed);
                        }
                    });
                    inbox.drops.store(session.drops(), Ordering::Relaxed);
                    let attached: Vec<Point> = session
                        .plans()
                        .iter()
                        .filter(|p| p.status == Status::Attached)
                        .map(|p| p.point)
                        .collect();
                    let end = ProbeEnd {
                        hits: attached.iter().map(|&p| (p, session.hits(p))).collect(),
                        missed: session.missed_per_point(),
                        unpaired: attached.iter().map(|&p| (p, session.unpaired(p))).collect(),
                        unflushed: session.unflushed(),
                    };
                    if let Ok(mut slot) = inbox.end.lock() {
                        *slot = Some(end);
                    }
                    if let Err(e) = result {
                        fail(
                            &inbox,
                            anyhow::Error::from(e).context("reading probe events"),
                        );
                    }
                    // The session detaches here, before the pump is told the source is done.
                    drop(session);
                    inbox.done.store(true, Ordering::Release);
                })?
        };
        match ready_rx.recv() {
            Ok(Ok(plans)) => Ok(Source {
                inbox,
                thread: Some(thread),
                stop,
                label: "live".into(),
                plans,
                grace: PROBES_GRACE,
                live: true,
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

    /// A recording (`trace --json`, `monitor --record`) paced by its timestamps: `speed` times
    /// as fast, or as fast as it reads with 0.
    pub fn recording(path: PathBuf, speed: f64) -> anyhow::Result<Source> {
        // Fail on a missing file or a directory before a screen is taken over; a FIFO opens
        // when its writer does, in the source thread, so signals still end the run meanwhile.
        replayable(&path)?;
        let inbox = Arc::new(Inbox::default());
        let stop = Arc::new(AtomicBool::new(false));
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
            let inbox = Arc::clone(&inbox);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("odp-replay".into())
                .spawn(move || {
                    match replay(&path, speed, &stop, &inbox) {
                        Ok(replayed) => {
                            if let Ok(mut slot) = inbox.recorded.lock() {
                                *slot = replayed.recorded;
                            }
                            if let Ok(mut slot) = inbox.lines_skipped.lock() {
                                *slot = replayed.skipped;
                            }
                        }
                        Err(e) => fail(&inbox, e),
                    }
                    inbox.done.store(true, Ordering::Release);
                })?
        };
        Ok(Source {
            inbox,
            thread: Some(thread),
            stop,
            label,
            plans: Vec::new(),
            grace: RECORDING_GRACE,
            live: false,
        })
    }

    pub fn probes_attached(&self) -> usize {
        self.plans
            .iter()
            .filter(|p| p.status == Status::Attached)
            .count()
    }

    /// A handle that ends the source from another thread (a stress run that is over).
    pub fn stopper(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// How long the source has to end once stopped.
    pub(super) fn grace(&self) -> Duration {
        self.grace
    }

    /// Ends the source: live probes detach, a recording stops being read.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Moves whatever arrived since the last call into `into` (cleared first).
    pub(super) fn drain(&self, into: &mut Vec<OdpEvent>) {
        self.inbox.queue.take(into);
    }

    /// The source has nothing more to give (a recording at its end, live probes detached).
    pub(super) fn done(&self) -> bool {
        self.inbox.done.load(Ordering::Acquire)
    }

    /// A recording's lines that were not events, by reason (once it has been read).
    pub(super) fn lines_skipped(&self) -> std::collections::BTreeMap<String, u64> {
        self.inbox
            .lines_skipped
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The host's clocks as the source knows them (before its first event, if at all).
    pub(super) fn clocks(&self) -> Option<ClockReading> {
        self.inbox.clocks.lock().ok().and_then(|c| *c)
    }

    /// What a recording's closing line said, once it has been read.
    pub(super) fn recorded(&self) -> Option<Recorded> {
        self.inbox.recorded.lock().ok().and_then(|r| r.clone())
    }

    /// Losses so far (the final figures once the source is done).
    pub(super) fn losses(&self) -> Losses {
        if let Some(r) = self.recorded() {
            return Losses {
                drops: r.drops,
                missed: r.missed,
                unpaired: r.unpaired,
                unflushed: r.unflushed,
                overflow: r.overflow + self.inbox.queue.overflow.load(Ordering::Relaxed),
            };
        }
        let end = self.inbox.end.lock().ok().and_then(|e| e.clone());
        let end = end.as_ref();
        Losses {
            drops: self.inbox.drops.load(Ordering::Relaxed),
            missed: end.map_or(0, |e| ProbeEnd::total(&e.missed)),
            unpaired: end.map_or(0, |e| ProbeEnd::total(&e.unpaired)),
            unflushed: end.map_or(0, |e| e.unflushed),
            overflow: self.inbox.queue.overflow.load(Ordering::Relaxed),
        }
    }

    /// Waits, until `deadline` at most, for the source thread; its failure, if any, or what
    /// the probes counted.
    pub(super) fn finish(mut self, deadline: Instant) -> anyhow::Result<ProbeEnd> {
        self.stop();
        if let Some(t) = self.thread.take() {
            // A recording's thread can be blocked in the kernel (a FIFO without a writer, a
            // device that never answers): past the deadline it is left behind to die with the
            // process, so a signal still ends the run.
            // A source that said it is done is past its last read: only its return is left.
            if !self.done() && !super::finished_by(&t, deadline) {
                anyhow::bail!(
                    "the event source did not stop within {}s (a read that never returned)",
                    self.grace.as_secs()
                );
            }
            if t.join().is_err() {
                anyhow::bail!("the event source thread panicked");
            }
        }
        if let Some(err) = self.inbox.error.lock().ok().and_then(|mut e| e.take()) {
            return Err(err);
        }
        Ok(self
            .inbox
            .end
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .unwrap_or_default())
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            if super::finished_by(&t, Instant::now() + self.grace) {
                let _ = t.join();
            }
        }
    }
}

/// How long stopped probes have to detach before they are left behind: about a second, more
/// in a slow guest.
const PROBES_GRACE: Duration = Duration::from_secs(20);
/// How long a stopped recording has: it stops between lines, unless a read blocks.
const RECORDING_GRACE: Duration = Duration::from_secs(2);

/// How far ahead of its schedule a paced replay may run before it sleeps; well under a frame.
const REPLAY_SLACK: Duration = Duration::from_millis(2);
/// Events handed over at once when the replay is not sleeping.
const REPLAY_BATCH: usize = 4096;

fn replay(path: &Path, speed: f64, stop: &AtomicBool, inbox: &Inbox) -> anyhow::Result<Replayed> {
    let queue = &inbox.queue;
    let started = Instant::now();
    let mut first_ts = None;
    // Events go over in batches, and the thread sleeps only when it is a few milliseconds
    // ahead: a lock and a sleep per event cost more than the parse.
    let mut batch = Vec::with_capacity(REPLAY_BATCH);
    let result = read_recording(path, stop, |line| {
        let e = match line {
            Line::Clocks(clocks) => {
                if let Ok(mut slot) = inbox.clocks.lock() {
                    *slot = Some(clocks);
                }
                return;
            }
            Line::Event(e) => e,
        };
        let t0 = *first_ts.get_or_insert(e.ts_ns);
        if speed > 0.0 {
            // Saturating: a timestamp far from the first one must not panic the replay.
            let due = Duration::try_from_secs_f64(e.ts_ns.saturating_sub(t0) as f64 / 1e9 / speed)
                .unwrap_or(Duration::MAX);
            if due.saturating_sub(started.elapsed()) >= REPLAY_SLACK {
                queue.put(&mut batch, stop);
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
            queue.put(&mut batch, stop);
        }
    });
    queue.put(&mut batch, stop);
    result
}

/// Refuses what cannot be a recording before it is opened: a path that is not there (or that
/// this user may not reach), or a directory. A FIFO passes: it opens when its writer does.
fn replayable(path: &Path) -> anyhow::Result<()> {
    if std::fs::metadata(path)
        .map_err(|e| cannot_open(path, e))?
        .is_dir()
    {
        return Err(odp_core::Error::invalid(format!(
            "cannot replay {}: it is a directory",
            path.display()
        ))
        .into());
    }
    Ok(())
}

/// Why a recording could not be opened, classed by its cause: not allowed to read it is a
/// permission error (exit 5); a missing file and the like are invalid input (exit 6).
fn cannot_open(path: &Path, e: std::io::Error) -> anyhow::Error {
    let what = format!("cannot open the recording {}", path.display());
    match e.raw_os_error() {
        Some(errno @ (libc::EACCES | libc::EPERM)) => {
            anyhow::Error::new(odp_core::Error::os("open file", errno)).context(what)
        }
        _ => odp_core::Error::invalid(format!("{what}: {e}")).into(),
    }
}

/// The longest line a recording may hold: a record is a few hundred bytes, so a longer line
/// is not a recording (a file without newlines, /dev/zero) and is refused, not buffered.
pub const MAX_LINE: usize = 64 << 10;

/// What a recording's line holds, for its reader.
pub enum Line {
    /// The clock reading it begins with (the first one, if recordings were concatenated).
    Clocks(ClockReading),
    Event(OdpEvent),
}

/// What reading a recording gave besides its events.
#[derive(Debug, Default)]
pub struct Replayed {
    pub events: u64,
    /// Its closing summary line(s), if it has any.
    pub recorded: Option<Recorded>,
    /// Its clock line, if it has one (not counted among the skipped lines).
    pub clocks: Option<ClockReading>,
    /// Lines that were not events, by reason (blank, closing summary, point unknown to this
    /// build).
    pub skipped: std::collections::BTreeMap<String, u64>,
}

fn invalid(path: &Path, line: usize, column: usize, what: String) -> anyhow::Error {
    odp_core::Error::invalid(format!("{}:{line}:{column}: {what}", path.display())).into()
}

/// Reads a recording (`trace --json`, `monitor --record`): one Record per line, calling
/// `on_event` in file order. Blank lines, the closing summary line(s) and records of points
/// this build does not know are skipped and counted; anything else that is not a record (a
/// line over MAX_LINE, bytes that are not UTF-8, a malformed record) is invalid input named by
/// line and column. The clock line comes to `on_line` before any event; it stops between lines
/// when `stop` is set.
pub fn read_recording(
    path: &Path,
    stop: &AtomicBool,
    mut on_line: impl FnMut(Line),
) -> anyhow::Result<Replayed> {
    let not_a_recording =
        |why: String| odp_core::Error::invalid(format!("cannot replay {}: {why}", path.display()));
    replayable(path)?;
    let file = File::open(path).map_err(|e| cannot_open(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut out = Replayed::default();
    let mut line = Vec::new();
    let mut number = 0usize;
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        number += 1;
        let read = std::io::Read::by_ref(&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| not_a_recording(format!("line {number}: {e}")))?;
        if read == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_LINE {
            return Err(invalid(
                path,
                number,
                1,
                format!(
                    "the line is longer than {} KiB: not a recording",
                    MAX_LINE >> 10
                ),
            ));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|e| invalid(path, number, e.valid_up_to() + 1, "not UTF-8 text".into()))?;
        let text = text.trim();
        let mut skip = |why: &str| *out.skipped.entry(why.to_string()).or_default() += 1;
        if text.is_empty() {
            skip("blank");
            continue;
        }
        if text.starts_with("{\"summary\"") {
            #[derive(serde::Deserialize)]
            struct Closing {
                summary: Recorded,
            }
            let closing: Closing = serde_json::from_str(text).map_err(|e| {
                invalid(
                    path,
                    number,
                    e.column(),
                    format!("not a recording's closing summary: {e}"),
                )
            })?;
            skip("closing summary");
            out.recorded
                .get_or_insert_with(Recorded::default)
                .add(closing.summary);
            continue;
        }
        if text.starts_with("{\"clocks\"") {
            #[derive(serde::Deserialize)]
            struct Opening {
                clocks: ClockReading,
            }
            let opening: Opening = serde_json::from_str(text).map_err(|e| {
                invalid(
                    path,
                    number,
                    e.column(),
                    format!("not a recording's clock line: {e}"),
                )
            })?;
            if out.clocks.is_some() || out.events > 0 {
                // Lining up needs one reading for the whole stream: the first, before events.
                skip("clock line after the first");
            } else {
                out.clocks = Some(opening.clocks);
                on_line(Line::Clocks(opening.clocks));
            }
            continue;
        }
        let record: Record = serde_json::from_str(text)
            .map_err(|e| invalid(path, number, e.column(), format!("not a trace event: {e}")))?;
        // Points this build does not know are skipped, not fatal: recordings outlive builds.
        match record.to_event() {
            Some(event) => {
                on_line(Line::Event(event));
                out.events += 1;
            }
            None => skip("point unknown to this build"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_sheds_live_events_and_counts_each_one() {
        let queue = Queue::default();
        let e = OdpEvent::default();
        for _ in 0..QUEUE_EVENTS + 5 {
            queue.offer(&e);
        }
        assert_eq!(queue.overflow.load(Ordering::Relaxed), 5);
        let mut taken = Vec::new();
        queue.take(&mut taken);
        assert_eq!(taken.len(), QUEUE_EVENTS);
        queue.offer(&e);
        assert_eq!(
            queue.overflow.load(Ordering::Relaxed),
            5,
            "room again after a take"
        );
    }

    #[test]
    fn a_recording_waits_for_room_instead_of_shedding() {
        let queue = Arc::new(Queue::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut first = vec![OdpEvent::default(); QUEUE_EVENTS];
        queue.put(&mut first, &stop);
        let writer = {
            let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut more = vec![OdpEvent::default(); 3];
                queue.put(&mut more, &stop);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !writer.is_finished(),
            "the writer must wait while the queue is full"
        );
        let mut taken = Vec::new();
        queue.take(&mut taken);
        assert_eq!(taken.len(), QUEUE_EVENTS);
        writer.join().expect("writer");
        queue.take(&mut taken);
        assert_eq!(taken.len(), 3);
        assert_eq!(queue.overflow.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_clock_line_comes_first_and_only_the_first_counts() {
        let event = r#"{"ts_ns":16057096957,"duration_ns":0,"point":"page_fault_user","group":"cpu","method":"tp_btf","pid":144,"tid":144,"comm":"x","obj":"0x0","mm":"0x1","start":"0x1000","end":"0x1001","args":[0,0,0,0],"aux":20}"#;
        let clocks = r#"{"clocks":{"boottime_ns":30,"monotonic_ns":20,"realtime_ns":10}}"#;
        let later = r#"{"clocks":{"boottime_ns":3,"monotonic_ns":2,"realtime_ns":1}}"#;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, format!("{clocks}\n{event}\n{later}\n{event}\n")).expect("write");
        let mut seen = Vec::new();
        let replayed = read_recording(&path, &AtomicBool::new(false), |line| {
            seen.push(match line {
                Line::Clocks(c) => format!("clocks {}", c.monotonic_ns),
                Line::Event(e) => format!("event {}", e.ts_ns),
            })
        })
        .expect("read");
        assert_eq!(
            seen,
            ["clocks 20", "event 16057096957", "event 16057096957"]
        );
        assert_eq!(
            replayed.clocks,
            Some(ClockReading {
                boottime_ns: 30,
                monotonic_ns: 20,
                realtime_ns: 10
            })
        );
        assert_eq!(
            replayed.skipped,
            [("clock line after the first".to_string(), 1)].into()
        );

        // A clock line that is not one is invalid input named by its line.
        std::fs::write(
            &path,
            format!("{event}\n{{\"clocks\":{{\"boottime_ns\":-1}}}}\n"),
        )
        .expect("write");
        let err = read_recording(&path, &AtomicBool::new(false), |_| {}).expect_err("refused");
        assert!(err.to_string().contains("r.jsonl:2:"), "{err}");
        assert!(err.to_string().contains("clock line"), "{err}");
    }
}
