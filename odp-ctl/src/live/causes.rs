//! The causes of this host's requester retries, asked of the host that answered them: a sink
//! hands each completer run the probes see (a transport retry, an RNR wait, a request failed
//! for retries) to a thread that holds a questions-only connection to `odp-ctl serve --probes`
//! on the peer and asks which of its ODP faults held the run's window up.
//!
//! Retries are asked about in batches, each a second after the newest was seen: a fault still
//! in progress when the requester's timer fired has ended by then, and the peer catches its
//! own stream up once per batch. A run on a QP connected to another host comes back without
//! a cause (the peer has no such QP).

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bpf_common::OdpEvent;
use odp_core::analysis::Engine;
use odp_core::peer::Questions;
use odp_core::remote::{Attributed, RequesterRetry, RetryReport};
use odp_core::verbs::{Context, PeerConfig, Route};
use serde::Serialize;

use super::Sink;

/// How long after a run was seen it is asked about.
const ASK_DELAY: Duration = Duration::from_secs(1);
/// The shortest time between two batches of questions.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// Runs waiting to be asked about; past it they are counted as not asked.
const QUEUED_MAX: usize = 4096;
/// The newest runs kept for display, of all and of those with a fault named.
const RECENT_KEPT: usize = 16;
/// After a failed connection, the next attempt waits this long.
const RECONNECT_AFTER: Duration = Duration::from_secs(5);

/// What the peer said about this host's retries so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerCauses {
    /// The peer asked (`serve --probes` there).
    pub peer: String,
    /// Completer runs seen here that gave up waiting (retries, RNR waits, failures).
    pub runs: u64,
    /// Of them, those the peer answered about.
    pub asked: u64,
    /// Of those, the runs the peer named one of its ODP faults (or a copy stalled behind an
    /// invalidation) for.
    pub caused_by_odp_faults: u64,
    /// Runs not asked about: the peer could not be reached or answered, the queue to it was
    /// full, or the run ended first.
    pub not_asked: u64,
    /// The newest runs asked about, oldest first.
    pub recent: VecDeque<Attributed>,
    /// The newest runs the peer named a fault for, oldest first (a busy link's newest runs are
    /// often its own control messages', which fault nowhere).
    pub named: VecDeque<Attributed>,
    /// Why the last attempt to ask failed, if it did.
    pub error: Option<String>,
}

impl PeerCauses {
    fn take(&mut self, report: &RetryReport) {
        self.asked += report.attributed.len() as u64;
        self.caused_by_odp_faults += report.caused_by_odp_faults;
        self.not_asked += report.not_asked;
        for a in &report.attributed {
            keep_newest(&mut self.recent, *a);
            if a.cause.is_some() {
                keep_newest(&mut self.named, *a);
            }
        }
        self.error = None;
    }

    /// One line for a person: how many runs, how many asked, how many the peer's faults caused,
    /// and the newest cause named.
    pub fn line(&self) -> String {
        let mut line = format!(
            "peer {}: {} requester retry runs here, {} asked, {} caused by its ODP faults",
            self.peer, self.runs, self.asked, self.caused_by_odp_faults
        );
        if self.not_asked > 0 {
            line += &format!(", {} not asked", self.not_asked);
        }
        if let Some(error) = &self.error {
            line += &format!(" ({error})");
        }
        line
    }

    /// The newest run the peer named a fault for, as a sentence.
    pub fn latest_cause(&self) -> Option<String> {
        self.named.back().and_then(|a| {
            a.cause.map(|fault| {
                format!(
                    "QP {} PSNs {}..{}: {fault}",
                    a.retry.qp, a.retry.psn, a.retry.next_psn
                )
            })
        })
    }
}

fn keep_newest(list: &mut VecDeque<Attributed>, a: Attributed) {
    if list.len() >= RECENT_KEPT {
        list.pop_front();
    }
    list.push_back(a);
}

/// The shared view of what the peer said, for the screen, the metrics and the summary.
pub type SharedCauses = Arc<Mutex<PeerCauses>>;

