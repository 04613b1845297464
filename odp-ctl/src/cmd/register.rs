//! `odp-ctl register`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use odp_core::analysis::SourceFacts;
use odp_core::driver_counters::{gained_since, port_counters};
use odp_core::memory::{Backing, Mapping};
use odp_core::peer::{
    end_session, late_receives_allowed, parse_address, touch_latency, verify_peer, Hello, Offer,
    PeerTraffic, Purpose, Questions, RemoteStorm, TouchLatency, LATE_RECEIVES_MAX,
};
use odp_core::remote::RetryReport;
use odp_core::traffic::{verify_loopback, TrafficReport};
use odp_core::verbs::{
    Access, LoopbackConfig, LoopbackRc, MemoryRegion, PeerConfig, PeerRc, Route,
};
use serde::Serialize;

use super::mr::{setup, MrArgs, MrReport, MrSetup};
use crate::live::{self, EvidenceSink, SharedEvidence, Source};
use crate::output::{table, AlreadyReported, DataMismatch, Output};
use odp_core::units::parse_size;
use std::net::SocketAddrV4;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub mr: MrArgs,
    /// Write every page from the CPU after registering (makes the pages present, so the device
    /// finds them on its first fault).
    #[arg(long)]
    pub touch: bool,
    /// Run loopback RC traffic over the MR (RDMA WRITE, RDMA READ, SEND/RECV against a pinned
    /// peer MR) and verify every byte.
    #[arg(long)]
    pub traffic: bool,
    /// Run the traffic against `odp-ctl serve` on another host instead of loopback, over
    /// rdma_cm: RDMA WRITE and SEND into the peer's MR (verified there), RDMA READ out of it
    /// (verified here). ADDR or ADDR:PORT; implies --traffic.
    #[arg(long, value_name = "ADDR[:PORT]", conflicts_with_all = ["mtu", "gid_index"])]
    pub peer: Option<String>,
    /// With --peer: the serving host drops pieces of its MR with MADV_DONTNEED this many times
    /// a second while the WRITEs and SENDs land in it (a page it dropped may then read as
    /// zeros; every other byte must match).
    #[arg(long, value_name = "RATE", requires = "peer", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub remote_dontneed: Option<u64>,
    /// The piece each --remote-dontneed call drops.
    #[arg(long, default_value = "64K", value_parser = parse_size, requires = "remote_dontneed")]
    pub remote_dontneed_length: usize,
    /// With --peer: the ACK timeout exponent (a request unanswered for 4.096 us x 2^N is sent
    /// again; rxe rounds up to a scheduler tick); low values make a slow fault on the peer
    /// visible here as retransmissions.
    #[arg(long, value_name = "N", requires = "peer", value_parser = clap::value_parser!(u8).range(0..=31))]
    pub ack_timeout: Option<u8>,
    /// With --peer: watch this host's requester (needs root) and name, for each transport
    /// retry or RNR wait its QP made, the fault on the peer that held it up (the peer runs
    /// `serve --probes`); a request that fails for it is reported with that fault.
    #[arg(long, requires = "peer")]
    pub probes: bool,
    /// With --peer: instead of the traffic, time single-page RDMA READs of this many pages of
    /// the peer's ODP MR right after the peer dropped them (the first touch: its device faults
    /// each page in) and again (warm); the dropped pages must read as zeros.
    #[arg(long, value_name = "PAGES", requires = "peer", conflicts_with_all = ["remote_dontneed", "probes"], value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub touch_latency: Option<u64>,
    /// With --peer: transport retries before a request fails with "retry exceeded" (0..7).
    #[arg(long, default_value_t = 7, requires = "peer", value_parser = clap::value_parser!(u8).range(0..=7))]
    pub retry_count: u8,
    /// With --peer: RNR retries before a request fails with "RNR retry exceeded" (0..7; 7
    /// retries without end). An ODP responder that answers its faults with RNR NAKs (mlx5)
    /// fails requests here when this runs out.
    #[arg(long, default_value_t = 7, requires = "peer", value_parser = clap::value_parser!(u8).range(0..=7))]
    pub rnr_retry: u8,
    /// With --peer: the RNR NAK timer of this side's QP (IB's 5-bit code: 1 is 0.01 ms, 14 is
    /// 1.28 ms, 31 is 491.52 ms, 0 is 655.36 ms): how long the peer waits when this side has
    /// no receive posted. The peer's own is `serve --min-rnr-timer`.
    #[arg(long, value_name = "CODE", requires = "peer", value_parser = clap::value_parser!(u8).range(0..=31))]
    pub min_rnr_timer: Option<u8>,
    /// With --peer: the peer posts the receives for each window of SENDs this long after it
    /// said it would (at most 1s), so the SENDs that come first are answered with RNR NAKs and
    /// wait the peer's RNR timer; bytes are verified as ever.
    #[arg(long, value_name = "DURATION", requires = "peer", conflicts_with = "touch_latency", value_parser = odp_core::units::parse_duration)]
    pub late_receives: Option<Duration>,
    /// Message size for --traffic.
    #[arg(long, default_value = "64K", value_parser = parse_size)]
    pub message_size: usize,
    /// Path MTU for --traffic (256..4096; default: the port's active MTU).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// GID index for --traffic on RoCE (default: a RoCE v2 IPv4 GID).
    #[arg(long)]
    pub gid_index: Option<u32>,
    /// Port for --traffic.
    #[arg(long, default_value_t = 1)]
    pub port: u8,
    /// Keep the MR registered until Ctrl-C or SIGTERM, then deregister and exit 0.
    #[arg(long)]
    pub hold: bool,
}

