//! Traffic between two hosts with every byte checked where it lands: the protocol `odp-ctl
//! serve` (the passive side, which owns the target MR) and `--peer` (the active side, which
//! drives the traffic) speak over one rdma_cm RC connection.
//!
//! The connect request carries a `Hello` (magic, protocol version, purpose); the accept an
//! `Offer` (the served MR's address, rkey, length, whether it is ODP). After that the active
//! side sends fixed-size control messages (SEND into a small pinned buffer) and the passive side
//! answers each one: fill or zero its MR with a pattern, expect a number of SENDs into it,
//! verify it. A connection for questions only (which of the serving side's faults caused a
//! retry) is served beside the traffic, and touches no MR.
//! RDMA WRITEs and SENDs are verified by the passive side where they landed; RDMA READs by the
//! active side where they were read into.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::memory::{Backing, Mapping};
use crate::remote::{Delay, RequesterRetry, ResponderFault, RetryReport};
use crate::stress::actions::NodeCycle;
use crate::stress::Action;
use crate::traffic::{
    explicit, fill_pattern_range, first_mismatch_in, Mismatch, OpResult, TrafficReport,
};
use crate::verbs::{
    Access, MemoryRegion, Opcode, PeerRc, ProtectionDomain, Remote, Request, Route,
};

/// Bumped whenever a message changes shape or meaning; both sides must agree.
pub const PROTOCOL_VERSION: u16 = 5;
const MAGIC: [u8; 4] = *b"ODPP";
/// The port `serve` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 10089;

/// A peer's address: `ADDR` or `ADDR:PORT` (IPv4; the port defaults to DEFAULT_PORT).
pub fn parse_address(text: &str) -> Result<std::net::SocketAddrV4> {
    let bad = || {
        Error::invalid(format!(
            "{text:?} is not an IPv4 address with an optional port (10.20.0.1 or \
             10.20.0.1:{DEFAULT_PORT})"
        ))
    };
    if let Ok(addr) = text.parse::<std::net::SocketAddrV4>() {
        return Ok(addr);
    }
    let ip: std::net::Ipv4Addr = text.parse().map_err(|_| bad())?;
    Ok(std::net::SocketAddrV4::new(ip, DEFAULT_PORT))
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Traffic into the served MR, one peer at a time.
    Traffic,
    /// Questions about retries only: served at once, beside any traffic.
    Questions,
}

/// The connect request's private data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub purpose: Purpose,
}

impl Hello {
    /// This version's hello for `purpose`.
    pub fn new(purpose: Purpose) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            purpose,
        }
    }

    pub fn encode(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        out[6] = match self.purpose {
            Purpose::Traffic => 0,
            Purpose::Questions => 1,
        };
        out
    }

    /// The peer's hello, or why it is not one this side can serve (the reason is sent back).
    pub fn check(bytes: &[u8]) -> std::result::Result<Hello, String> {
        if bytes.len() < 6 || bytes[..4] != MAGIC {
            return Err("not an odp-ctl peer (no ODPP hello)".into());
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != PROTOCOL_VERSION {
            return Err(format!(
                "odp-ctl peer protocol {version}, this side speaks {PROTOCOL_VERSION}: run the \
                 same odp-ctl version on both hosts"
            ));
        }
        let purpose = match bytes.get(6) {
            Some(0) => Purpose::Traffic,
            Some(1) => Purpose::Questions,
            _ => {
                return Err("odp-ctl peer with a connection purpose this side does not know".into())
            }
        };
        Ok(Hello { version, purpose })
    }
}

/// The accept's private data: the served region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Offer {
    pub remote: Remote,
    pub odp: bool,
}

impl Offer {
    pub fn encode(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[6] = u8::from(self.odp);
        out[8..16].copy_from_slice(&self.remote.addr.to_le_bytes());
        out[16..20].copy_from_slice(&self.remote.rkey.to_le_bytes());
        out[24..32].copy_from_slice(&(self.remote.len as u64).to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8], peer: &str) -> Result<Offer> {
        let bad = |what: &str| Error::Peer {
            peer: peer.to_string(),
            what: what.to_string(),
        };
        if bytes.len() < 32 || bytes[..4] != MAGIC {
            return Err(bad("answered, but not as an odp-ctl serve"));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != PROTOCOL_VERSION {
            return Err(bad(&format!(
                "speaks peer protocol {version}, this side {PROTOCOL_VERSION}"
            )));
        }
        let word = |at| le_u64(bytes, at);
        let len = usize::try_from(word(24)).map_err(|_| bad("offers a region too large"))?;
        Ok(Offer {
            remote: Remote {
                addr: word(8),
                rkey: u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
                len,
            },
            odp: bytes[6] != 0,
        })
    }
}

/// The little-endian word at `at` (the caller has checked the length).
fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// A control message's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Op {
    /// Fill `len` bytes with the pattern of `seed`.
    Fill = 1,
    /// Zero `len` bytes.
    Zero = 2,
    /// Compare `len` bytes with the pattern of `seed`; the reply says how many differ.
    Verify = 3,
    /// Post `a` receives of `b` bytes from offset `c` on, `d` milliseconds after the reply.
    ExpectSends = 4,
    Bye = 5,
    /// Drop `b`-byte pieces of the region with MADV_DONTNEED `a` times a second while WRITEs
    /// and SENDs land in it (from the next zeroing to the verification that ends the pass).
    Storm = 6,
    /// Which of the serving side's faults on its QP `a` held up the window of PSNs `[b, c)`:
    /// the cause of a retry the asking side's requester made (needs `serve --probes`). With
    /// `d` bit 0 the serving side first lets its probes' stream catch up with now: the first
    /// question about retries that just happened.
    Cause = 7,
    /// Drop the first `b` bytes of the region with MADV_DONTNEED: the device's next touch of
    /// each page is a first touch (a fault that allocates the page). Refused on a pinned MR.
    Drop = 8,
    Reply = 16,
    Failed = 17,
}

impl Op {
    fn from_u32(v: u32) -> Option<Op> {
        Some(match v {
            1 => Op::Fill,
            2 => Op::Zero,
            3 => Op::Verify,
            4 => Op::ExpectSends,
            5 => Op::Bye,
            6 => Op::Storm,
            7 => Op::Cause,
            8 => Op::Drop,
            16 => Op::Reply,
            17 => Op::Failed,
            _ => return None,
        })
    }
}

