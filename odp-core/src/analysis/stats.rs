//! Counters and latency histograms kept per MR, process, device and in total.

use std::collections::BTreeMap;

use bpf_common::mmu_event_name;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Number of `enum mmu_notifier_event` kinds tracked; one more slot counts unknown kinds.
pub const CAUSES: usize = 8;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Device page faults: ib_umem_odp_map_dma_and_lock calls not made by a prefetch.
    pub faults: u64,
    /// 4 KiB pages those faults covered.
    pub fault_pages: u64,
    /// Faults that returned an error (timeouts included).
    pub fault_errors: u64,
    /// ibv_advise_mr calls that reached the driver.
    pub prefetches: u64,
    /// 4 KiB pages mapped by prefetches.
    pub prefetched_pages: u64,
    /// Of those, pages the device faulted on later anyway.
    pub prefetched_then_faulted_pages: u64,
    /// Extra attempts inside prefetches' own map calls (kept apart from the faults' retries).
    pub prefetch_retries: u64,
    /// Driver invalidate callbacks (the device's mappings being zapped).
    pub invalidations: u64,
    pub invalidated_bytes: u64,
    /// Invalidations by `enum mmu_notifier_event` (last slot: unknown); JSON names the kinds.
    #[serde(serialize_with = "cause_names")]
    pub invalidations_by_cause: [u64; CAUSES + 1],
    /// Faults that an overlapping invalidation ran into while they were in flight.
    pub races: u64,
    /// Extra attempts inside faults (mmu_interval_read_begin calls beyond the first).
    pub retries: u64,
    /// Faults that needed at least one retry.
    pub retried_faults: u64,
    /// HMM fault steps that returned -EBUSY (collided with an invalidation).
    pub hmm_busy: u64,
    /// mmu_interval_read_begin calls that slept behind a running invalidation.
    pub collision_waits: u64,
    /// Faults that gave up with -EBUSY after the HMM time limit.
    pub hmm_timeouts: u64,
    /// Device faults the driver left unresolved (mlx5 resume with error, rxe map failure).
    pub unresolved: u64,
    /// Faults slower than the configured threshold.
    pub slow: u64,
    /// CPU page faults in the watched processes.
    pub cpu_faults: u64,
    /// Of the device faults, those taken answering a peer's request (rxe's responder).
    pub peer_faults: u64,
    /// Requester QPs' transport retries: the ACK timer expired with packets outstanding
    /// (totals only: they belong to a QP, not an MR).
    pub transport_retries: u64,
    /// Requests failed with "transport retry counter exceeded".
    pub retry_exceeded: u64,
    /// RNR NAKs requester QPs received.
    pub rnr_naks: u64,
}

impl Counts {
    /// Adds every count of `other` to these.
    pub fn add(&mut self, other: &Counts) {
        *self = self.zip_with(other, u64::saturating_add);
    }

    /// Every count of these less `other`'s, none below zero.
    pub fn less(&self, other: &Counts) -> Counts {
        self.zip_with(other, u64::saturating_sub)
    }

    /// Every count the larger of these and `other`'s.
    pub fn max(&self, other: &Counts) -> Counts {
        self.zip_with(other, u64::max)
    }

    /// `f` applied to each count of these and the same count of `other`: the one place that
    /// lists every field.
    fn zip_with(&self, other: &Counts, f: impl Fn(u64, u64) -> u64) -> Counts {
        let mut by_cause = [0; CAUSES + 1];
        for (i, n) in by_cause.iter_mut().enumerate() {
            *n = f(
                self.invalidations_by_cause[i],
                other.invalidations_by_cause[i],
            );
        }
        Counts {
            faults: f(self.faults, other.faults),
            fault_pages: f(self.fault_pages, other.fault_pages),
            fault_errors: f(self.fault_errors, other.fault_errors),
            prefetches: f(self.prefetches, other.prefetches),
            prefetched_pages: f(self.prefetched_pages, other.prefetched_pages),
            prefetched_then_faulted_pages: f(
                self.prefetched_then_faulted_pages,
                other.prefetched_then_faulted_pages,
            ),
            prefetch_retries: f(self.prefetch_retries, other.prefetch_retries),
            invalidations: f(self.invalidations, other.invalidations),
            invalidated_bytes: f(self.invalidated_bytes, other.invalidated_bytes),
            invalidations_by_cause: by_cause,
            races: f(self.races, other.races),
            retries: f(self.retries, other.retries),
            retried_faults: f(self.retried_faults, other.retried_faults),
            hmm_busy: f(self.hmm_busy, other.hmm_busy),
            collision_waits: f(self.collision_waits, other.collision_waits),
            hmm_timeouts: f(self.hmm_timeouts, other.hmm_timeouts),
            unresolved: f(self.unresolved, other.unresolved),
            slow: f(self.slow, other.slow),
            cpu_faults: f(self.cpu_faults, other.cpu_faults),
            peer_faults: f(self.peer_faults, other.peer_faults),
            transport_retries: f(self.transport_retries, other.transport_retries),
            retry_exceeded: f(self.retry_exceeded, other.retry_exceeded),
            rnr_naks: f(self.rnr_naks, other.rnr_naks),
        }
    }