#[derive(Serialize)]
pub(super) struct PeerReport {
    pub address: String,
    pub offer: Offer,
    /// What this port's hardware counters gained over the traffic (`rdma stat show link`), or
    /// why they could not be read.
    pub port_counters: Result<std::collections::BTreeMap<String, u64>, String>,
    /// With --probes: this side's retries, each with the peer's fault that caused it, or why
    /// the peer could not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<Result<RetryReport, String>>,
    /// With --probes: what this side's probes lost (a retry not seen is not explained).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<SourceFacts>,
    /// With --touch-latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touch_latency: Option<TouchLatency>,
}

#[derive(Serialize)]
struct Report {
    mr: MrReport,
    touched: bool,
    traffic: Option<TrafficReport>,
    /// The peer's address and the region it offered, with --peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<PeerReport>,
    held_ms: Option<u128>,
    deregistered: bool,
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    let traffic_wanted = args.traffic || args.peer.is_some();
    // Before any device, route or peer is touched.
    if args
        .late_receives
        .is_some_and(|d| !late_receives_allowed(d))
    {
        return Err(odp_core::Error::invalid(format!(
            "--late-receives must be above 0 and at most {:?}",
            LATE_RECEIVES_MAX
        ))
        .into());
    }
    if traffic_wanted && args.message_size == 0 {
        return Err(odp_core::Error::invalid("--message-size must be greater than zero").into());
    }
    if args.remote_dontneed.is_some() && args.remote_dontneed_length < odp_core::memory::page_size()
    {
        return Err(odp_core::Error::invalid(
            "--remote-dontneed-length must be at least a page: the storm drops whole pages",
        )
        .into());
    }
    if args.mr.implicit && (args.touch || traffic_wanted) {
        return Err(odp_core::Error::invalid(
            "--touch and --traffic need a buffer; an implicit MR has none",
        )
        .into());
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    if args.hold {
        // Registered before the MR exists, so a signal at any point ends in a clean dereg.
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&interrupted))?;
        }
    }
    // With a peer the route comes first: it says which device the MR must be on.
    let route = match &args.peer {
        Some(text) => {
            let address = parse_address(text)?;
            let config = PeerConfig {
                ack_timeout: args.ack_timeout,
                retry_count: args.retry_count,
                rnr_retry: args.rnr_retry,
                min_rnr_timer: args.min_rnr_timer,
                ..PeerConfig::default()
            };
            let route = Route::resolve(address, &config)?;
            let port = route.device()?;
            Some((address, route, port))
        }
        None => None,
    };
    let mut mr_args = args.mr.clone();
    if let Some((address, _, (device, _))) = &route {
        match &args.mr.device {
            Some(wanted) if wanted != device => {
                return Err(odp_core::Error::invalid(format!(
                    "the route to {address} leaves through {device}, not {wanted}"
                ))
                .into())
            }
            _ => mr_args.device = Some(device.clone()),
        }
    }
    let setup = setup(&mr_args)?;
    if args.touch {
        if let Some(mapping) = setup.mr.mapping() {
            mapping.touch();
        }
    }
    let mut peer_report = None;
    let traffic = if let Some((address, route, port)) = route {
        let source = args.probes.then(Source::own_with_retries).transpose()?;
        let (report, peer) = with_evidence(source, |evidence| {
            traffic_with_peer(args, &setup, address, route, &port, evidence)
        })?;
        peer_report = Some(peer);
        Some(report)
    } else if args.traffic {
        let config = LoopbackConfig {
            port: args.port,
            gid_index: args.gid_index,
            path_mtu: args.mtu,
            ..LoopbackConfig::default()
        };
        let mut lb = LoopbackRc::new(&setup.pd, &config)?;
        let peer_map = Arc::new(Mapping::new(setup.mr.len(), Backing::Anonymous)?);
        let peer = MemoryRegion::register(&setup.pd, &peer_map, 0, setup.mr.len(), Access::FULL)?;
        Some(verify_loopback(
            &mut lb,
            &setup.mr,
            &peer,
            args.message_size,
        )?)
    } else {
        None
    };
    if !out.json {
        print!("{}", setup.report.render());
        if args.touch {
            println!("touched      every page from the CPU");
        }
        if let Some(t) = &traffic {
            print_traffic(t, peer_report.as_ref());
        }
    }
    let mut held_ms = None;
    if args.hold {
        if !out.json {
            println!("holding the MR; Ctrl-C or SIGTERM deregisters and exits");
        }
        let started = Instant::now();
        while !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        held_ms = Some(started.elapsed().as_millis());
    }
    let report_mr = setup.report;
    let mismatch = traffic.as_ref().is_some_and(|t| t.mismatches() > 0);
    // Reported only once the kernel has said so; a refusal is the command's error.
    setup.mr.deregister()?;
    if out.json {
        out.json(&Report {
            mr: report_mr,
            touched: args.touch,
            traffic,
            peer: peer_report,
            held_ms,
            deregistered: true,
        })?;
    } else {
        println!("deregistered");
    }
    if mismatch {
        // The report above says where: --json output stays that one document.
        return Err(AlreadyReported(
            DataMismatch("the traffic delivered wrong bytes (see the report)".into()).into(),
        )
        .into());
    }
    Ok(())
}

