//! A running probe session: the main object configured and loaded according to the plan, its
//! links attached, and a ring-buffer reader. Dropping the session detaches every link and closes
//! the object.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bpf_common::{Method, OdpEvent, Point, Uprobe};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, Object, RingBufferBuilder, UprobeOpts};

use crate::discovery::{short_error, KernelFacts, PointPlan, Status};
use crate::skel::{OdpSkel, OdpSkelBuilder, OpenOdpSkel};
use crate::{Error, ObjectRoom, Result};

/// What to trace and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// Only this process (tgid): its own calls, and kernel work on its ODP memory.
    pub pid: Option<u32>,
    /// Only tasks with this command name (at most 15 bytes).
    pub comm: Option<String>,
    /// Only ODP memory of this RDMA device (its umems, faults, invalidations and address spaces).
    pub device: Option<String>,
    /// Points to use (None: all but those attached on request only).
    pub points: Option<Vec<Point>>,
    /// false: count calls per point in the kernel without streaming events.
    pub emit_events: bool,
    /// Report notifier/HMM activity of every address space, not only those owning ODP memory.
    pub all_mms: bool,
    /// Only events whose address range overlaps [start, end) (events without a range pass). In
    /// count-only mode this limits CPU page faults only: other calls are counted before their
    /// range is known.
    pub range: Option<(u64, u64)>,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// libibverbs to uprobe (default: where the dynamic loader would find it).
    pub libibverbs: Option<PathBuf>,
    /// fentry or kprobes for kernel functions, where both work.
    pub attach: crate::AttachPreference,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pid: None,
            comm: None,
            device: None,
            points: None,
            emit_events: true,
            all_mms: false,
            range: None,
            ring_bytes: 8 << 20,
            libibverbs: None,
            attach: crate::AttachPreference::Auto,
        }
    }
}

/// How often the reader drains the ring buffer without a wake-up: the kernel side wakes it only
/// for a backlog of an eighth of the buffer, so this bounds how stale a quiet stream gets.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Longer than the BPF side's CPU_FAULT_FLUSH_NS (10 ms), after which a partial batch of CPU
/// faults is in the ring: how long the last drain waits for the batches to empty.
const CPU_FAULT_FLUSH: Duration = Duration::from_millis(25);

/// What `Session::run` hands its callback.
pub enum Delivery<'a> {
    Event(&'a OdpEvent),
    /// The ring buffer was just drained (at least every POLL_INTERVAL while running): the
    /// moment to flush buffered output, so a quiet stream is seen live.
    Drained,
}

pub struct Session {
    // Dropped in this order: links detach before the programs go, and the skeleton goes before
    // the room its object lives in.
    /// Each point's links; the CPU-fault ones are taken off early, at the end of `run`.
    links: std::cell::RefCell<Vec<(Point, Link)>>,
    skel: OdpSkel<'static>,
    _room: ObjectRoom,
    unflushed: std::cell::Cell<u64>,
    plans: Vec<PointPlan>,
    facts: KernelFacts,
}

impl Drop for Session {
    fn drop(&mut self) {
        detach_concurrently(
            self.links
                .get_mut()
                .drain(..)
                .map(|(_, link)| link)
                .collect(),
        );
    }
}

/// At most this many threads detach links at once.
const DETACHERS: usize = 64;

/// Drops `links`, many at a time: each kprobe's or trampoline's removal waits out an RCU grace
/// period of its own, outside the kernel's locks, so concurrent removals share their waits
/// (29 points' links in the 7.3 guest under TCG: 4.3 s one by one, 2.4 s on 8 threads, 1.7 to
/// 2.2 s on one thread each).
fn detach_concurrently(mut links: Vec<Link>) {
    let per_thread = links.len().div_ceil(DETACHERS).max(1);
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let batch: Vec<Link> = links.drain(..per_thread.min(links.len())).collect();
            // A thread that cannot be spawned drops its batch (detaching it) right here.
            let _detaching = std::thread::Builder::new().spawn_scoped(scope, move || drop(batch));
        }
    });
}

