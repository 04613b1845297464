//! `odp-ctl export --perfetto`: the written trace decoded with the same protobuf types and held
//! against the engine: every fault one slice with its exact start and duration, slices nested
//! on every track, each race one flow with both ends, counts as `monitor --summary` gives them.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

mod common;
use common::{broken_capture, dontneed_storm, fixture, odp_ctl};

#[allow(dead_code, clippy::all)]
mod protos {
    include!(concat!(env!("OUT_DIR"), "/perfetto.protos.rs"));
}
use protos::{debug_annotation, trace_packet, track_event, Trace};

/// One track event, resolved: its track, time, type, name, flows and arguments.
#[derive(Debug, Clone)]
struct Ev {
    at: u64,
    track: u64,
    kind: track_event::Type,
    name: Option<String>,
    flows: Vec<u64>,
    terminating: Vec<u64>,
    args: HashMap<String, String>,
}

/// A decoded trace: its events in file order, its tracks (uuid -> (parent, name)), and whether
/// it began with a clock snapshot and a cleared incremental state.
struct Decoded {
    events: Vec<Ev>,
    tracks: HashMap<u64, (Option<u64>, String)>,
    clock_first: bool,
}

fn decode(path: &Path) -> Decoded {
    let bytes = std::fs::read(path).expect("read the trace");
    let trace = Trace::decode(bytes.as_slice()).expect("a Perfetto trace");
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut keys: HashMap<u64, String> = HashMap::new();
    let mut events = Vec::new();
    let mut tracks = HashMap::new();
    let first = trace.packet.first().expect("packets");
    let clock_first = matches!(first.data, Some(trace_packet::Data::ClockSnapshot(_)))
        && first.sequence_flags == Some(1);
    for packet in &trace.packet {
        assert!(
            packet.optional_trusted_packet_sequence_id.is_some(),
            "every packet names its sequence"
        );
        if let Some(interned) = &packet.interned_data {
            for n in &interned.event_names {
                names.insert(n.iid(), n.name().to_string());
            }
            for k in &interned.debug_annotation_names {
                keys.insert(k.iid(), k.name().to_string());
            }
        }
        match &packet.data {
            Some(trace_packet::Data::TrackDescriptor(t)) => {
                let name = t
                    .name
                    .clone()
                    .or_else(|| t.process.as_ref().map(|p| p.process_name().to_string()))
                    .unwrap_or_default();
                tracks.insert(t.uuid(), (t.parent_uuid, name));
            }
            Some(trace_packet::Data::TrackEvent(e)) => {
                let name = match &e.name_field {
                    Some(track_event::NameField::NameIid(iid)) => {
                        Some(names.get(iid).cloned().expect("an interned name"))
                    }
                    Some(track_event::NameField::Name(n)) => Some(n.clone()),
                    None => None,
                };
                let args = e
                    .debug_annotations
                    .iter()
                    .map(|a| {
                        let key = match &a.name_field {
                            Some(debug_annotation::NameField::NameIid(iid)) => {
                                keys.get(iid).cloned().expect("an interned key")
                            }
                            Some(debug_annotation::NameField::Name(n)) => n.clone(),
                            None => String::new(),
                        };
                        let value = match &a.value {
                            Some(debug_annotation::Value::StringValue(s)) => s.clone(),
                            Some(debug_annotation::Value::UintValue(u)) => u.to_string(),
                            Some(debug_annotation::Value::IntValue(i)) => i.to_string(),
                            Some(debug_annotation::Value::PointerValue(p)) => format!("{p:#x}"),
                            other => format!("{other:?}"),
                        };
                        (key, value)
                    })
                    .collect();
                events.push(Ev {
                    at: packet.timestamp(),
                    track: e.track_uuid(),
                    kind: e.r#type(),
                    name,
                    flows: e.flow_ids.clone(),
                    terminating: e.terminating_flow_ids.clone(),
                    args,
                });
            }
            _ => {}
        }
    }
    Decoded {
        events,
        tracks,
        clock_first,
    }
}

/// A slice as the trace's begin and end make it, with what was open around it.
#[derive(Debug, Clone)]
struct Slice {
    name: String,
    start: u64,
    end: u64,
    track: u64,
    parent: Option<String>,
    flows: Vec<u64>,
    terminating: Vec<u64>,
    args: HashMap<String, String>,
}