/// The traffic with `serve` on another host: a first-touch timing, or every byte moved and
/// verified.
fn traffic_with_peer(
    args: &Args,
    setup: &MrSetup,
    address: SocketAddrV4,
    route: Route,
    port: &(String, u8),
    evidence: Option<&SharedEvidence>,
) -> anyhow::Result<(TrafficReport, PeerReport)> {
    let session = PeerSession {
        setup,
        address,
        port,
        evidence,
    };
    if let Some(pages) = args.touch_latency {
        let (latency, mut peer) = session.run(route, |conn, offer| {
            touch_latency(conn, &setup.mr, offer, pages as usize)
        })?;
        peer.touch_latency = Some(latency);
        let report = TrafficReport {
            message_size: odp_core::memory::page_size(),
            ops: Vec::new(),
        };
        return Ok((report, peer));
    }
    let traffic = PeerTraffic {
        message_size: args.message_size,
        storm: args.remote_dontneed.map(|rate| RemoteStorm {
            action: odp_core::stress::Action::Dontneed,
            rate,
            length: args.remote_dontneed_length,
        }),
        late_receives: args.late_receives,
        cold_pages: None,
    };
    session.run(route, |conn, offer| {
        verify_peer(conn, &setup.mr, offer, &traffic)
    })
}

/// Runs `session` with the evidence of `source` (this side's probes), if there is one, and
/// puts what the probes lost in its report (a retry not seen is not explained).
pub(super) fn with_evidence<R>(
    source: Option<Source>,
    session: impl FnOnce(Option<&SharedEvidence>) -> anyhow::Result<(R, PeerReport)>,
) -> anyhow::Result<(R, PeerReport)> {
    let Some(source) = source else {
        return session(None);
    };
    let evidence = Arc::new(SharedEvidence::default());
    let mut sink = EvidenceSink(Arc::clone(&evidence));
    // The session's end detaches the probes; a signal reaches the session's own waits.
    let detach = AtomicBool::new(false);
    let (done, engine) = live::alongside(source, &mut sink, &detach, || session(Some(&evidence)));
    let (engine, _) = engine?;
    let (done, mut peer) = done?;
    peer.probes = Some(engine.source.clone());
    Ok((done, peer))
}

