//! Probe sessions against real kernels: on this host (tracepoint and uprobes only) and in the VM
//! (every ODP path on rxe). They need root to load BPF and print a named skip otherwise.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpf_common::{Method, OdpEvent, Point};
use odp_core::memory::{page_size, Backing, Mapping};
use odp_core::testing::device_or_skip;
use odp_core::trace::Record;
use odp_core::traffic::verify_loopback;
use odp_core::verbs::{Access, Advice, Context, LoopbackConfig, LoopbackRc, MemoryRegion};
use odp_ebpf::{AttachPreference, Config, Delivery, Session, Status};

mod common;
use common::{odp_ctl, odp_ctl_path};

fn root_or_skip(test: &str) -> bool {
    odp_core::testing::root_or_skip(test, "loading BPF")
}

const CHILD_ENV: &str = "ODP_TRACE_CHILD";
const THREADED_CHILD_ENV: &str = "ODP_TRACE_THREADED_CHILD";

/// The three numbers a child mode finds in its environment variable; None in an ordinary run.
fn child_spec(env: &str) -> Option<[usize; 3]> {
    let spec = std::env::var(env).ok()?;
    let mut parts = spec
        .split(':')
        .map(|p| p.parse::<usize>().expect("child spec"));
    Some([(); 3].map(|_| parts.next().unwrap_or(0)))
}

/// Waits until the parent has attached its probes and writes a line.
fn wait_for_gate() {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("gate");
}

/// Maps `len` fresh bytes at `addr`, without huge pages so that each page faults on its own.
fn map_fresh_at(addr: usize, len: usize) {
    // SAFETY: a fresh private mapping at an address the parent chose; NOREPLACE refuses to
    // clobber anything already there.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p as usize, addr, "mmap at the chosen address");
    // SAFETY: the range was just mapped.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
}

/// Faults page `page` of a mapping made by map_fresh_at, exactly once.
fn touch_page(addr: usize, page: usize) {
    // SAFETY: callers pass pages inside a live mapping of this process; a volatile write
    // makes the page fault exactly once.
    unsafe { std::ptr::write_volatile((addr + page * page_size()) as *mut u8, 1) };
}

/// Child mode: waits for a line on stdin, then faults `pages` fresh pages at `addr` and calls
/// ibv_get_device_list `calls` times. A helper the tests below run in a child, not a test.
#[test]
#[ignore = "child mode: run by the tests that trace it"]
fn child_workload() {
    let Some([addr, pages, calls]) = child_spec(CHILD_ENV) else {
        return;
    };
    wait_for_gate();
    map_fresh_at(addr, pages * page_size());
    for i in 0..pages {
        touch_page(addr, i);
    }
    for _ in 0..calls {
        let _ = odp_core::verbs::list_devices();
    }
}

/// Child mode: pins itself to one CPU, waits for a line on stdin, then faults `pages` fresh
/// pages per thread at `addr` (thread i owns region i) from threads that follow each other on
/// that CPU: `sequential` threads one after the other (each may get the stack of the one before),
/// then two at once yielding after every page. Prints "region tid" for each thread.
#[test]
#[ignore = "child mode: run by the tests that trace it"]
fn threaded_child_workload() {
    let Some([addr, pages, sequential]) = child_spec(THREADED_CHILD_ENV) else {
        return;
    };
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get a valid pointer.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    wait_for_gate();
    let threads = sequential + 2;
    map_fresh_at(addr, pages * page_size() * threads);
    let fault_region = move |index: usize, yield_each: bool| {
        for i in 0..pages {
            touch_page(addr, index * pages + i);
            if yield_each {
                std::thread::yield_now();
            }
        }
        // SAFETY: gettid has no preconditions.
        (index, unsafe { libc::gettid() })
    };
    let mut owners = Vec::new();
    for index in 0..sequential {
        owners.push(
            std::thread::spawn(move || fault_region(index, false))
                .join()
                .expect("thread"),
        );
    }
    let pair: Vec<_> = (sequential..threads)
        .map(|index| std::thread::spawn(move || fault_region(index, true)))
        .collect();
    owners.extend(pair.into_iter().map(|t| t.join().expect("thread")));
    for (index, tid) in owners {
        println!("region {index} {tid}");
    }
}

