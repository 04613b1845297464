//! The buffer + MR setup shared by `register` and `prefetch`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use odp_core::memory::{Backing, Mapping};
use odp_core::verbs::{Access, Context, MemoryRegion, ProtectionDomain};
use serde::Serialize;

use crate::output::pairs;
use odp_core::units::parse_size;

#[derive(clap::Args, Clone)]
pub struct MrArgs {
    /// Device name (default: the first device).
    #[arg(short, long)]
    pub device: Option<String>,
    /// Buffer and MR length (4096, 64K, 2M, 1G...).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub size: usize,
    /// Buffer backing: anon, thp, hugetlb, file, shared.
    #[arg(long, default_value = "anon")]
    pub backing: String,
    /// File to map for --backing file (default: an unlinked temp file).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Access flags: full, none, or a list of local-write, remote-write, remote-read,
    /// remote-atomic, relaxed-ordering. ODP (on-demand) is added unless --pinned.
    #[arg(long, default_value = "full")]
    pub access: String,
    /// Register without ODP (pinned), for comparison.
    #[arg(long, conflicts_with = "implicit")]
    pub pinned: bool,
    /// Register an implicit ODP MR (addr 0, length SIZE_MAX) instead of a buffer.
    #[arg(long)]
    pub implicit: bool,
    /// With --backing hugetlb: request IBV_ACCESS_HUGETLB (huge-page ODP granularity). `auto`
    /// falls back to base pages, with a note, when the kernel rejects the flag (rxe does).
    #[arg(long, default_value = "auto", value_parser = ["auto", "yes", "no"])]
    pub hugetlb_flag: String,
}

pub struct MrSetup {
    pub pd: Arc<ProtectionDomain>,
    pub mr: MemoryRegion,
    pub report: MrReport,
}

#[derive(Serialize)]
pub struct MrReport {
    pub device: String,
    pub addr: String,
    pub length: u64,
    pub lkey: String,
    pub rkey: String,
    pub access: Access,
    pub odp: bool,
    pub implicit: bool,
    pub backing: Option<&'static str>,
    pub register_us: u128,
    pub notes: Vec<String>,
}

impl MrReport {
    pub fn render(&self) -> String {
        pairs(&[
            ("device", self.device.clone()),
            ("addr", self.addr.clone()),
            ("length", self.length.to_string()),
            ("lkey", self.lkey.clone()),
            ("rkey", self.rkey.clone()),
            ("access", self.access.names().join(",")),
            (
                "kind",
                match (self.odp, self.implicit) {
                    (_, true) => "implicit ODP".into(),
                    (true, false) => "explicit ODP".into(),
                    (false, false) => "pinned".into(),
                },
            ),
            ("backing", self.backing.unwrap_or("-").to_string()),
            ("register_us", self.register_us.to_string()),
        ]) + &self
            .notes
            .iter()
            .map(|n| format!("note         {n}\n"))
            .collect::<String>()
    }
}

pub fn setup(args: &MrArgs) -> anyhow::Result<MrSetup> {
    let mut access = odp_core::verbs::Access::parse(&args.access)?;
    // Validate the buffer request before touching the device, so bad input changes nothing.
    let backing = Backing::parse(&args.backing, args.file.clone())?;
    if args.implicit && args.backing != "anon" {
        return Err(
            odp_core::Error::invalid("--implicit registers no buffer; drop --backing").into(),
        );
    }
    if !args.implicit {
        Mapping::check_len(args.size, &backing)?;
    }
    // The device first: without one, nothing is mapped (a 1 TiB request says "no device").
    let ctx = Context::open(args.device.as_deref())?;
    let pd = ctx.alloc_pd()?;
    let mapping = if args.implicit {
        None
    } else {
        Some((
            backing.name(),
            Arc::new(Mapping::new(args.size, backing.clone())?),
        ))
    };
    let huge_flag = !args.pinned && backing == Backing::Hugetlb && args.hugetlb_flag != "no";
    if !args.pinned {
        access = access | Access::ON_DEMAND;
    }
    let mut notes = Vec::new();
    let started = Instant::now();
    let (mr, backing_name) = match &mapping {
        None => (MemoryRegion::register_implicit(&pd, access)?, None),
        Some((name, mapping)) => {
            let attempt = if huge_flag {
                MemoryRegion::register(&pd, mapping, 0, args.size, access | Access::HUGETLB)
            } else {
                MemoryRegion::register(&pd, mapping, 0, args.size, access)
            };
            let mr = match attempt {
                Err(e)
                    if huge_flag
                        && args.hugetlb_flag == "auto"
                        && matches!(e.errno(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) =>
                {
                    notes.push(format!(
                        "IBV_ACCESS_HUGETLB rejected ({}); registered at base-page granularity",
                        odp_core::error::errno_name(e.errno().unwrap_or(0))
                    ));
                    MemoryRegion::register(&pd, mapping, 0, args.size, access)?
                }
                other => other?,
            };
            (mr, Some(*name))
        }
    };
    let register_us = started.elapsed().as_micros();
    let report = MrReport {
        device: ctx.name().to_string(),
        addr: format!("{:#x}", mr.addr()),
        length: mr.len() as u64,
        lkey: format!("{:#x}", mr.lkey()),
        rkey: format!("{:#x}", mr.rkey()),
        access: mr.access(),
        odp: mr.access().contains(Access::ON_DEMAND),
        implicit: mr.is_implicit(),
        backing: backing_name,
        register_us,
        notes,
    };
    Ok(MrSetup { pd, mr, report })
}
