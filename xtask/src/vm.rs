//! The soft-RoCE test VM: a Debian kernel with rdma_rxe under QEMU/TCG.
//!
//! Layout: a tiny initramfs (busybox and the four 9p modules) mounts a read-only 9p root that
//! the host assembled from Debian packages (kernel modules, libc, kmod, iproute2, rdma-core,
//! perftest) and a writable 9p job share holding the binaries, the command, and the results.
//! A small initramfs boots in seconds under TCG; the root needs no image building at all.

use std::io::{BufRead, BufReader, Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::apt::{self, Apt, KernelAbi};

const STAGE1: &str = include_str!("../guest/stage1.sh");
const STAGE2: &str = include_str!("../guest/init.sh");
const NINEP_MODULES: &[(&str, &str)] = &[
    ("netfs", "kernel/fs/netfs/netfs.ko.xz"),
    ("9pnet", "kernel/net/9p/9pnet.ko.xz"),
    ("9pnet_virtio", "kernel/net/9p/9pnet_virtio.ko.xz"),
    ("9p", "kernel/fs/9p/9p.ko.xz"),
];

/// Where downloads and assembled roots live: outside the repository, kept across runs.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ODP_VM_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    base.join("odp-toolkit")
}

/// An assembled guest, ready to boot.
pub struct Guest {
    pub kernel: KernelAbi,
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
}

/// Options for preparing a guest.
pub struct Prepare {
    pub kernel_pin: Option<String>,
    pub refresh: bool,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed with {status}");
    }
    Ok(())
}

/// Resolves, downloads and assembles the guest (cached; a complete root is reused as is).
pub fn prepare(opts: &Prepare) -> Result<Guest> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let apt = Apt::new(&cache)?;
    apt.update(opts.refresh)?;
    let kernel = apt::choose_kernel(&apt.kernels()?, opts.kernel_pin.as_deref())?;
    let root = cache.join(format!("root-{}", kernel.abi));
    let initramfs = cache.join(format!("initramfs-{}.cpio", kernel.abi));
    let marker = root.join(".odp-complete");
    // The marker holds the package list, so adding a package reassembles cached roots.
    let contents = apt::GUEST_PACKAGES.join(" ");
    let assemble = std::fs::read_to_string(&marker).ok().as_deref() != Some(contents.as_str());
    if assemble {
        let started = Instant::now();
        eprintln!("xtask: assembling guest root for kernel {}", kernel.abi);
        let kernel_debs = apt.download_exact(&apt.kernel_packages(&kernel)?)?;
        let user_debs = apt.download_closure(apt::GUEST_PACKAGES)?;
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(&root)?;
        for deb in kernel_debs.iter().chain(&user_debs) {
            run(
                Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
                &format!("dpkg-deb -x {}", deb.display()),
            )?;
        }
        merge_usr(&root)?;
        dpkg_database(&root, kernel_debs.iter().chain(&user_debs))?;
        // busybox-static installs no applet links; programs that run `sh -c` (tmux) need one.
        let sh = root.join("usr/bin/sh");
        if !sh.exists() {
            std::os::unix::fs::symlink("busybox", sh)?;
        }
        for dir in [
            "proc", "sys", "dev", "tmp", "run", "job", "root", "mnt", "var/tmp",
        ] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        depmod(&root, &kernel.abi)?;
        std::fs::write(&marker, &contents)?;
        eprintln!(
            "xtask: guest assembled in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    // Rebuilt with its root, and whenever the stage 1 script changes, which a cached root's
    // marker cannot see.
    let stage1_copy = initramfs.with_extension("stage1.sh");
    if assemble || std::fs::read_to_string(&stage1_copy).ok().as_deref() != Some(STAGE1) {
        build_initramfs(&root, &kernel.abi, &initramfs)?;
        std::fs::write(&stage1_copy, STAGE1)?;
    }
    let vmlinuz = find_vmlinuz(&root, &kernel.abi)?;
    Ok(Guest {
        kernel,
        root,
        vmlinuz,
        initramfs,
    })
}

/// dpkg's database of the root: every package unpacked into it, as installed, so that dpkg in
/// the guest resolves a package's dependencies against what the root really has.
fn dpkg_database<'a>(root: &Path, debs: impl Iterator<Item = &'a PathBuf>) -> Result<()> {
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir))?;
    }
    let mut status = String::new();
    for deb in debs {
        let out = Command::new("dpkg-deb")
            .arg("-f")
            .arg(deb)
            .output()
            .with_context(|| format!("dpkg-deb -f {}", deb.display()))?;
        if !out.status.success() {
            bail!("dpkg-deb -f {} failed", deb.display());
        }
        let fields = String::from_utf8_lossy(&out.stdout);
        for line in fields.lines() {
            status.push_str(line);
            status.push('\n');
            if line.starts_with("Package:") {
                status.push_str("Status: install ok installed\n");
            }
        }
        status.push('\n');
    }
    std::fs::write(admin.join("status"), status)?;
    std::fs::write(admin.join("available"), "")?;
    Ok(())
}