fn prog_names(point: Point, method: Method) -> Vec<String> {
    let t = point.target();
    match method {
        Method::Fentry => vec![format!("fentry_{t}"), format!("fexit_{t}")],
        Method::Kprobe => vec![format!("kprobe_{t}"), format!("kretprobe_{t}")],
        Method::TpBtf => vec!["tp_btf_page_fault_user".into()],
        Method::Tracepoint => vec!["tracepoint_page_fault_user".into()],
        Method::Uprobe => point
            .row()
            .uprobes
            .iter()
            .flat_map(|u| std::iter::once(u.entry.to_string()).chain(u.exit.map(String::from)))
            .collect(),
    }
}

impl Session {
    /// Discovers, plans, loads and attaches. Points that cannot be attached are reported in
    /// `plans()` with the reason; the session fails only when nothing can run at all.
    pub fn start(config: &Config) -> Result<Self> {
        if !crate::is_root() {
            return Err(Error::NotRoot);
        }
        let facts = KernelFacts::gather();
        let selection = config.points.clone();
        let mut plans = facts.plan(
            &|p| match &selection {
                None => !p.on_request(),
                Some(s) => s.contains(&p),
            },
            config.attach,
        );
        let (skel, room) = match load(config, &plans) {
            Ok(loaded) => loaded,
            Err(LoadError::Config(e)) => return Err(e),
            Err(LoadError::Refused(first)) => {
                // One program the plan thought loadable was refused. Retry without fentry, which
                // is where kernels differ most; report the original error if that fails too.
                let mut fallback = plans.clone();
                for plan in &mut fallback {
                    if plan.method == Some(Method::Fentry) {
                        plan.method = facts.kprobe_refused.is_none().then_some(Method::Kprobe);
                        if plan.method.is_none() {
                            plan.status = Status::Skipped(format!("fentry load failed: {first}"));
                        }
                    }
                }
                let loaded = load(config, &fallback).map_err(|_| Error::Load(first))?;
                plans = fallback;
                loaded
            }
        };
        let mut session = Session {
            links: std::cell::RefCell::new(Vec::new()),
            skel,
            _room: room,
            unflushed: std::cell::Cell::new(0),
            plans,
            facts,
        };
        session.attach_all(config);
        if !session.plans.iter().any(|p| p.status == Status::Attached) {
            return Err(Error::NothingAttached(session.summary_of_failures()));
        }
        Ok(session)
    }