const MESSAGE: usize = 40;

/// One control message: an operation and four words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message {
    op: Op,
    a: u64,
    b: u64,
    c: u64,
    d: u64,
}

impl Message {
    fn encode(self) -> [u8; MESSAGE] {
        let mut out = [0u8; MESSAGE];
        out[..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&(self.op as u32).to_le_bytes());
        out[8..16].copy_from_slice(&self.a.to_le_bytes());
        out[16..24].copy_from_slice(&self.b.to_le_bytes());
        out[24..32].copy_from_slice(&self.c.to_le_bytes());
        out[32..40].copy_from_slice(&self.d.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Message> {
        if bytes.len() < MESSAGE || bytes[..4] != MAGIC {
            return None;
        }
        let word = |at| le_u64(bytes, at);
        Some(Message {
            op: Op::from_u32(u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]))?,
            a: word(8),
            b: word(16),
            c: word(24),
            d: word(32),
        })
    }
}

/// A small pinned buffer for control messages: a receive slot and a send slot.
struct ControlBuffer {
    mr: MemoryRegion,
    mapping: Arc<Mapping>,
}

/// How long a peer may work on one request (fill, zero or verify its region; explain retries)
/// before its answer is given up on while it stays connected: a 2 MiB fill took over 10 s in a
/// starved guest.
const ANSWER_PATIENCE: Duration = Duration::from_secs(120);

const RECV_SLOT: usize = 0;
const SEND_SLOT: usize = 64;

impl ControlBuffer {
    fn new(conn: &PeerRc) -> Result<ControlBuffer> {
        let mapping = Arc::new(Mapping::new(4096, Backing::Anonymous)?);
        let mr = MemoryRegion::register(conn.pd(), &mapping, 0, 4096, Access::FULL)?;
        Ok(ControlBuffer { mr, mapping })
    }

    fn post_recv(&self, conn: &mut PeerRc) -> Result<u64> {
        conn.post_recv(&self.mr, RECV_SLOT, MESSAGE)
    }

    fn received(&self) -> Result<Option<Message>> {
        Ok(Message::decode(&self.mapping.to_vec(RECV_SLOT, MESSAGE)?))
    }

    fn send(&self, conn: &mut PeerRc, message: Message) -> Result<()> {
        self.mapping.write(SEND_SLOT, &message.encode())?;
        let id = conn.post_send(&self.mr, SEND_SLOT, MESSAGE)?;
        conn.wait(id)?;
        Ok(())
    }

    /// Sends `message` and returns the peer's answer, whatever it is.
    fn exchange(&self, conn: &mut PeerRc, message: Message) -> Result<Message> {
        let reply = self.post_recv(conn)?;
        self.send(conn, message)?;
        conn.wait_on_peer(reply, ANSWER_PATIENCE)?;
        self.received()?.ok_or_else(|| Error::Peer {
            peer: conn.peer().to_string(),
            what: "answered with something that is not a control message".into(),
        })
    }

    /// Has the peer carry out `op`: its Reply, or an error naming what it could not do.
    fn ask(&self, conn: &mut PeerRc, op: Op, a: u64, b: u64, c: u64) -> Result<Message> {
        self.ask_with(conn, Message { op, a, b, c, d: 0 })
    }

    /// `ask`, with all four words.
    fn ask_with(&self, conn: &mut PeerRc, message: Message) -> Result<Message> {
        let answer = self.exchange(conn, message)?;
        (answer.op == Op::Reply)
            .then_some(answer)
            .ok_or_else(|| Error::Peer {
                peer: conn.peer().to_string(),
                what: format!("could not carry out {:?}", message.op),
            })
    }
}

/// What the passive side did for one connection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Served {
    pub peer: String,
    pub fills: u64,
    pub sends_received: u64,
    pub bytes_received: u64,
    pub verifies: u64,
    /// Verifications that found bytes differing from the pattern.
    pub mismatched: u64,
    /// The peer's storm: its action, the calls it made on the region, and pages found zeroed
    /// by them at verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_action: Option<Action>,
    pub storm_actions: u64,
    pub zeroed_pages: u64,
    /// Pages left never touched before a pass, for the device to fault in.
    #[serde(skip_serializing_if = "crate::units::is_zero")]
    pub cold_pages: u64,
    /// Whether the peer said goodbye (else it disconnected or the run stopped).
    pub clean_end: bool,
    /// The connection only asked questions (it was offered no memory).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub questions_only: bool,
    /// The peer's retries it asked the cause of.
    pub causes_asked: u64,
    /// Why the connection ended in failure, after serving what the counts above say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// What this side's port counters gained over the connection, by the driver's names (set by
    /// the caller, which reads them).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub port_counters: std::collections::BTreeMap<String, u64>,
}

/// A Failed reply's reason: the serving side runs without probes, it cannot name causes.
const NO_PROBES: u64 = 7;

/// The storm's thread name, `storm-` and its action (`storm-dontneed`): the task name its
/// invalidations carry.
pub fn storm_thread(action: Action) -> String {
    format!("storm-{}", action.name())
}

/// How often a waiting side looks at its stop flag and the connection's state.
const POLL: Duration = Duration::from_millis(200);

/// A storm of one action on the served region, running while a pass's data lands in it. Each
/// page an action may zero (DONTNEED's, FREE's) is marked first, so a verification can tell a
/// page the storm took away from one the traffic got wrong; after any other action every byte
/// must match.
struct Storm {
    /// Storm while set (between a pass's zeroing and its verification).
    active: AtomicBool,
    over: AtomicBool,
    /// Held across each madvise, so a verification starts with none in flight.
    in_flight: Mutex<()>,
    /// Pages dropped since the pass began.
    dropped: Vec<AtomicBool>,
    actions: AtomicU64,
    failure: Mutex<Option<Error>>,
}