/// Debian is merged-/usr; packages that still ship /lib or /bin paths are folded into /usr so
/// every lookup (the dynamic loader in /lib64, modules in /lib/modules) resolves.
fn merge_usr(root: &Path) -> Result<()> {
    for dir in ["bin", "sbin", "lib", "lib64"] {
        let top = root.join(dir);
        let usr = root.join("usr").join(dir);
        std::fs::create_dir_all(&usr)?;
        if top.is_symlink() {
            continue;
        }
        if top.is_dir() {
            run(
                Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", top.display()))
                    .arg(&usr),
                &format!("merging /{dir} into /usr/{dir}"),
            )?;
            std::fs::remove_dir_all(&top)?;
        }
        std::os::unix::fs::symlink(format!("usr/{dir}"), &top)?;
    }
    Ok(())
}

/// The deb ships no modules.dep; the guest's own kmod (through its own loader, so host and
/// guest kmod versions never mix) writes it.
fn depmod(root: &Path, abi: &str) -> Result<()> {
    let loader = root.join("usr/lib64/ld-linux-x86-64.so.2");
    run(
        Command::new(&loader)
            .arg("--library-path")
            .arg(root.join("usr/lib/x86_64-linux-gnu"))
            .args(["--argv0", "depmod"])
            .arg(root.join("usr/bin/kmod"))
            .arg("-b")
            .arg(root)
            .arg(abi),
        "depmod",
    )
}

fn modules_dir(root: &Path, abi: &str) -> PathBuf {
    root.join("usr/lib/modules").join(abi)
}

fn find_vmlinuz(root: &Path, abi: &str) -> Result<PathBuf> {
    for candidate in [
        modules_dir(root, abi).join("vmlinuz"),
        root.join("boot").join(format!("vmlinuz-{abi}")),
    ] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("no vmlinuz for {abi} in {}", root.display())
}

fn build_initramfs(root: &Path, abi: &str, out: &Path) -> Result<()> {
    use cpio::newc::{Builder, ModeFileType};
    let mut entries: Vec<(Builder, Cursor<Vec<u8>>)> = Vec::new();
    let dir = |name: &str| {
        (
            Builder::new(name)
                .mode(0o755)
                .set_mode_file_type(ModeFileType::Directory),
            Cursor::new(Vec::new()),
        )
    };
    for d in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        entries.push(dir(d));
    }
    entries.push((
        Builder::new("dev/console")
            .mode(0o600)
            .set_mode_file_type(ModeFileType::Char)
            .rdev_major(5)
            .rdev_minor(1),
        Cursor::new(Vec::new()),
    ));
    let busybox = std::fs::read(root.join("usr/bin/busybox")).context("reading guest busybox")?;
    entries.push((
        Builder::new("bin/busybox")
            .mode(0o755)
            .set_mode_file_type(ModeFileType::Regular),
        Cursor::new(busybox),
    ));
    entries.push((
        Builder::new("init")
            .mode(0o755)
            .set_mode_file_type(ModeFileType::Regular),
        Cursor::new(STAGE1.as_bytes().to_vec()),
    ));
    let modules = modules_dir(root, abi);
    let builtin = std::fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    for (name, rel) in NINEP_MODULES {
        let plain = rel.trim_end_matches(".xz");
        if builtin.lines().any(|l| l == plain) {
            continue;
        }
        let path = modules.join(rel);
        let out = Command::new("xz")
            .arg("-dc")
            .arg(&path)
            .output()
            .with_context(|| format!("decompressing {}", path.display()))?;
        if !out.status.success() {
            bail!("xz -dc {} failed", path.display());
        }
        entries.push((
            Builder::new(&format!("modules/{name}.ko"))
                .mode(0o644)
                .set_mode_file_type(ModeFileType::Regular),
            Cursor::new(out.stdout),
        ));
    }
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = cpio::write_cpio(entries.into_iter(), std::io::BufWriter::new(file))?;
    w.flush()?;
    Ok(())
}