/// Starts this test binary in a child mode under a probe session, releases it once the probes
/// are attached, and reads events until it exits: (child pid, events, its stdout, the session).
fn trace_child(
    mode: &str,
    env: &str,
    spec: String,
    config: impl FnOnce(u32) -> Config,
) -> (u32, Vec<OdpEvent>, String, Session) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            mode,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let child_pid = child.id();
    let config = config(child_pid);
    let session = Session::start(&config).expect("probe session");
    for p in session
        .plans()
        .iter()
        .filter(|p| config.points.as_ref().is_some_and(|s| s.contains(&p.point)))
    {
        assert_eq!(p.status, Status::Attached, "{p:?}");
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("release child");
    let mut stdout = child.stdout.take().expect("stdout");
    let stop = Arc::new(AtomicBool::new(false));
    let waiter = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut out).expect("child stdout");
            let status = child.wait();
            stop.store(true, Ordering::Relaxed);
            status.map(|s| (s, out))
        })
    };
    let mut events = Vec::new();
    session
        .run(&stop, Some(Instant::now() + Duration::from_secs(60)), |d| {
            if let Delivery::Event(e) = d {
                events.push(*e)
            }
        })
        .expect("read events");
    let (status, out) = waiter.join().expect("waiter").expect("child");
    assert!(status.success(), "child failed: {out}");
    (child_pid, events, out, session)
}

#[test]
fn page_fault_tracepoint_and_verbs_uprobe_see_exactly_what_a_child_does() {
    let test = "page_fault_tracepoint_and_verbs_uprobe_see_exactly_what_a_child_does";
    if !root_or_skip(test) {
        return;
    }
    // More than two of the BPF side's 64-fault batches, so full and partial batches are both read.
    let (pages, calls) = (150u64, 3u64);
    let addr = 0x6f00_0000_0000u64 + u64::from(std::process::id()) * 0x1000_0000;
    let (child_pid, events, _, session) = trace_child(
        "child_workload",
        CHILD_ENV,
        format!("{addr}:{pages}:{calls}"),
        |pid| Config {
            pid: Some(pid),
            points: Some(vec![Point::PageFaultUser, Point::VerbsGetDevices]),
            range: Some((addr, addr + pages * page_size() as u64)),
            ..Config::default()
        },
    );
    let records: Vec<Record> = events.iter().map(Record::from_event).collect();

    let faults: BTreeSet<u64> = records
        .iter()
        .filter(|r| r.point == "page_fault_user")
        .map(|r| r.start & !(page_size() as u64 - 1))
        .collect();
    let expected: BTreeSet<u64> = (0..pages).map(|i| addr + i * page_size() as u64).collect();
    assert_eq!(
        faults, expected,
        "one fault per touched page, nothing else in the range"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r.point == "page_fault_user")
            .count() as u64,
        pages
    );
    let verbs: Vec<&Record> = records
        .iter()
        .filter(|r| r.point == "verbs_get_devices")
        .collect();
    assert_eq!(verbs.len() as u64, calls, "{verbs:?}");
    assert!(verbs.iter().all(|r| r.method == Method::Uprobe.name()));
    // The fault program reads the task through its BTF pointer, the uprobe through helpers:
    // the same thread did both, so both must name the same process, thread, task name and address space.
    let identity = |r: &Record| (r.pid, r.tid, r.comm.to_string(), r.mm);
    let fault_identities: BTreeSet<_> = records
        .iter()
        .filter(|r| r.point == "page_fault_user")
        .map(identity)
        .collect();
    let verbs_identities: BTreeSet<_> = verbs.iter().map(|r| identity(r)).collect();
    assert_eq!(fault_identities, verbs_identities);
    assert_eq!(fault_identities.len(), 1, "{fault_identities:?}");
    assert!(fault_identities.iter().all(|(pid, tid, comm, mm)| {
        *pid == child_pid && *tid != 0 && !comm.is_empty() && *mm != 0
    }));
    assert_eq!(session.hits(Point::PageFaultUser), pages);
    // Every call the kernel counted was delivered, or is a loss counted as such: none here.
    for point in [Point::PageFaultUser, Point::VerbsGetDevices] {
        let delivered = records.iter().filter(|r| r.point == point.name()).count() as u64;
        assert_eq!(
            session.hits(point),
            delivered + session.unpaired(point),
            "{point:?}"
        );
        assert_eq!(session.unpaired(point), 0, "{point:?}");
    }
    assert_eq!(
        session.unflushed(),
        0,
        "a batched fault never reached the reader"
    );
    assert_eq!(session.drops(), 0);
    assert_eq!(session.missed(), 0, "program runs the kernel skipped");
    assert!(session.missed_per_point().iter().all(|(_, n)| *n == 0));
}

