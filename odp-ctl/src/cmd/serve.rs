//! `odp-ctl serve`: the passive side of two-host traffic. It owns the ODP MR the peer's RDMA
//! WRITEs, READs and SENDs target, and verifies what lands in it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use odp_core::analysis::Summary;
use odp_core::driver_counters::{gained_since, port_counters};
use odp_core::peer::{
    accept_and_answer, accept_and_serve, parse_address, Hello, Offer, Purpose, Served,
};
use odp_core::remote::RequesterRetry;
use odp_core::verbs::{Access, Listener, PeerConfig, Remote, Request};

use super::launch::stop_on_signals;
use super::mr::{setup, MrArgs, MrSetup};
use crate::live::{self, EvidenceSink, SharedEvidence, Source};
use crate::output::Output;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub mr: MrArgs,
    /// Listen on this address of an RDMA device's netdev (ADDR or ADDR:PORT; the device is
    /// the one holding it).
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub listen: String,
    /// Serve one connection, then exit.
    #[arg(long)]
    pub once: bool,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = odp_core::units::parse_duration)]
    pub duration: Option<Duration>,
    /// Watch this host's ODP paths while serving (needs root): the device faults,
    /// invalidations, races and retries the peers' traffic causes here, summed up at the end.
    #[arg(long)]
    pub probes: bool,
    /// The RNR NAK timer of each connection's QP (IB's 5-bit code: 1 is 0.01 ms, 14 is 1.28
    /// ms, 31 is 491.52 ms, 0 is 655.36 ms): how long a peer waits when no receive is posted
    /// here; default: what rdma_cm sets.
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u8).range(0..=31))]
    pub min_rnr_timer: Option<u8>,
}

/// What the probes saw on this host while it served.
#[derive(serde::Serialize)]
struct Probes {
    probes: Summary,
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    if args.mr.implicit {
        return Err(odp_core::Error::invalid(
            "serve verifies bytes in a buffer; an implicit MR has none",
        )
        .into());
    }
    let address = parse_address(&args.listen)?;
    let stop = stop_on_signals()?;
    // The probes attach before the MR is registered, so the engine knows it from its start,
    // and before the listener is bound: a peer that connects while they attach (seconds) is
    // refused at once and can try again, rather than queued until its own timeout has passed.
    let source = if args.probes {
        Some(Source::own_with_retries()?)
    } else {
        None
    };
    let listener = Listener::bind(
        address,
        &PeerConfig {
            min_rnr_timer: args.min_rnr_timer,
            ..PeerConfig::default()
        },
    )?;
    let (device, _) = listener.device()?;
    let mut mr_args = args.mr.clone();
    match &args.mr.device {
        Some(wanted) if *wanted != device => {
            return Err(
                odp_core::Error::invalid(format!("{address} is on {device}, not {wanted}")).into(),
            )
        }
        _ => mr_args.device = Some(device.clone()),
    }
    let setup = setup(&mr_args)?;
    let offer = Offer {
        remote: Remote::from(&setup.mr),
        odp: setup.mr.access().contains(Access::ON_DEMAND),
    };
    // On stderr in every mode, so scripts (and people) know when to connect.
    eprintln!(
        "serving a {} {} MR on {device} at {address}{}; Ctrl-C to stop",
        odp_core::units::fmt_size(setup.mr.len() as u64),
        if offer.odp { "ODP" } else { "pinned" },
        source.as_ref().map_or(String::new(), |s| format!(
            ", {}/{} probes attached",
            s.probes_attached(),
            s.plans.len()
        )),
    );
    let (served, engine) = match source {
        None => (
            serve_peers(out, args, &listener, &setup, &offer, &stop, None),
            None,
        ),
        Some(source) => {
            let evidence = Arc::new(SharedEvidence::default());
            let mut sink = EvidenceSink(Arc::clone(&evidence));
            let (served, engine) = live::alongside(source, &mut sink, &stop, || {
                serve_peers(out, args, &listener, &setup, &offer, &stop, Some(&evidence))
            });
            (served, Some(engine))
        }
    };
    let connections = served?;
    setup.mr.deregister()?;
    if let Some(engine) = engine {
        let (engine, _) = engine?;
        let summary = engine.summary();
        if out.json {
            println!("{}", serde_json::to_string(&Probes { probes: summary })?);
        } else {
            let t = &summary.totals.counts;
            let fault = summary.totals.latency.fault.as_ref();
            println!(
                "probes here: {} device faults ({} answering peers; {} pages{}), {} \
                 invalidations, {} races, {} retries, {} timeouts; {} events, {} drops",
                t.faults,
                t.peer_faults,
                t.fault_pages,
                fault.map_or(String::new(), |f| format!(
                    "; p50 {:.1} us, p99 {:.1} us",
                    f.p50_ns as f64 / 1e3,
                    f.p99_ns as f64 / 1e3
                )),
                t.invalidations,
                t.races,
                t.retries,
                summary.totals.timeouts,
                summary.events,
                summary.source.drops
            );
        }
    }
    if args.once && connections.is_empty() && !stop.load(Ordering::Relaxed) {
        return Err(odp_core::Error::Peer {
            peer: address.to_string(),
            what: "no peer connected and completed".into(),
        }
        .into());
    }
    // Wrong bytes are each connection's verdict, reported above and to its peer (which exits
    // 7); a service that served is a success.
    Ok(())
}