/// The sink: feeds the asking thread; its answers land in a SharedCauses.
pub struct CauseAsker {
    shared: SharedCauses,
    queue: Option<SyncSender<(Instant, RequesterRetry)>>,
    worker: Option<JoinHandle<()>>,
}

impl CauseAsker {
    /// Starts the asking thread for the serving side at `peer`.
    pub fn start(peer: SocketAddrV4) -> anyhow::Result<CauseAsker> {
        let shared = Arc::new(Mutex::new(PeerCauses {
            peer: peer.to_string(),
            ..PeerCauses::default()
        }));
        let (queue, retries) = std::sync::mpsc::sync_channel(QUEUED_MAX);
        let worker = std::thread::Builder::new()
            .name("odp-causes".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    let mut line = PeerLine::new(peer);
                    // At once, so a peer that cannot answer is named before any retry.
                    if let Err(why) = line.ready() {
                        if let Ok(mut causes) = shared.lock() {
                            causes.error = Some(why);
                        }
                    }
                    ask_until_closed(&retries, &shared, |runs| line.ask(runs));
                    line.close();
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the thread that asks {peer}: {e}"))?;
        Ok(CauseAsker {
            shared,
            queue: Some(queue),
            worker: Some(worker),
        })
    }

    pub fn shared(&self) -> SharedCauses {
        Arc::clone(&self.shared)
    }

    fn count(&self, update: impl FnOnce(&mut PeerCauses)) {
        if let Ok(mut causes) = self.shared.lock() {
            update(&mut causes);
        }
    }

    /// Lets the thread ask about what it holds, and waits for it.
    fn finish_asking(&mut self) {
        drop(self.queue.take());
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                self.count(|c| c.error = Some("the asking thread panicked".into()));
            }
        }
    }
}

impl Sink for CauseAsker {
    fn event(&mut self, e: &OdpEvent, _engine: &Engine) -> anyhow::Result<()> {
        let Some(retry) = RequesterRetry::from_event(e) else {
            return Ok(());
        };
        self.count(|c| c.runs += 1);
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        match queue.try_send((Instant::now(), retry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.count(|c| c.not_asked += 1)
            }
        }
        Ok(())
    }

    fn finish(&mut self, _engine: &Engine) -> anyhow::Result<()> {
        self.finish_asking();
        Ok(())
    }
}

impl Drop for CauseAsker {
    fn drop(&mut self) {
        self.finish_asking();
    }
}

/// The asking thread: gathers runs into batches and has `ask` answer each batch (with the
/// report, or why there is none), until the sink closes the queue; then asks about what is left.
fn ask_until_closed(
    retries: &Receiver<(Instant, RequesterRetry)>,
    shared: &Mutex<PeerCauses>,
    mut ask: impl FnMut(&[RequesterRetry]) -> Result<RetryReport, String>,
) {
    // Runs with when they were seen, oldest first.
    let mut pending: VecDeque<(Instant, RequesterRetry)> = VecDeque::new();
    let mut closed = false;
    let record = |update: &mut dyn FnMut(&mut PeerCauses)| {
        if let Ok(mut causes) = shared.lock() {
            update(&mut causes);
        }
    };
    // The last batch's time: one batch a second at most, so runs that trickle in go together
    // and the peer catches its stream up once for them.
    let mut last_batch: Option<Instant> = None;
    loop {
        let next_batch = last_batch.map(|t| t + ASK_EVERY);
        if !closed {
            let wait = pending
                .front()
                .map_or(Duration::from_millis(200), |(seen, _)| {
                    (*seen + ASK_DELAY)
                        .max(next_batch.unwrap_or(*seen))
                        .saturating_duration_since(Instant::now())
                });
            match retries.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(run) if pending.len() < QUEUED_MAX => pending.push_back(run),
                Ok(_) => record(&mut |c| c.not_asked += 1),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
        }
        let ready = if closed {
            // The last runs wait out their delay too, then all go.
            let Some((newest, _)) = pending.back() else {
                break;
            };
            std::thread::sleep((*newest + ASK_DELAY).saturating_duration_since(Instant::now()));
            pending.len()
        } else if next_batch.is_some_and(|t| Instant::now() < t) {
            0
        } else {
            let now = Instant::now();
            pending
                .iter()
                .take_while(|(seen, _)| *seen + ASK_DELAY <= now)
                .count()
        };
        if ready == 0 {
            continue;
        }
        last_batch = Some(Instant::now());
        let asking: Vec<RequesterRetry> = pending.drain(..ready).map(|(_, run)| run).collect();
        match ask(&asking) {
            Ok(report) => record(&mut |c| c.take(&report)),
            Err(why) => record(&mut |c| {
                c.not_asked += asking.len() as u64;
                c.error = Some(why.clone());
            }),
        }
    }
}

