//! The scenario file: what memory to register, what traffic to run over it, and what the CPU
//! side does to that memory meanwhile. TOML, documented in `scenarios/README.md`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::memory::Backing;
use crate::units::{duration_from_secs, parse_duration, parse_range, parse_size};
use crate::verbs::{Access, Advice};

pub use super::actions::Action;

/// A size as typed in the file: `4096`, `"64K"`, `"2M"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size(pub usize);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a size: a number of bytes or a string such as "64K" or "2M""#)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<Size, E> {
                usize::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom("size overflows the address space"))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<Size, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom("a size cannot be negative"))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> std::result::Result<Size, E> {
                parse_size(t).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A duration as typed in the file: `"10s"`, `"500ms"`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span(#[serde(with = "secs")] pub Duration);

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Span;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    r#"a duration: a number of seconds or a string such as "500ms" or "10s""#,
                )
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> std::result::Result<Span, E> {
                duration_from_secs(n, &n.to_string())
                    .map(Span)
                    .map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<Span, E> {
                self.visit_f64(n as f64)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<Span, E> {
                self.visit_f64(n as f64)
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> std::result::Result<Span, E> {
                parse_duration(t).map(Span).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `OFFSET:LENGTH` inside an MR, e.g. `"0:2M"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub offset: usize,
    pub len: usize,
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (offset, len) = parse_range(&text).map_err(serde::de::Error::custom)?;
        Ok(Window { offset, len })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seeds every worker's random choices (ranges, jitter), so a run can be repeated.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Total length of the run when there are no phases.
    #[serde(default = "default_duration")]
    pub duration: Span,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(rename = "mr", default)]
    pub mrs: Vec<MrSpec>,
    #[serde(default)]
    pub traffic: Vec<TrafficSpec>,
    #[serde(rename = "invalidate", default)]
    pub actions: Vec<ActionSpec>,
    #[serde(default)]
    pub prefetch: Vec<PrefetchSpec>,
    /// Run in order; each names the workers active in it. None: everything for `duration`.
    #[serde(rename = "phase", default)]
    pub phases: Vec<PhaseSpec>,
    /// The connection's knobs when the scenario runs against a peer (`stress --peer`).
    #[serde(default)]
    pub peer: PeerSpec,
}

/// How the connection to a peer behaves (`stress --peer`; ignored on one host): the knobs that
/// turn the peer's slow faults into retries, RNR waits and failures this side sees.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// This side's local ACK timeout (IB's 5-bit code: 4.096 us x 2^N); default: rdma_cm's.
    pub ack_timeout: Option<u8>,
    /// Transport retries before a request fails (0..7).
    pub retry_count: Option<u8>,
    /// RNR retries before a request fails (0..7; 7 is no bound).
    pub rnr_retry: Option<u8>,
    /// The RNR NAK timer this side's QP asks of the peer (code 0..31) when it has no receive.
    pub min_rnr_timer: Option<u8>,
    /// The peer posts each window of SENDs' receives this late (at most 1 s): RNR NAKs on any
    /// device.
    pub late_receives: Option<Span>,
    /// The share (above 0, at most 1) of the pages under each WRITE and SEND pass that the peer
    /// leaves never touched before the pass (dropped, not zeroed), spread evenly: the device's
    /// first touch faults each one in.
    pub cold_pages: Option<f64>,
}

fn default_name() -> String {
    "unnamed".into()
}

fn default_seed() -> u64 {
    1
}

fn default_duration() -> Span {
    Span(Duration::from_secs(5))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// RDMA device; default: the first one.
    pub name: Option<String>,
    #[serde(default = "default_port")]
    pub port: u8,
    /// GID index for RoCE; default: a RoCE v2 IPv4 entry.
    pub gid_index: Option<u32>,
    /// Path MTU in bytes (256..4096); default: the port's active MTU.
    pub mtu: Option<u32>,
    /// Work requests each queue can hold.
    #[serde(default = "default_qp_depth")]
    pub qp_depth: u32,
    /// The loopback QPs' local ACK timeout, IB's 5-bit exponent (4.096 us x 2^N; 0 waits for
    /// ever); default 14 (67 ms). Shorter makes the requester retransmit while the responder
    /// faults (docs/FINDINGS.md #7).
    pub ack_timeout: Option<u8>,
}

impl Default for DeviceSpec {
    fn default() -> Self {
        DeviceSpec {
            name: None,
            port: default_port(),
            gid_index: None,
            mtu: None,
            qp_depth: default_qp_depth(),
            ack_timeout: None,
        }
    }
}

fn default_port() -> u8 {
    1
}

fn default_qp_depth() -> u32 {
    64
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MrSpec {
    pub name: String,
    pub size: Size,
    #[serde(default = "default_backing")]
    pub backing: String,
    /// Register the whole address space (implicit ODP) instead of this buffer's range.
    #[serde(default)]
    pub implicit: bool,
    /// Access flags as `register --access` takes them; on-demand is always added.
    #[serde(default = "default_access")]
    pub access: String,
    /// Write every page before the run starts, so the CPU side has pages to invalidate from the
    /// first action on (a fork before any page exists copies nothing and invalidates nothing).
    /// False starts with an empty MR: the device's first touches fault pages in.
    #[serde(default = "default_populate")]
    pub populate: bool,
}

fn default_populate() -> bool {
    true
}

fn default_backing() -> String {
    "anon".into()
}

fn default_access() -> String {
    "local-write,remote-write,remote-read,remote-atomic".into()
}

/// What the device does with the ODP MR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficOp {
    /// RDMA WRITE into the ODP MR (the device writes ODP memory; checked by reading it back).
    Write,
    /// RDMA READ out of the ODP MR (the device reads ODP memory the CPU just filled).
    Read,
    /// SEND received into the ODP MR.
    Send,
    /// Atomic fetch-and-add of 1 on the first word of each page of the range in turn; the old
    /// value that comes back must be the count so far (or 0 where an action dropped the page).
    FetchAdd,
}

impl TrafficOp {
    pub fn name(self) -> &'static str {
        match self {
            TrafficOp::Write => "write",
            TrafficOp::Read => "read",
            TrafficOp::Send => "send",
            TrafficOp::FetchAdd => "fetch-add",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub mr: String,
    pub op: TrafficOp,
    /// Bytes per operation.
    #[serde(default = "default_message")]
    pub message: Size,
    /// Operations in flight at once (each on its own part of the range).
    #[serde(default = "default_depth")]
    pub depth: u32,
    /// Operations per second; 0 runs as fast as completions allow.
    #[serde(default)]
    pub rate: f64,
    /// Part of the MR this worker uses; default the whole MR.
    #[serde(default)]
    pub range: Option<Window>,
}

fn default_message() -> Size {
    Size(64 << 10)
}

fn default_depth() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub mr: String,
    pub action: Action,
    /// Actions per second.
    #[serde(default = "default_action_rate")]
    pub rate: f64,
    /// Bytes each action covers, at a random page-aligned place inside `range`.
    #[serde(default = "default_action_len")]
    pub length: Size,
    #[serde(default)]
    pub range: Option<Window>,
    /// Offsets are multiples of this (e.g. "2M" so collapse and split act on whole huge pages).
    #[serde(default)]
    pub align: Option<Size>,
    /// 0..1: how much of each interval is randomised (0 is a metronome).
    #[serde(default)]
    pub jitter: f64,
    /// How long mprotect keeps the range read-only (default 200us); for ksm, the longest wait
    /// for the merge (default 1s).
    #[serde(default)]
    pub hold: Option<Span>,
}

fn default_action_rate() -> f64 {
    200.0
}

fn default_action_len() -> Size {
    Size(64 << 10)
}

impl ActionSpec {
    pub fn hold(&self) -> Duration {
        self.hold.map_or(self.action.default_hold(), |h| h.0)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub mr: String,
    #[serde(default = "default_advice")]
    pub advice: String,
    /// Wait for the prefetch (IBV_ADVISE_MR_FLAG_FLUSH) or not.
    #[serde(default)]
    pub sync: bool,
    #[serde(default = "default_prefetch_rate")]
    pub rate: f64,
    #[serde(default = "default_action_len")]
    pub length: Size,
    #[serde(default)]
    pub range: Option<Window>,
}

fn default_advice() -> String {
    "prefetch-write".into()
}

fn default_prefetch_rate() -> f64 {
    50.0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub duration: Span,
    /// Worker names active in this phase; absent: all of them.
    pub workers: Option<Vec<String>>,
}

/// The built-in scenario: RDMA WRITE and READ over a 4 MiB anonymous ODP MR while MADV_DONTNEED
/// drops 64 KiB pieces of it 500 times a second.
pub const DEFAULT_SCENARIO: &str = r#"
name = "default"
description = "RDMA WRITE and READ on an anonymous ODP MR while MADV_DONTNEED drops pieces of it"
seed = 1
duration = "5s"

[[mr]]
name = "buf"
size = "4M"

[[traffic]]
name = "writer"
mr = "buf"
op = "write"
range = "0:2M"

[[traffic]]
name = "reader"
mr = "buf"
op = "read"
range = "2M:2M"

[[invalidate]]
name = "dontneed"
mr = "buf"
action = "dontneed"
rate = 500
length = "64K"
jitter = 0.5
"#;

impl Scenario {
    /// Parses and checks a scenario; errors name the file, line and column (for an error about
    /// one entry's meaning, where that entry begins).
    pub fn parse(text: &str, origin: &str) -> Result<Scenario> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| {
            let place = e.span().map_or_else(
                || origin.to_string(),
                |span| place(text, origin, span.start),
            );
            Error::invalid(format!("{place}: {}", e.message()))
        })?;
        scenario
            .check()
            .map_err(|e| Error::invalid(e.placed(text, origin)))?;
        Ok(scenario)
    }

    /// `parse`, for a run against a peer (`stress --peer`): the peer serves one region and runs
    /// one storm of an action on it, so the scenario may have one [[mr]], WRITE, READ and SEND
    /// traffic, at most one action the peer can run (`Action::runs_on_a_peer`), and no
    /// prefetch or phases.
    pub fn parse_across_hosts(text: &str, origin: &str) -> Result<Scenario> {
        let scenario = Scenario::parse(text, origin)?;
        scenario
            .check_across_hosts()
            .map_err(|e| Error::invalid(format!("{} (across hosts)", e.placed(text, origin))))?;
        Ok(scenario)
    }

    fn check_across_hosts(&self) -> std::result::Result<(), CheckError> {
        if self.mrs.len() > 1 {
            return Err(CheckError {
                entry: Entry::Mr(1),
                message: "the peer serves one region: one [[mr]]".into(),
            });
        }
        if let Some(i) = self
            .traffic
            .iter()
            .position(|t| t.op == TrafficOp::FetchAdd)
        {
            return Err(CheckError {
                entry: Entry::Traffic(i),
                message: "fetch-add runs on one host only so far".into(),
            });
        }
        if let Some((i, a)) = self
            .actions
            .iter()
            .enumerate()
            .find(|(_, a)| !a.action.runs_on_a_peer())
        {
            return Err(CheckError {
                entry: Entry::Invalidate(i),
                message: format!(
                    "{} runs where the memory is, and the peer runs {}",
                    a.action.name(),
                    crate::peer::peer_actions()
                ),
            });
        }
        if self.actions.len() > 1 {
            return Err(CheckError {
                entry: Entry::Invalidate(1),
                message: "the peer runs one storm: one [[invalidate]]".into(),
            });
        }
        if !self.prefetch.is_empty() {
            return Err(CheckError {
                entry: Entry::Prefetch(0),
                message: "prefetch advises this side's memory, not the peer's".into(),
            });
        }
        if !self.phases.is_empty() {
            return Err(CheckError {
                entry: Entry::Phase(0),
                message: "phases run on one host only so far".into(),
            });
        }
        Ok(())
    }

    /// MR name -> index.
    fn mr_indices(&self) -> std::collections::HashMap<&str, usize> {
        let mut by_name = std::collections::HashMap::with_capacity(self.mrs.len());
        for (i, m) in self.mrs.iter().enumerate() {
            by_name.entry(m.name.as_str()).or_insert(i);
        }
        by_name
    }

    pub fn mr_index(&self, name: &str) -> Option<usize> {
        self.mrs.iter().position(|m| m.name == name)
    }

    /// How long the whole run lasts.
    pub fn total_duration(&self) -> Duration {
        if self.phases.is_empty() {
            self.duration.0
        } else {
            self.phases
                .iter()
                .try_fold(Duration::ZERO, |total, p| total.checked_add(p.duration.0))
                .unwrap_or(Duration::MAX)
        }
    }

    /// Checks what the file means. Linear in its entries: a scenario of 850,000 entries is
    /// checked in well under a second.
    fn check(&self) -> std::result::Result<(), CheckError> {
        let whole = |message: String| CheckError {
            entry: Entry::Whole,
            message,
        };
        if self.mrs.is_empty() {
            return Err(whole(
                "no [[mr]]: a scenario needs memory to register".into(),
            ));
        }
        if self.traffic.is_empty() {
            return Err(whole(
                "no [[traffic]]: nothing would touch the memory".into(),
            ));
        }
        let device = |message: String| CheckError {
            entry: Entry::Device,
            message,
        };
        let peer = |message: String| CheckError {
            entry: Entry::Peer,
            message,
        };
        for (what, value, max) in [
            ("ack_timeout", self.peer.ack_timeout, 31),
            ("retry_count", self.peer.retry_count, 7),
            ("rnr_retry", self.peer.rnr_retry, 7),
            ("min_rnr_timer", self.peer.min_rnr_timer, 31),
        ] {
            if value.is_some_and(|v| v > max) {
                return Err(peer(format!("peer.{what} must be from 0 to {max}")));
            }
        }
        if self
            .peer
            .cold_pages
            .is_some_and(|share| !crate::peer::cold_pages_allowed(share))
        {
            return Err(peer(
                "peer.cold_pages must be above 0 and at most 1 (a share of the pages)".into(),
            ));
        }
        if self
            .peer
            .late_receives
            .is_some_and(|d| !crate::peer::late_receives_allowed(d.0))
        {
            return Err(peer(format!(
                "peer.late_receives must be above 0 and at most {:?}",
                crate::peer::LATE_RECEIVES_MAX
            )));
        }
        if self.device.qp_depth == 0 {
            return Err(device("device.qp_depth must be at least 1".into()));
        }
        if self.device.ack_timeout.is_some_and(|t| t > 31) {
            return Err(device("device.ack_timeout must be from 0 to 31".into()));
        }
        if let Some(mtu) = self.device.mtu {
            if ![256, 512, 1024, 2048, 4096].contains(&mtu) {
                return Err(device(format!(
                    "device.mtu {mtu} is not a path MTU: 256, 512, 1024, 2048 or 4096"
                )));
            }
        }
        let page = crate::memory::page_size();
        let mr_by_name = self.mr_indices();
        for (i, m) in self.mrs.iter().enumerate() {
            let err = |message: String| CheckError {
                entry: Entry::Mr(i),
                message,
            };
            if mr_by_name.get(m.name.as_str()) != Some(&i) {
                return Err(err(format!("two MRs are named {:?}", m.name)));
            }
            if m.size.0 == 0 || m.size.0 % page != 0 {
                return Err(err(format!(
                    "mr {:?}: size must be a non-zero multiple of the page size ({page})",
                    m.name
                )));
            }
            Backing::parse(&m.backing, None).map_err(|e| err(format!("mr {:?}: {e}", m.name)))?;
            Access::parse(&m.access).map_err(|e| err(format!("mr {:?}: {e}", m.name)))?;
        }
        let mr_of = |name: &str, what: &str| -> std::result::Result<usize, String> {
            mr_by_name
                .get(name)
                .copied()
                .ok_or_else(|| format!("{what}: no MR named {name:?}"))
        };
        let window = |w: Option<Window>, size: usize, what: &str| {
            let w = w.unwrap_or(Window {
                offset: 0,
                len: size,
            });
            if w.offset % page != 0 || w.len % page != 0 || w.len == 0 {
                return Err(format!("{what}: range must be non-empty and page-aligned"));
            }
            match w.offset.checked_add(w.len) {
                Some(end) if end <= size => Ok(w),
                _ => Err(format!(
                    "{what}: range {:#x}+{:#x} is outside the MR",
                    w.offset, w.len
                )),
            }
        };
        // Traffic workers own their ranges: two on the same bytes would overwrite each other's
        // patterns and every check would fail for the wrong reason.
        let mut owned: Vec<(usize, Window, usize)> = Vec::with_capacity(self.traffic.len());
        let traffic_name = |i: usize| {
            let t = &self.traffic[i];
            format!(
                "traffic #{} ({})",
                i + 1,
                t.name.as_deref().unwrap_or(t.op.name())
            )
        };
        for (i, t) in self.traffic.iter().enumerate() {
            let what = traffic_name(i);
            let at = |message: String| CheckError {
                entry: Entry::Traffic(i),
                message,
            };
            let mr = mr_of(&t.mr, &what).map_err(at)?;
            let w = window(t.range, self.mrs[mr].size.0, &what).map_err(at)?;
            if t.message.0 == 0 || t.message.0 % page != 0 {
                return Err(at(format!(
                    "{what}: message must be a non-zero multiple of the page size"
                )));
            }
            if t.depth == 0 || t.depth > self.device.qp_depth {
                return Err(at(format!(
                    "{what}: depth must be 1..={} (device.qp_depth)",
                    self.device.qp_depth
                )));
            }
            // An atomic moves one word per page: the range needs a page per operation in flight.
            let unit = if t.op == TrafficOp::FetchAdd {
                page
            } else {
                t.message.0
            };
            if (t.depth as usize).saturating_mul(unit) > w.len {
                return Err(at(format!(
                    "{what}: depth x message ({} x {unit}) does not fit in its range ({} bytes)",
                    t.depth, w.len
                )));
            }
            if !(t.rate.is_finite() && t.rate >= 0.0) {
                return Err(at(format!("{what}: rate must be >= 0")));
            }
            owned.push((mr, w, i));
        }
        // Overlaps by sorting: neighbours on the same MR are the only candidates.
        owned.sort_by_key(|(mr, w, _)| (*mr, w.offset));
        for pair in owned.windows(2) {
            let ((mr_a, a, first), (mr_b, b, second)) = (pair[0], pair[1]);
            if mr_a == mr_b && b.offset < a.offset + a.len {
                let (earlier, later) = (first.min(second), first.max(second));
                return Err(CheckError {
                    entry: Entry::Traffic(later),
                    message: format!(
                        "{}: range overlaps {}'s; give each worker its own",
                        traffic_name(later),
                        traffic_name(earlier)
                    ),
                });
            }
        }
        for (i, a) in self.actions.iter().enumerate() {
            let what = format!(
                "invalidate #{} ({})",
                i + 1,
                a.name.as_deref().unwrap_or(a.action.name())
            );
            let at = |message: String| CheckError {
                entry: Entry::Invalidate(i),
                message,
            };
            let mr = mr_of(&a.mr, &what).map_err(at)?;
            let w = window(a.range, self.mrs[mr].size.0, &what).map_err(at)?;
            if a.length.0 == 0 || a.length.0 % page != 0 || a.length.0 > w.len {
                return Err(at(format!(
                    "{what}: length must be whole pages and fit in the range"
                )));
            }
            if !(a.rate.is_finite() && a.rate > 0.0) {
                return Err(at(format!("{what}: rate must be > 0")));
            }
            if let Some(Size(align)) = a.align {
                if align == 0 || align % page != 0 || (w.offset % align) != 0 {
                    return Err(at(format!(
                        "{what}: align must be whole pages and the range must start on it"
                    )));
                }
            }
            if !(0.0..=1.0).contains(&a.jitter) {
                return Err(at(format!("{what}: jitter must be between 0 and 1")));
            }
            let backing = Backing::parse(&self.mrs[mr].backing, None).ok();
            if a.action.needs_private_anonymous()
                && !matches!(backing, Some(Backing::Anonymous | Backing::Thp))
            {
                return Err(at(format!(
                    "{what}: {} works on private anonymous memory; use backing anon or thp",
                    a.action.name()
                )));
            }
        }
        for (i, p) in self.prefetch.iter().enumerate() {
            let what = format!("prefetch #{}", i + 1);
            let at = |message: String| CheckError {
                entry: Entry::Prefetch(i),
                message,
            };
            let mr = mr_of(&p.mr, &what).map_err(at)?;
            let w = window(p.range, self.mrs[mr].size.0, &what).map_err(at)?;
            if p.length.0 == 0 || p.length.0 > w.len {
                return Err(at(format!(
                    "{what}: length must be > 0 and fit in the range"
                )));
            }
            Advice::parse(&p.advice).map_err(|e| at(format!("{what}: {e}")))?;
            if !(p.rate.is_finite() && p.rate > 0.0) {
                return Err(at(format!("{what}: rate must be > 0")));
            }
        }
        // Every name a phase may list: traffic, invalidation and prefetch workers.
        let named = self
            .traffic
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((t.name.as_deref()?, Entry::Traffic(i))))
            .chain(
                self.actions
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| Some((a.name.as_deref()?, Entry::Invalidate(i)))),
            )
            .chain(
                self.prefetch
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| Some((p.name.as_deref()?, Entry::Prefetch(i)))),
            );
        let mut names = std::collections::HashSet::new();
        for (name, entry) in named {
            if !names.insert(name) {
                return Err(CheckError {
                    entry,
                    message: format!("two workers are named {name:?}"),
                });
            }
        }
        for (i, p) in self.phases.iter().enumerate() {
            for w in p.workers.iter().flatten() {
                if !names.contains(w.as_str()) {
                    return Err(CheckError {
                        entry: Entry::Phase(i),
                        message: format!("phase #{}: no worker named {w:?}", i + 1),
                    });
                }
            }
        }
        if self.total_duration().is_zero() {
            return Err(whole(
                "the run would last no time: set duration (or phase durations)".into(),
            ));
        }
        if self.total_duration() > crate::units::MAX_DURATION {
            return Err(whole("the phases add up to more than 100 days".into()));
        }
        Ok(())
    }
}

/// Which entry of the file an error is about.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Whole,
    Device,
    Peer,
    Mr(usize),
    Traffic(usize),
    Invalidate(usize),
    Prefetch(usize),
    Phase(usize),
}

struct CheckError {
    entry: Entry,
    message: String,
}

impl CheckError {
    /// `FILE:LINE:COLUMN: message`, the place where its entry begins (the file alone for an
    /// error about the whole file).
    fn placed(&self, text: &str, origin: &str) -> String {
        // The entries' places, read only when an error needs one.
        let offset = toml::from_str::<Places>(text)
            .ok()
            .and_then(|p| p.offset(self.entry));
        let at = offset.map_or_else(|| origin.to_string(), |o| place(text, origin, o));
        format!("{at}: {}", self.message)
    }
}

/// `FILE:LINE:COLUMN` of a byte offset of the file's text.
fn place(text: &str, origin: &str, offset: usize) -> String {
    let (line, column) = line_column(text, offset);
    format!("{origin}:{line}:{column}")
}

/// Where each entry of a scenario begins, read from the same text.
#[derive(Deserialize)]
struct Places {
    device: Option<toml::Spanned<serde::de::IgnoredAny>>,
    peer: Option<toml::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    mr: Vec<toml::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    traffic: Vec<toml::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    invalidate: Vec<toml::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    prefetch: Vec<toml::Spanned<serde::de::IgnoredAny>>,
    #[serde(default)]
    phase: Vec<toml::Spanned<serde::de::IgnoredAny>>,
}

impl Places {
    fn offset(&self, entry: Entry) -> Option<usize> {
        let span = match entry {
            Entry::Whole => return None,
            Entry::Device => self.device.as_ref()?.span(),
            Entry::Peer => self.peer.as_ref()?.span(),
            Entry::Mr(i) => self.mr.get(i)?.span(),
            Entry::Traffic(i) => self.traffic.get(i)?.span(),
            Entry::Invalidate(i) => self.invalidate.get(i)?.span(),
            Entry::Prefetch(i) => self.prefetch.get(i)?.span(),
            Entry::Phase(i) => self.phase.get(i)?.span(),
        };
        Some(span.start)
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    // Characters, not bytes: what an editor shows.
    let column = before
        .rfind('\n')
        .map_or(before, |nl| &before[nl + 1..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_scenario_parses() {
        let s = Scenario::parse(DEFAULT_SCENARIO, "default").expect("default");
        assert_eq!(s.traffic.len(), 2);
        assert_eq!(s.actions[0].action, Action::Dontneed);
        assert_eq!(s.mrs[0].size, Size(4 << 20));
        assert_eq!(s.total_duration(), Duration::from_secs(5));
    }

    /// Across hosts the peer serves one region and runs one storm of an action it can run: what
    /// needs more is refused where it is written; the [peer] knobs are checked on any host.
    #[test]
    fn what_cannot_run_across_hosts_is_refused_where_it_stands() {
        let storm = include_str!("../../../scenarios/dontneed-storm.toml");
        let s = Scenario::parse_across_hosts(storm, "storm.toml").expect("a storm runs across");
        assert_eq!(s.peer.ack_timeout, None);
        let knobs = format!(
            "{storm}\n[peer]\nack_timeout = 14\nretry_count = 2\nlate_receives = \"50ms\"\n"
        );
        let s = Scenario::parse_across_hosts(&knobs, "k.toml").expect("knobs");
        assert_eq!(s.peer.ack_timeout, Some(14));
        assert_eq!(s.peer.retry_count, Some(2));
        assert_eq!(
            s.peer.late_receives.map(|d| d.0),
            Some(Duration::from_millis(50))
        );
        let across = |text: &str| {
            Scenario::parse_across_hosts(text, "t.toml")
                .expect_err("refused")
                .to_string()
        };
        let fork = include_str!("../../../scenarios/fork-cow.toml");
        assert!(Scenario::parse(fork, "f.toml").is_ok());
        let err = across(fork);
        let line = fork
            .lines()
            .position(|l| l.starts_with("[[invalidate]]"))
            .expect("an action")
            + 1;
        assert!(
            err.contains(&format!("t.toml:{line}:1: fork runs where")),
            "{err}"
        );
        assert!(err.ends_with("(across hosts)"), "{err}");
        assert!(
            err.contains("the peer runs dontneed, free, pageout, cold, collapse, split, migrate")
        );
        let migrate = include_str!("../../../scenarios/migrate.toml");
        let s = Scenario::parse_across_hosts(migrate, "m.toml").expect("a peer can migrate");
        assert_eq!(s.actions[0].action, Action::Migrate);
        for (file, text, want) in [
            (
                "atomics",
                include_str!("../../../scenarios/atomics.toml"),
                "fetch-add",
            ),
            (
                "phases",
                include_str!("../../../scenarios/phases.toml"),
                "one [[mr]]",
            ),
        ] {
            let err = across(text);
            assert!(err.contains(want), "{file}: {err}");
        }
        for (knob, want) in [
            ("ack_timeout = 32", "peer.ack_timeout must be from 0 to 31"),
            ("rnr_retry = 8", "peer.rnr_retry must be from 0 to 7"),
            (
                "late_receives = \"2s\"",
                "peer.late_receives must be above 0",
            ),
            (
                "cold_pages = 1.5",
                "peer.cold_pages must be above 0 and at most 1",
            ),
            (
                "cold_pages = 0.0",
                "peer.cold_pages must be above 0 and at most 1",
            ),
            ("colour = 1", "unknown field"),
        ] {
            let err = Scenario::parse(&format!("{storm}\n[peer]\n{knob}\n"), "t.toml")
                .expect_err(knob)
                .to_string();
            assert!(err.contains(want), "{knob}: {err}");
        }
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let text = "name = \"x\"\n[[mr]]\nname = \"buf\"\nsize = \"4M\"\nbacking = anon\n";
        let err = Scenario::parse(text, "s.toml")
            .expect_err("bad")
            .to_string();
        assert!(err.contains("s.toml:5:11"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let base =
            "[[mr]]\nname = \"buf\"\nsize = \"4M\"\n[[traffic]]\nmr = \"buf\"\nop = \"write\"\n";
        let cases = [
            (format!("{base}colour = 3\n"), "unknown field"),
            (
                format!("{base}[[invalidate]]\nmr = \"buf\"\naction = \"explode\"\n"),
                "unknown variant",
            ),
            (
                format!("{base}[[invalidate]]\nmr = \"nope\"\naction = \"dontneed\"\n"),
                "no MR named",
            ),
            (format!("{base}range = \"0:8M\"\n"), "outside the MR"),
            (
                format!("{base}message = \"1000\"\n"),
                "multiple of the page size",
            ),
            (
                format!("{base}[[traffic]]\nmr = \"buf\"\nop = \"read\"\nrange = \"1M:1M\"\n"),
                "overlaps",
            ),
            (
                format!("{base}[[phase]]\nduration = \"1s\"\nworkers = [\"ghost\"]\n"),
                "no worker named",
            ),
            (
                "[[traffic]]\nmr = \"buf\"\nop = \"write\"\n".to_string(),
                "no [[mr]]",
            ),
            (
                "[[mr]]\nname = \"buf\"\nsize = \"4M\"\nbacking = \"shared\"\n\
                 [[traffic]]\nmr = \"buf\"\nop = \"read\"\n\
                 [[invalidate]]\nmr = \"buf\"\naction = \"ksm\"\n"
                    .to_string(),
                "private anonymous memory",
            ),
        ];
        for (text, want) in cases {
            let err = Scenario::parse(&text, "t.toml")
                .expect_err(want)
                .to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        // Characters, not bytes; an offset inside a character counts from its start.
        assert_eq!(line_column("x\néé=", 6), (2, 3));
        assert_eq!(line_column("x\néé=", 5), (2, 2));
        assert_eq!(line_column("éé", 3), (1, 2));
    }

    /// The message, without the error kind's prefix.
    fn error_of(text: &str) -> String {
        let err = Scenario::parse(text, "t.toml")
            .expect_err("refused")
            .to_string();
        err.strip_prefix("invalid argument: ")
            .unwrap_or(&err)
            .to_string()
    }

    const BASE: &str =
        "[[mr]]\nname = \"buf\"\nsize = \"4M\"\n[[traffic]]\nmr = \"buf\"\nop = \"write\"\n";

    #[test]
    fn errors_of_meaning_name_the_line_of_their_entry() {
        // The second traffic worker (line 7) overlaps the first.
        let text = format!("{BASE}[[traffic]]\nmr = \"buf\"\nop = \"read\"\nrange = \"1M:1M\"\n");
        let err = error_of(&text);
        assert!(err.starts_with("t.toml:7:1: traffic #2"), "{err}");
        assert!(err.contains("overlaps traffic #1"), "{err}");
        // An unknown MR in the third entry of its kind.
        let text = format!(
            "{BASE}[[invalidate]]\nmr = \"buf\"\naction = \"dontneed\"\n\
             [[invalidate]]\nmr = \"nope\"\naction = \"dontneed\"\n"
        );
        let err = error_of(&text);
        assert!(err.starts_with("t.toml:10:1: invalidate #2"), "{err}");
        // A worker name used twice: the second one is named.
        let text = format!(
            "{BASE}name = \"w\"\n[[invalidate]]\nname = \"w\"\nmr = \"buf\"\naction = \"dontneed\"\n"
        );
        assert!(
            error_of(&text).starts_with("t.toml:8:1: two workers"),
            "{text}"
        );
        // About the whole file: the file alone.
        assert!(error_of("[[traffic]]\nmr = \"buf\"\nop = \"write\"\n")
            .starts_with("t.toml: no [[mr]]"));
    }

    #[test]
    fn values_of_the_wrong_kind_say_what_was_expected() {
        let text = "[[mr]]\nname = \"buf\"\nsize = true\n";
        let err = error_of(text);
        assert!(err.starts_with("t.toml:3:8:"), "{err}");
        assert!(err.contains("a size: a number of bytes"), "{err}");
        assert!(!err.contains("untagged"), "{err}");
        let err = error_of(&format!("duration = [1]\n{BASE}"));
        assert!(err.contains("a duration: a number of seconds"), "{err}");
        let err = error_of(&format!("{BASE}[device]\nqp_depth = 0\n"));
        assert!(
            err.starts_with("t.toml:7:1: device.qp_depth must be at least 1"),
            "{err}"
        );
        let err = error_of(&format!("{BASE}[device]\nmtu = 7\n"));
        assert!(err.contains("device.mtu 7 is not a path MTU"), "{err}");
        let err = error_of(&format!("{BASE}[device]\nack_timeout = 32\n"));
        assert!(
            err.starts_with("t.toml:7:1: device.ack_timeout must be from 0 to 31"),
            "{err}"
        );
        // The parser's own depth limit still names the file.
        let deep = format!("a{} = 1\n", ".a".repeat(100_000));
        assert!(
            error_of(&deep).starts_with("t.toml"),
            "{}",
            &error_of(&deep)[..80]
        );
        // Columns count characters.
        let err = error_of("name = \"ééé\" x\n");
        assert!(err.starts_with("t.toml:1:14:"), "{err}");
    }
}
