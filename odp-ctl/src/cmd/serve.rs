//! `odp-ctl serve`: the passive side of two-host traffic. It owns the ODP MR the peer's RDMA
//! WRITEs, READs and SENDs target, and verifies what lands in it.

use std::time::{Duration, Instant};

use odp_core::peer::{parse_address, serve, Hello, Offer, Served};
use odp_core::verbs::{Access, Listener, PeerConfig, Remote};

use super::launch::stop_on_signals;
use super::mr::{setup, MrArgs};
use crate::output::Output;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub mr: MrArgs,
    /// Listen on this address of an RDMA device's netdev (ADDR or ADDR:PORT; the device is
    /// the one holding it).
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub listen: String,
    /// Serve one connection, then exit.
    #[arg(long)]
    pub once: bool,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = odp_core::units::parse_duration)]
    pub duration: Option<Duration>,
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    if args.mr.implicit {
        return Err(odp_core::Error::invalid(
            "serve verifies bytes in a buffer; an implicit MR has none",
        )
        .into());
    }
    let address = parse_address(&args.listen)?;
    let stop = stop_on_signals()?;
    let listener = Listener::bind(address, &PeerConfig::default())?;
    let (device, _) = listener.device()?;
    let mut mr_args = args.mr.clone();
    match &args.mr.device {
        Some(wanted) if *wanted != device => {
            return Err(
                odp_core::Error::invalid(format!("{address} is on {device}, not {wanted}")).into(),
            )
        }
        _ => mr_args.device = Some(device.clone()),
    }
    let setup = setup(&mr_args)?;
    let offer = Offer {
        remote: Remote::from(&setup.mr),
        odp: setup.mr.access().contains(Access::ON_DEMAND),
    };
    // On stderr in every mode, so scripts (and people) know when to connect.
    eprintln!(
        "serving a {} {} MR on {device} at {address}; Ctrl-C to stop",
        odp_core::units::fmt_size(setup.mr.len() as u64),
        if offer.odp { "ODP" } else { "pinned" },
    );
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut connections = Vec::new();
    loop {
        let left = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        if left.is_zero() || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let Some(request) = listener.next_request(left.min(Duration::from_secs(1)), &stop)? else {
            continue;
        };
        if let Err(reason) = Hello::check(&request.hello) {
            eprintln!("refused {}: {reason}", request.from);
            request.reject(&reason);
            continue;
        }
        let from = request.from.clone();
        let served = request
            .accept(&setup.pd, &offer.encode())
            .and_then(|mut conn| serve(&mut conn, &setup.mr, &stop));
        match served {
            Ok(served) => {
                report(out, &served)?;
                connections.push(served);
            }
            // One peer's failure ends its connection, not the service.
            Err(e) => eprintln!("connection from {from} failed: {e}"),
        }
        if args.once {
            break;
        }
    }
    setup.mr.deregister()?;
    if args.once && connections.is_empty() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(odp_core::Error::Peer {
            peer: address.to_string(),
            what: "no peer connected and completed".into(),
        }
        .into());
    }
    // Wrong bytes are each connection's verdict, reported above and to its peer (which exits
    // 7); a service that served is a success.
    Ok(())
}

fn report(out: &Output, served: &Served) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string(served)?);
    } else {
        println!(
            "{}: {} fills, {} SENDs received ({} bytes), {} verifications, {} with wrong bytes{}",
            served.peer,
            served.fills,
            served.sends_received,
            served.bytes_received,
            served.verifies,
            served.mismatched,
            if served.clean_end {
                ""
            } else {
                " (ended without goodbye)"
            }
        );
    }
    Ok(())
}