/// The questions-only connection to the peer, made when first needed and again after it broke.
struct PeerLine {
    peer: SocketAddrV4,
    questions: Option<Questions>,
    next_attempt: Instant,
}

impl PeerLine {
    fn new(peer: SocketAddrV4) -> PeerLine {
        PeerLine {
            peer,
            questions: None,
            next_attempt: Instant::now(),
        }
    }

    /// Connected, to a peer that can answer (one question about no QP finds out): or why not.
    fn ready(&mut self) -> Result<&mut Questions, String> {
        if self.questions.is_none() {
            if Instant::now() < self.next_attempt {
                return Err("not answering; trying again shortly".into());
            }
            self.next_attempt = Instant::now() + RECONNECT_AFTER;
            let mut q = connect(self.peer).map_err(|e| format!("cannot reach it: {e}"))?;
            match q.explain(&[RequesterRetry::default()]) {
                Ok(Ok(_)) => self.questions = Some(q),
                Ok(Err(why)) => {
                    // It answers, but cannot name faults: goodbye until the next attempt.
                    let _ = q.close();
                    return Err(why);
                }
                Err(e) => return Err(format!("asking failed: {e}")),
            }
        }
        self.questions
            .as_mut()
            .ok_or_else(|| "not connected".into())
    }

    fn ask(&mut self, runs: &[RequesterRetry]) -> Result<RetryReport, String> {
        match self.ready()?.explain(runs) {
            Ok(answer) => answer,
            Err(e) => {
                // The connection is gone or broken: a new one for the next batch.
                self.questions = None;
                self.next_attempt = Instant::now() + RECONNECT_AFTER;
                Err(format!("asking failed: {e}"))
            }
        }
    }

    /// Says goodbye; one that fails leaves the peer to notice the disconnect.
    fn close(self) {
        if let Some(q) = self.questions {
            let _ = q.close();
        }
    }
}

/// The questions QP's ACK timeout (IB's code: 4.096 us x 2^20, about 4.3 s). A question waits
/// for its answer anyway, and a retransmission on this QP would land in the port's counters
/// beside the retries of the traffic being studied.
const QUESTIONS_ACK_TIMEOUT: u8 = 20;