/// The fault program remembers the last faulting task per CPU; threads that take turns on one
/// CPU, and threads that may inherit the stack of one that just exited, must each still be
/// named as the thread that faulted.
#[test]
fn each_fault_is_attributed_to_the_thread_that_took_it() {
    if !root_or_skip("each_fault_is_attributed_to_the_thread_that_took_it") {
        return;
    }
    let (pages, sequential) = (40usize, 4usize);
    let region = pages * page_size();
    let addr = 0x6e00_0000_0000usize + std::process::id() as usize * 0x1000_0000;
    let end = addr + region * (sequential + 2);
    let (child_pid, events, out, session) = trace_child(
        "threaded_child_workload",
        THREADED_CHILD_ENV,
        format!("{addr}:{pages}:{sequential}"),
        |pid| Config {
            pid: Some(pid),
            points: Some(vec![Point::PageFaultUser]),
            range: Some((addr as u64, end as u64)),
            ..Config::default()
        },
    );
    let records: Vec<Record> = events.iter().map(Record::from_event).collect();
    let owner: std::collections::BTreeMap<usize, u32> = out
        .lines()
        // The harness's "test ... " may precede the first line.
        .filter_map(|l| l.split_once("region ").map(|(_, rest)| rest))
        .map(|l| {
            let (index, tid) = l.split_once(' ').expect("region line");
            (index.parse().expect("index"), tid.parse().expect("tid"))
        })
        .collect();
    assert_eq!(owner.len(), sequential + 2, "{out}");
    let mut per_region = vec![0usize; sequential + 2];
    for r in records.iter().filter(|r| r.point == "page_fault_user") {
        let index = (r.start as usize - addr) / region;
        per_region[index] += 1;
        assert_eq!(
            (r.pid, r.tid),
            (child_pid, owner[&index]),
            "fault at {:#x} (region {index}) named the wrong thread: {r:?}",
            r.start
        );
    }
    assert_eq!(per_region, vec![pages; sequential + 2]);
    assert_eq!(session.drops(), 0);
    assert_eq!(session.missed(), 0, "program runs the kernel skipped");
}

/// A point's plan in a session.
fn plan_of(session: &Session, point: Point) -> odp_ebpf::PointPlan {
    session
        .plans()
        .iter()
        .find(|x| x.point == point)
        .expect("plan")
        .clone()
}

#[test]
fn discovery_reports_a_method_or_a_reason_for_every_point() {
    if !root_or_skip("discovery_reports_a_method_or_a_reason_for_every_point") {
        return;
    }
    let session = Session::start(&Config {
        emit_events: false,
        ..Config::default()
    })
    .expect("probe session");
    let facts = session.facts();
    for plan in session.plans() {
        match &plan.status {
            Status::Attached => assert!(plan.method.is_some(), "{plan:?}"),
            Status::Skipped(reason) | Status::Failed(reason) => {
                assert!(!reason.is_empty(), "{plan:?}")
            }
            Status::Planned => panic!("left planned: {plan:?}"),
        }
    }
    let plan = |p: Point| plan_of(&session, p);
    // Both this host and the VM have the tracepoint in BTF and libibverbs installed.
    assert_eq!(plan(Point::PageFaultUser).method, Some(Method::TpBtf));
    assert_eq!(plan(Point::VerbsRegMr).status, Status::Attached);
    // Where fentry is refused (this host), mm points fall back to kprobes or say why not.
    if let Some(why) = &facts.fentry_refused {
        let p = plan(Point::InvRangeStart);
        match &p.status {
            Status::Attached => assert_eq!(p.method, Some(Method::Kprobe)),
            Status::Skipped(reason) => assert!(reason.contains(why.as_str()), "{reason} / {why}"),
            other => panic!("{other:?}"),
        }
    }
    if !facts.loaded_modules.iter().any(|m| m == "ib_core") {
        assert_eq!(
            plan(Point::MapDma).status,
            Status::Skipped("module ib_core not loaded".into())
        );
    }
    if odp_core::testing::device_required() {
        // The VM: both methods work, the guest kernel is preemptible (lazy), so kernel functions
        // go by kprobe by default and by fentry when asked; every ib_core, rxe and mm point that
        // exists is attached either way.
        assert!(facts.fentry_refused.is_none(), "{:?}", facts.fentry_refused);
        assert!(facts.kprobe_refused.is_none(), "{:?}", facts.kprobe_refused);
        assert!(facts.preemption.preemptible, "{:?}", facts.preemption);
        drop(session);
        let kernel_points = [
            Point::UmemGet,
            Point::MapDma,
            Point::UnmapDma,
            Point::UmemRelease,
            Point::InvRangeStart,
            Point::ReadBegin,
            Point::RxeInvalidate,
            Point::RxeMrInit,
            Point::RxeAdvise,
        ];
        for (preference, method) in [
            (AttachPreference::Auto, Method::Kprobe),
            (AttachPreference::Fentry, Method::Fentry),
        ] {
            // Only these: each attachment and detachment is text patching, slow under the
            // emulator, and the session above planned every point already.
            let session = Session::start(&Config {
                emit_events: false,
                attach: preference,
                points: Some(kernel_points.to_vec()),
                ..Config::default()
            })
            .expect("probe session");
            let plan = |p: Point| plan_of(&session, p);
            for p in kernel_points {
                assert_eq!(plan(p).status, Status::Attached, "{p:?}");
                assert_eq!(plan(p).method, Some(method), "{p:?} {preference:?}");
            }
        }
    }
}

