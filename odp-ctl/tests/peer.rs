//! Two hosts: `register --peer` against `odp-ctl serve` on the other guest of the pair (the
//! test driver starts it there), over rdma_cm. Every byte is checked where it lands: WRITEs and
//! SENDs by the serving side, READs here; failures to reach or be served by the peer exit 8.

use std::io::Write;
use std::time::{Duration, Instant};

use odp_core::testing::peer_or_skip;
use serde_json::Value;

mod common;
use common::odp_ctl;

fn register_with(peer: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = odp_ctl()
        .args(["--json", "register", "--peer", peer])
        .args(args)
        .output()
        .expect("register");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    // With --json a failure is a JSON document on stdout; anything else goes to stderr.
    let said = match report["error"]["message"].as_str() {
        Some(message) => message.to_string(),
        None => String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (out.status.code(), report, said)
}

/// Every op of a `register --peer --probes` report moved exact bytes, and this side's probes
/// lost no event (a retry not seen would not be counted).
fn every_byte_exact_and_no_event_lost(report: &Value) {
    for op in report["traffic"]["ops"].as_array().expect("ops") {
        assert_eq!(op["mismatch"], Value::Null, "{op}");
    }
    let probes = &report["peer"]["probes"];
    for loss in ["drops", "missed", "unpaired", "overflow"] {
        assert_eq!(probes[loss], 0, "{loss}: {probes}");
    }
}

#[test]
fn traffic_to_a_peer_is_verified_where_it_lands() {
    let Some(peer) = peer_or_skip("traffic_to_a_peer_is_verified_where_it_lands") else {
        return;
    };
    // ODP here and there, page-aligned messages (rxe garbles ODP data at unaligned offsets:
    // the next test); then a pinned MR here with a short last message.
    for (args, messages) in [
        (&["--size", "4M", "--message-size", "64K"][..], 64),
        (
            &["--size", "1M", "--pinned", "--message-size", "12K"][..],
            86,
        ),
    ] {
        let (code, report, stderr) = register_with(&peer, args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        let ops = report["traffic"]["ops"].as_array().expect("ops");
        let names: Vec<&str> = ops.iter().filter_map(|o| o["op"].as_str()).collect();
        assert_eq!(names, ["write", "read", "send"], "{report}");
        let size = report["mr"]["length"].as_u64().expect("length");
        for op in ops {
            assert_eq!(op["mismatch"], Value::Null, "{args:?}: {op}");
            assert_eq!(op["bytes"].as_u64(), Some(size), "{op}");
            assert_eq!(op["messages"].as_u64(), Some(messages), "{op}");
        }
        assert_eq!(report["peer"]["offer"]["odp"], true, "{report}");
        assert!(
            report["peer"]["offer"]["remote"]["len"].as_u64() >= Some(size),
            "{report}"
        );
        assert_eq!(report["deregistered"], true);
        // This port's own counters over the run (rxe's names): at least a packet per MTU
        // (4096) of WRITE and SEND data out, and of READ data in.
        if report["mr"]["device"]
            .as_str()
            .is_some_and(|d| d.starts_with("rxe"))
        {
            let gained = &report["peer"]["port_counters"]["Ok"];
            let packets = size / 4096;
            assert!(
                gained["sent_pkts"].as_u64() >= Some(2 * packets),
                "{args:?}: {gained}"
            );
            assert!(
                gained["rcvd_pkts"].as_u64() >= Some(packets),
                "{args:?}: {gained}"
            );
        }
    }
}

#[test]
fn a_region_larger_than_the_peers_is_refused_before_any_traffic() {
    let Some(peer) = peer_or_skip("a_region_larger_than_the_peers_is_refused_before_any_traffic")
    else {
        return;
    };
    let (code, _, stderr) = register_with(&peer, &["--size", "64M"]);
    assert_eq!(code, Some(6), "{stderr}");
    assert!(stderr.contains("larger than the peer's"), "{stderr}");
}

#[test]
fn an_absent_or_unreachable_peer_is_named_and_exits_8() {
    let Some(peer) = peer_or_skip("an_absent_or_unreachable_peer_is_named_and_exits_8") else {
        return;
    };
    let host = peer.split(':').next().unwrap_or(&peer).to_string();
    // A port nobody listens on: the peer's connection manager refuses at once.
    let started = Instant::now();
    let (code, _, stderr) = register_with(&format!("{host}:1"), &["--size", "64K"]);
    assert_eq!(code, Some(8), "{stderr}");
    assert!(stderr.contains("refused the connection"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // An address on the link that no host holds: address resolution times out, bounded.
    let (code, _, stderr) = register_with("10.20.0.99", &["--size", "64K"]);
    assert_eq!(code, Some(8), "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(stderr.contains("10.20.0.99"), "{stderr}");
}

/// A monitor told to ask a peer that cannot answer names it, and why, at once (before any
/// retry), and goes on monitoring: a port nobody serves, an address nobody holds, a serve
/// without probes. An address that is not one is refused before anything starts.
#[test]
fn a_monitor_names_the_peer_it_cannot_ask_and_why() {
    let test = "a_monitor_names_the_peer_it_cannot_ask_and_why";
    let Some(pinned) = odp_core::testing::pinned_peer_or_skip(test) else {
        return;
    };
    let host = pinned.split(':').next().unwrap_or(&pinned).to_string();
    let out = odp_ctl()
        .args(["monitor", "--summary", "--peer", "10.20.0"])
        .output()
        .expect("monitor");
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not an IPv4 address"),
        "{out:?}"
    );
    let cases = [
        (format!("{host}:1"), "refused the connection"),
        ("10.20.0.99".to_string(), "unreachable"),
        (pinned.clone(), "runs without --probes"),
    ];
    // Side by side: each attaches every probe, which takes a while in a guest.
    let running: Vec<_> = cases
        .iter()
        .map(|(peer, _)| {
            odp_ctl()
                .args(["--json", "monitor", "--summary", "--duration", "15s"])
                .args(["--peer", peer])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("monitor")
        })
        .collect();
    for ((peer, reason), child) in cases.iter().zip(running) {
        let out = child.wait_with_output().expect("monitor's end");
        assert_eq!(out.status.code(), Some(0), "{peer}: {out:?}");
        let summary: Value = serde_json::from_slice(&out.stdout).expect("summary");
        let causes = &summary["peer_causes"];
        let error = causes["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{peer}: {causes}");
        assert_eq!(causes["asked"], 0, "{peer}: {causes}");
    }
}

#[test]
fn serve_refuses_to_listen_where_no_peer_can_reach_it() {
    if peer_or_skip("serve_refuses_to_listen_where_no_peer_can_reach_it").is_none() {
        return;
    }
    for (listen, expected) in [
        ("0.0.0.0", "not 0.0.0.0"),
        ("10.20.0.99", "not an address of this host's RDMA devices"),
        ("somewhere", "not an IPv4 address"),
    ] {
        let out = odp_ctl()
            .args(["serve", "--once", "--listen", listen])
            .output()
            .expect("serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{listen}: {stderr}");
        assert!(stderr.contains(expected), "{listen}: {stderr}");
    }
}

#[test]
fn a_peer_without_odp_moves_exact_bytes_and_refuses_what_needs_odp() {
    let test = "a_peer_without_odp_moves_exact_bytes_and_refuses_what_needs_odp";
    let Some(pinned) = odp_core::testing::pinned_peer_or_skip(test) else {
        return;
    };
    let (code, report, said) = register_with(&pinned, &["--size", "256K"]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(report["peer"]["offer"]["odp"], false, "{report}");
    for op in report["traffic"]["ops"].as_array().expect("ops") {
        assert_eq!(op["mismatch"], Value::Null, "{op}");
    }
    // What only an ODP MR on the far side has is refused before any traffic, and the serving
    // side is left as it was: the next plain run works.
    for (args, request) in [
        (
            &["--size", "256K", "--remote-dontneed", "100"][..],
            "a dontneed storm",
        ),
        (
            &["--size", "256K", "--touch-latency", "4"][..],
            "timing a first touch",
        ),
    ] {
        let (code, report, said) = register_with(&pinned, args);
        assert_eq!(code, Some(6), "{args:?}: {said}");
        assert!(
            said.contains(request) && said.contains("serves a pinned one"),
            "{args:?}: {said}"
        );
        assert_eq!(report["traffic"], Value::Null, "{args:?}: {report}");
    }
    let (code, _, said) = register_with(&pinned, &["--size", "64K"]);
    assert_eq!(code, Some(0), "after the refusals: {said}");
}

/// This host's address on the link to `peer`: the source the kernel picks to reach it.
fn own_address_toward(peer: &str) -> std::net::Ipv4Addr {
    let peer = odp_core::peer::parse_address(peer).expect("peer address");
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    socket.connect(peer).expect("route to the peer");
    match socket.local_addr().expect("local address").ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("an IPv4 peer reached from {other}"),
    }
}

#[test]
fn mismatched_protocol_versions_are_refused_by_both_sides() {
    use odp_core::peer::{Hello, Offer, Purpose, PROTOCOL_VERSION};
    use odp_core::verbs::{Context, Listener, PeerConfig, Remote, Route};
    let test = "mismatched_protocol_versions_are_refused_by_both_sides";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    // An older active side against the real serve: refused with both versions named.
    let route = Route::resolve(
        odp_core::peer::parse_address(&peer).expect("peer address"),
        &PeerConfig::default(),
    )
    .expect("route to the peer");
    let (device, _) = route.device().expect("route's device");
    let pd = Context::open(Some(&device))
        .and_then(|c| c.alloc_pd())
        .expect("protection domain");
    let older = Hello {
        version: PROTOCOL_VERSION - 1,
        purpose: Purpose::Traffic,
    };
    let refused = route
        .connect(&pd, &older.encode())
        .map(|_| ())
        .expect_err("an older hello is refused");
    let said = refused.to_string();
    assert!(
        said.contains("refused the connection")
            && said.contains(&format!(
                "protocol {}, this side speaks {PROTOCOL_VERSION}",
                PROTOCOL_VERSION - 1
            )),
        "{said}"
    );
    let (code, _, said) = register_with(&peer, &["--size", "64K"]);
    assert_eq!(code, Some(0), "the serving side after the refusal: {said}");

    // A newer serving side (this test, answering on this host's own address) against the real
    // register: it connects, reads the offer's version and gives up before any traffic.
    let own = std::net::SocketAddrV4::new(own_address_toward(&peer), 10091);
    let listener = Listener::bind(own, &PeerConfig::default()).expect("listen");
    let child = odp_ctl()
        .args([
            "--json",
            "register",
            "--peer",
            &own.to_string(),
            "--size",
            "64K",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("register");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let request = listener
        .next_request(Duration::from_secs(60), &stop)
        .expect("listening")
        .expect("register's connect request");
    assert!(Hello::check(&request.hello).is_ok());
    let mut newer = Offer {
        remote: Remote {
            addr: 0,
            rkey: 0,
            len: 1 << 20,
        },
        odp: true,
    }
    .encode();
    newer[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    let accepted = request.accept(&pd, &newer);
    let out = child.wait_with_output().expect("register's exit");
    drop(accepted);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let said = report["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(out.status.code(), Some(8), "{report}");
    assert!(
        said.contains(&format!(
            "speaks peer protocol {}, this side {PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 1
        )),
        "{said}"
    );
}

/// docs/FINDINGS.md #1 across hosts: rxe moves the wrong bytes where a packet starts mid-page in
/// an ODP MR, and here the ODP MR is the serving host's (the responder's). The pinned MR on this
/// side is exact, so each operation goes wrong exactly where the first unaligned message meets
/// the peer's ODP MR.
#[test]
fn unaligned_messages_go_wrong_in_the_peers_odp_mr_on_rxe() {
    let test = "unaligned_messages_go_wrong_in_the_peers_odp_mr_on_rxe";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    let unaligned = 12_345u64;
    let (code, report, said) = register_with(
        &peer,
        &["--size", "256K", "--pinned", "--message-size", "12345"],
    );
    let first_bad: Vec<Option<u64>> = report["traffic"]["ops"]
        .as_array()
        .map(|ops| {
            ops.iter()
                .map(|o| o["mismatch"]["offset"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    if first_bad.iter().all(Option::is_none) {
        assert_eq!(code, Some(0), "{said}");
        panic!(
            "rxe now copies unaligned ODP data correctly: update docs/FINDINGS.md #1 and this test"
        );
    }
    assert_eq!(code, Some(7), "{said}");
    // The copy uses the page's start, not the packet's place in it: WRITE and SEND into the
    // peer's ODP MR clobber the page holding 12345 from its first byte; a READ out of it
    // brings wrong bytes from 12345 on.
    assert_eq!(
        first_bad,
        [
            Some(unaligned & !4095),
            Some(unaligned),
            Some(unaligned & !4095)
        ],
        "{report}"
    );
}

/// A DONTNEED storm on the responder's ODP MR while the WRITEs and SENDs land in it: every page
/// is the pattern, or zeros where the storm dropped it after its data landed; nothing else. (The
/// serving side's probes must see one CLEAR invalidation per call: the test driver checks
/// that from its summary.)
#[test]
fn a_dontneed_storm_on_the_peers_mr_loses_no_byte_it_did_not_drop() {
    let test = "a_dontneed_storm_on_the_peers_mr_loses_no_byte_it_did_not_drop";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    let (code, report, said) = register_with(
        &peer,
        &[
            "--size",
            "8M",
            "--message-size",
            "64K",
            "--remote-dontneed",
            "500",
            "--remote-dontneed-length",
            "64K",
        ],
    );
    assert_eq!(code, Some(0), "{said}");
    let ops = report["traffic"]["ops"].as_array().expect("ops");
    let mut zeroed = 0;
    for op in ops {
        assert_eq!(op["mismatch"], Value::Null, "{op}");
        if op["op"] == "read" {
            assert!(
                op.get("zeroed_pages").is_none(),
                "no storm during READ: {op}"
            );
        } else {
            zeroed += op["zeroed_pages"].as_u64().expect("zeroed pages");
        }
    }
    // 16 pages a call, hundreds of calls over the passes: the storm did take pages away.
    assert!(
        zeroed > 0,
        "the storm dropped nothing after data landed: {report}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {zeroed} pages zeroed by the storm, every other byte exact"
    );
}

/// The requester's view of slow faults on the responder: with the ACK timeout at its minimum
/// (rxe: one scheduler tick) while a storm makes the peer's ODP faults slow, requests go
/// unanswered long enough to be sent again. This side's probes count each retry as the port's
/// counter does, exactly; the peer (serve --probes) names the fault behind each, by the PSNs
/// the retry left outstanding. The data is still exact.
/// `monitor --summary --json --peer PEER --metrics` running beside a test's traffic: it asks the
/// serving peer about this host's retries as they happen. Killed on drop (a failed test must
/// not leave it behind).
struct PeerMonitor {
    child: Option<std::process::Child>,
    metrics: String,
}

impl PeerMonitor {
    /// Starts it and waits until its probes are attached and its metrics served.
    fn start(peer: &str) -> PeerMonitor {
        use std::io::BufRead;
        let mut child = odp_ctl()
            .args(["--json", "monitor", "--summary", "--duration", "10m"])
            .args(["--peer", peer, "--metrics", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("monitor");
        let stderr = child.stderr.take().expect("stderr");
        let (lines, said) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = lines.send(line);
            }
        });
        let mut monitor = PeerMonitor {
            child: Some(child),
            metrics: String::new(),
        };
        // Attaching every probe in a slow guest takes tens of seconds.
        let until = Instant::now() + Duration::from_secs(120);
        while monitor.metrics.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            let line = said
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("the monitor did not start in 120 s: {e}"));
            if let Some(rest) = line.split("serving http://").nth(1) {
                monitor.metrics = rest.split('/').next().unwrap_or_default().to_string();
            }
        }
        monitor
    }

    /// A sample of the metrics it serves (0 when absent).
    fn sample(&self, name: &str) -> f64 {
        common::try_get(&self.metrics, "/metrics", None)
            .map(|(_, _, body)| {
                common::samples(&body)
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(&format!("{name}{{")))
                    .map(|(_, v)| v)
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// Ctrl-C, then its summary.
    fn stop(mut self) -> Value {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let until = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("monitor's state").is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                panic!("the monitor did not stop within 60 s of Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().expect("monitor's output");
        assert_eq!(out.status.code(), Some(0), "the monitor's exit");
        serde_json::from_slice(&out.stdout).expect("the monitor's summary")
    }
}

impl Drop for PeerMonitor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A short ACK timer against the peer's DONTNEED storm: retransmissions, each tied to the
/// peer's fault that held it up, counted as the port counter counts them. A monitor beside the
/// traffic asks the peer about the same retries on its own connection, live: it asks about
/// every one it sees, and names no more faults than the traffic's own end-of-run questions
/// (they ask later, and the peer's record only grows).
#[test]
fn a_short_ack_timeout_turns_slow_peer_faults_into_retransmissions() {
    let test = "a_short_ack_timeout_turns_slow_peer_faults_into_retransmissions";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    let monitor = PeerMonitor::start(&peer);
    let (code, report, said) = register_with(
        &peer,
        &[
            "--probes",
            "--size",
            "2M",
            "--ack-timeout",
            "1",
            "--remote-dontneed",
            "500",
        ],
    );
    assert_eq!(code, Some(0), "{said}");
    every_byte_exact_and_no_event_lost(&report);
    if !report["mr"]["device"]
        .as_str()
        .is_some_and(|d| d.starts_with("rxe"))
    {
        return;
    }
    let gained = &report["peer"]["port_counters"]["Ok"];
    let counted = gained["completer_retry_err"].as_u64().expect("the counter");
    let retries = &report["peer"]["retries"]["Ok"];
    assert_eq!(retries["retries"], counted, "{retries}");
    assert!(counted > 0, "no retransmission: {gained}");
    let runs = retries["attributed"].as_array().expect("attributed");
    let caused = retries["caused_by_odp_faults"].as_u64().expect("caused");
    assert!(caused > 0, "no retry was tied to a fault: {retries}");
    let window = |r: &Value, field: &str| r[field].as_u64().expect(field) as u32;
    for run in runs {
        let Some(fault) = run["cause"].as_object() else {
            continue;
        };
        let r = &run["retry"];
        // The named fault is on the peer's QP, inside the window the retry left outstanding.
        assert_eq!(fault["qp"], r["dest_qp"], "{run}");
        let psn = fault["psn"].as_u64().expect("psn") as u32;
        assert!(
            odp_core::remote::psn_in_window(psn, window(r, "psn"), window(r, "next_psn")),
            "{run}"
        );
        assert!(fault["len"].as_u64() > Some(0), "{run}");
    }
    // The monitor: every run asked about live, the metrics first, then its summary.
    let all_runs = runs.len() as f64 + retries["not_asked"].as_f64().expect("not_asked");
    let until = Instant::now() + Duration::from_secs(60);
    while monitor.sample("odp_peer_retry_runs_asked_total") < all_runs {
        assert!(
            Instant::now() < until,
            "the monitor's metrics did not reach {all_runs} runs asked in 60 s (asked {}, not \
             asked {})",
            monitor.sample("odp_peer_retry_runs_asked_total"),
            monitor.sample("odp_peer_retry_runs_not_asked_total")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let summary = monitor.stop();
    let live = &summary["peer_causes"];
    // The monitor also saw the runs of the traffic's own questions at its end (control
    // messages under the same short timer), which the traffic counted before asking them.
    let live_runs = live["runs"].as_f64().expect("runs");
    assert!(live_runs >= all_runs, "{live}");
    assert_eq!(live["asked"].as_f64(), Some(live_runs), "{live}");
    assert_eq!(live["not_asked"], 0, "{live}");
    assert_eq!(live["error"], Value::Null, "{live}");
    // Those questions' windows hold control messages, which fault nowhere; of the rest, a run
    // asked about earlier cannot have more of the peer's record behind it.
    let live_caused = live["caused_by_odp_faults"].as_u64().expect("caused");
    assert!(
        live_caused > 0 && live_caused <= caused,
        "{live_caused} vs {caused}: {live}"
    );
    let named = live["named"].as_array().expect("named");
    assert!(!named.is_empty(), "{live}");
    for recent in live["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .chain(named)
    {
        if let Some(fault) = recent["cause"].as_object() {
            let r = &recent["retry"];
            assert_eq!(fault["qp"], r["dest_qp"], "{recent}");
            let psn = fault["psn"].as_u64().expect("psn") as u32;
            assert!(
                odp_core::remote::psn_in_window(psn, window(r, "psn"), window(r, "next_psn")),
                "{recent}"
            );
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {counted} retransmissions (the port counter agrees), {caused} of {} \
         completer runs held up by the peer's ODP faults, every byte exact; the monitor asked \
         about all {live_runs} it saw live and named {live_caused}",
        runs.len()
    );
}

/// Receives the peer posts late: the SENDs that come first are answered with RNR NAKs and wait
/// the peer's RNR timer, every byte still exact; this side's probes count each NAK as the port
/// counter does. With no RNR retries the first such SEND fails, named, exit 7, and the peer
/// serves the next one.
#[test]
fn sends_before_the_peers_receives_wait_out_rnr_naks_or_fail_without_retries() {
    let test = "sends_before_the_peers_receives_wait_out_rnr_naks_or_fail_without_retries";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    // 256 KiB in 64 KiB SENDs: one window of four, its receives posted 100 ms late.
    let (code, report, said) = register_with(
        &peer,
        &["--probes", "--size", "256K", "--late-receives", "100ms"],
    );
    assert_eq!(code, Some(0), "{said}");
    every_byte_exact_and_no_event_lost(&report);
    let gained = &report["peer"]["port_counters"]["Ok"];
    let retries = &report["peer"]["retries"]["Ok"];
    if report["mr"]["device"]
        .as_str()
        .is_some_and(|d| d.starts_with("rxe"))
    {
        // The serving guest runs `serve --min-rnr-timer 1`: each NAK asks for a wait of one
        // tick, so 100 ms of late receives are answered with several (rdma_cm's 655 ms: one).
        let counted = gained["rcvd_rnr_err"].as_u64().expect("the counter");
        assert!(counted >= 2, "RNR NAKs: {gained}");
        assert_eq!(retries["rnr_naks"], counted, "{retries}");
        assert_eq!(retries["rnr_exceeded"], 0, "{retries}");
    }

    let (code, report, said) = register_with(
        &peer,
        &[
            "--size",
            "256K",
            "--late-receives",
            "100ms",
            "--rnr-retry",
            "0",
        ],
    );
    assert_eq!(code, Some(7), "{said}");
    assert_eq!(report["error"]["kind"], "completion", "{report}");
    assert!(
        said.contains("SEND") && said.contains("RNR retry counter exceeded"),
        "{said}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {} RNR NAK(s) waited out; without retries: {said}",
        retries["rnr_naks"]
    );
    let (code, _, said) = register_with(&peer, &["--size", "1M"]);
    assert_eq!(code, Some(0), "{said}");
}

/// With no retries allowed, the first request the peer answers too late fails the transfer:
/// named, with its status and the peer's fault that held it up, exit 7; both sides clean up and
/// the peer serves the next one.
#[test]
fn retry_exhaustion_toward_a_slow_peer_fails_the_request_and_says_so() {
    let test = "retry_exhaustion_toward_a_slow_peer_fails_the_request_and_says_so";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    // With no retries, any late ACK fails the transfer, a control message's too: the emulated
    // hosts answer late now and then without a fault. An ACK timer of 4.096 us x 2^12 (rxe: 5
    // ticks) outlasts most such delays, while the serving side drops 1 MiB pieces as fast as
    // it can, so that WRITEs keep meeting faults that collide with the drops and retry (in a
    // measured run 3 tries of 3 named a fault; with a timer of 1 tick, 6 of 6 failed on a
    // control SEND with none). Up to six tries for one the peer's ODP made fail; each must
    // fail, each names its cause or says none was found.
    let mut named = None;
    for attempt in 1..=6 {
        let (code, report, said) = register_with(
            &peer,
            &[
                "--probes",
                "--size",
                "16M",
                "--ack-timeout",
                "12",
                "--retry-count",
                "0",
                "--remote-dontneed",
                "100000",
                "--remote-dontneed-length",
                "1M",
            ],
        );
        let _ = writeln!(std::io::stderr(), "{test}: try {attempt}: {said}");
        assert_eq!(code, Some(7), "{said}");
        assert_eq!(report["error"]["kind"], "completion", "{report}");
        assert!(said.contains("transport retry counter exceeded"), "{said}");
        assert!(
            ["RDMA WRITE", "RDMA READ", "SEND"]
                .iter()
                .any(|op| said.contains(op)),
            "{said}"
        );
        // Held up by a fault, or by a copy that waited behind an invalidation of the MR.
        let held_up = said.contains("the peer's ODP fault on its QP")
            || said.contains("the peer's copy into its ODP MR, waiting behind an invalidation");
        if held_up && said.contains("made this request fail") {
            named = Some(said);
            break;
        }
        assert!(
            said.contains("no fault on the peer was found behind the request that failed"),
            "{said}"
        );
    }
    let said = named.expect("no try failed on a request a fault on the peer held up");
    let _ = writeln!(std::io::stderr(), "{test}: {said}");
    // The serving side is still there for the next peer.
    let (code, _, said) = register_with(&peer, &["--size", "1M"]);
    assert_eq!(code, Some(0), "{said}");
}

/// perftest, the RDMA engineer's yardstick, between the two hosts over rdma_cm with ODP buffers,
/// traced here by the monitor (the serving guest traces its side the same way; the test driver
/// checks that one): perftest registers one ODP MR of twice the message size per run, and the
/// device faults each of its pages in, once unless something invalidated it; nothing does but
/// NUMA balancing's hinting scans (PROTECTION_VMA: the guests have two nodes).
#[test]
fn perftest_against_the_peer_is_traced_on_both_sides() {
    let test = "perftest_against_the_peer_is_traced_on_both_sides";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    let host = peer.split(':').next().unwrap_or(&peer).to_string();
    for (comm, size, iterations) in [
        ("ib_write_bw", 65536u64, "200"),
        ("ib_read_lat", 4096, "100"),
    ] {
        // One monitor per client (a monitor follows its command, not the command's children);
        // the serving guest starts each server after the last client left: retried, bounded.
        let mut attempt = 0;
        let summary = loop {
            attempt += 1;
            let out = odp_ctl()
                .args(["--json", "monitor", "--summary", "--", comm, "--odp", "-R"])
                .args([
                    "-d",
                    "rxe0",
                    "-s",
                    &size.to_string(),
                    "-n",
                    iterations,
                    &host,
                ])
                .output()
                .expect("monitor");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                // perftest prints to the same stdout: the summary is the document from "{" on.
                let at = text.find("\n{\n").map_or(0, |i| i + 1);
                break serde_json::from_str::<Value>(&text[at..]).expect("the monitor's summary");
            }
            assert!(
                attempt < 20,
                "{comm}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_secs(1));
        };
        let pages = 2 * size / 4096;
        let mrs: Vec<&Value> = summary["mrs"]
            .as_array()
            .expect("mrs")
            .iter()
            .filter(|m| m["comm"] == comm)
            .collect();
        assert_eq!(mrs.len(), 1, "{comm}: {summary}");
        assert_eq!(mrs[0]["registration_seen"], true, "{}", mrs[0]);
        assert_eq!(mrs[0]["released"], true, "{}", mrs[0]);
        let causes = &summary["totals"]["invalidations_by_cause"];
        for (cause, n) in causes.as_object().expect("causes") {
            assert!(
                cause == "PROTECTION_VMA" || n == 0,
                "{comm}: invalidated by {cause}: {causes}"
            );
        }
        let faulted = mrs[0]["fault_pages"].as_u64().unwrap_or(0);
        let refaults_allowed = summary["totals"]["invalidations"] != 0;
        assert!(
            faulted == pages || (faulted > pages && refaults_allowed),
            "{comm}: {faulted} pages faulted for {pages}: {}",
            mrs[0]
        );
        assert_eq!(summary["source"]["drops"], 0);
    }
}

/// The requester-visible cost of a first touch: the peer drops the pages, each single-page READ
/// then waits for its device to fault the page in (a new zero page: every byte read must be
/// zero); the same pages again are warm.
#[test]
fn a_first_touch_on_the_peer_is_timed_against_a_warm_page() {
    let test = "a_first_touch_on_the_peer_is_timed_against_a_warm_page";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    let (code, report, said) = register_with(&peer, &["--size", "1M", "--touch-latency", "64"]);
    assert_eq!(code, Some(0), "{said}");
    let latency = &report["peer"]["touch_latency"];
    assert_eq!(latency["pages"], 64, "{latency}");
    let p50 = |pass: &str| latency[pass]["p50_ns"].as_u64().expect("p50");
    assert!(p50("first_touch") > 0 && p50("warm") > 0, "{latency}");
    let _ = writeln!(
        std::io::stderr(),
        "{test}: p50 first touch {} us, warm {} us",
        p50("first_touch") / 1000,
        p50("warm") / 1000
    );
    // More pages than the region: refused before anything is sent.
    let (code, _, said) = register_with(&peer, &["--size", "64K", "--touch-latency", "17"]);
    assert_eq!(code, Some(6), "{said}");
}

/// A scenario against the peer (`stress --peer`): three workers (WRITE, READ, SEND, each its
/// own range and message size) take turns in whole rounds on one connection while the peer
/// storms its region
/// with the scenario's MADV_DONTNEED; every pass's bytes are exact (or zeroed where the storm
/// dropped a page after they landed), the figures add up to whole passes, and this side's
/// probes count every retransmission the port counter counts, under the scenario's short ACK
/// timer.
#[test]
fn a_scenario_runs_against_the_peer_with_every_byte_checked() {
    let test = "a_scenario_runs_against_the_peer_with_every_byte_checked";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    let (code, report, said) = stress_against(
        &peer,
        r#"name = "across"
seed = 3
duration = "6s"

[peer]
ack_timeout = 10

[[mr]]
name = "buf"
size = "4M"

[[traffic]]
name = "writer"
mr = "buf"
op = "write"
range = "0:1M"
message = "64K"

[[traffic]]
name = "reader"
mr = "buf"
op = "read"
range = "1M:1M"
message = "16K"

[[traffic]]
name = "sender"
mr = "buf"
op = "send"
range = "2M:1M"
message = "32K"

[[invalidate]]
mr = "buf"
action = "dontneed"
rate = 500
length = "64K"
"#,
    );
    assert_eq!(code, Some(0), "{report} {said}");
    let run = &report["run"];
    assert_eq!(run["storm"]["rate"], 500, "{run}");
    let mut counts = Vec::new();
    for (w, op, message) in [
        ("writer", "write", 64 << 10),
        ("reader", "read", 16 << 10),
        ("sender", "send", 32 << 10),
    ] {
        let stats = worker(run, w);
        let n = stats["passes"].as_u64().expect("passes");
        assert!(n > 0, "{stats}");
        assert_eq!(stats["op"], op, "{stats}");
        assert_eq!(stats["mismatched_passes"], 0, "{stats}");
        assert_eq!(stats["bytes"], n * (1 << 20), "{stats}");
        assert_eq!(stats["messages"], n * (1 << 20) / message, "{stats}");
        counts.push(n);
    }
    // Whole rounds: every worker had as many passes as every other.
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "{counts:?}");
    let passes: u64 = counts.iter().sum();
    let probes = &report["peer"]["probes"];
    for loss in ["drops", "missed", "unpaired", "overflow"] {
        assert_eq!(probes[loss], 0, "{loss}: {probes}");
    }
    if report["peer"]["offer"]["odp"] != true {
        return;
    }
    let gained = &report["peer"]["port_counters"]["Ok"];
    let retries = &report["peer"]["retries"]["Ok"];
    assert_eq!(
        retries["retries"], gained["completer_retry_err"],
        "{retries} vs {gained}"
    );
    let zeroed: u64 = run["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w["zeroed_pages"].as_u64().unwrap_or(0))
        .sum();
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {passes} passes, every byte exact, {zeroed} pages zeroed by the peer's storm, \
         {} retransmissions ({} tied to the peer's faults), as the port counter counts",
        retries["retries"],
        retries["caused_by_odp_faults"]
    );
}

/// A storm that keeps contents: the peer moves pieces of its region between NUMA nodes
/// (move_pages) while the WRITEs and SENDs land, so its device's mappings are invalidated and
/// faulted back under the traffic; no page may read back as zero, every byte is exact. (The
/// pair stage's summary counts the serving side's invalidations by the migrating thread.)
#[test]
fn pages_the_peer_migrates_under_the_traffic_keep_every_byte() {
    let test = "pages_the_peer_migrates_under_the_traffic_keep_every_byte";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    let (code, report, said) = stress_against(
        &peer,
        &format!(
            "name = \"migrate-across\"\nseed = 9\nduration = \"3s\"\n\n{THREE_WORKERS_ON_2M}\n\
             [[invalidate]]\nmr = \"buf\"\naction = \"migrate\"\nrate = 200\nlength = \"64K\"\n"
        ),
    );
    assert_eq!(code, Some(0), "{report} {said}");
    let run = &report["run"];
    assert_eq!(run["storm"]["action"], "migrate", "{run}");
    let mut passes = 0;
    for w in ["writer", "reader", "sender"] {
        let stats = worker(run, w);
        let n = stats["passes"].as_u64().expect("passes");
        assert!(n > 0, "{stats}");
        assert_eq!(stats["mismatched_passes"], 0, "{stats}");
        // Migration keeps contents: a zero page would have been a mismatch, never excused.
        assert_eq!(stats["zeroed_pages"], 0, "{stats}");
        passes += n;
    }
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {passes} passes while the peer migrated its pages, every byte exact"
    );
}

/// A scenario's region of 2 MiB and its three workers, each on 512 KiB of it: WRITEs of 64 KiB,
/// READs of 16 KiB, SENDs of 32 KiB.
const THREE_WORKERS_ON_2M: &str = r#"[[mr]]
name = "buf"
size = "2M"

[[traffic]]
name = "writer"
mr = "buf"
op = "write"
range = "0:512K"
message = "64K"

[[traffic]]
name = "reader"
mr = "buf"
op = "read"
range = "512K:512K"
message = "16K"

[[traffic]]
name = "sender"
mr = "buf"
op = "send"
range = "1M:512K"
message = "32K"
"#;

/// The named worker's figures in a `stress --peer` run.
fn worker<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|s| s["worker"] == name))
        .unwrap_or_else(|| panic!("no {name}: {run}"))
}

/// `stress --peer` with a scenario's text: exit code, report, stderr.
fn stress_against(peer: &str, scenario: &str) -> (Option<i32>, Value, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scenario.toml");
    std::fs::write(&path, scenario).expect("scenario");
    let out = odp_ctl()
        .args(["--json", "stress", "--peer", peer])
        .arg(&path)
        .output()
        .expect("stress");
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Cold pages: the peer leaves half the pages under each WRITE and SEND pass never touched, so
/// the device faults each one in as the data lands; every byte is still checked where it
/// landed, and exactly half of each pass's pages were cold (none under the READs, which read
/// what the peer wrote). A pinned peer refuses it before any traffic.
#[test]
fn cold_pages_on_the_peer_are_faulted_in_as_the_data_lands() {
    let test = "cold_pages_on_the_peer_are_faulted_in_as_the_data_lands";
    let Some(peer) = peer_or_skip(test) else {
        return;
    };
    let scenario = &format!(
        "name = \"cold\"\nseed = 5\nduration = \"2s\"\n\n[peer]\ncold_pages = 0.5\n\n\
         {THREE_WORKERS_ON_2M}"
    );
    let (code, report, said) = stress_against(&peer, scenario);
    assert_eq!(code, Some(0), "{report} {said}");
    let run = &report["run"];
    assert_eq!(run["cold_pages"], 0.5, "{run}");
    let pages_per_pass = (512 << 10) / odp_core::memory::page_size() as u64;
    let mut cold_total = 0;
    for (w, cold_per_pass) in [
        ("writer", pages_per_pass / 2),
        ("reader", 0),
        ("sender", pages_per_pass / 2),
    ] {
        let stats = worker(run, w);
        let passes = stats["passes"].as_u64().expect("passes");
        assert!(passes > 0, "{stats}");
        assert_eq!(stats["mismatched_passes"], 0, "{stats}");
        assert_eq!(stats["zeroed_pages"], 0, "no storm: {stats}");
        assert_eq!(stats["cold_pages"], passes * cold_per_pass, "{stats}");
        cold_total += passes * cold_per_pass;
    }
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {cold_total} pages left cold on the peer and faulted in by its device, every \
         byte exact"
    );
    let Some(pinned) = odp_core::testing::pinned_peer_or_skip(test) else {
        return;
    };
    let (code, report, said) = stress_against(&pinned, scenario);
    assert_eq!(code, Some(6), "{report} {said}");
    let refusal = report["error"]["message"].as_str().unwrap_or_default();
    assert!(
        refusal.contains("cold pages") && refusal.contains("serves a pinned one"),
        "{report}"
    );
    assert_eq!(report["run"], Value::Null, "{report}");
}
