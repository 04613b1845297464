//! The bare syscall loop `odp-ctl stress`'s action generator is compared with: MADV_DONTNEED on
//! random page-aligned pieces of a buffer, as fast as possible, optionally registered as an ODP
//! MR first (so every call also runs the driver's invalidation).
//!
//! Usage: madvise_loop SIZE LENGTH SECONDS [DEVICE]
//! Prints `actions=N ns=T` for `cargo xtask bench vm-stress`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use odp_core::memory::{page_size, Backing, Mapping};
use odp_core::units::parse_size;
use odp_core::verbs::{Access, Context, MemoryRegion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: madvise_loop SIZE LENGTH SECONDS [DEVICE]");
    }
    let size = parse_size(&args[0]).map_err(anyhow::Error::msg)?;
    let len = parse_size(&args[1]).map_err(anyhow::Error::msg)?;
    let seconds: f64 = args[2].parse().context("SECONDS")?;
    let map = Arc::new(Mapping::new(size, Backing::Anonymous)?);
    map.touch();
    // Kept alive for the loop: the registration is what makes DONTNEED reach the driver.
    let _registered = match args.get(3) {
        Some(device) => {
            let pd = Context::open(Some(device))?.alloc_pd()?;
            Some(MemoryRegion::register(
                &pd,
                &map,
                0,
                size,
                Access::FULL | Access::ON_DEMAND,
            )?)
        }
        None => None,
    };
    let page = page_size();
    let slots = (size - len) / page + 1;
    let mut rng = SmallRng::seed_from_u64(1);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut actions = 0u64;
    while Instant::now() < until {
        let offset = rng.random_range(0..slots) * page;
        map.madvise(offset, len, libc::MADV_DONTNEED, "madvise")?;
        actions += 1;
    }
    println!("actions={actions} ns={}", started.elapsed().as_nanos());
    Ok(())
}