/// One run of the VM.
pub struct Job {
    /// Shell commands run in the guest (busybox sh, /job/bin first on PATH).
    pub script: String,
    /// Host files copied into /job/bin.
    pub binaries: Vec<PathBuf>,
    /// Extra modules to load before the command (e.g. mlx5_ib).
    pub modules: Vec<String>,
    pub timeout: Duration,
    pub memory_mb: u32,
    pub cpus: u32,
}

/// What the guest reported.
pub struct Outcome {
    pub status: i32,
    pub output: String,
}

/// Where each job's share lives: inside the target dir, so `cargo clean` removes it.
fn numa_args(memory_mb: u32, cpus: u32) -> Vec<String> {
    let first = memory_mb / 2;
    let second = memory_mb - first;
    vec![
        "-object".into(),
        format!("memory-backend-ram,id=node0,size={first}M"),
        "-object".into(),
        format!("memory-backend-ram,id=node1,size={second}M"),
        "-numa".into(),
        format!("node,nodeid=0,memdev=node0,cpus=0-{}", cpus.max(1) - 1),
        "-numa".into(),
        "node,nodeid=1,memdev=node1".into(),
    ]
}

pub fn job_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    target.join("vm-job")
}

/// The share of guest `host` (1-based) of a pair: the first is the single guest's.
pub fn pair_job_dir(host: u8) -> PathBuf {
    match host {
        1 => job_dir(),
        n => job_dir().with_file_name(format!("vm-job-{n}")),
    }
}

/// Where guest `host` (1-based) of a pair sits on the guests' own network, 10.20.0.0/24.
pub fn pair_address(host: u8) -> String {
    format!("10.20.0.{host}")
}

/// A guest's part in a pair: which host it is and the datagram sockets its NIC sends over.
struct Link {
    host: u8,
    local: PathBuf,
    remote: PathBuf,
}

/// Boots before the guest reports ready that are retried: under multi-threaded TCG the kernel
/// occasionally oopses while patching its own text during early boot (seen on 7.3.4: int3 in
/// sched_clock_cpu at ~1.5 s), which has nothing to do with the job.
const BOOT_ATTEMPTS: u32 = 3;
const READY_MARKER: &str = "odp-vm: ready";