#[test]
fn mlx5_probes_attach_against_the_real_module_btf() {
    let test = "mlx5_probes_attach_against_the_real_module_btf";
    if !root_or_skip(test) {
        return;
    }
    let loaded = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    if !loaded.lines().any(|l| l.starts_with("mlx5_ib ")) {
        odp_core::testing::skip(test, "mlx5_ib is not loaded");
        return;
    }
    let mlx5: Vec<Point> = Point::ALL
        .iter()
        .copied()
        .filter(|p| p.group() == bpf_common::Group::Mlx5)
        .collect();
    let session = Session::start(&Config {
        emit_events: false,
        points: Some(mlx5.clone()),
        ..Config::default()
    })
    .expect("probe session");
    let mut attached = 0;
    for plan in session.plans().iter().filter(|p| mlx5.contains(&p.point)) {
        match &plan.status {
            Status::Attached => attached += 1,
            // Only an absent (inlined) function may be skipped; nothing may fail to attach.
            Status::Skipped(reason) => assert!(reason.contains("not in this kernel"), "{plan:?}"),
            other => panic!("{plan:?}: {other:?}"),
        }
    }
    assert!(
        attached >= mlx5.len() - 2,
        "only {attached} of {} mlx5 points attached",
        mlx5.len()
    );
}