/// Rebuilds each track's slices (instants as zero-length slices), checking they nest: in time
/// order (file order for ties, as trace processor sorts), every end closes the innermost open
/// slice, a child never outlives its parent, nothing is left open.
fn slices(decoded: &Decoded) -> Vec<Slice> {
    let mut by_track: HashMap<u64, Vec<(usize, &Ev)>> = HashMap::new();
    for (i, e) in decoded.events.iter().enumerate() {
        if e.kind != track_event::Type::Counter {
            by_track.entry(e.track).or_default().push((i, e));
        }
    }
    let mut out = Vec::new();
    for (track, mut events) in by_track {
        events.sort_by_key(|(i, e)| (e.at, *i));
        let mut open: Vec<Slice> = Vec::new();
        for (_, e) in events {
            let parent = open.last().map(|s| s.name.clone());
            let slice = |end| Slice {
                name: e.name.clone().unwrap_or_default(),
                start: e.at,
                end,
                track,
                parent: parent.clone(),
                flows: e.flows.clone(),
                terminating: e.terminating.clone(),
                args: e.args.clone(),
            };
            match e.kind {
                track_event::Type::SliceBegin => open.push(slice(0)),
                track_event::Type::SliceEnd => {
                    let mut done = open.pop().unwrap_or_else(|| {
                        panic!("an end with nothing open on track {track} at {}", e.at)
                    });
                    done.end = e.at;
                    if let Some(parent) = open.last() {
                        assert!(
                            parent.start <= done.start,
                            "{done:?} starts before {parent:?}"
                        );
                    }
                    out.push(done);
                }
                track_event::Type::Instant => out.push(slice(e.at)),
                other => panic!("unexpected event type {other:?}"),
            }
        }
        assert!(open.is_empty(), "left open on track {track}: {open:?}");
    }
    out
}

fn export(recording: &Path, out: &Path) -> std::process::Output {
    odp_ctl()
        .args(["--json", "export", "--perfetto"])
        .arg(out)
        .arg(recording)
        .output()
        .expect("run export")
}

fn summary(recording: &Path) -> serde_json::Value {
    let out = odp_ctl()
        .args(["--json", "monitor", "--summary", "--replay"])
        .arg(recording)
        .output()
        .expect("summary");
    serde_json::from_slice(&out.stdout).expect("summary JSON")
}

/// (start, duration) of every device fault the recording holds.
fn recorded_faults(recording: &Path) -> Vec<(u64, u64)> {
    let mut faults: Vec<(u64, u64)> = std::fs::read_to_string(recording)
        .expect("recording")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["point"] == "fault")
        .map(|v| {
            (
                v["ts_ns"].as_u64().expect("ts"),
                v["duration_ns"].as_u64().expect("duration"),
            )
        })
        .collect();
    faults.sort_unstable();
    faults
}

/// The checks every written timeline passes, against the summary of the same recording.
fn check_against_the_engine(trace: &Path, recording: &Path) -> Vec<Slice> {
    let decoded = decode(trace);
    assert!(
        decoded.clock_first,
        "the first packet is the clock snapshot, clearing the sequence's state"
    );
    let all = slices(&decoded);
    let totals = summary(recording)["totals"].clone();
    let n = |v: &serde_json::Value| v.as_u64().expect("a count");

    // Every fault is one slice, with its exact start and duration.
    let mut faults: Vec<(u64, u64)> = all
        .iter()
        .filter(|s| s.name == "device fault")
        .map(|s| (s.start, s.end - s.start))
        .collect();
    faults.sort_unstable();
    assert_eq!(faults.len() as u64, n(&totals["faults"]));
    let prefetches = all.iter().filter(|s| s.name == "prefetch").count() as u64;
    let mut recorded = recorded_faults(recording);
    if prefetches == 0 {
        assert_eq!(faults, recorded, "fault slices are the recorded faults");
    } else {
        recorded.retain(|f| faults.binary_search(f).is_ok());
        assert_eq!(faults, recorded);
    }
    // Each fault sits on a lane of its MR's track, under its process.
    for s in all.iter().filter(|s| s.name == "device fault").take(50) {
        let (parent, lane) = &decoded.tracks[&s.track];
        assert!(lane.starts_with("device faults"), "{lane}");
        let mr = parent.expect("a lane has a parent");
        let (process, mr_name) = &decoded.tracks[&mr];
        assert!(mr_name.starts_with("MR "), "{mr_name}");
        assert!(process.is_some(), "{mr_name} is under its process");
        for key in ["range", "pages", "task", "tid", "mr"] {
            assert!(s.args.contains_key(key), "{key} on {s:?}");
        }
    }
    let invalidations = all
        .iter()
        .filter(|s| s.name.starts_with("invalidate "))
        .count() as u64;
    assert_eq!(invalidations, n(&totals["invalidations"]));
    let retries = all.iter().filter(|s| s.name == "retry").count() as u64;
    assert_eq!(retries, n(&totals["retries"]));
    let waits = all.iter().filter(|s| s.name == "collision wait").count() as u64;
    assert_eq!(waits, n(&totals["collision_waits"]));
    for s in all
        .iter()
        .filter(|s| s.name == "retry" || s.name == "collision wait")
    {
        assert_eq!(s.parent.as_deref(), Some("device fault"), "{s:?}");
    }

    // Each race is one flow: out of an invalidation, into a race instant inside the fault.
    let mut out_of: HashMap<u64, &Slice> = HashMap::new();
    let mut into: HashMap<u64, &Slice> = HashMap::new();
    for s in &all {
        for f in &s.flows {
            assert!(out_of.insert(*f, s).is_none(), "flow {f} leaves twice");
        }
        for f in &s.terminating {
            assert!(into.insert(*f, s).is_none(), "flow {f} arrives twice");
        }
    }
    assert_eq!(out_of.len() as u64, n(&totals["races"]));
    assert_eq!(into.len(), out_of.len());
    for (flow, from) in &out_of {
        let to = into
            .get(flow)
            .unwrap_or_else(|| panic!("flow {flow} has no end"));
        assert!(
            from.name.starts_with("invalidate ") || from.name.starts_with("notifier range "),
            "{from:?}"
        );
        assert_eq!(to.name, "race");
        // Inside the fault, or inside one of its collision waits (behind that invalidation).
        assert!(
            matches!(
                to.parent.as_deref(),
                Some("device fault" | "collision wait")
            ),
            "{to:?}"
        );
        // From the invalidation to the fault: trace processor orders a flow by time.
        assert!(from.start < to.start, "{from:?} -> {to:?}");
    }
    all
}

