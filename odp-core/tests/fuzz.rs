//! Mutation fuzzing of what users feed the toolkit, on stable Rust (proptest): scenario files and
//! recorded events, each case a real input (scenarios/, the committed capture) with a few
//! mutations, several of them tokens that once broke a parser. A case passes when the input is
//! accepted or refused with an error; a panic, or a case slower than CASE_BOUND, fails.
//!
//! The test command runs a bounded number of cases; a long run is
//! `PROPTEST_CASES=100000 cargo test --release -p odp-core --test fuzz`.

use std::time::{Duration, Instant};

use odp_core::analysis::{AnalysisConfig, Engine};
use odp_core::stress::Scenario;
use odp_core::testing::mutation::{mutate, Mutation, TOKENS};
use odp_core::trace::Record;
use proptest::prelude::*;

const SCENARIOS: &[&str] = &[
    include_str!("../../scenarios/atomics.toml"),
    include_str!("../../scenarios/baseline.toml"),
    include_str!("../../scenarios/dontneed-storm.toml"),
    include_str!("../../scenarios/fork-cow.toml"),
    include_str!("../../scenarios/ksm.toml"),
    include_str!("../../scenarios/migrate.toml"),
    include_str!("../../scenarios/mprotect.toml"),
    include_str!("../../scenarios/mremap.toml"),
    include_str!("../../scenarios/phases.toml"),
    include_str!("../../scenarios/remap.toml"),
    include_str!("../../scenarios/thp.toml"),
];

const CAPTURE: &str = include_str!("../../odp-ctl/tests/data/rxe-dontneed-race.jsonl");

/// The longest one case may take: scenario checks and the engine are linear, so a case near
/// this bound is a finding, not noise.
const CASE_BOUND: Duration = Duration::from_secs(2);

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Byte(p, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Mutation::Insert(p, t)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(p, t)| Mutation::Value(p, t)),
    ]
}

/// Runs `case` on inputs drawn from `strategy`: 256 cases (PROPTEST_CASES for more), none
/// persisted; the first failure (shrunk) fails the test.
fn fuzz<S: Strategy>(strategy: S, case: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&strategy, case) {
        panic!("{e}");
    }
}

#[test]
fn mutated_scenarios_are_accepted_or_refused() {
    let strategy = (0..SCENARIOS.len(), prop::collection::vec(mutation(), 1..6));
    fuzz(strategy, |(seed, mutations)| {
        let text = mutate(SCENARIOS[seed], &mutations);
        let started = Instant::now();
        let parsed = Scenario::parse(&text, "fuzz");
        if let Ok(s) = &parsed {
            // What the run would read first must hold together too.
            let _ = s.total_duration();
        }
        let _ = Scenario::parse_across_hosts(&text, "fuzz");
        prop_assert!(
            started.elapsed() < CASE_BOUND,
            "{:?} for:\n{text}",
            started.elapsed()
        );
        Ok(())
    });
    // The same code on the same inputs in the guest: nothing the VM adds.
    odp_core::testing::host_suffices();
}

#[test]
fn mutated_recordings_decode_or_are_refused_and_the_engine_holds() {
    let strategy = (
        0usize..8000,
        1usize..400,
        prop::collection::vec(mutation(), 1..8),
    );
    fuzz(strategy, |(first, count, mutations)| {
        let lines: Vec<&str> = CAPTURE.lines().skip(first).take(count).collect();
        let text = mutate(&lines.join("\n"), &mutations);
        let started = Instant::now();
        let mut engine = Engine::new(AnalysisConfig::default());
        for line in text.lines() {
            if let Ok(record) = serde_json::from_str::<Record>(line) {
                if let Some(event) = record.to_event() {
                    engine.ingest(&event);
                }
            }
        }
        engine.finish();
        let summary = engine.summary();
        prop_assert!(summary.events <= count as u64 + 8);
        prop_assert!(started.elapsed() < CASE_BOUND, "{:?}", started.elapsed());
        Ok(())
    });
    odp_core::testing::host_suffices();
}

/// Inputs that once panicked or ran away (tests/corpus/), built in: the tests also run in the
/// guest, where the source tree is not.
const CORPUS: &[(&str, &str)] = &[
    (
        "duration-1e30.toml",
        include_str!("corpus/duration-1e30.toml"),
    ),
    (
        "duration-huge-text.toml",
        include_str!("corpus/duration-huge-text.toml"),
    ),
    ("hold-1e300.toml", include_str!("corpus/hold-1e300.toml")),
    (
        "phases-past-100-days.toml",
        include_str!("corpus/phases-past-100-days.toml"),
    ),
];

#[test]
fn the_regression_corpus_is_refused_cleanly() {
    for (name, text) in CORPUS {
        let started = Instant::now();
        assert!(Scenario::parse(text, name).is_err(), "{name} was accepted");
        assert!(started.elapsed() < CASE_BOUND, "{name}");
    }
    // Where the source tree is at hand, every file of the corpus is in the list above.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            assert!(
                CORPUS.iter().any(|(listed, _)| *listed == name),
                "tests/corpus/{name} is not in CORPUS"
            );
        }
    }
    odp_core::testing::host_suffices();
}