    /// Every kind of timeout the issue names: HMM limit, unresolved, slow.
    pub fn timeouts(&self) -> u64 {
        self.hmm_timeouts + self.unresolved + self.slow
    }

    /// Invalidations by mmu_notifier_event name, the kinds seen only.
    pub fn causes(&self) -> BTreeMap<&'static str, u64> {
        self.invalidations_by_cause
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (mmu_event_name(i as u32), *n))
            .collect()
    }
}

fn cause_names<S: serde::Serializer>(
    by_cause: &[u64; CAUSES + 1],
    s: S,
) -> Result<S::Ok, S::Error> {
    let counts = Counts {
        invalidations_by_cause: *by_cause,
        ..Counts::default()
    };
    s.collect_map(counts.causes())
}

/// How finely a latency histogram resolves values, which sets its size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Two significant digits (~33 KiB once used): the totals and devices.
    #[default]
    Fine,
    /// One significant digit (~4 KiB; values within 1/16 of each other share a slot): each MR
    /// and process, of which a run can have tens of thousands.
    Coarse,
    /// No histogram: MRs and processes past the engine's cap keep counts only.
    Off,
}

/// An HDR histogram in nanoseconds, allocated on first use (most entities never see most kinds),
/// with the exact minimum, maximum and sum beside it: quantiles are as fine as the resolution,
/// the extremes and the mean are exact at any resolution.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    hist: Option<Box<Histogram<u64>>>,
    resolution: Resolution,
    min: u64,
    max: u64,
    sum: u128,
    /// Exact counts per BUCKET_BOUNDS_NS slot (values above the last bound in the last slot),
    /// for exporters: bucket boundaries must not depend on the histogram's resolution.
    buckets: Option<Box<[u64; BUCKET_BOUNDS_NS.len() + 1]>>,
}

/// 1 ns to 1000 s: tells 2 us from 20 ms, and a fault stuck for minutes still lands.
const HIGHEST_NS: u64 = 1_000_000_000_000;

/// Upper bounds of the exported latency buckets: from 10 us (a warm rxe fault) past the 1 s
/// HMM limit to 10 s, three per decade.
pub const BUCKET_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

impl Latency {
    pub fn new(resolution: Resolution) -> Self {
        Latency {
            resolution,
            ..Latency::default()
        }
    }

    pub fn record(&mut self, ns: u64) {
        let digits = match self.resolution {
            Resolution::Fine => 2,
            Resolution::Coarse => 1,
            Resolution::Off => return,
        };
        let hist = self.hist.get_or_insert_with(|| {
            Box::new(
                Histogram::new_with_bounds(1, HIGHEST_NS, digits)
                    .unwrap_or_else(|_| unreachable!("constant bounds are valid")),
            )
        });
        hist.saturating_record(ns.max(1));
        let slot = BUCKET_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets
            .get_or_insert_with(|| Box::new([0; BUCKET_BOUNDS_NS.len() + 1]))[slot] += 1;
        self.min = if hist.len() == 1 {
            ns
        } else {
            self.min.min(ns)
        };
        self.max = self.max.max(ns);
        self.sum += u128::from(ns);
    }

    /// Values per exported bucket: slot i holds those above BUCKET_BOUNDS_NS[i - 1] and at or
    /// below BUCKET_BOUNDS_NS[i]; the last slot those above the last bound.
    pub fn bucket_counts(&self) -> [u64; BUCKET_BOUNDS_NS.len() + 1] {
        self.buckets
            .as_deref()
            .copied()
            .unwrap_or([0; BUCKET_BOUNDS_NS.len() + 1])
    }