#[test]
fn the_committed_capture_exports_as_a_timeline_the_engine_agrees_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("race.pftrace");
    let out = export(&fixture(), &trace);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["written"]["faults"], 1473);
    assert_eq!(report["written"]["invalidations"], 195);
    assert_eq!(report["written"]["races"], 4);
    let all = check_against_the_engine(&trace, &fixture());
    // The capture's CPU faults were recorded: they are on their own lane, as instants.
    assert_eq!(all.iter().filter(|s| s.name == "cpu fault").count(), 596);
    // Nothing else was left beside the trace.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("race.pftrace")]);

    // The file is a function of the events alone: monitor's replay, which reads in other
    // batches, writes the same bytes.
    let replayed = dir.path().join("replayed.pftrace");
    let out = odp_ctl()
        .args(["monitor", "--summary", "--speed", "0", "--replay"])
        .arg(fixture())
        .arg("--perfetto")
        .arg(&replayed)
        .output()
        .expect("monitor");
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::read(&trace).expect("export") == std::fs::read(&replayed).expect("monitor"),
        "export and monitor --perfetto differ"
    );
    odp_core::testing::host_suffices();
}

#[test]
fn standard_input_is_read_with_a_dash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("stdin.pftrace");
    let out = odp_ctl()
        .args(["export", "--perfetto"])
        .arg(&trace)
        .arg("-")
        .stdin(std::fs::File::open(fixture()).expect("capture"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1473 device faults"), "{text}");
    assert!(text.contains("4 races"), "{text}");
    odp_core::testing::host_suffices();
}

#[test]
fn a_bad_recording_or_an_unwritable_output_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = broken_capture(dir.path(), 20, 8);
    let trace = dir.path().join("out.pftrace");
    let out = export(&broken, &trace);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("broken.jsonl:8:"),
        "{out:?}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("broken.jsonl")]);

    // An output in a directory that does not exist: a clear error, nothing written.
    let out = export(&fixture(), &dir.path().join("missing/out.pftrace"));
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("missing/out.pftrace"),
        "{out:?}"
    );
    assert!(!dir.path().join("missing").exists());
}