    fn summary_of_failures(&self) -> String {
        self.plans
            .iter()
            .filter_map(|p| match &p.status {
                Status::Failed(r) | Status::Skipped(r) if r != "not selected" => {
                    Some(format!("{}: {r}", p.point.name()))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn attach_all(&mut self, config: &Config) {
        let libibverbs = config
            .libibverbs
            .clone()
            .or_else(|| self.facts.libibverbs.clone());
        for plan in &mut self.plans {
            let (Some(method), Status::Planned) = (plan.method, &plan.status) else {
                continue;
            };
            let symbol = plan.symbol.clone().unwrap_or_default();
            let mut links = Vec::new();
            let mut failure = None;
            if method == Method::Uprobe {
                match &libibverbs {
                    Some(path) => {
                        match attach_library_point(self.skel.object(), plan.point, path) {
                            Ok((mut l, attached)) => {
                                links.append(&mut l);
                                plan.symbol = Some(attached.join(","));
                            }
                            Err(e) => failure = Some(format!("uprobe attach: {e}")),
                        }
                    }
                    None => failure = Some("libibverbs.so.1 not found".into()),
                }
            }
            let names = if method == Method::Uprobe {
                Vec::new()
            } else {
                prog_names(plan.point, method)
            };
            for (i, name) in names.iter().enumerate() {
                let Some(prog) = self
                    .skel
                    .object()
                    .progs_mut()
                    .find(|p| p.name() == name.as_str())
                else {
                    failure = Some(format!("program {name} missing from the object"));
                    break;
                };
                let result: std::result::Result<Link, String> = match method {
                    Method::Fentry | Method::TpBtf => with_log(|| prog.attach()),
                    Method::Kprobe => with_log(|| prog.attach_kprobe(i == 1, &symbol)),
                    Method::Tracepoint => with_log(|| {
                        prog.attach_tracepoint(
                            libbpf_rs::TracepointCategory::Custom("exceptions".into()),
                            "page_fault_user",
                        )
                    }),
                    Method::Uprobe => continue,
                };
                match result {
                    Ok(link) => links.push(link),
                    Err(e) => {
                        failure = Some(format!("{} attach: {e}", method.name()));
                        break;
                    }
                }
            }
            match failure {
                None => {
                    plan.status = Status::Attached;
                    self.links
                        .get_mut()
                        .extend(links.into_iter().map(|l| (plan.point, l)));
                }
                // Partial attachments of this point drop (detach) here.
                Some(reason) => plan.status = Status::Failed(reason),
            }
        }
    }

    pub fn plans(&self) -> &[PointPlan] {
        &self.plans
    }

    pub fn facts(&self) -> &KernelFacts {
        &self.facts
    }

    /// Reads events until `stop` is set or `deadline` passes, calling `on_event` for each.
    /// The kernel side never waits on this reader: when it falls behind, events are dropped
    /// and counted (see `drops`).
    pub fn run(
        &self,
        stop: &AtomicBool,
        deadline: Option<Instant>,
        on_delivery: impl FnMut(Delivery<'_>),
    ) -> Result<()> {
        // Shared by the ring buffer's callback and the drained notice after each drain.
        let on_delivery = std::cell::RefCell::new(on_delivery);
        let drained = || (on_delivery.borrow_mut())(Delivery::Drained);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&self.skel.maps.events, |data: &[u8]| {
                for e in OdpEvent::records(data) {
                    (on_delivery.borrow_mut())(Delivery::Event(&e));
                }
                0
            })
            .map_err(|e| Error::bpf("ring buffer reader", e))?;
        let ring = builder
            .build()
            .map_err(|e| Error::bpf("ring buffer reader", e))?;
        while !stop.load(Ordering::Relaxed) {
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    left.min(POLL_INTERVAL)
                }
                None => POLL_INTERVAL,
            };
            match ring.poll(wait) {
                Ok(()) => {}
                // A signal interrupted the wait: loop and look at `stop`.
                Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::bpf("polling the ring buffer", e)),
            }
            // poll consumes only after a wake-up, and the kernel side wakes this reader only
            // for a large backlog: without this, a quiet stream would wait for the session's
            // end to be seen.
            ring.consume()
                .map_err(|e| Error::bpf("reading the ring buffer", e))?;
            drained();
        }
        // Whatever arrived before the stop is still delivered, including the CPU faults still
        // in a per-CPU batch.
        self.flush_cpu_faults();
        ring.consume()
            .map_err(|e| Error::bpf("reading the ring buffer", e))?;
        drained();
        Ok(())
    }

    /// Detaches the CPU-fault program, then waits until every CPU's batch is empty: each
    /// batch's timer writes it out within CPU_FAULT_FLUSH_NS, and with the program gone no new
    /// record can come. Records still pending after CPU_FAULT_FLUSH are counted as lost.
    fn flush_cpu_faults(&self) {
        let batched = self.plans.iter().any(|p| {
            p.point == Point::PageFaultUser
                && p.method == Some(Method::TpBtf)
                && p.status == Status::Attached
        });
        if !batched {
            return;
        }
        self.links
            .borrow_mut()
            .retain(|(point, _)| *point != Point::PageFaultUser);
        let deadline = Instant::now() + CPU_FAULT_FLUSH;
        loop {
            let pending = self.pending_cpu_faults();
            if pending == 0 || Instant::now() >= deadline {
                self.unflushed.set(pending);
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// CPU-fault records waiting in the per-CPU batches.
    fn pending_cpu_faults(&self) -> u64 {
        let map = &self.skel.maps.cpu_fault_batches;
        let n_at = std::mem::offset_of!(crate::skel::types::cpu_fault_batch, n);
        let cpus = libbpf_rs::num_possible_cpus().unwrap_or(0) as u32;
        (0..cpus)
            .filter_map(|cpu| {
                map.lookup(&cpu.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
                    .ok()
                    .flatten()
            })
            .filter_map(|value| {
                let bytes = value.get(n_at..n_at + 4)?;
                Some(u64::from(u32::from_ne_bytes(bytes.try_into().ok()?)))
            })
            .sum()
    }

    /// CPU-fault records that were still in a batch when the session stopped reading: lost.
    pub fn unflushed(&self) -> u64 {
        self.unflushed.get()
    }

    fn percpu_sum(map: &libbpf_rs::MapMut<'_>, key: u32) -> u64 {
        map.lookup_percpu(&key.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .ok()
            .flatten()
            .map(|cpus| {
                cpus.iter()
                    .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                    .map(u64::from_ne_bytes)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Calls counted in the kernel for a point (whether or not events were streamed).
    pub fn hits(&self, point: Point) -> u64 {
        Self::percpu_sum(&self.skel.maps.hits, point as u32)
    }

    /// Calls of a point that went unreported because their entry could not be recorded (the
    /// in-flight map was full).
    pub fn unpaired(&self, point: Point) -> u64 {
        Self::percpu_sum(&self.skel.maps.unpaired, point as u32)
    }

    /// Events lost because the ring buffer was full.
    /// Events lost to a full ring buffer so far; a plain memory read of the object's .bss, no
    /// syscall (see `ring_drops` in odp.bpf.c for why that matters).
    pub fn drops(&self) -> u64 {
        let Some(bss) = self.skel.maps.bss_data.as_deref() else {
            return 0;
        };
        let counter: *const u64 = &bss.ring_drops;
        // SAFETY: the pointer is to an aligned u64 in the .bss mapping, which lives as long as
        // the skeleton borrowed here; the BPF side changes it only with atomic adds, so reading
        // it as an atomic is sound and sees a whole value.
        unsafe { (*counter.cast::<std::sync::atomic::AtomicU64>()).load(Ordering::Relaxed) }
    }

    /// Program runs the kernel skipped, per attached point: a program does not run again on a
    /// CPU where it is already running, and fentry/fexit programs can be preempted, so a call
    /// that comes while another task is preempted inside the same program on that CPU is never
    /// seen. A point counts the skips of all its programs (entry and exit), and, attached as
    /// kprobes, the hits its probes missed.
    pub fn missed_per_point(&self) -> Vec<(Point, u64)> {
        self.plans
            .iter()
            .filter(|p| p.status == Status::Attached)
            .filter_map(|p| Some((p.point, prog_names(p.point, p.method?))))
            .map(|(point, names)| {
                let skipped_runs: u64 = self
                    .skel
                    .object()
                    .progs()
                    .filter(|prog| names.iter().any(|n| prog.name() == n.as_str()))
                    .map(|prog| recursion_misses(prog.as_fd().as_raw_fd()))
                    .sum();
                let kprobe_misses: u64 = self
                    .links
                    .borrow()
                    .iter()
                    .filter(|(p, _)| *p == point)
                    .map(|(_, link)| kprobe_misses(link.as_fd().as_raw_fd()))
                    .sum();
                (point, skipped_runs + kprobe_misses)
            })
            .collect()
    }

    /// Program runs the kernel skipped, over every point.
    pub fn missed(&self) -> u64 {
        self.missed_per_point().iter().map(|(_, n)| n).sum()
    }
}

/// Hits a kprobe or kretprobe link did not deliver (the kernel's per-probe nmissed: a probe
/// hit while another ran on its CPU, a kretprobe out of instances); 0 for other links, and on
/// kernels before 6.7, which do not report it.
fn kprobe_misses(fd: std::os::fd::RawFd) -> u64 {
    // SAFETY: bpf_link_info is plain old data; all zeroes is a valid value.
    let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: the fd is a live link's, and info/len describe a writable bpf_link_info of
    // exactly that size (the kernel writes at most len bytes).
    let rc = unsafe { libbpf_sys::bpf_link_get_info_by_fd(fd, &mut info, &mut len) };
    if rc != 0 || info.type_ != libbpf_sys::BPF_LINK_TYPE_PERF_EVENT {
        return 0;
    }
    // SAFETY: the kernel said this is a perf-event link, whose arm of the union it filled.
    let perf = unsafe { info.__bindgen_anon_1.perf_event };
    let kprobe = matches!(
        perf.type_,
        libbpf_sys::BPF_PERF_EVENT_KPROBE | libbpf_sys::BPF_PERF_EVENT_KRETPROBE
    );
    if !kprobe {
        return 0;
    }
    // SAFETY: for a kprobe perf event the kernel fills the kprobe arm.
    unsafe { perf.__bindgen_anon_1.kprobe.missed }
}

/// How many runs of a loaded program the kernel skipped (bpf_prog_info.recursion_misses).
fn recursion_misses(fd: std::os::fd::RawFd) -> u64 {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: the fd is a loaded program's, and info/len describe a writable bpf_prog_info of
    // exactly that size (the kernel writes at most len bytes).
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    if rc == 0 {
        info.recursion_misses
    } else {
        0
    }
}

/// Attaches every function behind a library point; symbols this libibverbs lacks are passed
/// over, and the point fails only if none attached.
fn attach_library_point(
    object: &Object,
    point: Point,
    path: &std::path::Path,
) -> std::result::Result<(Vec<Link>, Vec<String>), String> {
    let mut links = Vec::new();
    let mut attached = Vec::new();
    let mut errors = Vec::new();
    for &Uprobe {
        entry,
        exit,
        symbol,
    } in point.row().uprobes
    {
        let find = |name: &str| object.progs_mut().find(|p| p.name() == name);
        let Some(entry_prog) = find(entry) else {
            errors.push(format!("program {entry} missing"));
            continue;
        };
        let entry_link = match attach_uprobe(&entry_prog, path, symbol, false) {
            Ok(link) => link,
            Err(e) => {
                errors.push(format!("{symbol}: {e}"));
                continue;
            }
        };
        if let Some(exit) = exit {
            let Some(exit_prog) = find(exit) else {
                errors.push(format!("program {exit} missing"));
                continue;
            };
            match attach_uprobe(&exit_prog, path, symbol, true) {
                Ok(link) => links.push(link),
                Err(e) => {
                    errors.push(format!("{symbol}: {e}"));
                    continue;
                }
            }
        }
        links.push(entry_link);
        attached.push((*symbol).to_string());
    }
    if links.is_empty() {
        Err(errors.join("; "))
    } else {
        Ok((links, attached))
    }
}

fn with_log(f: impl FnOnce() -> libbpf_rs::Result<Link>) -> std::result::Result<Link, String> {
    crate::quiet_libbpf_result(|| f().map_err(|e| short_error(&e)))
}

/// libibverbs exports some functions in two versions (e.g. `ibv_dereg_mr@IBVERBS_1.0` and
/// `@@IBVERBS_1.1`); a plain name is then ambiguous, so the default versions are tried next.
fn attach_uprobe(
    prog: &libbpf_rs::ProgramMut<'_>,
    path: &std::path::Path,
    symbol: &str,
    retprobe: bool,
) -> std::result::Result<Link, String> {
    let mut first_error = None;
    for name in [
        symbol.to_string(),
        format!("{symbol}@@IBVERBS_1.1"),
        format!("{symbol}@@IBVERBS_1.0"),
    ] {
        let attempt = with_log(|| {
            // Every process (-1), never one pid: a perf event bound to a task switches on the
            // scheduler's perf hook (perf_sched_events), whose code patching in __schedule, on
            // attach and again a second after detach, is what multi-threaded TCG guests oops
            // on (docs/FINDINGS.md #6). The programs filter by pid themselves (filter_tgid).
            prog.attach_uprobe_with_opts(
                -1,
                path,
                0,
                UprobeOpts {
                    retprobe,
                    func_name: Some(name.clone()),
                    ..UprobeOpts::default()
                },
            )
        });
        match attempt {
            Ok(link) => return Ok(link),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// Sizes the maps and writes the filters into the typed read-only config, before load.
fn configure(open: &mut OpenOdpSkel<'_>, config: &Config) -> Result<()> {
    open.maps
        .events
        .set_max_entries(config.ring_bytes)
        .map_err(|e| Error::bpf("ring buffer size", e))?;
    let cpus = libbpf_rs::num_possible_cpus().map_err(|e| Error::bpf("possible CPUs", e))?;
    let cpus = u32::try_from(cpus).map_err(|_| Error::InvalidConfig("too many CPUs".into()))?;
    open.maps
        .cpu_fault_batches
        .set_max_entries(cpus)
        .map_err(|e| Error::bpf("CPU fault batches", e))?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| Error::InvalidConfig("the object has no .rodata section".into()))?;
    ro.filter_tgid = config.pid.unwrap_or(0);
    if let Some(comm) = &config.comm {
        ro.filter_comm = c_name(comm, "--comm", "the kernel's 15-byte task name")?;
        ro.filter_comm_set = true;
    }
    if let Some(device) = &config.device {
        ro.filter_device = c_name(device, "--device", "the 15 bytes the probes compare")?;
        ro.filter_device_set = true;
    }
    ro.emit_events = config.emit_events;
    ro.wakeup_bytes = u64::from(config.ring_bytes / 8);
    ro.all_mms = config.all_mms;
    if let Some((lo, hi)) = config.range {
        ro.range_lo = lo;
        ro.range_hi = hi;
    }
    Ok(())
}

/// A NUL-terminated 16-byte name for an in-kernel string filter.
fn c_name(name: &str, flag: &str, limit: &str) -> Result<[i8; 16]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 15 || bytes.contains(&0) {
        return Err(Error::InvalidConfig(format!(
            "{flag} {name:?} must be 1 to 15 bytes long ({limit})"
        )));
    }
    let mut out = [0i8; 16];
    for (dst, src) in out.iter_mut().zip(bytes) {
        *dst = *src as i8;
    }
    Ok(out)
}

enum LoadError {
    /// The configuration cannot be written (a bad filter): no retry helps.
    Config(Error),
    /// The kernel refused the object, with libbpf's last words.
    Refused(String),
}

/// Opens the skeleton, configures it, keeps only the planned programs, and loads.
fn load(
    config: &Config,
    plans: &[PointPlan],
) -> std::result::Result<(OdpSkel<'static>, ObjectRoom), LoadError> {
    let (room, storage) = ObjectRoom::new();
    let mut open = crate::quiet_libbpf(|| OdpSkelBuilder::default().open(storage))
        .map_err(|e| LoadError::Refused(format!("open: {}", short_error(&e))))?;
    configure(&mut open, config).map_err(LoadError::Config)?;
    let mut keep: Vec<String> = Vec::new();
    for plan in plans {
        if let (Some(method), Status::Planned) = (plan.method, &plan.status) {
            keep.extend(prog_names(plan.point, method));
        }
    }
    for mut prog in open.open_object_mut().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        prog.set_autoload(keep.contains(&name));
    }
    let skel = crate::quiet_libbpf_result(|| {
        open.load()
            .map_err(|e| format!("load: {}", short_error(&e)))
    })
    .map_err(LoadError::Refused)?;
    Ok((skel, room))
}
