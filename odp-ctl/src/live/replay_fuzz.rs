//! Mutation fuzzing of the replay path as `monitor --replay` runs it: odp-ctl's own recording
//! reader (line bound, UTF-8, closing lines, skip reasons), then the reordering window, then the
//! engine. A case passes when the file is refused as invalid input, or read with every line
//! accounted for (an event or a counted skip) and every event placed or counted by the window.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use odp_core::analysis::{AnalysisConfig, Engine, Reorder};
use odp_core::testing::mutation::{mutate, Mutation, TOKENS};
use odp_core::ErrorKind;
use proptest::prelude::*;

use super::{read_recording, Line};

const CAPTURE: &str = include_str!("../../tests/data/rxe-dontneed-race.jsonl");

/// As odp-core's fuzz cases: reading and analysing are linear, so one near this is a finding.
const CASE_BOUND: Duration = Duration::from_secs(2);

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Byte(p, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Mutation::Insert(p, t)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Mutation::Value(p, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_recordings_are_refused_or_every_line_and_event_is_accounted(
        first in 0usize..8000,
        count in 1usize..400,
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let lines: Vec<&str> = CAPTURE.lines().skip(first).take(count).collect();
        let text = mutate(&lines.join("\n"), &mutations) + "\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mutated.jsonl");
        std::fs::write(&path, &text).expect("write");
        let started = Instant::now();
        let mut events = Vec::new();
        let on_line = |line| {
            if let Line::Event(e) = line {
                events.push(e);
            }
        };
        match read_recording(&path, &AtomicBool::new(false), on_line) {
            Err(e) => {
                let invalid = e.chain().any(|c| {
                    c.downcast_ref::<odp_core::Error>()
                        .is_some_and(|o| o.kind() == ErrorKind::InvalidInput)
                });
                prop_assert!(invalid, "refused, but not as invalid input: {e:#}");
            }
            Ok(replayed) => {
                let skipped: u64 = replayed.skipped.values().sum();
                prop_assert_eq!(replayed.events, events.len() as u64);
                prop_assert_eq!(
                    replayed.events + skipped + u64::from(replayed.clocks.is_some()),
                    text.lines().count() as u64,
                    "a line neither read nor counted: {:?}", replayed.skipped
                );
                let mut order = Reorder::for_recording();
                let mut placed = Vec::new();
                for e in &events {
                    order.push(e, &mut placed);
                }
                order.finish(&mut placed);
                prop_assert_eq!(placed.len() as u64 + order.facts.total(), events.len() as u64);
                prop_assert!(
                    placed.windows(2).all(|w| {
                        w[0].ts_ns.saturating_add(w[0].duration_ns)
                            <= w[1].ts_ns.saturating_add(w[1].duration_ns)
                    }),
                    "placed out of order"
                );
                let mut engine = Engine::new(AnalysisConfig::default());
                for e in &placed {
                    engine.ingest(e);
                }
                engine.finish();
                prop_assert_eq!(engine.summary().events, placed.len() as u64);
            }
        }
        prop_assert!(started.elapsed() < CASE_BOUND, "{:?}", started.elapsed());
    }
}