#[test]
fn a_stress_runs_live_timeline_agrees_with_its_own_recording() {
    let test = "a_stress_runs_live_timeline_agrees_with_its_own_recording";
    if odp_core::testing::device_or_skip(test).is_none()
        || !odp_core::testing::root_or_skip(test, "loading BPF")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dontneed_storm(dir.path());
    let trace = dir.path().join("storm.pftrace");
    let recording = dir.path().join("storm.jsonl");
    let out = odp_ctl()
        .args(["--json", "stress", "--duration", "2s", "--perfetto"])
        .arg(&trace)
        .arg("--record")
        .arg(&recording)
        .arg(&scenario)
        .output()
        .expect("stress");
    // What this test compares is the timeline against the recording; a run that failed
    // completions the way rxe is known to still wrote both in full.
    let report = common::stress_report(test, &out);
    let all = check_against_the_engine(&trace, &recording);
    let (boottime, monotonic, realtime) = clock_line(&recording);
    assert_eq!(
        clock_snapshot(&trace),
        (vec![(6, boottime), (3, monotonic), (1, realtime)], Some(6)),
        "the live file and the recording share one clock reading"
    );
    let totals = &report["probes"]["summary"]["totals"];
    let faults = all.iter().filter(|s| s.name == "device fault").count() as u64;
    assert_eq!(Some(faults), totals["faults"].as_u64());
    let flows = all
        .iter()
        .filter(|s| !s.flows.is_empty())
        .map(|s| s.flows.len())
        .sum::<usize>();
    assert_eq!(Some(flows as u64), totals["races"].as_u64());
    // The stress process's libibverbs calls are on its track.
    assert!(
        all.iter()
            .any(|s| s.name == "ibv_reg_mr_iova2" || s.name.starts_with("ibv_")),
        "no library calls"
    );
    let _ = writeln_stderr(&format!(
        "{test}: {faults} faults, {flows} races, {} slices",
        all.len()
    ));
}

/// The first packet's clock snapshot: (clock id, time) each, and the trace's clock.
fn clock_snapshot(trace: &Path) -> (Vec<(u32, u64)>, Option<u32>) {
    let bytes = std::fs::read(trace).expect("read");
    let first = Trace::decode(bytes.as_slice()).expect("trace").packet[0].clone();
    let Some(trace_packet::Data::ClockSnapshot(clocks)) = first.data else {
        panic!("{}: no clock snapshot first", trace.display());
    };
    (
        clocks
            .clocks
            .iter()
            .map(|c| (c.clock_id(), c.timestamp()))
            .collect(),
        clocks.primary_trace_clock,
    )
}

/// A recording's opening clock line: (boottime, monotonic, realtime).
fn clock_line(recording: &Path) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(recording).expect("recording");
    let first = text.lines().next().expect("a first line");
    let v: serde_json::Value = serde_json::from_str(first).expect("json");
    let c = &v["clocks"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {first}"));
    (n("boottime_ns"), n("monotonic_ns"), n("realtime_ns"))
}

fn writeln_stderr(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{line}")
}

#[test]
fn a_live_trace_writes_its_cpu_faults_and_the_hosts_clocks() {
    let test = "a_live_trace_writes_its_cpu_faults_and_the_hosts_clocks";
    if !odp_core::testing::root_or_skip(test, "loading BPF") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("cpu.pftrace");
    let events = dir.path().join("cpu.jsonl");
    let out = odp_ctl()
        .args(["--json", "trace", "--points", "cpu", "--perfetto"])
        .arg(&trace)
        .arg("--output")
        .arg(&events)
        // The traced command: odp-ctl itself, on every machine the tests run on.
        .arg("--")
        .arg(common::odp_ctl_path())
        .arg("--version")
        .output()
        .expect("trace");
    assert!(out.status.success(), "{out:?}");
    let recorded = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .filter(|l| l.contains("\"point\":\"page_fault_user\""))
        .count();
    assert!(recorded > 0, "the traced command faulted nothing?");
    let decoded = decode(&trace);
    let all = slices(&decoded);
    assert_eq!(
        all.iter().filter(|s| s.name == "cpu fault").count(),
        recorded,
        "one instant per recorded CPU fault"
    );
    // Live: boottime, monotonic and realtime read together when the probes attached, boottime
    // the trace's clock; the recording opens with the same reading, and its export lines up
    // exactly as the live file does.
    let (boottime, monotonic, realtime) = clock_line(&events);
    assert!(boottime >= monotonic, "boottime runs ahead of monotonic");
    assert!(
        realtime > 1_700_000_000_000_000_000,
        "realtime is wall time"
    );
    let live = clock_snapshot(&trace);
    assert_eq!(
        live,
        (vec![(6, boottime), (3, monotonic), (1, realtime)], Some(6))
    );
    let exported = dir.path().join("exported.pftrace");
    let out = export(&events, &exported);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(clock_snapshot(&exported), live);
}

#[test]
fn a_recording_without_a_clock_line_keeps_its_own_monotonic_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("capture.pftrace");
    let out = export(&fixture(), &trace);
    assert!(out.status.success(), "{out:?}");
    let first_ts = std::fs::read_to_string(fixture())
        .expect("capture")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["ts_ns"].as_u64())
        .min();
    assert_eq!(
        clock_snapshot(&trace),
        (vec![(3, first_ts.expect("events"))], Some(3)),
        "the first event's time on the monotonic clock, the trace's clock"
    );
    odp_core::testing::host_suffices();
}
