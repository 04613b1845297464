//! A sink that writes the run as a Perfetto trace: a track per process and under it one per MR,
//! with lanes for device faults, prefetches and driver invalidations (overlapping slices on
//! sibling lanes, so none hides another), the process's mmu-notifier ranges, libibverbs calls
//! and CPU page faults; collision waits as slices inside their fault; retries, races and
//! timeouts as instants on it; one flow per race, from the invalidation to the fault it hit;
//! counter tracks of fault and invalidation rates.
//!
//! Faults and invalidations are written once the engine can no longer find a race for them
//! (its matching horizon after their end), so each slice carries its flows when written.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use bpf_common::{Kind, OdpEvent};
use odp_core::analysis::{Activity, Engine, FaultActivity, FindingKind, InvalidationActivity};
use odp_core::trace::ClockReading;
use prost::Message;

use super::protos::{
    clock_snapshot, counter_descriptor, debug_annotation, trace_packet, track_event, ClockSnapshot,
    CounterDescriptor, DebugAnnotation, DebugAnnotationName, EventName, InternedData,
    ProcessDescriptor, Trace, TracePacket, TrackDescriptor, TrackEvent,
};
use crate::live::Sink;

/// Perfetto's built-in clock ids (ClockSnapshot.Clock.BuiltinClocks).
const CLOCK_REALTIME: u32 = 1;
const CLOCK_MONOTONIC: u32 = 3;
const CLOCK_BOOTTIME: u32 = 6;
/// TracePacket.SequenceFlags.
const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
const SEQ_NEEDS_INCREMENTAL_STATE: u32 = 2;
/// The one packet sequence this writer emits.
const SEQUENCE: u32 = 1;
/// A fault or invalidation is written once this much stream time has passed its end: the
/// engine's matching horizon (2 s) and its reordering tolerance, after which no race can name it.
const SETTLE_NS: u64 = 2_100_000_000;
/// Width of the rate counters' buckets.
const RATE_BUCKET_NS: u64 = 10_000_000;

/// The uuid of the global rate counters' tracks.
const FAULT_RATE_TRACK: u64 = 1;
const INVALIDATION_RATE_TRACK: u64 = 2;

/// What was written, for the command's report and the tests.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Written {
    pub packets: u64,
    pub bytes: u64,
    pub faults: u64,
    pub prefetches: u64,
    pub invalidations: u64,
    pub races: u64,
    pub library_calls: u64,
    pub cpu_faults: u64,
}

/// How the output file comes to be: written beside its final name, renamed when complete, so a
/// failed run leaves no partial file.
struct Output {
    file: std::io::BufWriter<tempfile::NamedTempFile>,
    path: PathBuf,
}