/// A session with `serve` on another host, around whatever traffic the caller runs: the port's
/// counters read around it, and with `evidence` (this side's probes) each retry's cause asked
/// of the peer; a request that failed is reported with the fault that caused it.
pub(super) struct PeerSession<'a> {
    pub setup: &'a MrSetup,
    pub address: SocketAddrV4,
    pub port: &'a (String, u8),
    pub evidence: Option<&'a SharedEvidence>,
}

impl PeerSession<'_> {
    pub fn run<R>(
        &self,
        route: Route,
        traffic: impl FnOnce(&mut PeerRc, &Offer) -> odp_core::Result<R>,
    ) -> anyhow::Result<(R, PeerReport)> {
        let PeerSession {
            setup,
            address,
            port,
            evidence,
        } = *self;
        let counters_before = port_counters(&port.0, port.1);
        let (mut conn, answer) =
            route.connect(&setup.pd, &Hello::new(Purpose::Traffic).encode())?;
        let offer = Offer::decode(&answer, conn.peer())?;
        let retries = |qp: u32| {
            evidence.map(|e| {
                e.settle();
                e.with(|e| e.retries(qp))
            })
        };
        let done = match traffic(&mut conn, &offer) {
            Ok(done) => done,
            // A request refused before any traffic leaves nothing to explain.
            Err(failure) if failure.kind() != odp_core::ErrorKind::Completion => {
                return Err(failure.into())
            }
            Err(failure) => {
                let failure = match &counters_before {
                    Ok(before) => meanwhile(failure, gained_since(&port.0, port.1, before)),
                    Err(_) => anyhow::Error::new(failure),
                };
                // The QP is in error: the causes are asked over a new connection.
                let Some(retries) = retries(conn.qp_num()) else {
                    return Err(failure);
                };
                drop(conn);
                let cause = explain_over_new_connection(address, setup, &retries);
                return Err(match cause {
                    Ok(Ok(report)) => match report.exhaustion().and_then(|a| a.cause) {
                        Some(fault) => failure.context(format!("{fault} made this request fail")),
                        None => failure.context(
                            "no fault on the peer was found behind the request that failed",
                        ),
                    },
                    Ok(Err(why)) => failure.context(why),
                    Err(e) => {
                        failure.context(format!("the peer could not be asked what caused it: {e}"))
                    }
                });
            }
        };
        // Read while the QP is quiet (every request answered) and before the questions below,
        // which are traffic too: the counters and the probes then cover the same requests.
        let port_counters =
            counters_before.and_then(|before| gained_since(&port.0, port.1, &before));
        let retries = retries(conn.qp_num());
        let explained = end_session(&mut conn, retries.as_deref())?;
        Ok((
            done,
            PeerReport {
                address: address.to_string(),
                offer,
                port_counters,
                retries: explained,
                probes: None,
                touch_latency: None,
            },
        ))
    }
}

/// `failure` with what this port did while the request waited (its counters' gains): a
/// request with no completion may have been sent again many times over, which rxe does without
/// end at a retry count of 7 (unlimited there, unlike IB's transport retry count), or not at all.
fn meanwhile(
    failure: odp_core::Error,
    gained: Result<std::collections::BTreeMap<String, u64>, String>,
) -> anyhow::Error {
    let failure = anyhow::Error::new(failure);
    let Ok(gained) = gained else {
        return failure;
    };
    let moved = counters_moved(&gained);
    if moved.is_empty() {
        return failure.context("this port's counters did not move over the session");
    }
    failure.context(format!("this port's counters over the session: {moved}"))
}