fn connect(peer: SocketAddrV4) -> odp_core::Result<Questions> {
    let config = PeerConfig {
        ack_timeout: Some(QUESTIONS_ACK_TIMEOUT),
        ..PeerConfig::default()
    };
    let route = Route::resolve(peer, &config)?;
    let (device, _) = route.device()?;
    let pd = Context::open(Some(&device))?.alloc_pd()?;
    Questions::connect(route, &pd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(qp: u32, psn: u32) -> RequesterRetry {
        RequesterRetry {
            qp,
            dest_qp: qp + 1,
            psn,
            next_psn: psn + 4,
            retries: 1,
            exceeded: 0,
            rnr_naks: 0,
            rnr_exceeded: 0,
        }
    }

    /// Runs are asked about a delay after they were seen, in batches, all of them once the
    /// sink closes; a batch the peer cannot answer is counted as not asked, with the reason.
    #[test]
    fn runs_are_asked_about_after_their_delay_and_all_before_the_end() {
        let shared = Mutex::new(PeerCauses::default());
        let (queue, retries) = std::sync::mpsc::sync_channel(QUEUED_MAX);
        let asked: Mutex<Vec<(Duration, Vec<u32>)>> = Mutex::new(Vec::new());
        let last_sent = Mutex::new(Duration::ZERO);
        let started = Instant::now();
        std::thread::scope(|scope| {
            let (shared, asked) = (&shared, &asked);
            scope.spawn(move || {
                ask_until_closed(&retries, shared, |runs| {
                    let psns: Vec<u32> = runs.iter().map(|r| r.psn).collect();
                    asked.lock().expect("asked").push((started.elapsed(), psns));
                    if runs.iter().any(|r| r.qp == 99) {
                        return Err("without --probes".into());
                    }
                    RetryReport::build(runs, |r| {
                        Ok(
                            (r.psn % 2 == 0).then_some(odp_core::remote::ResponderFault {
                                delay: odp_core::remote::Delay::Fault,
                                qp: r.dest_qp,
                                psn: r.psn,
                                start: 0x1000,
                                len: 4096,
                                duration_ns: 5_000_000,
                                ret: 1,
                            }),
                        )
                    })
                    .map_err(|e| e.to_string())
                });
            });
            for psn in [10, 11, 12] {
                queue.send((Instant::now(), run(7, psn))).expect("queued");
            }
            std::thread::sleep(ASK_DELAY + Duration::from_millis(500));
            queue.send((Instant::now(), run(99, 13))).expect("queued");
            std::thread::sleep(ASK_DELAY + Duration::from_millis(500));
            // Runs that trickle in are asked about together, not one batch each.
            for psn in 20..27 {
                queue.send((Instant::now(), run(7, psn))).expect("queued");
                std::thread::sleep(Duration::from_millis(150));
            }
            std::thread::sleep(2 * ASK_DELAY);
            *last_sent.lock().expect("last sent") = started.elapsed();
            queue.send((Instant::now(), run(7, 14))).expect("queued");
            drop(queue);
        });
        let asked = asked.into_inner().expect("asked");
        let batches: Vec<&Vec<u32>> = asked.iter().map(|(_, psns)| psns).collect();
        // The runs that trickled in over about a second go in two batches (the first due
        // alone, the rest a second later), three where a loaded host stretched the trickle.
        let trickle = batches
            .get(2..batches.len().saturating_sub(1))
            .unwrap_or(&[]);
        assert!(
            batches.len() >= 4
                && batches[..2] == [&vec![10, 11, 12], &vec![13]]
                && batches.last() == Some(&&vec![14])
                && (2..=3).contains(&trickle.len())
                && trickle.iter().copied().flatten().copied().eq(20..27),
            "{asked:?}"
        );
        for (at, _) in &asked {
            assert!(*at >= ASK_DELAY, "asked {at:?} after the start: {asked:?}");
        }
        for pair in asked.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= ASK_EVERY, "{asked:?}");
        }
        // The last, seen just before the end, still waited out its delay.
        let last = asked.last().expect("asked").0;
        let sent = last_sent.into_inner().expect("last sent");
        assert!(last >= sent + ASK_DELAY, "sent {sent:?}: {asked:?}");
        let causes = shared.into_inner().expect("causes");
        assert_eq!(causes.asked, 11);
        assert_eq!(
            causes.caused_by_odp_faults, 7,
            "psns 10, 12, 20, 22, 24, 26, 14"
        );
        assert_eq!(causes.not_asked, 1);
        assert_eq!(causes.error, None, "a later answer clears the error");
        assert_eq!(causes.recent.len(), 11);
        assert_eq!(causes.named.len(), 7);
        assert!(causes.named.iter().all(|a| a.cause.is_some()));
        let latest = causes.latest_cause().expect("a cause named");
        assert!(
            latest.starts_with("QP 7 PSNs 14..18: the peer's ODP fault"),
            "{latest}"
        );
    }
}