/// The whole ODP lifecycle on rxe, traced in-process: registration, prefetch, faults from RDMA
/// traffic, madvise(DONTNEED) and munmap invalidations, deregistration.
#[test]
fn odp_lifecycle_on_rxe_is_traced_with_matching_kinds_ranges_and_counts() {
    let test = "odp_lifecycle_on_rxe_is_traced_with_matching_kinds_ranges_and_counts";
    let Some(device) = device_or_skip(test) else {
        return;
    };
    if !root_or_skip(test) {
        return;
    }
    let session = Session::start(&Config {
        pid: Some(std::process::id()),
        ..Config::default()
    })
    .expect("probe session");
    let stop = Arc::new(AtomicBool::new(false));
    // (MR address, length, lkey, start of the unmapped tail), reported by the workload.
    type Facts = Option<(u64, u64, u32, u64)>;
    let facts: Arc<Mutex<Facts>> = Arc::new(Mutex::new(None));
    let workload = {
        let stop = Arc::clone(&stop);
        let facts = Arc::clone(&facts);
        std::thread::spawn(move || {
            let result = (|| -> odp_core::Result<()> {
                let ctx = Context::open(Some(&device))?;
                let pd = ctx.alloc_pd()?;
                let size = 1 << 20;
                let map = Arc::new(Mapping::new(size, Backing::Anonymous)?);
                let mr =
                    MemoryRegion::register(&pd, &map, 0, size, Access::FULL | Access::ON_DEMAND)?;
                mr.advise(Advice::PrefetchWrite, true, &[(0, 64 << 10)])?;
                let mut lb = LoopbackRc::new(&pd, &LoopbackConfig::default())?;
                let peer_map = Arc::new(Mapping::new(size, Backing::Anonymous)?);
                let peer = MemoryRegion::register(&pd, &peer_map, 0, size, Access::FULL)?;
                verify_loopback(&mut lb, &mr, &peer, 64 << 10)?;
                // Invalidate the second 256 KiB with DONTNEED, then unmap the last 64 KiB.
                map.madvise(256 << 10, 256 << 10, libc::MADV_DONTNEED, "madvise")?;
                let tail = map.addr() + (size - (64 << 10)) as u64;
                // SAFETY: test-only: unmaps the tail of our own mapping, which nothing touches
                // afterwards; Mapping's own munmap of the whole range later is harmless.
                unsafe { libc::munmap(tail as *mut libc::c_void, 64 << 10) };
                *facts.lock().expect("facts") = Some((mr.addr(), size as u64, mr.lkey(), tail));
                drop(lb);
                drop(peer);
                drop(mr);
                Ok(())
            })();
            // Give late events (rxe workers) a moment before stopping the reader.
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            result
        })
    };
    let mut events = Vec::new();
    session
        .run(
            &stop,
            Some(Instant::now() + Duration::from_secs(120)),
            |d| {
                if let Delivery::Event(e) = d {
                    events.push(*e)
                }
            },
        )
        .expect("read events");
    let records: Vec<Record> = events.iter().map(Record::from_event).collect();
    workload.join().expect("workload thread").expect("workload");
    let (addr, size, lkey, tail) = facts.lock().expect("facts").expect("workload facts");
    let end = addr + size;
    let of = |name: &str| {
        records
            .iter()
            .filter(|r| r.point == name)
            .collect::<Vec<_>>()
    };

    // Registration: the library call, then ib_core and rxe, all over exactly the buffer.
    let reg: Vec<_> = of("verbs_reg_mr")
        .into_iter()
        .filter(|r| r.start == addr)
        .collect();
    assert_eq!(reg.len(), 1, "{reg:?}");
    assert_eq!(reg[0].end, end);
    assert_eq!(reg[0].args[1], u64::from(lkey));
    assert_ne!(
        reg[0].args[0] & 0x40,
        0,
        "IBV_ACCESS_ON_DEMAND in the access flags"
    );
    let get: Vec<_> = of("umem_get")
        .into_iter()
        .filter(|r| r.start == addr && r.end == end)
        .collect();
    assert_eq!(get.len(), 1, "{:?}", of("umem_get"));
    let umem = get[0].obj;
    let mm = get[0].mm;
    assert_ne!(umem, 0);
    assert_eq!(
        of("rxe_mr_init").iter().filter(|r| r.start == addr).count(),
        1
    );

    // Prefetch: the library call and the driver's, advice PREFETCH_WRITE (1).
    let advise = of("verbs_advise");
    assert_eq!(advise.len(), 1, "{advise:?}");
    assert_eq!(advise[0].args[0], 1);
    assert_eq!(advise[0].start, addr);
    assert_eq!(of("rxe_advise").len(), 1);

    // Faults: all on this umem, inside the buffer, successful.
    let faults: Vec<_> = of("fault").into_iter().filter(|r| r.obj == umem).collect();
    assert!(!faults.is_empty());
    for f in &faults {
        assert!(f.start >= addr && f.end <= end, "{f:?}");
        assert!(f.ret.unwrap_or(-1) >= 0, "{f:?}");
    }
    let read_begins = of("read_begin")
        .into_iter()
        .filter(|r| r.obj == umem)
        .count();
    assert!(
        read_begins >= faults.len(),
        "every fault reads the notifier sequence at least once"
    );

    // DONTNEED: a CLEAR notifier range over exactly that part, delivered to rxe for this umem,
    // followed by the unmap of the device mapping.
    let dn = (addr + (256 << 10), addr + (512 << 10));
    let clear: Vec<_> = of("inv_range_start")
        .into_iter()
        .filter(|r| {
            r.mm == mm && r.event.as_deref() == Some("CLEAR") && r.start <= dn.0 && r.end >= dn.1
        })
        .collect();
    assert!(!clear.is_empty(), "{:?}", of("inv_range_start"));
    let rxe_clear: Vec<_> = of("rxe_invalidate")
        .into_iter()
        .filter(|r| {
            r.obj == umem && r.event.as_deref() == Some("CLEAR") && r.start <= dn.0 && r.end >= dn.1
        })
        .collect();
    let exact = rxe_clear.iter().filter(|r| (r.start, r.end) == dn).count();
    assert_eq!(exact, 1, "{:?}", of("rxe_invalidate"));
    // The kernel may add a CLEAR over the whole 2 MiB page-table range around it (freeing the
    // page table the zap emptied, or splitting a huge PMD): seen on 7.3, depending on layout.
    const PMD: u64 = 2 << 20;
    for r in rxe_clear.iter().filter(|r| (r.start, r.end) != dn) {
        assert!(
            r.start % PMD == 0 && r.end % PMD == 0,
            "an extra CLEAR that is not a page-table range: {r:?}"
        );
    }
    assert!(of("unmap")
        .iter()
        .any(|r| r.obj == umem && r.start <= dn.0 && r.end >= dn.1));

    // munmap: an UNMAP range over the tail, delivered to rxe.
    let unmap: Vec<_> = of("rxe_invalidate")
        .into_iter()
        .filter(|r| {
            r.obj == umem && r.event.as_deref() == Some("UNMAP") && r.start <= tail && r.end >= end
        })
        .collect();
    assert_eq!(unmap.len(), 1, "{:?}", of("rxe_invalidate"));

    // Deregistration: the library call for our lkey and the umem's release.
    assert_eq!(
        of("verbs_dereg_mr")
            .iter()
            .filter(|r| r.args[1] == u64::from(lkey))
            .count(),
        1
    );
    assert_eq!(
        of("umem_release").iter().filter(|r| r.obj == umem).count(),
        1
    );
    assert_eq!(session.drops(), 0);
}