/// The counters that moved, `name=gain` each, in one line.
fn counters_moved(gained: &std::collections::BTreeMap<String, u64>) -> String {
    gained
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long to keep trying to reach the serving side for the questions.
const EXPLAIN_PATIENCE: Duration = Duration::from_secs(30);

/// Asks the serving side about `retries` over a new connection (the failed QP is in error), for
/// questions only: served at once, while the serving side may still be busy with the old one.
fn explain_over_new_connection(
    address: SocketAddrV4,
    setup: &MrSetup,
    retries: &[odp_core::remote::RequesterRetry],
) -> odp_core::Result<Result<RetryReport, String>> {
    let started = Instant::now();
    loop {
        let attempt = Route::resolve(address, &PeerConfig::default())
            .and_then(|route| Questions::connect(route, &setup.pd));
        match attempt {
            Ok(mut questions) => {
                let report = questions.explain(retries)?;
                questions.close()?;
                return Ok(report);
            }
            Err(e) if started.elapsed() >= EXPLAIN_PATIENCE => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn print_traffic(t: &TrafficReport, peer: Option<&PeerReport>) {
    let mut table = table(&["OP", "MESSAGES", "BYTES", "TIME_US", "MB/s", "VERIFIED"]);
    for op in &t.ops {
        let mbps = if op.elapsed_us > 0 {
            op.bytes as f64 / op.elapsed_us as f64
        } else {
            0.0
        };
        let verified = match &op.mismatch {
            None => match op.zeroed_pages {
                Some(n) if n > 0 => format!("all bytes ok ({n} pages zeroed by the peer's storm)"),
                _ => "all bytes ok".to_string(),
            },
            Some(m) => format!(
                "MISMATCH at {} (expected {:#04x}, got {:#04x}; {} bytes wrong)",
                m.offset, m.expected, m.actual, m.bytes_wrong
            ),
        };
        table.add_row(vec![
            op.op.name().to_string(),
            op.messages.to_string(),
            op.bytes.to_string(),
            op.elapsed_us.to_string(),
            format!("{mbps:.1}"),
            verified,
        ]);
    }
    let with = match peer {
        Some(p) => format!(
            "traffic with {} (its MR: {} bytes, {}; WRITE and SEND verified there, READ here)",
            p.address,
            p.offer.remote.len,
            if p.offer.odp { "ODP" } else { "pinned" }
        ),
        None => "loopback traffic".to_string(),
    };
    println!("\n{with}, {}-byte messages:\n{table}", t.message_size);
    if let Some(p) = peer {
        print_port_counters(p);
        if let Some(t) = &p.touch_latency {
            let us = |ns: u64| ns as f64 / 1e3;
            println!(
                "RDMA READ of one page, {} pages: first touch after the peer dropped it p50 \
                 {:.1} us, p99 {:.1} us, max {:.1} us; warm p50 {:.1} us, p99 {:.1} us, max \
                 {:.1} us",
                t.pages,
                us(t.first_touch.p50_ns),
                us(t.first_touch.p99_ns),
                us(t.first_touch.max_ns),
                us(t.warm.p50_ns),
                us(t.warm.p99_ns),
                us(t.warm.max_ns)
            );
        }
        print_retries(p);
    }
}

/// What this port's counters gained over a session with a peer.
pub(super) fn print_port_counters(p: &PeerReport) {
    match &p.port_counters {
        Ok(counters) => println!("this port's counters gained: {}", counters_moved(counters)),
        Err(why) => println!("{why}"),
    }
}

/// This side's retries over a session with a peer and the faults the peer named for them.
pub(super) fn print_retries(p: &PeerReport) {
    let r = match &p.retries {
        None => return,
        Some(Err(why)) => {
            println!("retries not explained: {why}");
            return;
        }
        Some(Ok(r)) => r,
    };
    println!(
        "this side's requester: {} transport retries, {} RNR NAKs, {} exhausted; {} of {} \
         completer runs held up by the peer's ODP faults",
        r.retries,
        r.rnr_naks,
        r.exceeded + r.rnr_exceeded,
        r.caused_by_odp_faults,
        r.attributed.len() as u64 + r.not_asked
    );
    for a in r.attributed.iter().filter(|a| a.cause.is_some()).take(5) {
        if let Some(fault) = &a.cause {
            println!(
                "  retry from PSN {} (window to {}): {fault}",
                a.retry.psn, a.retry.next_psn
            );
        }
    }
}
