//! `odp-ctl stress --peer ADDR SCENARIO`: the scenario against `odp-ctl serve` on another host,
//! which owns the region and runs the scenario's storm (its one action); this side drives the
//! traffic, with its [peer] knobs on the connection, every byte checked where it landed.

use odp_core::peer::parse_address;
use odp_core::stress::{run_against_peer, PeerRun, Scenario};
use odp_core::verbs::{PeerConfig, Route};
use serde::Serialize;

use super::launch::stop_on_signals;
use super::mr::{setup, MrArgs};
use super::register::{print_port_counters, print_retries, with_evidence, PeerReport, PeerSession};
use crate::live::{SharedEvidence, Source};
use crate::output::{table, AlreadyReported, DataMismatch, Output};

#[derive(Serialize)]
struct Document<'a> {
    run: &'a PeerRun,
    peer: &'a PeerReport,
}

/// Runs `scenario` (checked for running across hosts) against the peer at `peer`; with
/// `probes`, this side's probes watch its requester and each retry's cause is asked of the peer.
pub fn run(out: &Output, scenario: &Scenario, peer: &str, probes: bool) -> anyhow::Result<()> {
    let address = parse_address(peer)?;
    let stop = stop_on_signals()?;
    let knobs = &scenario.peer;
    let defaults = PeerConfig::default();
    let config = PeerConfig {
        ack_timeout: knobs.ack_timeout,
        retry_count: knobs.retry_count.unwrap_or(defaults.retry_count),
        rnr_retry: knobs.rnr_retry.unwrap_or(defaults.rnr_retry),
        min_rnr_timer: knobs.min_rnr_timer,
        ..defaults
    };
    let route = Route::resolve(address, &config)?;
    let port = route.device()?;
    // This side's buffer as the scenario describes the region (the peer serves its own).
    let region = scenario
        .mrs
        .first()
        .ok_or_else(|| odp_core::Error::invalid("the scenario has no [[mr]]"))?;
    let setup = setup(&MrArgs {
        device: Some(port.0.clone()),
        size: region.size.0,
        backing: region.backing.clone(),
        file: None,
        access: region.access.clone(),
        pinned: false,
        implicit: false,
        hugetlb_flag: "auto".into(),
    })?;
    let source = if probes {
        Some(Source::own_with_retries()?)
    } else {
        None
    };
    eprintln!(
        "stress {:?} against {address}: {:.1}s{}",
        scenario.name,
        scenario.total_duration().as_secs_f64(),
        source.as_ref().map_or(String::new(), |s| format!(
            ", {}/{} probes attached",
            s.probes_attached(),
            s.plans.len()
        ))
    );
    let progress_on_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let drive = |evidence: Option<&SharedEvidence>| {
        let session = PeerSession {
            setup: &setup,
            address,
            port: &port,
            evidence,
        };
        session.run(route, |conn, offer| {
            run_against_peer(conn, &setup.mr, offer, scenario, &stop, |p| {
                if progress_on_tty {
                    eprint!(
                        "\r{:>5.1}/{:.0}s ops {} ({:.1} MB) mismatches {}   ",
                        p.elapsed.as_secs_f64(),
                        p.total.as_secs_f64(),
                        p.ops,
                        p.bytes as f64 / 1e6,
                        p.mismatches
                    );
                }
            })
        })
    };
    let (run, peer) = with_evidence(source, drive)?;
    if progress_on_tty {
        eprintln!();
    }
    setup.mr.deregister()?;
    if out.json {
        out.json(&Document {
            run: &run,
            peer: &peer,
        })?;
    } else {
        print_run(&run, &peer);
    }
    if run.mismatched_passes() > 0 {
        return Err(AlreadyReported(
            DataMismatch("the traffic delivered wrong bytes (see the report)".into()).into(),
        )
        .into());
    }
    Ok(())
}

fn print_run(run: &PeerRun, peer: &PeerReport) {
    println!(
        "stress {:?} (seed {}) against {} (its MR: {} bytes, {}), {:.1}s{}{}",
        run.scenario,
        run.seed,
        peer.address,
        peer.offer.remote.len,
        if peer.offer.odp { "ODP" } else { "pinned" },
        run.duration_s,
        run.storm.map_or(String::new(), |s| format!(
            "; the peer ran {} on {} pieces {} times a second",
            s.action.name(),
            odp_core::units::fmt_size(s.length as u64),
            s.rate
        )) + &run.cold_pages.map_or(String::new(), |share| format!(
            "; it left {:.0}% of the pages under each WRITE and SEND pass cold",
            share * 100.0
        )),
        if run.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    let mut t = table(&[
        "WORKER", "OP", "RANGE", "MESSAGE", "PASSES", "MESSAGES", "MB/s", "VERIFIED",
    ]);
    for w in &run.workers {
        let mbps = if w.elapsed_us > 0 {
            w.bytes as f64 / w.elapsed_us as f64
        } else {
            0.0
        };
        let verified = match w.mismatches.first() {
            None => {
                let notes: Vec<String> = [
                    (w.zeroed_pages, "zeroed by the peer's storm"),
                    (w.cold_pages, "cold, faulted in by the device"),
                ]
                .into_iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} pages {what}"))
                .collect();
                if notes.is_empty() {
                    "all bytes ok".into()
                } else {
                    format!("all bytes ok ({})", notes.join("; "))
                }
            }
            Some(m) => format!(
                "{} passes with wrong bytes; first at {:#x} in pass {} (expected {:#04x}, got \
                 {:#04x}; {} bytes wrong)",
                w.mismatched_passes,
                m.mismatch.offset,
                m.pass,
                m.mismatch.expected,
                m.mismatch.actual,
                m.mismatch.bytes_wrong
            ),
        };
        t.add_row(vec![
            w.worker.clone(),
            w.op.name().to_string(),
            format!("{:#x}+{:#x}", w.range.offset, w.range.len),
            odp_core::units::fmt_size(w.message as u64),
            w.passes.to_string(),
            w.messages.to_string(),
            format!("{mbps:.1}"),
            verified,
        ]);
    }
    println!("{t}");
    print_port_counters(peer);
    print_retries(peer);
}