/// A client nobody here wrote, traced end to end: ibv_rc_pingpong with ODP, with and without
/// prefetch, both sides in this VM.
#[test]
fn the_range_filter_keeps_one_mr_and_drops_the_other_in_the_kernel() {
    let test = "the_range_filter_keeps_one_mr_and_drops_the_other_in_the_kernel";
    let Some(device) = device_or_skip(test) else {
        return;
    };
    if !root_or_skip(test) {
        return;
    }
    let size = 1 << 20;
    let kept = Arc::new(Mapping::new(size, Backing::Anonymous).expect("map"));
    let other = Arc::new(Mapping::new(size, Backing::Anonymous).expect("map"));
    let (lo, hi) = (kept.addr(), kept.addr() + size as u64);
    let session = Session::start(&Config {
        pid: Some(std::process::id()),
        range: Some((lo, hi)),
        ..Config::default()
    })
    .expect("probe session");
    let stop = Arc::new(AtomicBool::new(false));
    let workload = {
        let stop = Arc::clone(&stop);
        let (kept, other) = (Arc::clone(&kept), Arc::clone(&other));
        std::thread::spawn(move || {
            let result = (|| -> odp_core::Result<()> {
                let pd = Context::open(Some(&device))?.alloc_pd()?;
                let odp = Access::FULL | Access::ON_DEMAND;
                let mut lb = LoopbackRc::new(&pd, &LoopbackConfig::default())?;
                let peer_map = Arc::new(Mapping::new(size, Backing::Anonymous)?);
                let peer = MemoryRegion::register(&pd, &peer_map, 0, size, Access::FULL)?;
                for map in [&kept, &other] {
                    let mr = MemoryRegion::register(&pd, map, 0, size, odp)?;
                    verify_loopback(&mut lb, &mr, &peer, 64 << 10)?;
                }
                Ok(())
            })();
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            result
        })
    };
    let mut events = Vec::new();
    session
        .run(
            &stop,
            Some(Instant::now() + Duration::from_secs(120)),
            |d| {
                if let Delivery::Event(e) = d {
                    events.push(*e)
                }
            },
        )
        .expect("read events");
    let records: Vec<Record> = events.iter().map(Record::from_event).collect();
    workload.join().expect("workload thread").expect("workload");
    let ranged: Vec<&Record> = records.iter().filter(|r| r.end > r.start).collect();
    for r in &ranged {
        assert!(r.start < hi && lo < r.end, "outside the filter: {r:?}");
    }
    let count = |point: &str| ranged.iter().filter(|r| r.point == point).count();
    assert_eq!(count("umem_get"), 1, "only the kept MR's registration");
    assert_eq!(
        count("verbs_reg_mr"),
        1,
        "the library call for it, not the other two"
    );
    assert!(count("fault") > 0, "its faults");
    // One invalidation may cover both MRs: the two mappings can sit side by side, and one run
    // saw a protection change (PROTECTION_VMA) over the 2 MiB block holding both. It overlaps
    // the kept MR and belongs in the trace; only what touches the other MR alone must not.
    let other_lo = other.addr();
    let touches_kept = |r: &Record| r.start < hi && lo < r.end.max(r.start + 1);
    let from_other: Vec<&Record> = records
        .iter()
        .filter(|r| r.start >= other_lo && r.start < other_lo + size as u64 && !touches_kept(r))
        .collect();
    assert!(
        from_other.is_empty(),
        "nothing from the other MR: {from_other:?}"
    );
}