pub struct Timeline {
    out: Option<Output>,
    started: bool,
    names: HashMap<String, u64>,
    keys: HashMap<&'static str, u64>,
    /// Tracks declared so far, by what they stand for.
    tracks: HashMap<TrackKey, u64>,
    /// Per lane group (parent track, kind): the end of each lane's last slice.
    lanes: HashMap<(u64, &'static str), Vec<u64>>,
    next_uuid: u64,
    faults: HashMap<u64, FaultActivity>,
    invalidations: HashMap<u64, InvalidationActivity>,
    /// Ids of pending faults and invalidations by the stream time they may be written.
    settle: BTreeMap<(u64, u64), ()>,
    /// Flows leaving each invalidation, and arriving at each fault (with the invalidation's
    /// start, where the race instant goes).
    flows_out: HashMap<u64, Vec<u64>>,
    flows_in: HashMap<u64, Vec<(u64, u64)>>,
    next_flow: u64,
    /// (faults, invalidations) per RATE_BUCKET_NS of stream time, not yet written.
    rates: BTreeMap<u64, (u64, u64)>,
    pub written: Written,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TrackKey {
    Process(u32),
    Mr(u64),
    Lane(u64, &'static str, usize),
}

impl Timeline {
    /// A timeline to be written to `path` (created beside it, renamed at the end).
    pub fn create(path: &Path) -> anyhow::Result<Timeline> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Readable as any new file would be (the umask applies), not the temporary's 0600.
        let file = tempfile::Builder::new()
            .prefix(".odp-perfetto-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(&dir)
            .map_err(|e| io_fail("create", path, &e))?;
        Ok(Timeline {
            out: Some(Output {
                file: std::io::BufWriter::new(file),
                path: path.to_path_buf(),
            }),
            started: false,
            names: HashMap::new(),
            keys: HashMap::new(),
            tracks: HashMap::new(),
            lanes: HashMap::new(),
            next_uuid: 1 << 32,
            faults: HashMap::new(),
            invalidations: HashMap::new(),
            settle: BTreeMap::new(),
            flows_out: HashMap::new(),
            flows_in: HashMap::new(),
            next_flow: 1,
            rates: BTreeMap::new(),
            written: Written::default(),
        })
    }

    fn emit(&mut self, mut packet: TracePacket) -> anyhow::Result<()> {
        packet.optional_trusted_packet_sequence_id =
            Some(trace_packet::OptionalTrustedPacketSequenceId::TrustedPacketSequenceId(SEQUENCE));
        packet.sequence_flags = Some(if self.started {
            SEQ_NEEDS_INCREMENTAL_STATE
        } else {
            SEQ_INCREMENTAL_STATE_CLEARED
        });
        self.started = true;
        // Concatenated Trace messages are one Trace: each packet goes out as its own.
        let bytes = Trace {
            packet: vec![packet],
        }
        .encode_to_vec();
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the timeline is already closed"))?;
        out.file
            .write_all(&bytes)
            .map_err(|e| io_fail("write", &out.path, &e))?;
        self.written.packets += 1;
        self.written.bytes += bytes.len() as u64;
        Ok(())
    }

    /// The first packet: the clocks (the host's reading as the source has it, for lining the
    /// file up with perf and system traces; else the events' monotonic clock alone), and the
    /// rate counters' tracks.
    fn start(&mut self, first_ts: u64, host: Option<&ClockReading>) -> anyhow::Result<()> {
        let clocks = match host {
            Some(c) => ClockSnapshot {
                clocks: vec![
                    clock(CLOCK_BOOTTIME, c.boottime_ns),
                    clock(CLOCK_MONOTONIC, c.monotonic_ns),
                    clock(CLOCK_REALTIME, c.realtime_ns),
                ],
                primary_trace_clock: Some(CLOCK_BOOTTIME),
            },
            None => ClockSnapshot {
                clocks: vec![clock(CLOCK_MONOTONIC, first_ts)],
                primary_trace_clock: Some(CLOCK_MONOTONIC),
            },
        };
        self.emit(TracePacket {
            timestamp: Some(first_ts),
            timestamp_clock_id: Some(CLOCK_MONOTONIC),
            data: Some(trace_packet::Data::ClockSnapshot(clocks)),
            ..Default::default()
        })?;
        for (uuid, name) in [
            (FAULT_RATE_TRACK, "device faults /s"),
            (INVALIDATION_RATE_TRACK, "invalidations /s"),
        ] {
            self.declare(TrackDescriptor {
                uuid: Some(uuid),
                name: Some(name.to_string()),
                counter: Some(CounterDescriptor {
                    unit: Some(counter_descriptor::Unit::Count as i32),
                }),
                ..Default::default()
            })?;
        }
        Ok(())
    }

    fn declare(&mut self, track: TrackDescriptor) -> anyhow::Result<()> {
        self.emit(TracePacket {
            data: Some(trace_packet::Data::TrackDescriptor(track)),
            ..Default::default()
        })
    }

    fn process_track(&mut self, pid: u32, name: &str) -> anyhow::Result<u64> {
        if let Some(&uuid) = self.tracks.get(&TrackKey::Process(pid)) {
            return Ok(uuid);
        }
        let uuid = self.uuid(TrackKey::Process(pid));
        self.declare(TrackDescriptor {
            uuid: Some(uuid),
            process: Some(ProcessDescriptor {
                pid: Some(pid as i32),
                process_name: Some(name.to_string()),
            }),
            ..Default::default()
        })?;
        Ok(uuid)
    }

    fn mr_track(&mut self, engine: &Engine, id: u64) -> anyhow::Result<u64> {
        if let Some(&uuid) = self.tracks.get(&TrackKey::Mr(id)) {
            return Ok(uuid);
        }
        let (pid, comm, name) = match engine.mr(id) {
            Some(mr) => {
                let keys = match (mr.lkey, mr.rkey) {
                    (Some(l), Some(r)) => format!(" lkey {l:#x} rkey {r:#x}"),
                    _ => String::new(),
                };
                (
                    mr.pid,
                    mr.comm.clone(),
                    format!(
                        "MR {id} {} {:#x}+{}{keys}",
                        mr.device,
                        mr.start,
                        odp_core::units::fmt_size(mr.end.saturating_sub(mr.start))
                    ),
                )
            }
            // Retired after its release: its owner is no longer known by id.
            None => (0, "?".to_string(), format!("MR {id}")),
        };
        let parent = self.process_track(pid, &comm)?;
        self.child_track(TrackKey::Mr(id), parent, name)
    }

    /// A lane of `kind` under `parent` free at `start` (its slices end by then), declared when
    /// new; the lane's end becomes `end`.
    fn lane(
        &mut self,
        parent: u64,
        kind: &'static str,
        start: u64,
        end: u64,
    ) -> anyhow::Result<u64> {
        let ends = self.lanes.entry((parent, kind)).or_default();
        let index = match ends.iter().position(|&e| e <= start) {
            Some(i) => {
                ends[i] = end;
                i
            }
            None => {
                ends.push(end);
                ends.len() - 1
            }
        };
        let key = TrackKey::Lane(parent, kind, index);
        if let Some(&uuid) = self.tracks.get(&key) {
            return Ok(uuid);
        }
        let name = if index == 0 {
            kind.to_string()
        } else {
            format!("{kind} ({})", index + 1)
        };
        self.child_track(key, parent, name)
    }

    /// Declares a named track under `parent` for `key`.
    fn child_track(&mut self, key: TrackKey, parent: u64, name: String) -> anyhow::Result<u64> {
        let uuid = self.uuid(key);
        self.declare(TrackDescriptor {
            uuid: Some(uuid),
            parent_uuid: Some(parent),
            name: Some(name),
            ..Default::default()
        })?;
        Ok(uuid)
    }

    fn uuid(&mut self, key: TrackKey) -> u64 {
        let uuid = self.next_uuid;
        self.next_uuid += 1;
        self.tracks.insert(key, uuid);
        uuid
    }

    /// An event name's interned id, with the interned data to send if it is new.
    fn name(&mut self, name: &str, interned: &mut InternedData) -> u64 {
        if let Some(&iid) = self.names.get(name) {
            return iid;
        }
        let iid = self.names.len() as u64 + 1;
        self.names.insert(name.to_string(), iid);
        interned.event_names.push(EventName {
            iid: Some(iid),
            name: Some(name.to_string()),
        });
        iid
    }

    fn key(&mut self, key: &'static str, interned: &mut InternedData) -> u64 {
        if let Some(&iid) = self.keys.get(key) {
            return iid;
        }
        let iid = self.keys.len() as u64 + 1;
        self.keys.insert(key, iid);
        interned.debug_annotation_names.push(DebugAnnotationName {
            iid: Some(iid),
            name: Some(key.to_string()),
        });
        iid
    }

    fn args(
        &mut self,
        args: Vec<(&'static str, Arg)>,
        interned: &mut InternedData,
    ) -> Vec<DebugAnnotation> {
        args.into_iter()
            .map(|(key, value)| DebugAnnotation {
                name_field: Some(debug_annotation::NameField::NameIid(
                    self.key(key, interned),
                )),
                value: Some(match value {
                    Arg::Str(s) => debug_annotation::Value::StringValue(s),
                    Arg::Int(i) => debug_annotation::Value::IntValue(i),
                    Arg::Uint(u) => debug_annotation::Value::UintValue(u),
                    Arg::Ptr(p) => debug_annotation::Value::PointerValue(p),
                }),
            })
            .collect()
    }

    /// One track event: a slice's begin or end, an instant, or a counter value.
    fn event(
        &mut self,
        at: u64,
        track: u64,
        kind: track_event::Type,
        spec: EventSpec,
    ) -> anyhow::Result<()> {
        let mut interned = InternedData::default();
        let name_iid = spec.name.map(|n| self.name(&n, &mut interned));
        let debug_annotations = self.args(spec.args, &mut interned);
        let has_interned =
            !interned.event_names.is_empty() || !interned.debug_annotation_names.is_empty();
        self.emit(TracePacket {
            timestamp: Some(at),
            timestamp_clock_id: Some(CLOCK_MONOTONIC),
            data: Some(trace_packet::Data::TrackEvent(TrackEvent {
                name_field: name_iid.map(track_event::NameField::NameIid),
                r#type: Some(kind as i32),
                track_uuid: Some(track),
                counter_value_field: spec
                    .counter
                    .map(track_event::CounterValueField::CounterValue),
                flow_ids: spec.flows,
                terminating_flow_ids: spec.terminating,
                debug_annotations,
                ..Default::default()
            })),
            interned_data: has_interned.then_some(interned),
            ..Default::default()
        })
    }

    fn slice(
        &mut self,
        track: u64,
        start: u64,
        end: u64,
        spec: EventSpec,
        children: Vec<Child>,
    ) -> anyhow::Result<()> {
        self.event(start, track, track_event::Type::SliceBegin, spec)?;
        for child in children {
            match child {
                Child::Slice {
                    name,
                    start: s,
                    end: e,
                } => {
                    let (s, e) = (s.clamp(start, end), e.clamp(start, end));
                    self.event(
                        s,
                        track,
                        track_event::Type::SliceBegin,
                        EventSpec::named(name),
                    )?;
                    self.event(e, track, track_event::Type::SliceEnd, EventSpec::default())?;
                }
                Child::Instant {
                    name,
                    at,
                    terminating,
                } => {
                    self.event(
                        at.clamp(start, end),
                        track,
                        track_event::Type::Instant,
                        EventSpec {
                            name: Some(Cow::Borrowed(name)),
                            terminating,
                            ..Default::default()
                        },
                    )?;
                }
            }
        }
        self.event(
            end,
            track,
            track_event::Type::SliceEnd,
            EventSpec::default(),
        )
    }

    fn write_fault(&mut self, engine: &Engine, f: FaultActivity) -> anyhow::Result<()> {
        let mr = self.mr_track(engine, f.mr)?;
        let kind = if f.prefetch {
            "prefetches"
        } else {
            "device faults"
        };
        let lane = self.lane(mr, kind, f.start_ns, f.end_ns)?;
        let mut args = vec![
            ("range", Arg::Str(range(f.lo, f.hi))),
            ("pages", Arg::Uint(odp_core::analysis::pages(f.lo, f.hi))),
            ("task", Arg::Str(f.task.clone())),
            ("tid", Arg::Uint(u64::from(f.tid))),
            ("mr", Arg::Uint(f.mr)),
        ];
        if let Some(ret) = f.ret {
            args.push(("ret", Arg::Int(ret)));
            if ret < 0 {
                let errno = i32::try_from(-ret).unwrap_or(0);
                args.push((
                    "errno",
                    Arg::Str(format!("{} ({errno})", odp_core::error::errno_name(errno))),
                ));
            }
        }
        if !f.retries_at.is_empty() {
            args.push(("retries", Arg::Uint(f.retries_at.len() as u64)));
        }
        let mut children: Vec<Child> = f
            .waits
            .iter()
            .map(|&(at, d)| Child::Slice {
                name: "collision wait",
                start: at,
                end: at.saturating_add(d),
            })
            .collect();
        children.extend(f.retries_at.iter().map(|&at| Child::Instant {
            name: "retry",
            at,
            terminating: Vec::new(),
        }));
        for (flow, inv_start) in self.flows_in.remove(&f.id).unwrap_or_default() {
            // After the invalidation's start, so the arrow runs from it to the fault.
            let at = inv_start.saturating_add(1).max(f.start_ns);
            children.push(Child::Instant {
                name: "race",
                at,
                terminating: vec![flow],
            });
            self.written.races += 1;
        }
        if let Some(kind) = f.timeout {
            children.push(Child::Instant {
                name: match kind {
                    FindingKind::HmmTimeout => "timeout: hmm",
                    _ => "timeout: slow",
                },
                at: f.end_ns,
                terminating: Vec::new(),
            });
        }
        children.sort_by_key(Child::order);
        let name = if f.prefetch {
            "prefetch"
        } else {
            "device fault"
        };
        self.slice(
            lane,
            f.start_ns,
            f.end_ns,
            EventSpec {
                name: Some(Cow::Borrowed(name)),
                args,
                ..Default::default()
            },
            children,
        )?;
        if f.prefetch {
            self.written.prefetches += 1;
        } else {
            self.written.faults += 1;
            self.rates.entry(f.end_ns / RATE_BUCKET_NS).or_default().0 += 1;
        }
        Ok(())
    }

    fn write_invalidation(
        &mut self,
        engine: &Engine,
        inv: InvalidationActivity,
    ) -> anyhow::Result<()> {
        let cause = bpf_common::mmu_event_name(inv.cause);
        let (parent, kind, name) = match inv.mr {
            Some(mr) => (
                self.mr_track(engine, mr)?,
                "invalidations",
                format!("invalidate {cause}"),
            ),
            None => {
                let owner = engine
                    .processes()
                    .find(|p| p.pid == inv.owner_pid)
                    .map_or_else(|| "?".to_string(), |p| p.comm.clone());
                (
                    self.process_track(inv.owner_pid, &owner)?,
                    "mmu notifier ranges",
                    format!("notifier range {cause}"),
                )
            }
        };
        let lane = self.lane(parent, kind, inv.start_ns, inv.end_ns)?;
        let args = vec![
            ("range", Arg::Str(range(inv.lo, inv.hi))),
            ("cause", Arg::Str(cause.to_string())),
            ("task", Arg::Str(inv.task.clone())),
            ("pid", Arg::Uint(u64::from(inv.pid))),
            ("mm", Arg::Ptr(inv.mm)),
        ];
        let flows = self.flows_out.remove(&inv.id).unwrap_or_default();
        self.slice(
            lane,
            inv.start_ns,
            inv.end_ns,
            EventSpec {
                name: Some(Cow::Owned(name)),
                args,
                flows,
                ..Default::default()
            },
            Vec::new(),
        )?;
        if inv.mr.is_some() {
            self.written.invalidations += 1;
            self.rates.entry(inv.end_ns / RATE_BUCKET_NS).or_default().1 += 1;
        }
        Ok(())
    }

    /// Writes what can no longer gain a race, and the rates of the buckets before it.
    fn settle_until(&mut self, engine: &Engine, now: u64) -> anyhow::Result<()> {
        while let Some((&(due, id), _)) = self.settle.iter().next() {
            if due > now {
                break;
            }
            self.settle.remove(&(due, id));
            if let Some(f) = self.faults.remove(&id) {
                self.write_fault(engine, f)?;
            } else if let Some(inv) = self.invalidations.remove(&id) {
                self.write_invalidation(engine, inv)?;
            }
        }
        let written_before = now.saturating_sub(SETTLE_NS) / RATE_BUCKET_NS;
        let ready: Vec<u64> = self
            .rates
            .range(..written_before)
            .map(|(&b, _)| b)
            .collect();
        for bucket in ready {
            if let Some((faults, invalidations)) = self.rates.remove(&bucket) {
                let at = bucket * RATE_BUCKET_NS;
                let per_second = 1_000_000_000 / RATE_BUCKET_NS;
                for (track, n) in [
                    (FAULT_RATE_TRACK, faults),
                    (INVALIDATION_RATE_TRACK, invalidations),
                ] {
                    self.event(
                        at,
                        track,
                        track_event::Type::Counter,
                        EventSpec {
                            counter: Some((n * per_second) as i64),
                            ..Default::default()
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Writes everything still pending and moves the file into place.
    fn close_file(&mut self, engine: &Engine) -> anyhow::Result<()> {
        self.settle_until(engine, u64::MAX)?;
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let path = out.path.clone();
        let file = out
            .file
            .into_inner()
            .map_err(|e| io_fail("write", &path, e.error()))?;
        file.as_file()
            .sync_all()
            .map_err(|e| io_fail("fsync", &path, &e))?;
        file.persist(&path)
            .map_err(|e| io_fail("rename", &path, &e.error))?;
        Ok(())
    }
}

/// An I/O failure on the timeline file, with its errno (exit code by kind) and its path.
fn io_fail(op: &'static str, path: &Path, e: &std::io::Error) -> anyhow::Error {
    // tempfile reports its failures with the path, not the errno: take it from the kind.
    let errno = e.raw_os_error().unwrap_or(match e.kind() {
        std::io::ErrorKind::NotFound => libc::ENOENT,
        std::io::ErrorKind::PermissionDenied => libc::EACCES,
        std::io::ErrorKind::ReadOnlyFilesystem => libc::EROFS,
        std::io::ErrorKind::StorageFull => libc::ENOSPC,
        _ => libc::EIO,
    });
    anyhow::Error::from(odp_core::Error::os(op, errno))
        .context(format!("writing the timeline {}", path.display()))
}

fn clock(id: u32, ts: u64) -> clock_snapshot::Clock {
    clock_snapshot::Clock {
        clock_id: Some(id),
        timestamp: Some(ts),
    }
}

enum Arg {
    Str(String),
    Int(i64),
    Uint(u64),
    Ptr(u64),
}

#[derive(Default)]
struct EventSpec {
    name: Option<Cow<'static, str>>,
    args: Vec<(&'static str, Arg)>,
    counter: Option<i64>,
    flows: Vec<u64>,
    terminating: Vec<u64>,
}

impl EventSpec {
    fn named(name: &'static str) -> Self {
        EventSpec {
            name: Some(Cow::Borrowed(name)),
            ..Default::default()
        }
    }
}

enum Child {
    Slice {
        name: &'static str,
        start: u64,
        end: u64,
    },
    Instant {
        name: &'static str,
        at: u64,
        terminating: Vec<u64>,
    },
}

impl Child {
    /// Time order; at one instant, instants first, so one that shares its time with a wait's
    /// start (a retry is the sequence read that waited) sits on the fault, not in the wait.
    fn order(&self) -> (u64, u8) {
        match self {
            Child::Slice { start, .. } => (*start, 1),
            Child::Instant { at, .. } => (*at, 0),
        }
    }
}

fn range(lo: u64, hi: u64) -> String {
    format!("{lo:#x}+{:#x}", hi.saturating_sub(lo))
}

impl Sink for Timeline {
    fn wants_activity(&self) -> bool {
        true
    }

    fn event(&mut self, e: &OdpEvent, engine: &Engine) -> anyhow::Result<()> {
        if !self.started {
            self.start(e.ts_ns, engine.source.clocks.as_ref())?;
        }
        let Some(point) = e.point() else {
            return Ok(());
        };
        let lane = match point.kind() {
            Kind::VerbsCall | Kind::VerbsRegister => "libibverbs",
            Kind::CpuFault => "cpu page faults",
            _ => return Ok(()),
        };
        if e.in_kernel_thread() {
            return Ok(());
        }
        let process = self.process_track(e.pid, &e.comm_str())?;
        let end = e.ts_ns.saturating_add(e.duration_ns);
        let track = self.lane(process, lane, e.ts_ns, end)?;
        let mut interned_args = vec![("tid", Arg::Uint(u64::from(e.tid)))];
        if e.has_ret() {
            interned_args.push(("ret", Arg::Int(e.ret)));
        }
        if lane == "cpu page faults" {
            interned_args.push(("address", Arg::Ptr(e.start)));
            self.event(
                e.ts_ns,
                track,
                track_event::Type::Instant,
                EventSpec {
                    name: Some(Cow::Borrowed("cpu fault")),
                    args: interned_args,
                    ..Default::default()
                },
            )?;
            self.written.cpu_faults += 1;
        } else {
            let name = point.target();
            self.slice(
                track,
                e.ts_ns,
                end,
                EventSpec {
                    name: Some(Cow::Borrowed(name)),
                    args: interned_args,
                    ..Default::default()
                },
                Vec::new(),
            )?;
            self.written.library_calls += 1;
        }
        Ok(())
    }

    fn activity(&mut self, records: &[Activity], engine: &Engine) -> anyhow::Result<()> {
        for record in records {
            match record {
                Activity::Fault(f) => {
                    self.settle
                        .insert((f.end_ns.saturating_add(SETTLE_NS), f.id), ());
                    self.faults.insert(f.id, f.clone());
                }
                Activity::Invalidation(inv) => {
                    self.settle
                        .insert((inv.end_ns.saturating_add(SETTLE_NS), inv.id), ());
                    self.invalidations.insert(inv.id, inv.clone());
                }
                Activity::Race {
                    fault,
                    invalidation,
                } => {
                    let flow = self.next_flow;
                    self.next_flow += 1;
                    let start = self
                        .invalidations
                        .get(invalidation)
                        .map_or(0, |i| i.start_ns);
                    self.flows_out.entry(*invalidation).or_default().push(flow);
                    self.flows_in.entry(*fault).or_default().push((flow, start));
                }
                Activity::Unresolved { .. } => {}
            }
        }
        self.settle_until(engine, engine.last_ts())
    }

    fn finish(&mut self, engine: &Engine) -> anyhow::Result<()> {
        if !self.started {
            self.start(engine.last_ts(), engine.source.clocks.as_ref())?;
        }
        self.close_file(engine)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use odp_core::analysis::AnalysisConfig;

    use super::*;
    use crate::live::{self, Run, Source, Until};

    const CAPTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rxe-dontneed-race.jsonl"
    );

    /// Perfetto's own reader on the committed capture's timeline: slices, invalidations and
    /// flows counted with SQL. A unit test, so it runs on the host only: it needs Perfetto's
    /// Python package with a trace_processor_shell it can fetch or has cached, and where that is
    /// missing it is a named skip, never a pass.
    #[test]
    fn trace_processor_reads_the_timeline_as_written() {
        let test = "trace_processor_reads_the_timeline_as_written";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("race.pftrace");
        let mut timeline = Timeline::create(&path).expect("timeline");
        let stop = AtomicBool::new(false);
        live::run(
            Source::recording(CAPTURE.into(), 0.0).expect("capture"),
            Engine::new(AnalysisConfig::default()),
            &mut [&mut timeline],
            Run {
                stop: &stop,
                deadline: None,
                until: Until::SourceEnds,
                before_detach: &|| {},
            },
        )
        .expect("export");
        let script = format!(
            "from perfetto.trace_processor import TraceProcessor\n\
             tp = TraceProcessor(trace={:?})\n\
             q = lambda s: list(tp.query(s))[0].n\n\
             print(q(\"select count(*) n from slice where name = 'device fault'\"),\n\
                   q(\"select count(*) n from slice where name like 'invalidate %'\"),\n\
                   q('select count(*) n from flow'))\n",
            path.display().to_string()
        );
        let out = match std::process::Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
        {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr);
                let last = why.lines().last().unwrap_or("no output").to_string();
                odp_core::testing::skip(
                    test,
                    &format!("no trace_processor here (perfetto Python package: {last})"),
                );
                return;
            }
            Err(e) => {
                odp_core::testing::skip(test, &format!("no python3: {e}"));
                return;
            }
        };
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1473 195 4");
    }
}