/// Connections for questions only served at once; more are refused until one ends.
const QUESTION_PEERS_MAX: usize = 8;
/// Traffic peers waiting for their turn; more are refused.
const TRAFFIC_WAITING_MAX: usize = 8;
/// How often the service looks at its connections between requests.
const SERVICE_POLL: Duration = Duration::from_millis(200);
/// A traffic request that waited this long for its turn is refused: its peer has given up
/// (its connect timeout, PeerConfig's 5 s, has passed).
const STALE_REQUEST: Duration = Duration::from_secs(4);

/// Refuses `request` with `reason`, said here too.
fn refuse(request: Request, reason: &str) {
    eprintln!("refused {}: {reason}", request.from);
    request.reject(reason);
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A connection's thread: the peer's address and what was served.
type Connection<'scope> = std::thread::ScopedJoinHandle<'scope, (String, odp_core::Result<Served>)>;

/// Serves traffic peers one after another, and question peers beside them, until `--once`,
/// `--duration` or `stop`.
fn serve_peers(
    out: &Output,
    args: &Args,
    listener: &Listener,
    setup: &MrSetup,
    offer: &Offer,
    stop: &AtomicBool,
    evidence: Option<&SharedEvidence>,
) -> anyhow::Result<Vec<Served>> {
    let deadline = args.duration.map(|d| Instant::now() + d);
    let port = listener.device()?;
    // Every connection's stop: set when the service ends, for whatever reason.
    let over = AtomicBool::new(false);
    let explain = |retry: &RequesterRetry, catch_up: bool| {
        let evidence = evidence.ok_or(())?;
        if catch_up {
            evidence.settle();
        }
        Ok(evidence.with(|e| e.cause(retry)))
    };
    let mut connections = Vec::new();
    let mut finished = |handle: Connection<'_>| -> anyhow::Result<()> {
        match handle.join() {
            Ok((_, Ok(served))) => {
                report(out, &served)?;
                // One peer's failure ends its connection, not the service.
                if let Some(failure) = &served.failure {
                    eprintln!("connection from {} failed: {failure}", served.peer);
                } else if !served.questions_only {
                    connections.push(served);
                }
            }
            Ok((from, Err(e))) => eprintln!("connection from {from} failed: {e}"),
            Err(panic) => eprintln!(
                "a connection's thread panicked: {}",
                odp_core::stress::panic_message(panic.as_ref())
            ),
        }
        Ok(())
    };
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (over, explain) = (&over, &explain);
        // However this closure ends (an error too), the connections are told before the scope
        // waits for them.
        let _end_connections = SetOnDrop(over);
        let mut traffic: Option<Connection<'_>> = None;
        // Traffic requests not yet accepted, with when they came.
        let mut waiting: VecDeque<(Instant, Request)> = VecDeque::new();
        let mut questions: Vec<Connection<'_>> = Vec::new();
        let served = loop {
            if traffic.as_ref().is_some_and(|t| t.is_finished()) {
                if let Some(done) = traffic.take() {
                    finished(done)?;
                    if args.once {
                        break Ok(());
                    }
                }
            }
            let (done, running): (Vec<_>, Vec<_>) =
                questions.into_iter().partition(|q| q.is_finished());
            questions = running;
            for q in done {
                finished(q)?;
            }
            let left = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() || stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            // A peer gives up on a request unanswered past its connect timeout: accepting it
            // then would wait that long again for a connection that never comes.
            while waiting
                .front()
                .is_some_and(|(came, _)| came.elapsed() > STALE_REQUEST)
            {
                if let Some((_, request)) = waiting.pop_front() {
                    refuse(request, "its turn came too late; try again");
                }
            }
            if traffic.is_none() {
                if let Some((_, request)) = waiting.pop_front() {
                    let from = request.from.clone();
                    let before = port_counters(&port.0, port.1);
                    traffic = Some(scope.spawn({
                        let port = &port;
                        move || {
                            let served = accept_and_serve(
                                request, &setup.pd, offer, &setup.mr, over, explain,
                            )
                            .map(|mut served| {
                                if let Ok(gained) =
                                    before.and_then(|before| gained_since(&port.0, port.1, &before))
                                {
                                    served.port_counters = gained;
                                }
                                served
                            });
                            (from, served)
                        }
                    }));
                }
            }
            let request = match listener.next_request(left.min(SERVICE_POLL), stop) {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(e) => break Err(e),
            };
            let hello = match Hello::check(&request.hello) {
                Ok(hello) => hello,
                Err(reason) => {
                    refuse(request, &reason);
                    continue;
                }
            };
            match hello.purpose {
                Purpose::Questions if questions.len() >= QUESTION_PEERS_MAX => {
                    let reason = format!(
                        "already answering {QUESTION_PEERS_MAX} peers' questions; try again later"
                    );
                    refuse(request, &reason);
                }
                Purpose::Questions => {
                    let from = request.from.clone();
                    // No region on offer: these connections touch no memory.
                    let answer = Offer {
                        remote: Remote {
                            addr: 0,
                            rkey: 0,
                            len: 0,
                        },
                        odp: offer.odp,
                    };
                    questions.push(scope.spawn(move || {
                        let served = accept_and_answer(request, &setup.pd, &answer, over, explain);
                        (from, served)
                    }));
                }
                Purpose::Traffic if waiting.len() >= TRAFFIC_WAITING_MAX => {
                    let reason = format!(
                        "{TRAFFIC_WAITING_MAX} peers already wait to send traffic; try again later"
                    );
                    refuse(request, &reason);
                }
                Purpose::Traffic => waiting.push_back((Instant::now(), request)),
            }
        };
        over.store(true, Ordering::Relaxed);
        for (_, request) in waiting {
            request.reject("the service is stopping");
        }
        if let Some(t) = traffic {
            finished(t)?;
        }
        for q in questions {
            finished(q)?;
        }
        served.map_err(anyhow::Error::from)
    })?;
    Ok(connections)
}

fn report(out: &Output, served: &Served) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string(served)?);
    } else if served.questions_only {
        println!(
            "{}: {} questions about its retries answered{}",
            served.peer,
            served.causes_asked,
            if served.clean_end {
                ""
            } else {
                " (ended without goodbye)"
            }
        );
    } else {
        println!(
            "{}: {} fills, {} SENDs received ({} bytes), {} verifications, {} with wrong bytes{}",
            served.peer,
            served.fills,
            served.sends_received,
            served.bytes_received,
            served.verifies,
            served.mismatched,
            if served.clean_end {
                ""
            } else {
                " (ended without goodbye)"
            }
        );
    }
    Ok(())
}