    /// The sum of every value recorded, exact.
    pub fn sum_ns(&self) -> u128 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.hist.as_ref().map_or(0, |h| h.len())
    }

    /// The value at quantile `q`, never outside the exact extremes (a slot's upper bound can
    /// lie past the largest value recorded in it).
    pub fn quantile(&self, q: f64) -> u64 {
        self.hist
            .as_ref()
            .map_or(0, |h| h.value_at_quantile(q).clamp(self.min, self.max))
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        let h = self.hist.as_ref()?;
        let count = h.len();
        Some(LatencySummary {
            count,
            min_ns: self.min,
            mean_ns: u64::try_from(self.sum / u128::from(count.max(1))).unwrap_or(u64::MAX),
            p50_ns: self.quantile(0.50),
            p90_ns: self.quantile(0.90),
            p99_ns: self.quantile(0.99),
            p999_ns: self.quantile(0.999),
            max_ns: self.max,
        })
    }

    /// (upper bound ns, count) for each power-of-two bucket that holds values, for bar views.
    pub fn log2_buckets(&self) -> Vec<(u64, u64)> {
        let Some(h) = self.hist.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        for v in h.iter_recorded() {
            let value = v.value_iterated_to().max(1);
            let upper = value.next_power_of_two();
            match out.last_mut() {
                Some((u, n)) if *u == upper => *n += v.count_at_value(),
                _ => out.push((upper, v.count_at_value())),
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

/// Everything kept for one MR, process, device, or the whole run.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub counts: Counts,
    pub fault: Latency,
    pub invalidation: Latency,
    pub prefetch: Latency,
    pub collision_wait: Latency,
}

impl Stats {
    pub fn with_resolution(resolution: Resolution) -> Self {
        Stats {
            counts: Counts::default(),
            fault: Latency::new(resolution),
            invalidation: Latency::new(resolution),
            prefetch: Latency::new(resolution),
            collision_wait: Latency::new(resolution),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsSummary {
    #[serde(flatten)]
    pub counts: Counts,
    pub timeouts: u64,
    pub latency: LatencySummaries,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySummaries {
    pub fault: Option<LatencySummary>,
    pub invalidation: Option<LatencySummary>,
    pub prefetch: Option<LatencySummary>,
    pub collision_wait: Option<LatencySummary>,
}

impl Stats {
    pub fn summary(&self) -> StatsSummary {
        StatsSummary {
            counts: self.counts,
            timeouts: self.counts.timeouts(),
            latency: LatencySummaries {
                fault: self.fault.summary(),
                invalidation: self.invalidation.summary(),
                prefetch: self.prefetch.summary(),
                collision_wait: self.collision_wait.summary(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_and_mean_are_exact_at_any_resolution() {
        for resolution in [Resolution::Fine, Resolution::Coarse] {
            let mut l = Latency::new(resolution);
            for ns in [659_500, 12_345, 7_543_210, 100_000] {
                l.record(ns);
            }
            let s = l.summary().expect("recorded");
            assert_eq!((s.count, s.min_ns, s.max_ns), (4, 12_345, 7_543_210));
            assert_eq!(s.mean_ns, (659_500 + 12_345 + 7_543_210 + 100_000) / 4);
            // Quantiles are the resolution's, and never past the extremes.
            assert!(s.p999_ns <= s.max_ns && s.p50_ns >= s.min_ns, "{s:?}");
        }
        let mut l = Latency::new(Resolution::Coarse);
        for ns in [10_000, 10_001, 999_999_999, 1_000_000_000, 20_000_000_000] {
            l.record(ns);
        }
        let buckets = l.bucket_counts();
        assert_eq!(
            buckets[0], 1,
            "a bound is inclusive: 10 us is in the first slot"
        );
        assert_eq!(buckets[1], 1);
        let slot = |bound: u64| BUCKET_BOUNDS_NS.iter().position(|&b| b == bound);
        assert_eq!(
            slot(1_000_000_000).map(|i| buckets[i]),
            Some(2),
            "1 s is in the 1 s slot"
        );
        assert_eq!(
            buckets[BUCKET_BOUNDS_NS.len()],
            1,
            "20 s is past the last bound"
        );
        assert_eq!(buckets.iter().sum::<u64>(), l.count());
        assert_eq!((l.count(), l.sum_ns()), (5, 22_000_020_000));
        let mut off = Latency::new(Resolution::Off);
        off.record(5);
        assert!(off.summary().is_none());
    }
}