/// Boots the guest, runs the job, streams the console, and always ends with QEMU gone.
pub fn run_job(guest: &Guest, job: &Job) -> Result<Outcome> {
    let mut attempt = 1;
    loop {
        let dir = job_dir();
        prepare_share(job, &dir, None)?;
        let result = spawn(guest, job, &dir, None).and_then(|mut running| {
            wait_all(std::slice::from_mut(&mut running), job.timeout)?;
            running.outcome()
        });
        match result {
            Err(e) if attempt < BOOT_ATTEMPTS && !booted(&dir) => {
                eprintln!("xtask: the guest died before it was ready ({e:#}); booting again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Boots two guests joined by one Ethernet link (QEMU datagram sockets, no host network), each
/// with rxe0 on its NIC at `pair_address(host)`; runs `jobs[i]` in guest i + 1 (which sees
/// $ODP_VM_HOST and its peer's address in $ODP_VM_PEER). Both stop at the first job's timeout;
/// returns both outcomes, host 1 first.
pub fn run_pair(guest: &Guest, jobs: [&Job; 2]) -> Result<[Outcome; 2]> {
    let sockets = tempfile::Builder::new()
        .prefix("odp-vm-pair-")
        .tempdir()
        .context("a directory for the guests' link")?;
    let link = |host: u8| Link {
        host,
        local: sockets.path().join(format!("host{host}.sock")),
        remote: sockets.path().join(format!("host{}.sock", 3 - host)),
    };
    let mut attempt = 1;
    loop {
        let dirs = [pair_job_dir(1), pair_job_dir(2)];
        for (i, (job, dir)) in jobs.iter().zip(&dirs).enumerate() {
            prepare_share(job, dir, Some(&link(i as u8 + 1)))?;
        }
        let result = (|| {
            let mut running = Vec::new();
            for (i, (job, dir)) in jobs.iter().zip(&dirs).enumerate() {
                running.push(spawn(guest, job, dir, Some(&link(i as u8 + 1)))?);
            }
            wait_all(&mut running, jobs[0].timeout)?;
            let mut outcomes = running.into_iter().map(Running::outcome);
            match (outcomes.next(), outcomes.next()) {
                (Some(a), Some(b)) => Ok([a?, b?]),
                _ => bail!("two guests were started"),
            }
        })();
        match result {
            Err(e) if attempt < BOOT_ATTEMPTS && !dirs.iter().all(|d| booted(d)) => {
                eprintln!("xtask: a guest died before it was ready ({e:#}); booting both again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// How the guest died, if it was the int3 oops multi-threaded TCG causes by running code another
/// vCPU is patching (docs/FINDINGS.md #6): the oops line and where it hit. Any other oops is a
/// finding about the kernel or the toolkit, never a reason to boot again.
pub fn emulator_oops(dir: &Path) -> Option<String> {
    let console = std::fs::read_to_string(dir.join("console.log")).ok()?;
    let mut lines = console.lines().skip_while(|l| !l.contains("Oops: int3"));
    let oops = lines.next()?;
    let oops = oops.split_once("] ").map_or(oops, |(_, text)| text).trim();
    let rip = lines
        .find_map(|l| l.split_once("RIP: ").map(|(_, rip)| rip.trim()))
        .unwrap_or("unknown RIP");
    Some(format!("{oops}, RIP {rip}"))
}

fn booted(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("console.log")).is_ok_and(|c| c.contains(READY_MARKER))
}

/// A fresh job share: the binaries, the guest's init and the command.
fn prepare_share(job: &Job, dir: &Path, link: Option<&Link>) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("bin"))?;
    for bin in &job.binaries {
        let name = bin
            .file_name()
            .with_context(|| format!("bad binary path {}", bin.display()))?;
        std::fs::copy(bin, dir.join("bin").join(name))
            .with_context(|| format!("copying {} into the job share", bin.display()))?;
    }
    let mut init = String::new();
    init.push_str(&format!("ODP_VM_MODULES='{}'\n", job.modules.join(" ")));
    if let Some(link) = link {
        init.push_str(&format!(
            "ODP_VM_HOST={}\nODP_VM_ADDRESS={}\nODP_VM_PEER={}\n",
            link.host,
            pair_address(link.host),
            pair_address(3 - link.host)
        ));
    }
    init.push_str(STAGE2);
    std::fs::write(dir.join("init.sh"), init)?;
    std::fs::write(dir.join("cmd.sh"), &job.script)?;
    Ok(())
}

/// A guest booting or running: its QEMU, the thread copying its console, where its share is.
struct Running {
    child: std::process::Child,
    streamer: std::thread::JoinHandle<std::io::Result<()>>,
    dir: PathBuf,
    started: Instant,
    timed_out: Option<Duration>,
}

fn spawn(guest: &Guest, job: &Job, dir: &Path, link: Option<&Link>) -> Result<Running> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-no-reboot"])
        // Multi-threaded TCG: single-threaded TCG survives BPF attach/detach under load, which
        // this one does not (docs/FINDINGS.md #6), but halves the guest's speed, and long
        // invalidation storms then starve device faults past HMM's 1 s limit. Probes attach
        // before workloads start and detach after they stop instead.
        .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
        .args([
            "-smp",
            &job.cpus.to_string(),
            "-m",
            &format!("{}M", job.memory_mb),
        ])
        // Two NUMA nodes (the second memory-only), so page migration between nodes can be
        // provoked under the device (`stress` action "migrate").
        .args(numa_args(job.memory_mb, job.cpus))
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&guest.vmlinuz)
        .arg("-initrd")
        .arg(&guest.initramfs)
        .args([
            "-append",
            // Errors and worse on the console (a dying guest's last words); warnings, which
            // would flood it (rxe reports every port query), are read from the job's dmesg.
            "console=ttyS0 rdinit=/init panic=-1 loglevel=4 quiet log_buf_len=4M",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=root,security_model=none,readonly=on,multidevs=remap",
            guest.root.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=job,security_model=none,multidevs=remap",
            dir.display()
        ))
        // The job's binaries again, read-only so the guest may cache them: from the uncached
        // job share every exec reads the whole file over 9p (2.9 s for a debug odp-ctl
        // against 0.2 s cached, 7.3 guest under TCG), and the tests exec odp-ctl hundreds
        // of times.
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=bin,security_model=none,readonly=on,multidevs=remap",
            dir.join("bin").display()
        ));
    if let Some(link) = link {
        // Datagram sockets both ways: neither guest has to be up first, and nothing reaches
        // the host's network. Jumbo frames, so rxe's path MTU can be 4096 as on a real fabric.
        cmd.arg("-netdev")
            .arg(format!(
                "dgram,id=link,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                link.local.display(),
                link.remote.display()
            ))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=link,mac=52:54:00:20:00:{:02x},host_mtu=9000",
                link.host
            ));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let console_path = dir.join("console.log");
    // A pair's consoles interleave on the terminal: each line says whose it is.
    let prefix = link.map(|l| format!("[vm{}] ", l.host)).unwrap_or_default();
    let streamer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut log = std::fs::File::create(console_path)?;
        let out = std::io::stdout();
        for line in BufReader::new(stdout).split(b'\n') {
            let mut line = line?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            log.write_all(&line)?;
            log.write_all(b"\n")?;
            let mut out = out.lock();
            out.write_all(prefix.as_bytes())?;
            out.write_all(&line)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        Ok(())
    });
    Ok(Running {
        child,
        streamer,
        dir: dir.to_path_buf(),
        started,
        timed_out: None,
    })
}

/// Waits until every guest has powered off; at `timeout` all that are left are stopped.
fn wait_all(running: &mut [Running], timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let mut left = 0;
        for r in running.iter_mut() {
            if r.child.try_wait()?.is_none() {
                left += 1;
            }
        }
        if left == 0 {
            return Ok(());
        }
        if started.elapsed() > timeout {
            for r in running.iter_mut() {
                if r.child.try_wait()?.is_none() {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    r.timed_out = Some(timeout);
                }
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Running {
    /// What the guest reported, once it is gone: its status and output, or why there is none
    /// (a timeout, no status, problems its kernel reported).
    fn outcome(self) -> Result<Outcome> {
        let _ = self.streamer.join();
        let dir = self.dir;
        let console = dir.join("console.log");
        if let Some(timeout) = self.timed_out {
            bail!(
                "the VM did not finish within {}s and was stopped (console: {})",
                timeout.as_secs(),
                console.display()
            );
        }
        let status_text = std::fs::read_to_string(dir.join("status")).with_context(|| {
            format!(
                "the guest powered off without reporting a status (see {})",
                console.display()
            )
        })?;
        let status: i32 = status_text
            .trim()
            .parse()
            .context("parsing the guest status")?;
        let output = std::fs::read_to_string(dir.join("output.log")).unwrap_or_default();
        eprintln!(
            "xtask: VM finished in {:.1}s with status {status}",
            self.started.elapsed().as_secs_f64()
        );
        let kernel_log = std::fs::read_to_string(&console).unwrap_or_default()
            + &std::fs::read_to_string(dir.join("dmesg.log")).unwrap_or_default();
        // The console's lines are in the dmesg too: each problem once.
        let mut problems = kernel_problems(&kernel_log);
        let mut seen = std::collections::HashSet::new();
        problems.retain(|p| seen.insert(p.clone()));
        if !problems.is_empty() {
            bail!(
                "the guest kernel reported {} problem(s) (console: {}, dmesg: {}):\n  {}",
                problems.len(),
                console.display(),
                dir.join("dmesg.log").display(),
                problems.join("\n  ")
            );
        }
        Ok(Outcome { status, output })
    }
}

/// What a kernel prints when something went wrong in it, after the printk timestamp.
const KERNEL_PROBLEMS: &[&str] = &[
    "Oops",
    "BUG:",
    "WARNING:",
    "rcu: INFO:",
    "detected stalls",
    "soft lockup",
    "hard LOCKUP",
    "blocked for more than",
    "general protection fault",
    "Kernel panic",
];

/// The kernel's own reports of trouble in a console log: lines where a printk timestamp
/// (`[  123.456789] `) is followed by a message holding one of KERNEL_PROBLEMS. Test output shares the console,
/// so words alone are not enough; a kernel line can start mid-line after a test's output.
pub fn kernel_problems(console: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|line| {
            let mut rest = line;
            while let Some(open) = rest.find('[') {
                let after = &rest[open + 1..];
                let Some(close) = after.find("] ") else {
                    break;
                };
                let stamp = after[..close].trim();
                let message = &after[close + 2..];
                let is_stamp = stamp.split_once('.').is_some_and(|(s, us)| {
                    !s.is_empty()
                        && s.bytes().all(|b| b.is_ascii_digit())
                        && us.len() == 6
                        && us.bytes().all(|b| b.is_ascii_digit())
                });
                if is_stamp && KERNEL_PROBLEMS.iter().any(|p| message.contains(p)) {
                    return Some(message.trim().to_string());
                }
                rest = after;
            }
            None
        })
        .take(20)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("console.log"), text).expect("console.log");
        dir
    }

    #[test]
    fn kernel_problems_are_found_by_their_timestamp_not_by_words() {
        let log = "odp-vm: ready\n\
            test a_warning_in_a_test_name ... WARNING: not the kernel\n\
            [   12.345678] rdma_rxe: loaded\n\
            test dontneed ... [  357.935150] Oops: int3: 0000 [#1] SMP NOPTI\n\
            [   40.000001] WARNING: CPU: 1 PID: 90 at drivers/infiniband/sw/rxe/rxe_odp.c:10\n\
            [   41.000000] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n\
            [   42.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!\n\
            [   43.000000] INFO: task kworker/0:1:12 blocked for more than 120 seconds.\n";
        let found = kernel_problems(log);
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found[0].starts_with("Oops: int3"));
        assert!(found[1].starts_with("WARNING: CPU: 1"));
        assert!(found[2].starts_with("rcu: INFO:"));
        assert!(found[3].starts_with("watchdog: BUG: soft lockup"));
        assert!(found[4].starts_with("INFO: task kworker"));
        assert!(kernel_problems("[   1.000000] rdma_rxe: loaded\n").is_empty());
    }

    #[test]
    fn only_the_int3_oops_of_cross_modified_code_counts_as_the_emulators() {
        let int3 = console(
            "test dontneed_storm ... [  357.935150] Oops: int3: 0000 [#1] SMP NOPTI\n\
             [  357.940739] CPU: 0 UID: 0 PID: 0 Comm: swapper/0 Not tainted 7.3.4+deb13-amd64 #1\n\
             [  357.943597] RIP: 0010:__schedule+0x3ee/0x1080\n\
             [  357.959142] Kernel panic - not syncing: Fatal exception in interrupt\n",
        );
        assert_eq!(
            emulator_oops(int3.path()).as_deref(),
            Some("Oops: int3: 0000 [#1] SMP NOPTI, RIP 0010:__schedule+0x3ee/0x1080")
        );
        let gpf = console(
            "[  12.1] Oops: general protection fault, probably for non-canonical address\n\
             [  12.2] RIP: 0010:rxe_odp_map_range_and_lock+0x42/0x100 [rdma_rxe]\n",
        );
        assert_eq!(emulator_oops(gpf.path()), None);
        assert_eq!(emulator_oops(console("odp-vm: ready\n").path()), None);
    }
}
