//! `odp-ctl prefetch`

use std::time::Instant;

use odp_core::verbs::{self, Advice, Sge};
use serde::Serialize;

use super::mr::{setup, MrArgs, MrReport};
use crate::output::{table, AlreadyReported, Output};
use odp_core::units::{parse_key, parse_range};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub mr: MrArgs,
    /// Advice: prefetch, prefetch-write, prefetch-no-fault, or all (repeatable).
    #[arg(long, default_values_t = vec!["prefetch".to_string()])]
    pub advice: Vec<String>,
    /// sync (IBV_ADVISE_MR_FLAG_FLUSH: wait for the pages), async, or both.
    #[arg(long, default_value = "sync", value_parser = ["sync", "async", "both"])]
    pub mode: String,
    /// A range of the MR as OFFSET:LENGTH (repeatable; default: the whole MR).
    #[arg(long = "range", value_parser = parse_range)]
    pub ranges: Vec<(usize, usize)>,
    /// Advise under this lkey instead of the MR's own (to see what the kernel does with a
    /// wrong key).
    #[arg(long, value_parser = parse_key)]
    pub lkey: Option<u32>,
    /// Repeat each call this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
}

#[derive(Serialize)]
struct Call {
    advice: Advice,
    mode: &'static str,
    ranges: Vec<Sge>,
    rc: i32,
    errno_name: Option<String>,
    error: Option<String>,
    elapsed_us: u128,
}

#[derive(Serialize)]
struct Report {
    mr: MrReport,
    calls: Vec<Call>,
    failed: usize,
}

fn advices(names: &[String]) -> odp_core::Result<Vec<Advice>> {
    let mut out = Vec::new();
    for name in names {
        if name == "all" {
            out.extend(Advice::ALL);
        } else {
            out.push(Advice::parse(name)?);
        }
    }
    Ok(out)
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    let advices = advices(&args.advice)?;
    if args.mr.implicit && args.ranges.is_empty() {
        return Err(odp_core::Error::invalid(
            "an implicit MR spans the address space: give --range relative to a mapping",
        )
        .into());
    }
    let modes: &[(&str, bool)] = match args.mode.as_str() {
        "sync" => &[("sync", true)],
        "async" => &[("async", false)],
        _ => &[("sync", true), ("async", false)],
    };
    let setup = setup(&args.mr)?;
    let whole = [(0usize, setup.mr.len())];
    let ranges: &[(usize, usize)] = if args.ranges.is_empty() {
        &whole
    } else {
        &args.ranges
    };
    let mut sges = ranges
        .iter()
        .map(|&(off, len)| setup.mr.sge(off, len))
        .collect::<odp_core::Result<Vec<Sge>>>()?;
    if let Some(lkey) = args.lkey {
        for sge in &mut sges {
            sge.lkey = lkey;
        }
    }
    let mut calls = Vec::new();
    let mut first_error = None;
    for &advice in &advices {
        for &(mode, sync) in modes {
            for _ in 0..args.repeat {
                let started = Instant::now();
                let result = verbs::advise(&setup.pd, advice, sync, &sges);
                let elapsed_us = started.elapsed().as_micros();
                let (rc, errno_name, error) = match &result {
                    Ok(()) => (0, None, None),
                    Err(e) => (
                        e.errno().unwrap_or(-1),
                        e.errno()
                            .map(|n| odp_core::error::errno_name(n).to_string()),
                        Some(e.to_string()),
                    ),
                };
                calls.push(Call {
                    advice,
                    mode,
                    ranges: sges.clone(),
                    rc,
                    errno_name,
                    error,
                    elapsed_us,
                });
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let failed = calls.iter().filter(|c| c.rc != 0).count();
    if out.json {
        out.json(&Report {
            mr: setup.report,
            calls,
            failed,
        })?;
    } else {
        print!("{}", setup.report.render());
        let mut t = table(&["ADVICE", "MODE", "RANGES", "BYTES", "RC", "TIME_US"]);
        for c in &calls {
            t.add_row(vec![
                c.advice.name().to_string(),
                c.mode.to_string(),
                c.ranges.len().to_string(),
                c.ranges
                    .iter()
                    .map(|s| u64::from(s.len))
                    .sum::<u64>()
                    .to_string(),
                match &c.errno_name {
                    None => "0".to_string(),
                    Some(name) => format!("{} ({name})", c.rc),
                },
                c.elapsed_us.to_string(),
            ]);
        }
        println!("\n{t}");
    }
    match first_error {
        Some(e) => {
            let err =
                anyhow::Error::new(e).context(format!("{failed} of the prefetch calls failed"));
            Err(AlreadyReported(err).into())
        }
        None => Ok(()),
    }
}