impl Storm {
    fn new(pages: usize) -> Storm {
        Storm {
            active: AtomicBool::new(false),
            over: AtomicBool::new(false),
            in_flight: Mutex::new(()),
            dropped: (0..pages).map(|_| AtomicBool::new(false)).collect(),
            actions: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }

    /// Does `storm.action` to `storm.length`-byte, page-aligned pieces of `mapping` at
    /// `storm.rate` a second while active; marks the pages only when the action may leave them
    /// zero.
    fn run(&self, mapping: &Mapping, storm: RemoteStorm, mut nodes: NodeCycle, seed: u64) {
        use rand::{Rng, SeedableRng};
        let RemoteStorm {
            action,
            rate,
            length,
        } = storm;
        let marks = action.destroys_contents(mapping.backing());
        let hold = action.default_hold();
        let page = crate::memory::page_size();
        let length = length.clamp(page, mapping.len()) / page * page;
        let slots = (mapping.len() - length) / page + 1;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let mut next = Instant::now();
        while !self.over.load(Ordering::Relaxed) {
            if !self.active.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
                next = Instant::now();
                continue;
            }
            let offset = rng.random_range(0..slots) * page;
            {
                let Ok(_held) = self.in_flight.lock() else {
                    return;
                };
                if !self.active.load(Ordering::Acquire) {
                    continue;
                }
                if marks {
                    for flag in &self.dropped[offset / page..(offset + length) / page] {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                if let Err(e) = action.perform(mapping, offset, length, hold, &mut nodes) {
                    if let Ok(mut f) = self.failure.lock() {
                        f.get_or_insert(e);
                    }
                    return;
                }
                self.actions.fetch_add(1, Ordering::Relaxed);
            }
            next += interval;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
    }

    /// A pass begins: forget what earlier passes dropped, then storm.
    fn start_pass(&self) {
        for flag in &self.dropped {
            flag.store(false, Ordering::Relaxed);
        }
        self.active.store(true, Ordering::Release);
    }

    /// The pass's data has landed: stop, and wait out an action in flight.
    fn end_pass(&self) {
        self.active.store(false, Ordering::Release);
        drop(self.in_flight.lock());
    }

    fn dropped(&self, page: usize) -> bool {
        self.dropped
            .get(page)
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// What the serving side's probes can say about a peer's retry: the fault behind it, or None;
/// Err when it runs without probes. The flag asks it to let its stream catch up with now first.
pub type Explain<'a> =
    &'a (dyn Fn(&RequesterRetry, bool) -> std::result::Result<Option<ResponderFault>, ()> + Sync);

/// Cause's `d` bit asking the serving side to catch up first.
const CATCH_UP: u64 = 1;

/// The control buffer of a connection being accepted, its first receive posted before the accept
/// goes out: the peer's first message never meets an RNR NAK (which would hold it for the min
/// RNR timer, 655 ms unless set).
fn accept_ready(
    request: Request,
    pd: &Arc<ProtectionDomain>,
    offer: &Offer,
) -> Result<(PeerRc, ControlBuffer, u64)> {
    let (conn, (control, first)) = request.accept_with(pd, &offer.encode(), |conn| {
        let control = ControlBuffer::new(conn)?;
        let first = control.post_recv(conn)?;
        Ok((control, first))
    })?;
    Ok((conn, control, first))
}

/// Accepts a traffic peer's `request` with `offer` (of `target`, on `pd`) and serves it until
/// the peer says goodbye or disconnects, or `stop` is set: the passive side of `verify_peer`.
/// `explain` answers the peer's questions about its retries. Err only when the connection
/// could not be made; a connection that failed later is Served with its `failure`, so what it
/// did before (the storm's calls among it) is still counted.
pub fn accept_and_serve(
    request: Request,
    pd: &Arc<ProtectionDomain>,
    offer: &Offer,
    target: &MemoryRegion,
    stop: &AtomicBool,
    explain: Explain<'_>,
) -> Result<Served> {
    let (mut conn, control, first) = accept_ready(request, pd, offer)?;
    Ok(serve(&mut conn, control, first, target, stop, explain))
}

fn serve(
    conn: &mut PeerRc,
    control: ControlBuffer,
    first: u64,
    target: &MemoryRegion,
    stop: &AtomicBool,
    explain: Explain<'_>,
) -> Served {
    let mut served = Served {
        peer: conn.peer().to_string(),
        ..Served::default()
    };
    let mapping = match explicit(target) {
        Ok(mapping) => mapping,
        Err(e) => {
            served.failure = Some(e.to_string());
            return served;
        }
    };
    let storm = Storm::new(target.len().div_ceil(crate::memory::page_size()));
    let mut storming = false;
    let result = std::thread::scope(|scope| {
        let result = serve_messages(
            conn,
            &control,
            first,
            target,
            stop,
            &storm,
            explain,
            &mut served,
            |spec: RemoteStorm| {
                if storming {
                    return Ok(());
                }
                // What the action needs (two NUMA nodes for migrate) is refused before any pass.
                let nodes = NodeCycle::for_action(spec.action)?;
                storming = true;
                let storm = &storm;
                let seed = crate::trace::monotonic_ns();
                // Named by its action, so its invalidations are told from the CPU's own (a
                // verification that reads a dropped page maps the zero page; the next fill's
                // write replaces it, which invalidates too).
                let spawned = std::thread::Builder::new()
                    .name(storm_thread(spec.action))
                    .spawn_scoped(scope, move || storm.run(mapping, spec, nodes, seed));
                if let Err(e) = spawned {
                    if let Ok(mut f) = storm.failure.lock() {
                        f.get_or_insert(Error::invalid(format!("cannot start the storm: {e}")));
                    }
                }
                Ok(())
            },
        );
        storm.active.store(false, Ordering::Release);
        storm.over.store(true, Ordering::Relaxed);
        result
    });
    // The storm's thread has ended with the scope: its count is final.
    served.storm_actions = storm.actions.load(Ordering::Relaxed);
    let storm_failure = storm.failure.lock().ok().and_then(|mut f| f.take());
    if let Some(e) = storm_failure.or(result.err()) {
        served.failure = Some(e.to_string());
    }
    served
}

#[allow(clippy::too_many_arguments)]
fn serve_messages(
    conn: &mut PeerRc,
    control: &ControlBuffer,
    first: u64,
    target: &MemoryRegion,
    stop: &AtomicBool,
    storm: &Storm,
    explain: Explain<'_>,
    served: &mut Served,
    mut start_storm: impl FnMut(RemoteStorm) -> Result<()>,
) -> Result<()> {
    let mut pending_recvs: Vec<(u64, usize)> = Vec::new();
    let mut late_receives: Option<Message> = None;
    let mut next = first;
    loop {
        let Some(message) = next_message(conn, control, next, stop)? else {
            return Ok(());
        };
        let len = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(target.len());
        // `n` bytes from `offset`, inside the region.
        let range = |offset: u64, n: u64| {
            let offset = len(offset);
            (offset, len(n).min(target.len() - offset))
        };
        let reply = match message.op {
            Op::Fill => {
                storm.end_pass();
                let (offset, n) = range(message.c, message.b);
                fill_pattern_range(target, message.a, offset, n)?;
                served.fills += 1;
                ok()
            }
            // Dropped pinned pages would leave the device writing where the CPU no longer looks.
            Op::Zero if message.a > 0 && !target.access().contains(Access::ON_DEMAND) => {
                failed(u64::from(Op::Zero as u32))
            }
            Op::Zero => {
                storm.end_pass();
                let (offset, n) = range(message.c, message.b);
                let cold = zero_leaving_cold(target, offset, n, message.a)?;
                served.cold_pages += cold;
                storm.start_pass();
                Message { d: cold, ..ok() }
            }
            // Dropped pinned pages would leave the device writing where the CPU no longer looks.
            Op::Storm if !target.access().contains(Access::ON_DEMAND) => {
                failed(u64::from(Op::Storm as u32))
            }
            Op::Storm => {
                let spec = Action::from_code(message.c)
                    .filter(|a| a.runs_on_a_peer())
                    .map(|action| RemoteStorm {
                        action,
                        rate: message.a,
                        length: len(message.b),
                    });
                match spec.map(&mut start_storm) {
                    Some(Ok(())) => {
                        served.storm_action = spec.map(|s| s.action);
                        ok()
                    }
                    _ => failed(u64::from(Op::Storm as u32)),
                }
            }
            Op::Drop => {
                storm.end_pass();
                if target.access().contains(Access::ON_DEMAND) {
                    let length = len(message.b);
                    explicit(target)?.madvise(
                        0,
                        length,
                        libc::MADV_DONTNEED,
                        "madvise(MADV_DONTNEED)",
                    )?;
                    ok()
                } else {
                    failed(u64::from(Op::Drop as u32))
                }
            }
            Op::Cause => {
                served.causes_asked += 1;
                answer_cause(&message, explain)
            }
            Op::ExpectSends if message.d > 0 => {
                late_receives = Some(message);
                ok()
            }
            Op::ExpectSends => {
                expect_sends(conn, target, &message, &mut pending_recvs)?;
                ok()
            }
            Op::Verify => {
                for (id, n) in pending_recvs.drain(..) {
                    conn.wait(id)?;
                    served.sends_received += 1;
                    served.bytes_received += n as u64;
                }
                if message.b == 0 {
                    // A window's receives are all in; the pass goes on.
                    ok()
                } else {
                    storm.end_pass();
                    served.verifies += 1;
                    let (offset, n) = range(message.c, message.b);
                    let verdict = verify_pages(target, message.a, offset, n, storm)?;
                    served.zeroed_pages += verdict.zeroed_pages;
                    match verdict.mismatch {
                        None => Message {
                            d: verdict.zeroed_pages,
                            ..ok()
                        },
                        Some(m) => {
                            served.mismatched += 1;
                            Message {
                                op: Op::Reply,
                                a: m.bytes_wrong as u64,
                                b: m.offset as u64,
                                c: u64::from(m.expected) << 8 | u64::from(m.actual),
                                d: verdict.zeroed_pages,
                            }
                        }
                    }
                }
            }
            Op::Bye => {
                storm.end_pass();
                control.send(conn, ok())?;
                served.clean_end = true;
                return Ok(());
            }
            Op::Reply | Op::Failed => failed(u64::from(message.op as u32)),
        };
        // Receives are taken in the order they were posted: the data receives go before the
        // next control message's, which is up before the answer goes out (the peer's next
        // message has a place to land) unless the data receives are to come late.
        if let Some(expected) = late_receives.take() {
            control.send(conn, reply)?;
            std::thread::sleep(Duration::from_millis(expected.d).min(LATE_RECEIVES_MAX));
            expect_sends(conn, target, &expected, &mut pending_recvs)?;
            next = control.post_recv(conn)?;
        } else {
            next = control.post_recv(conn)?;
            control.send(conn, reply)?;
        }
    }
}

/// Zeroes `n` bytes of the region from `offset`, but leaves `ppm` per million of the whole pages
/// among them never touched: dropped (they read as zeros), so the device's first access to each
/// faults it in. The cold pages are spread evenly; returns how many there were.
fn zero_leaving_cold(target: &MemoryRegion, offset: usize, n: usize, ppm: u64) -> Result<u64> {
    let mapping = explicit(target)?;
    mapping.write(offset, &vec![0u8; n])?;
    if ppm == 0 {
        return Ok(0);
    }
    let page = crate::memory::page_size();
    let first = offset.div_ceil(page);
    let end = (offset + n) / page;
    let mut cold = 0u64;
    for (i, p) in (first..end).enumerate() {
        let i = i as u64;
        // Page i is cold when the running share crosses a whole page at it.
        if ((i + 1) * ppm) / 1_000_000 > (i * ppm) / 1_000_000 {
            mapping.madvise(
                p * page,
                page,
                libc::MADV_DONTNEED,
                "madvise(MADV_DONTNEED)",
            )?;
            cold += 1;
        }
    }
    Ok(cold)
}

/// The next control message on a served connection once `posted` (its receive) completes;
/// None when the peer went away or the service stops.
fn next_message(
    conn: &mut PeerRc,
    control: &ControlBuffer,
    posted: u64,
    stop: &AtomicBool,
) -> Result<Option<Message>> {
    loop {
        match conn.wait_for(posted, POLL) {
            Ok(_) => break,
            Err(Error::CompletionTimeout { .. }) => {
                if stop.load(Ordering::Relaxed) || conn.disconnected()? {
                    return Ok(None);
                }
            }
            // A flushed receive: the peer went away.
            Err(_) if conn.disconnected()? => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    match control.received()? {
        Some(message) => Ok(Some(message)),
        None => {
            control.send(conn, failed(0))?;
            Err(Error::Peer {
                peer: conn.peer().to_string(),
                what: "sent a control message that is not one".into(),
            })
        }
    }
}

/// The answer to a Cause question.
fn answer_cause(message: &Message, explain: Explain<'_>) -> Message {
    let retry = RequesterRetry {
        dest_qp: message.a as u32,
        psn: message.b as u32,
        next_psn: message.c as u32,
        ..RequesterRetry::default()
    };
    match explain(&retry, message.d & CATCH_UP != 0) {
        Err(()) => failed(NO_PROBES),
        Ok(cause) => cause_reply(cause.as_ref()),
    }
}

/// Accepts a questions-only peer's `request` (answering `offer`, which offers no memory) and
/// serves it until the peer says goodbye or disconnects, or `stop` is set: Cause is answered,
/// anything that would touch memory is refused.
pub fn accept_and_answer(
    request: Request,
    pd: &Arc<ProtectionDomain>,
    offer: &Offer,
    stop: &AtomicBool,
    explain: Explain<'_>,
) -> Result<Served> {
    let (mut conn, control, mut next) = accept_ready(request, pd, offer)?;
    let conn = &mut conn;
    let mut served = Served {
        peer: conn.peer().to_string(),
        questions_only: true,
        ..Served::default()
    };
    loop {
        let Some(message) = next_message(conn, &control, next, stop)? else {
            return Ok(served);
        };
        let reply = match message.op {
            Op::Cause => {
                served.causes_asked += 1;
                answer_cause(&message, explain)
            }
            Op::Bye => {
                control.send(conn, ok())?;
                served.clean_end = true;
                return Ok(served);
            }
            other => failed(u64::from(other as u32)),
        };
        // The next question's receive is up before the answer goes out: a question that found
        // none would wait out an RNR NAK.
        next = control.post_recv(conn)?;
        control.send(conn, reply)?;
    }
}

/// Posts the receives an ExpectSends message announced.
fn expect_sends(
    conn: &mut PeerRc,
    target: &MemoryRegion,
    message: &Message,
    pending: &mut Vec<(u64, usize)>,
) -> Result<()> {
    let len = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(target.len());
    let size = len(message.b).max(1);
    let base = len(message.c);
    for i in 0..message.a {
        let offset = usize::try_from(i)
            .unwrap_or(usize::MAX)
            .saturating_mul(size)
            .saturating_add(base);
        let n = size.min(target.len().saturating_sub(offset));
        pending.push((conn.post_recv(target, offset, n)?, n));
    }
    Ok(())
}

/// The answer to a Cause question: a Reply, with the delay when one was found (`a` bit 0),
/// read back by `cause_of`.
fn cause_reply(cause: Option<&ResponderFault>) -> Message {
    let Some(f) = cause else {
        return ok();
    };
    Message {
        op: Op::Reply,
        a: 1 | u64::from(f.delay == Delay::InvalidationWait) << 1
            | u64::from(f.ret as i32 as u32) << 32,
        b: f.start,
        c: f.len.min(u64::from(u32::MAX)) | u64::from(f.psn) << 32,
        d: f.duration_ns,
    }
}

/// The delay a Cause reply names on the peer's QP `qp`, if it names one.
fn cause_of(answer: &Message, qp: u32) -> Option<ResponderFault> {
    (answer.a & 1 == 1).then(|| ResponderFault {
        delay: if answer.a & 2 == 0 {
            Delay::Fault
        } else {
            Delay::InvalidationWait
        },
        qp,
        psn: (answer.c >> 32) as u32,
        start: answer.b,
        len: answer.c & u64::from(u32::MAX),
        duration_ns: answer.d,
        ret: i64::from((answer.a >> 32) as u32 as i32),
    })
}

fn ok() -> Message {
    Message {
        op: Op::Reply,
        a: 0,
        b: 0,
        c: 0,
        d: 0,
    }
}

fn failed(why: u64) -> Message {
    Message {
        op: Op::Failed,
        a: why,
        b: 0,
        c: 0,
        d: 0,
    }
}

struct PageVerdict {
    mismatch: Option<Mismatch>,
    zeroed_pages: u64,
}

/// `len` bytes from `offset` against the pattern of `seed`, page by page: a page the storm
/// dropped may read as zeros (it was taken away after its data landed); anything else must
/// match.
fn verify_pages(
    mr: &MemoryRegion,
    seed: u64,
    offset: usize,
    len: usize,
    storm: &Storm,
) -> Result<PageVerdict> {
    let page = crate::memory::page_size();
    let actual = explicit(mr)?.to_vec(offset, len)?;
    let mut verdict = PageVerdict {
        mismatch: None,
        zeroed_pages: 0,
    };
    // The range's bytes cut at the region's page boundaries, each piece with its offset.
    let mut pieces = Vec::new();
    let mut at = offset;
    while at < offset + len {
        let end = ((at / page + 1) * page).min(offset + len);
        pieces.push((at, &actual[at - offset..end - offset]));
        at = end;
    }
    for (base, bytes) in pieces {
        let index = base / page;
        let wrong = |(i, &b): (usize, &u8)| b != crate::traffic::pattern_byte(seed, base + i);
        if !bytes.iter().enumerate().any(wrong) {
            continue;
        }
        if storm.dropped(index) && bytes.iter().all(|&b| b == 0) {
            verdict.zeroed_pages += 1;
            continue;
        }
        let mut bad = bytes.iter().enumerate().filter(|&x| wrong(x));
        let Some((i, &got)) = bad.next() else {
            continue;
        };
        let count = 1 + bad.count();
        match &mut verdict.mismatch {
            Some(m) => m.bytes_wrong += count,
            None => {
                verdict.mismatch = Some(Mismatch {
                    offset: base + i,
                    expected: crate::traffic::pattern_byte(seed, base + i),
                    actual: got,
                    bytes_wrong: count,
                })
            }
        }
    }
    Ok(verdict)
}

/// Why `request`, which needs the peer's memory to be ODP, cannot be carried out: its MR is
/// pinned (its device has no ODP, or it was served with --pinned).
fn pinned_peer(conn: &PeerRc, request: &str) -> Error {
    Error::invalid(format!(
        "{request} needs an ODP MR on the peer, and {} serves a pinned one (its device has no \
         ODP, or serve runs with --pinned)",
        conn.peer()
    ))
}

/// An invalidation storm the serving side runs on its region while WRITEs and SENDs land in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RemoteStorm {
    /// One the peer can run (`Action::runs_on_a_peer`).
    pub action: Action,
    /// Calls a second.
    pub rate: u64,
    /// Bytes each one covers (page-aligned pieces).
    pub length: usize,
}

/// The longest a peer may have receives posted late: a peer cannot park the service.
pub const LATE_RECEIVES_MAX: Duration = Duration::from_secs(1);

/// Whether receives may be posted `delay` late: above zero, at most LATE_RECEIVES_MAX.
pub fn late_receives_allowed(delay: Duration) -> bool {
    !delay.is_zero() && delay <= LATE_RECEIVES_MAX
}

/// The actions a peer runs, by name, for messages.
pub fn peer_actions() -> String {
    Action::ALL
        .iter()
        .filter(|a| a.runs_on_a_peer())
        .map(|a| a.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `share` of a pass's pages may be left cold: above zero, at most all of them.
pub fn cold_pages_allowed(share: f64) -> bool {
    share > 0.0 && share <= 1.0
}

/// How the active side's traffic runs, and what it asks the peer to do to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerTraffic {
    pub message_size: usize,
    pub storm: Option<RemoteStorm>,
    /// The peer posts each window's receives this long after it said it would: the SENDs
    /// that come first meet no receive, and its responder answers them with RNR NAKs.
    pub late_receives: Option<Duration>,
    /// The share of the pages under each WRITE and SEND pass the peer leaves never touched.
    pub cold_pages: Option<f64>,
}

/// The active side: moves the whole of `local` to and from the peer's region in
/// `message_size` pieces (RDMA WRITE, RDMA READ, SEND), each byte verified where it landed,
/// then says goodbye. With a storm, the peer drops pieces of its region while WRITEs and SENDs
/// land in it; pages it dropped may read as zeros, every other byte must match.
pub fn verify_peer(
    conn: &mut PeerRc,
    local: &MemoryRegion,
    offer: &Offer,
    traffic: &PeerTraffic,
) -> Result<TrafficReport> {
    let len = local.len();
    if len > offer.remote.len {
        return Err(Error::invalid(format!(
            "the MR ({len} bytes) is larger than the peer's ({} bytes): use --size {} or less",
            offer.remote.len, offer.remote.len
        )));
    }
    if traffic.message_size == 0 {
        return Err(Error::invalid("message size must be greater than zero"));
    }
    let passes = Passes::new(
        conn,
        local,
        offer,
        traffic.storm,
        traffic.late_receives,
        traffic.cold_pages,
    )?;
    let ops = [(Opcode::Write, 1), (Opcode::Read, 2), (Opcode::Send, 3)]
        .into_iter()
        .map(|(op, seed)| passes.run(conn, op, (0, len), traffic.message_size, seed))
        .collect::<Result<Vec<_>>>()?;
    Ok(TrafficReport {
        message_size: traffic.message_size,
        ops,
    })
}

/// Passes of traffic between this side's MR and the peer's region: each moves one range (at
/// the same offsets on both sides) with one operation in pieces of one size, the pattern of
/// its seed checked where it landed, with the peer's storm (if asked for) running while WRITEs
/// and SENDs land.
pub(crate) struct Passes<'a> {
    control: ControlBuffer,
    local: &'a MemoryRegion,
    remote: Remote,
    storm: bool,
    late_ms: u64,
    /// Cold pages per million (Zero's first word).
    cold_ppm: u64,
}

impl<'a> Passes<'a> {
    /// Checks what needs the peer's memory to be ODP and starts the peer's storm.
    pub(crate) fn new(
        conn: &mut PeerRc,
        local: &'a MemoryRegion,
        offer: &Offer,
        storm: Option<RemoteStorm>,
        late_receives: Option<Duration>,
        cold_pages: Option<f64>,
    ) -> Result<Passes<'a>> {
        let cold_ppm = match cold_pages {
            None => 0,
            Some(share) if cold_pages_allowed(share) => (share * 1e6).round().max(1.0) as u64,
            Some(share) => {
                return Err(Error::invalid(format!(
                    "a share of cold pages must be above 0 and at most 1, not {share}"
                )))
            }
        };
        if cold_ppm > 0 && !offer.odp {
            return Err(pinned_peer(conn, "cold pages on the peer's MR"));
        }
        let control = ControlBuffer::new(conn)?;
        if let Some(storm) = storm {
            if storm.rate == 0 || storm.length == 0 {
                return Err(Error::invalid(
                    "a storm needs a rate and a length above zero",
                ));
            }
            if !storm.action.runs_on_a_peer() {
                return Err(Error::invalid(format!(
                    "{} runs where the memory is: the peer runs {}",
                    storm.action.name(),
                    peer_actions()
                )));
            }
            if !offer.odp {
                return Err(pinned_peer(
                    conn,
                    &format!("a {} storm on the peer's MR", storm.action.name()),
                ));
            }
            control.ask(
                conn,
                Op::Storm,
                storm.rate,
                storm.length as u64,
                storm.action.code(),
            )?;
        }
        Ok(Passes {
            control,
            local,
            remote: offer.remote,
            storm: storm.is_some(),
            late_ms: late_receives.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            cold_ppm,
        })
    }

    /// One pass of `op` over `(offset, len)` in `message_size` pieces with the pattern of
    /// `seed`.
    pub(crate) fn run(
        &self,
        conn: &mut PeerRc,
        op: Opcode,
        (offset, len): (usize, usize),
        message_size: usize,
        seed: u64,
    ) -> Result<OpResult> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.local.len() && end <= self.remote.len)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{len} bytes from {offset} do not fit this side's MR ({} bytes) and the \
                     peer's ({} bytes)",
                    self.local.len(),
                    self.remote.len
                ))
            })?;
        let chunks: Vec<(usize, usize)> = (offset..end)
            .step_by(message_size.max(1))
            .map(|off| (off, message_size.min(end - off)))
            .collect();
        let control = &self.control;
        let (local, remote) = (self.local, self.remote);
        let (off64, len64) = (offset as u64, len as u64);
        let remote_mismatch = |m: Message| -> Option<Mismatch> {
            (m.a > 0).then_some(Mismatch {
                offset: m.b as usize,
                expected: (m.c >> 8) as u8,
                actual: m.c as u8,
                bytes_wrong: m.a as usize,
            })
        };
        let zeroed = |m: &Message| self.storm.then_some(m.d);
        let cold_pages = |m: &Message| (self.cold_ppm > 0).then_some(m.d);
        let result = |elapsed: Duration, mismatch| op_result(op, &chunks, len, elapsed, mismatch);
        match op {
            // The pattern leaves here and is checked on the peer.
            Opcode::Write => {
                fill_pattern_range(local, seed, offset, len)?;
                let cold = control.ask(conn, Op::Zero, self.cold_ppm, len64, off64)?;
                let started = Instant::now();
                for &(off, n) in &chunks {
                    let id = conn.post_rdma(Opcode::Write, local, off, remote, off, n)?;
                    conn.wait(id)?;
                }
                let elapsed = started.elapsed();
                let verdict = control.ask(conn, Op::Verify, seed, len64, off64)?;
                Ok(OpResult {
                    zeroed_pages: zeroed(&verdict),
                    cold_pages: cold_pages(&cold),
                    ..result(elapsed, remote_mismatch(verdict))
                })
            }
            // The peer fills its region; it is checked here.
            Opcode::Read => {
                control.ask(conn, Op::Fill, seed, len64, off64)?;
                explicit(local)?.write(offset, &vec![0u8; len])?;
                let started = Instant::now();
                for &(off, n) in &chunks {
                    let id = conn.post_rdma(Opcode::Read, local, off, remote, off, n)?;
                    conn.wait(id)?;
                }
                let elapsed = started.elapsed();
                Ok(result(
                    elapsed,
                    first_mismatch_in(local, seed, offset, len)?,
                ))
            }
            // Into receives the peer posts over its region, a window at a time, checked there.
            Opcode::Send => {
                fill_pattern_range(local, seed, offset, len)?;
                let cold = control.ask(conn, Op::Zero, self.cold_ppm, len64, off64)?;
                let window = 16usize;
                let started = Instant::now();
                for group in chunks.chunks(window) {
                    // Each message lands at its own offset in the peer's region, as in ours.
                    let base = group.first().map_or(0, |&(off, _)| off) as u64;
                    control.ask_with(
                        conn,
                        Message {
                            op: Op::ExpectSends,
                            a: group.len() as u64,
                            b: message_size as u64,
                            c: base,
                            d: self.late_ms,
                        },
                    )?;
                    for &(off, n) in group {
                        let id = conn.post_send(local, off, n)?;
                        conn.wait(id)?;
                    }
                    // A verification of no bytes: the peer has taken every receive of the
                    // window before the next is announced, so its receive queue never
                    // overflows.
                    control.ask(conn, Op::Verify, seed, 0, 0)?;
                }
                let elapsed = started.elapsed();
                let verdict = control.ask(conn, Op::Verify, seed, len64, off64)?;
                Ok(OpResult {
                    zeroed_pages: zeroed(&verdict),
                    cold_pages: cold_pages(&cold),
                    ..result(elapsed, remote_mismatch(verdict))
                })
            }
            other => Err(Error::invalid(format!(
                "{} is not a traffic pass across hosts",
                other.name()
            ))),
        }
    }
}

