//! `odp-ctl trace`: decoded probe events as lines or JSON Lines, with a closing count.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpf_common::Point;
use odp_core::trace::{monotonic_ns, Record};
use odp_ebpf::{Config, Session, Status};
use serde::Serialize;

use crate::output::Output;
use crate::units::parse_size;

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this long (e.g. 10s, 500ms, 2m); default: until Ctrl-C or the command exits.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Only this process: its calls, and kernel work on its ODP memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only tasks with this command name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only ODP memory of this RDMA device (e.g. rxe0, mlx5_0).
    #[arg(long)]
    pub device: Option<String>,
    /// Only these points (comma-separated names, see `odp-ctl probes`).
    #[arg(long, value_delimiter = ',')]
    pub points: Vec<String>,
    /// Write events here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Count in the kernel only; print the counts at the end.
    #[arg(long)]
    pub count_only: bool,
    /// Report notifier and HMM activity of every process, not only those owning ODP memory.
    #[arg(long)]
    pub all_mms: bool,
    /// Ring buffer size (power of two).
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub ring_size: usize,
    /// Run this command and trace it (implies --pid of the child); tracing ends when it exits.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {text:?}: use 10s, 500ms, 2m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit in {text:?}: use ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Serialize)]
struct Summary {
    events: u64,
    drops: u64,
    duration_s: f64,
    per_point: BTreeMap<&'static str, u64>,
    attached: usize,
    skipped: BTreeMap<&'static str, String>,
}

/// A child that waits on a pipe until the probes are attached, so none of its calls are missed.
/// Forked by hand: std's spawn waits for the child's exec, which here waits for the parent.
struct Gated {
    pid: libc::pid_t,
    release: Option<File>,
}

fn spawn_gated(command: &[String]) -> anyhow::Result<Gated> {
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
    fn abort(&mut self) {
        // Closing the gate without a byte makes the child exit(126) before exec.
        self.release.take();
        let mut status = 0;
        // SAFETY: waiting on our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}

fn select_points(names: &[String]) -> anyhow::Result<Option<Vec<Point>>> {
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
            return Err(odp_core::Error::invalid(format!(
                "unknown point {name:?}; points: {}; groups: ib_core, mm, rxe, mlx5, cpu, verbs",
                known.join(", ")
            ))
            .into());
        }
    }
    Ok(Some(points))
}

pub fn run(out: &Output, args: &Args) -> anyhow::Result<()> {
    let points = select_points(&args.points)?;
    let ring_bytes = u32::try_from(args.ring_size)
        .ok()
        .filter(|n| n.is_power_of_two() && *n >= 4096)
        .ok_or_else(|| {
            odp_core::Error::invalid("--ring-size must be a power of two >= 4K and < 4G")
        })?;
    if args.pid.is_some() && !args.command.is_empty() {
        return Err(odp_core::Error::invalid("give either --pid or a command, not both").into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let mut gated = if args.command.is_empty() {
        None
    } else {
        Some(spawn_gated(&args.command)?)
    };
    let config = Config {
        pid: args.pid.or(gated.as_ref().map(|g| g.pid as u32)),
        comm: args.comm.clone(),
        device: args.device.clone(),
        points,
        emit_events: !args.count_only,
        all_mms: args.all_mms,
        ring_bytes,
        ..Config::default()
    };
    let session = match Session::start(&config) {
        Ok(s) => s,
        Err(e) => {
            if let Some(g) = &mut gated {
                g.abort();
            }
            return Err(e.into());
        }
    };
    let mut sink: Box<dyn Write> = match &args.output {
        Some(path) => {
            Box::new(BufWriter::new(File::create(path).map_err(|e| {
                anyhow::anyhow!("cannot create {}: {e}", path.display())
            })?))
        }
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let t0 = monotonic_ns();
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    // On stderr in every mode, so scripts (and people) know the probes are live.
    eprintln!(
        "tracing {} points; Ctrl-C to stop",
        session
            .plans()
            .iter()
            .filter(|p| p.status == Status::Attached)
            .count()
    );
    // Let the child run now that every probe is in place.
    if let Some(g) = &mut gated {
        if let Some(mut release) = g.release.take() {
            release.write_all(&[1])?;
        }
    }
    let mut events = 0u64;
    let mut write_error = None;
    let watcher = gated.as_mut().map(|g| {
        let pid = g.pid;
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: waiting on our own child; status is a valid out-pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            stop.store(true, Ordering::Relaxed);
            status
        })
    });
    session.run(&stop, deadline, |e| {
        events += 1;
        let record = Record::from_event(e);
        let line = if out.json {
            serde_json::to_string(&record).unwrap_or_default()
        } else {
            record.human(t0)
        };
        if write_error.is_none() {
            if let Err(err) = writeln!(sink, "{line}") {
                write_error = Some(err);
            }
        }
    })?;
    let child_status = watcher.and_then(|w| w.join().ok());
    sink.flush()?;
    drop(sink);
    if let Some(err) = write_error {
        return Err(anyhow::anyhow!("writing events: {err}"));
    }
    let summary = Summary {
        events,
        drops: session.drops(),
        duration_s: started.elapsed().as_secs_f64(),
        per_point: Point::ALL
            .iter()
            .filter(|p| {
                session
                    .plans()
                    .iter()
                    .any(|pl| pl.point == **p && pl.status == Status::Attached)
            })
            .map(|p| (p.name(), session.hits(*p)))
            .collect(),
        attached: session
            .plans()
            .iter()
            .filter(|p| p.status == Status::Attached)
            .count(),
        skipped: session
            .plans()
            .iter()
            .filter_map(|p| match &p.status {
                Status::Skipped(r) | Status::Failed(r) if r != "not selected" => {
                    Some((p.point.name(), r.clone()))
                }
                _ => None,
            })
            .collect(),
    };
    drop(session);
    if out.json {
        let line = serde_json::to_string(&serde_json::json!({ "summary": summary }))?;
        match &args.output {
            Some(path) => {
                let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
                writeln!(f, "{line}")?;
                println!("{line}");
            }
            None => println!("{line}"),
        }
    } else {
        let counts: Vec<String> = summary
            .per_point
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| format!("{p}={n}"))
            .collect();
        eprintln!(
            "summary: {} events, {} drops in {:.1}s; calls: {}",
            summary.events,
            summary.drops,
            summary.duration_s,
            if counts.is_empty() {
                "none".into()
            } else {
                counts.join(" ")
            }
        );
    }
    if let Some(status) = child_status {
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
            eprintln!(
                "odp-ctl: traced command exited with status {}",
                libc::WEXITSTATUS(status)
            );
        }
    }
    Ok(())
}
