//! What `trace`, `monitor` and `stress` share: probe filters on the command line, and a traced
//! command that starts only once every probe is attached.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bpf_common::{Group, Point};
use odp_ebpf::Config;

use odp_core::units::{parse_range, parse_size};

/// Which activity the probes report.
#[derive(clap::Args, Clone)]
pub struct ProbeFilter {
    /// Only this process: its calls, and kernel work on its ODP memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only tasks with this command name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only ODP memory of this RDMA device (e.g. rxe0, mlx5_0).
    #[arg(long)]
    pub device: Option<String>,
    /// Only events whose address range overlaps ADDR:LEN (e.g. an MR: 0x7f3a00000000:4M);
    /// an empty range counts by its address; events without an address (library calls without
    /// one) pass.
    #[arg(long, value_name = "ADDR:LEN", value_parser = parse_range)]
    pub range: Option<(usize, usize)>,
    /// Report notifier and HMM activity of every process, not only those owning ODP memory.
    #[arg(long)]
    pub all_mms: bool,
    /// Ring buffer size (power of two).
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub ring_size: usize,
    #[command(flatten)]
    pub attach: AttachArgs,
}

/// How kernel functions are probed.
#[derive(clap::Args, Clone)]
pub struct AttachArgs {
    /// Attach kernel functions with fentry or kprobes. auto: kprobes where kernel code is
    /// preemptible (fentry programs there skip calls while one is preempted), fentry elsewhere.
    #[arg(long, value_enum, default_value_t = odp_ebpf::AttachPreference::Auto)]
    pub attach: odp_ebpf::AttachPreference,
}

impl ProbeFilter {
    /// The session config; `child` is the pid of a command run under the probes.
    pub fn config(&self, child: Option<u32>) -> anyhow::Result<Config> {
        let ring_bytes = u32::try_from(self.ring_size)
            .ok()
            .filter(|n| n.is_power_of_two() && *n >= 4096)
            .ok_or_else(|| {
                odp_core::Error::invalid("--ring-size must be a power of two >= 4K and < 4G")
            })?;
        let range = match self.range {
            Some((addr, len)) => {
                let end = addr.checked_add(len).filter(|_| len > 0).ok_or_else(|| {
                    odp_core::Error::invalid(
                        "--range must be non-empty and inside the address space",
                    )
                })?;
                Some((addr as u64, end as u64))
            }
            None => None,
        };
        for (flag, name) in [("--comm", &self.comm), ("--device", &self.device)] {
            if let Some(name) = name {
                // What the kernel side compares: 15 bytes and a NUL.
                if name.is_empty() || name.len() > 15 || name.contains('\0') {
                    return Err(odp_core::Error::invalid(format!(
                        "{flag} {name:?} must be 1 to 15 bytes long (the kernel's name length)"
                    ))
                    .into());
                }
            }
        }
        if let Some(pid) = self.pid {
            if !std::path::Path::new("/proc").join(pid.to_string()).exists() {
                return Err(
                    odp_core::Error::invalid(format!("--pid {pid}: no such process")).into(),
                );
            }
        }
        Ok(Config {
            pid: self.pid.or(child),
            comm: self.comm.clone(),
            device: self.device.clone(),
            range,
            all_mms: self.all_mms,
            ring_bytes,
            attach: self.attach.attach,
            ..Config::default()
        })
    }

    pub fn check_command(&self, command: &[String]) -> anyhow::Result<()> {
        if self.pid.is_some() && !command.is_empty() {
            return Err(
                odp_core::Error::invalid("give either --pid or a command, not both").into(),
            );
        }
        Ok(())
    }
}

/// The live screen needs a terminal: say so before anything is attached or started.
pub fn needs_a_terminal(summary: bool, what: &str) -> anyhow::Result<()> {
    if summary || std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Ok(());
    }
    Err(odp_core::Error::invalid(format!(
        "{what} needs a terminal on stdout; use --summary (with --json for a document)"
    ))
    .into())
}

/// The terminating signal that arrived last (0: none), for passing on to a traced command.
static LAST_SIGNAL: std::sync::OnceLock<Arc<std::sync::atomic::AtomicUsize>> =
    std::sync::OnceLock::new();