/// Latencies of one pass of single-page RDMA READs, in nanoseconds.
#[derive(Debug, Clone, Serialize)]
pub struct PassLatency {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl PassLatency {
    fn of(mut ns: Vec<u64>) -> PassLatency {
        ns.sort_unstable();
        let at = |q: f64| {
            ns.get(((ns.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        PassLatency {
            p50_ns: at(0.5).unwrap_or(0),
            p99_ns: at(0.99).unwrap_or(0),
            max_ns: ns.last().copied().unwrap_or(0),
        }
    }
}

/// What a requester waits for a page of the peer's ODP MR: the first touch after the peer
/// dropped it (its device faults the page in, allocating it) and the same page again.
#[derive(Debug, Clone, Serialize)]
pub struct TouchLatency {
    pub pages: usize,
    pub first_touch: PassLatency,
    pub warm: PassLatency,
}

/// Reads `pages` pages of the peer's region one at a time, right after the peer dropped them
/// and again once they are back, timing each READ from post to completion. The local MR is
/// read into once before, so its own first touches stay out of the figures.
pub fn touch_latency(
    conn: &mut PeerRc,
    local: &MemoryRegion,
    offer: &Offer,
    pages: usize,
) -> Result<TouchLatency> {
    if !offer.odp {
        return Err(pinned_peer(conn, "timing a first touch"));
    }
    let page = crate::memory::page_size();
    let len = pages.saturating_mul(page);
    if pages == 0 || len > local.len() || len > offer.remote.len {
        return Err(Error::invalid(format!(
            "{pages} pages of {page} bytes do not fit this side's MR ({} bytes) and the peer's \
             ({} bytes)",
            local.len(),
            offer.remote.len
        )));
    }
    let control = ControlBuffer::new(conn)?;
    let pass = |conn: &mut PeerRc| -> Result<Vec<u64>> {
        let mut ns = Vec::with_capacity(pages);
        for i in 0..pages {
            let started = Instant::now();
            let id = conn.post_rdma(Opcode::Read, local, i * page, offer.remote, i * page, page)?;
            conn.wait(id)?;
            ns.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        Ok(ns)
    };
    pass(conn)?;
    if control
        .exchange(
            conn,
            Message {
                op: Op::Drop,
                a: 0,
                b: len as u64,
                c: 0,
                d: 0,
            },
        )?
        .op
        != Op::Reply
    {
        return Err(Error::Peer {
            peer: conn.peer().to_string(),
            what: "refused to drop the pages of its ODP MR".into(),
        });
    }
    explicit(local)?.fill(0xa5);
    let first_touch = PassLatency::of(pass(conn)?);
    // A page the peer dropped is a new zero page when its device touches it again.
    let read = explicit(local)?.to_vec(0, len)?;
    if let Some(offset) = read.iter().position(|&b| b != 0) {
        return Err(Error::Peer {
            peer: conn.peer().to_string(),
            what: format!(
                "a page it dropped read back as {:#04x} at offset {offset}, not zeros",
                read[offset]
            ),
        });
    }
    let warm = PassLatency::of(pass(conn)?);
    Ok(TouchLatency {
        pages,
        first_touch,
        warm,
    })
}

/// Ends a session: with `retries` (this side's requester retries on the connection), first
/// asks the serving side which of its faults caused each; then says goodbye. The serving side
/// needs its probes for the first part: without, the answer is Err with the reason.
pub fn end_session(
    conn: &mut PeerRc,
    retries: Option<&[RequesterRetry]>,
) -> Result<Option<std::result::Result<RetryReport, String>>> {
    let control = ControlBuffer::new(conn)?;
    let report = match retries {
        None => None,
        Some(retries) => Some(ask_causes(&control, conn, retries)?),
    };
    control.ask(conn, Op::Bye, 0, 0, 0)?;
    Ok(report)
}

/// A connection that only asks a serving side which of its faults caused this host's retries:
/// served at once, beside whatever traffic the serving side carries.
pub struct Questions {
    conn: PeerRc,
    control: ControlBuffer,
}

impl Questions {
    /// Connects over `route`, with `pd` on the route's device.
    pub fn connect(route: Route, pd: &Arc<ProtectionDomain>) -> Result<Questions> {
        let (conn, answer) = route.connect(pd, &Hello::new(Purpose::Questions).encode())?;
        Offer::decode(&answer, conn.peer())?;
        let control = ControlBuffer::new(&conn)?;
        Ok(Questions { conn, control })
    }

    /// Which of the serving side's faults caused each of `retries` (this host's, on QPs
    /// connected to it); Err with the reason when it runs without probes.
    pub fn explain(
        &mut self,
        retries: &[RequesterRetry],
    ) -> Result<std::result::Result<RetryReport, String>> {
        ask_causes(&self.control, &mut self.conn, retries)
    }

    /// Says goodbye.
    pub fn close(mut self) -> Result<()> {
        self.control.ask(&mut self.conn, Op::Bye, 0, 0, 0).map(drop)
    }
}

fn ask_causes(
    control: &ControlBuffer,
    conn: &mut PeerRc,
    retries: &[RequesterRetry],
) -> Result<std::result::Result<RetryReport, String>> {
    let mut without_probes = false;
    let mut catch_up = CATCH_UP;
    let report = RetryReport::build(retries, |r| {
        if without_probes {
            return Ok(None);
        }
        let message = Message {
            op: Op::Cause,
            a: u64::from(r.dest_qp),
            b: u64::from(r.psn),
            c: u64::from(r.next_psn),
            d: std::mem::take(&mut catch_up),
        };
        let answer = control.exchange(conn, message)?;
        match answer.op {
            Op::Failed if answer.a == NO_PROBES => {
                without_probes = true;
                Ok(None)
            }
            Op::Reply => Ok(cause_of(&answer, r.dest_qp)),
            _ => Err(Error::Peer {
                peer: conn.peer().to_string(),
                what: "could not say what caused a retry".into(),
            }),
        }
    })?;
    if without_probes {
        return Ok(Err(format!(
            "{} runs without --probes: it cannot name the faults behind this side's retries",
            conn.peer()
        )));
    }
    Ok(Ok(report))
}

fn op_result(
    op: Opcode,
    chunks: &[(usize, usize)],
    bytes: usize,
    elapsed: Duration,
    mismatch: Option<Mismatch>,
) -> OpResult {
    OpResult {
        op,
        messages: chunks.len(),
        bytes,
        elapsed_us: elapsed.as_micros(),
        mismatch,
        zeroed_pages: None,
        cold_pages: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_offers_round_trip_and_strangers_are_refused() {
        let m = Message {
            op: Op::Verify,
            a: 3,
            b: 1 << 40,
            c: u64::MAX,
            d: 7,
        };
        assert_eq!(Message::decode(&m.encode()), Some(m));
        assert_eq!(Message::decode(&[0u8; MESSAGE]), None);
        let offer = Offer {
            remote: Remote {
                addr: 0x7f00_dead_b000,
                rkey: 0x1234,
                len: 16 << 20,
            },
            odp: true,
        };
        assert_eq!(Offer::decode(&offer.encode(), "p").ok(), Some(offer));
        let mut newer = offer.encode();
        newer[4] = 9;
        let err = Offer::decode(&newer, "p").expect_err("another version");
        assert!(err.to_string().contains("protocol 9"), "{err}");
        for purpose in [Purpose::Traffic, Purpose::Questions] {
            let ours = Hello::new(purpose);
            assert_eq!(Hello::check(&ours.encode()), Ok(ours));
        }
        let mut unknown = Hello::new(Purpose::Questions).encode();
        unknown[6] = 9;
        assert!(Hello::check(&unknown).is_err());
        let older = Hello {
            version: PROTOCOL_VERSION - 1,
            purpose: Purpose::Traffic,
        };
        let refused = Hello::check(&older.encode()).expect_err("an older side");
        assert!(
            refused.contains(&format!("protocol {}", PROTOCOL_VERSION - 1)),
            "{refused}"
        );
        assert!(Hello::check(b"hello").is_err());
        for delay in [Delay::Fault, Delay::InvalidationWait] {
            let fault = ResponderFault {
                delay,
                qp: 20,
                psn: 0x00ff_fffe,
                start: 0x7f00_dead_b000,
                len: 4096,
                duration_ns: 12_345_678,
                ret: if delay == Delay::Fault { 1 } else { -14 },
            };
            let reply = Message::decode(&cause_reply(Some(&fault)).encode()).expect("a reply");
            assert_eq!(cause_of(&reply, 20), Some(fault));
        }
        assert_eq!(cause_of(&cause_reply(None), 20), None);
        assert_eq!(
            parse_address("10.20.0.1").expect("bare").to_string(),
            format!("10.20.0.1:{DEFAULT_PORT}")
        );
        assert_eq!(parse_address("10.20.0.1:7").expect("port").port(), 7);
        for bad in ["", "host", "10.20.0.1:", "10.20.0.1:99999", "::1"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
