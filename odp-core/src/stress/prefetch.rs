//! Prefetch workers: ibv_advise_mr on random ranges at a steady rate.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::report::PrefetchStats;
use super::scenario::{PrefetchSpec, Window};
use super::{sleep_until, Shared, Target};
use crate::error::Result;
use crate::verbs::Advice;

pub(super) fn prefetch_worker(
    spec: &PrefetchSpec,
    target: &Target,
    shared: &Shared,
    seed: u64,
    stats: &mut PrefetchStats,
) -> Result<()> {
    let page = shared.page;
    let advice = Advice::parse(&spec.advice)?;
    let window = spec.range.unwrap_or(Window {
        offset: 0,
        len: target.mapping.len(),
    });
    let len = spec.length.0;
    let slots = (window.len - len) / page + 1;
    let mut rng = SmallRng::seed_from_u64(seed);
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let mut next = Instant::now();
    while !shared.control.stopping() {
        if shared.control.active(spec.name.as_deref()) {
            let offset = window.offset + rng.random_range(0..slots) * page;
            stats.calls += 1;
            match target
                .mr
                .advise(advice, spec.sync, &[(target.base + offset, len)])
            {
                Ok(()) => stats.bytes += len as u64,
                Err(_) => stats.failed += 1,
            }
        }
        next += interval;
        if next + Duration::from_secs(1) < Instant::now() {
            next = Instant::now();
        }
        sleep_until(next, &shared.control);
    }
    Ok(())
}