#[test]
fn ibv_rc_pingpong_with_odp_is_traced_end_to_end() {
    let test = "ibv_rc_pingpong_with_odp_is_traced_end_to_end";
    let Some(device) = device_or_skip(test) else {
        return;
    };
    if !root_or_skip(test) {
        return;
    }
    for prefetch in [false, true] {
        let session = Session::start(&Config {
            comm: Some("ibv_rc_pingpong".into()),
            ..Config::default()
        })
        .expect("probe session");
        let stop = Arc::new(AtomicBool::new(false));
        let runner = {
            let stop = Arc::clone(&stop);
            let device = device.clone();
            std::thread::spawn(move || {
                let mut args = vec!["-d", device.as_str(), "-g", "1", "-o", "-n", "20"];
                if prefetch {
                    args.push("-P");
                }
                let server = Command::new("ibv_rc_pingpong")
                    .args(&args)
                    .stdout(Stdio::null())
                    .spawn();
                std::thread::sleep(Duration::from_millis(800));
                let client = Command::new("ibv_rc_pingpong")
                    .args(&args)
                    .arg("127.0.0.1")
                    .output();
                let server = server.and_then(|mut s| s.wait());
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::Relaxed);
                (server, client)
            })
        };
        let mut events = Vec::new();
        session
            .run(&stop, Some(Instant::now() + Duration::from_secs(90)), |d| {
                if let Delivery::Event(e) = d {
                    events.push(*e)
                }
            })
            .expect("read events");
        let records: Vec<Record> = events.iter().map(Record::from_event).collect();
        let (server, client) = runner.join().expect("runner");
        assert!(server.expect("server").success());
        let client = client.expect("client");
        assert!(
            client.status.success(),
            "{}",
            String::from_utf8_lossy(&client.stderr)
        );
        let count = |name: &str| records.iter().filter(|r| r.point == name).count();
        let odp_regs = records
            .iter()
            .filter(|r| r.point == "verbs_reg_mr" && r.args[0] & 0x40 != 0)
            .count();
        assert_eq!(odp_regs, 2, "one ODP MR per side (prefetch={prefetch})");
        assert_eq!(count("umem_get"), 2);
        // The registration's range is read from ibv_reg_mr_ex's struct argument (pingpong
        // registers through ibv_reg_buf_mr): it must be the range the kernel's umem got.
        for reg in records
            .iter()
            .filter(|r| r.point == "verbs_reg_mr" && r.ret == Some(0))
        {
            assert!(
                records.iter().any(|u| u.point == "umem_get"
                    && u.pid == reg.pid
                    && (u.start, u.end) == (reg.start, reg.end)),
                "verbs_reg_mr {:#x}..{:#x} of pid {} has no umem_get of the same range",
                reg.start,
                reg.end,
                reg.pid
            );
        }
        assert!(count("fault") >= 2, "faults: {}", count("fault"));
        if prefetch {
            assert_eq!(count("verbs_advise"), 2, "-P prefetches once per side");
            assert_eq!(count("rxe_advise"), 2);
        } else {
            assert_eq!(count("verbs_advise"), 0);
        }
        assert_eq!(count("umem_release"), 2);
        assert_eq!(session.drops(), 0);
    }
}