/// Ctrl-C, SIGTERM, SIGHUP (the terminal went away) and SIGQUIT set the returned flag instead of
/// killing the process, so probes detach and the terminal is restored on the normal path.
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let last = LAST_SIGNAL.get_or_init(Default::default);
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ] {
        signal_hook::flag::register_usize(sig, Arc::clone(last), sig as usize)?;
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// The terminating signal odp-ctl received, if any.
fn received_signal() -> Option<i32> {
    let sig = LAST_SIGNAL.get()?.load(Ordering::Relaxed);
    (sig != 0).then_some(sig as i32)
}

/// How long a traced command has to end after the signal is passed on, before it is killed.
const CHILD_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A child that waits on a pipe until the probes are attached, so none of its calls are missed.
/// Forked by hand: std's spawn waits for the child's exec, which here waits for the parent.
pub struct Gated {
    pid: libc::pid_t,
    release: Option<File>,
}

pub fn spawn_gated(command: &[String]) -> anyhow::Result<Gated> {
    use std::ffi::CString;
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| odp_core::Error::invalid("the command contains a NUL byte"))?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        anyhow::bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: after fork the child only calls async-signal-safe functions (read, close, execvp,
    // write, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        anyhow::bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; this is the child.
        unsafe {
            libc::close(write_fd);
            let mut byte = 0u8;
            if libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) != 1 {
                libc::_exit(126);
            }
            libc::close(read_fd);
            libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
            let msg = b"odp-ctl: cannot execute the traced command\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    // SAFETY: read_fd belongs to the child now; write_fd is ours and becomes a File.
    let release = unsafe {
        libc::close(read_fd);
        <File as std::os::fd::FromRawFd>::from_raw_fd(write_fd)
    };
    Ok(Gated {
        pid,
        release: Some(release),
    })
}

impl Gated {
    /// Ends a child that never got to run (the probes failed to start).
    pub fn abort(&mut self) {
        // Closing the gate without a byte makes the child exit(126) before exec.
        self.release.take();
        let mut status = 0;
        // SAFETY: waiting on our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Lets the child exec, now that the probes are in place.
    pub fn release(&mut self) -> anyhow::Result<()> {
        if let Some(mut release) = self.release.take() {
            release.write_all(&[1])?;
        }
        Ok(())
    }

    /// Ends a command still running when odp-ctl is done with it, as `timeout` and `strace` do:
    /// passes on the signal odp-ctl received (SIGTERM when it stopped for another reason, such
    /// as q or the deadline), waits CHILD_GRACE, then kills it. Returns its wait status.
    pub fn end(&self, watcher: JoinHandle<i32>) -> Option<i32> {
        if !watcher.is_finished() {
            let signal = received_signal().unwrap_or(libc::SIGTERM);
            // SAFETY: signalling our own child, which the watcher has not reaped yet.
            unsafe { libc::kill(self.pid, signal) };
            if !crate::live::finished_by(&watcher, std::time::Instant::now() + CHILD_GRACE) {
                eprintln!(
                    "odp-ctl: the traced command outlived signal {signal} by {}s; killing it",
                    CHILD_GRACE.as_secs()
                );
                // SAFETY: as above.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
        }
        watcher.join().ok()
    }

    /// A thread that reaps the child and raises `stop` when it exits; joins to its wait status.
    pub fn watch(&self, stop: &Arc<AtomicBool>) -> JoinHandle<i32> {
        let pid = self.pid;
        let stop = Arc::clone(stop);
        std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: waiting on our own child; status is a valid out-pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            stop.store(true, Ordering::Relaxed);
            status
        })
    }
}

/// Attaches the probes before the gated command may run; a command that never got to run is
/// ended if they cannot attach.
pub fn attach_before(
    gated: Option<&mut Gated>,
    config: Config,
    deadline: Option<std::time::Instant>,
) -> anyhow::Result<crate::live::Source> {
    crate::live::Source::probes(config, deadline).inspect_err(|_| {
        if let Some(g) = gated {
            g.abort();
        }
    })
}

/// The traced command failed, and odp-ctl exits as it did, as `time` and `strace` do: with its
/// exit status, 128 + N when signal N ended it, 127 when it could not be executed.
#[derive(Debug)]
pub struct ChildFailed {
    pub code: i32,
    pub how: String,
}

impl std::fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the traced command {}", self.how)
    }
}

impl std::error::Error for ChildFailed {}

/// Ok when the traced command succeeded (or is still running, or there was none); otherwise
/// says so on stderr and returns the exit code to leave with.
pub fn child_outcome(status: Option<i32>) -> anyhow::Result<()> {
    let Some(status) = status else {
        return Ok(());
    };
    let failed = if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        (code != 0).then(|| ChildFailed {
            code,
            how: format!("exited with status {code}"),
        })
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        Some(ChildFailed {
            code: 128 + signal,
            how: format!("was killed by signal {signal}"),
        })
    } else {
        None
    };
    match failed {
        Some(f) => {
            eprintln!("odp-ctl: {f}");
            Err(f.into())
        }
        None => Ok(()),
    }
}

/// The points named (each a point or a group, see `odp-ctl probes`); None when none are.
pub fn select_points(names: &[String]) -> anyhow::Result<Option<Vec<Point>>> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut points = Vec::new();
    for name in names {
        let before = points.len();
        points.extend(
            Point::ALL
                .iter()
                .copied()
                .filter(|p| p.name() == name || p.group().name() == name),
        );
        if points.len() == before {
            let known: Vec<&str> = Point::ALL.iter().map(|p| p.name()).collect();
            let groups: Vec<&str> = Group::ALL.iter().map(|g| g.name()).collect();
            return Err(odp_core::Error::invalid(format!(
                "unknown point {name:?}; points: {}; groups: {}",
                known.join(", "),
                groups.join(", ")
            ))
            .into());
        }
    }
    Ok(Some(points))
}