/// A quiet stream is seen while it happens, not when the trace ends: the kernel side wakes the
/// reader only for a large backlog, so the reader drains and flushes on its own every 20 ms.
/// Runs on this host too (the page-fault tracepoint).
#[test]
fn a_quiet_stream_is_printed_while_the_traced_command_still_runs() {
    if !root_or_skip("a_quiet_stream_is_printed_while_the_traced_command_still_runs") {
        return;
    }
    let bin = odp_ctl_path();
    // A few hundred faults while sh and sleep start, then three quiet seconds.
    let mut child = Command::new(bin)
        .args(["trace", "--points", "cpu", "--", "sh", "-c", "sleep 3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn odp-ctl trace");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read the first event");
    let first_seen = Instant::now();
    std::io::copy(&mut stdout, &mut std::io::sink()).expect("read the rest");
    assert!(child.wait().expect("wait").success());
    let before_the_end = first_seen.elapsed();
    assert!(first.contains("page_fault_user"), "{first}");
    assert!(
        before_the_end > Duration::from_millis(1500),
        "the first event came only {before_the_end:?} before the trace ended"
    );
}

#[test]
fn trace_exits_as_the_traced_command_did() {
    let test = "trace_exits_as_the_traced_command_did";
    if !root_or_skip(test) {
        return;
    }
    for (command, code, says) in [
        // sh, not true and false: the guest's userspace is busybox and a few packages.
        (&["sh", "-c", "exit 0"][..], 0, ""),
        (&["sh", "-c", "exit 1"], 1, "exited with status 1"),
        (&["odp-ctl-no-such-command"], 127, "exited with status 127"),
        (&["sh", "-c", "kill -SEGV $$"], 139, "killed by signal 11"),
    ] {
        let out = odp_ctl()
            .args(["trace", "--points", "verbs", "--"])
            .args(command)
            .output()
            .expect("odp-ctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{command:?}: {stderr}");
        assert!(stderr.contains(says), "{command:?}: {stderr}");
    }
}

/// Whether a process whose command line is exactly one of `lines` is alive.
fn running(lines: &[&[&str]]) -> bool {
    let wanted: Vec<Vec<u8>> = lines
        .iter()
        .map(|args| args.iter().flat_map(|a| a.bytes().chain([0])).collect())
        .collect();
    std::fs::read_dir("/proc").is_ok_and(|dir| {
        dir.filter_map(Result::ok)
            .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| wanted.contains(&c)))
    })
}

#[test]
fn a_signal_to_odp_ctl_reaches_the_traced_command_and_leaves_nothing_behind() {
    let test = "a_signal_to_odp_ctl_reaches_the_traced_command_and_leaves_nothing_behind";
    if !root_or_skip(test) {
        return;
    }
    for (command, signal, code) in [
        (&["trace", "--points", "verbs"][..], libc::SIGTERM, 143),
        (&["trace", "--points", "verbs"], libc::SIGINT, 130),
        (&["monitor", "--summary"], libc::SIGTERM, 143),
    ] {
        // A duration no other process on the machine sleeps for. The signal goes to the
        // command odp-ctl started (as with timeout --foreground), so the sleeper must be that
        // process: sleep itself, or in the guest, which has no sleep binary, busybox sh
        // running its sleep applet in place.
        let nap = format!("29.{}", std::process::id() % 1000 + code as u32);
        let script = format!("sleep {nap}");
        let sleeping: [&[&str]; 2] = [&["sleep", &nap], &["sh", "-c", &script]];
        let sleeper: Vec<&str> = if ["/usr/bin/sleep", "/bin/sleep"]
            .iter()
            .any(|p| std::path::Path::new(p).exists())
        {
            vec!["sleep", &nap]
        } else {
            vec!["sh", "-c", &script]
        };
        let mut child = odp_ctl()
            .args(command)
            .arg("--")
            .args(&sleeper)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("odp-ctl");
        // Seen once is started: a second look could meet the sleeper mid-exec, and odp-ctl
        // gone early says why. The probe session starts first: 5 s in an idle guest, and in
        // one suite run over 30 s.
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut started = false;
        while !started && Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(
                    &mut child.stderr.take().expect("stderr"),
                    &mut err,
                );
                panic!("{command:?}: odp-ctl exited ({status}) before the command ran: {err}");
            }
            started = running(&sleeping);
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(started, "{command:?}: the command never started");
        // SAFETY: signalling the odp-ctl this test started.
        unsafe { libc::kill(child.id() as i32, signal) };
        let sent = Instant::now();
        let status = child.wait().expect("wait");
        let took = sent.elapsed();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("stderr");
        assert!(took < Duration::from_secs(10), "{command:?}: took {took:?}");
        assert_eq!(status.code(), Some(code), "{command:?}: {err}");
        assert!(
            !running(&sleeping),
            "{command:?}: the command was left running"
        );
    }
}
