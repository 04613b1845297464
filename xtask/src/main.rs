//! Build, the soft-RoCE test VM, and the test and demo drivers (`cargo xtask ...`).
//!
//! Owns: host prerequisites, the guest (Debian kernel + rdma-core under QEMU), and the order in
//! which host and VM tests run. Must not: contain toolkit logic; it only builds and runs it.

mod apt;
mod bench;
mod drive;
mod host;
mod package;
mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "odp-toolkit developer tasks: VM, demo, tests")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the host packages the build, VM and tests need (as root).
    Setup,
    /// The main job: boot the soft-RoCE VM and show ODP registered, prefetched and exercised.
    Demo {
        #[command(flatten)]
        opts: VmOpts,
    },
    /// Run every test: host tests, then the device tests on rxe in the VM.
    Test {
        /// Only the host tests.
        #[arg(long, conflicts_with = "vm_only")]
        host_only: bool,
        /// Only the VM tests.
        #[arg(long)]
        vm_only: bool,
        /// Only tests whose name contains this.
        filter: Option<String>,
        #[command(flatten)]
        opts: VmOpts,
    },
    /// Build the Debian package of odp-ctl (release build; man pages, completions, the
    /// exporter's systemd unit, the Grafana dashboard) into target/debian.
    Package,
    /// Benchmarks for BENCHMARKS.md (not tests).
    Bench {
        #[command(subcommand)]
        command: BenchCmd,
    },
    /// The soft-RoCE VM.
    Vm {
        #[command(subcommand)]
        command: VmCmd,
    },
}

#[derive(Args, Clone)]
pub struct VmOpts {
    /// Kernel to boot: an ABI name (7.3.4+deb13-amd64) or a version prefix (7.2); default: the
    /// newest >= 6.17 in Debian sid / trixie-backports.
    #[arg(long)]
    kernel: Option<String>,
    /// Refresh the Debian package lists even if recent.
    #[arg(long)]
    refresh: bool,
    /// Stop the VM after this many seconds. The whole VM test stage runs in one boot and took
    /// 8.5 min on this 2-vCPU host on 2026-12-03, 18-29 min before its probe sessions were made
    /// faster (TCG speed follows the host's load).
    #[arg(long, default_value_t = 2400)]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 4096)]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Extra kernel modules to load in the guest (e.g. mlx5_ib).
    #[arg(long = "module")]
    modules: Vec<String>,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Host probe overhead on a page-faulting process: untraced vs counting vs streaming vs
    /// bpftrace, interleaved, medians. Many short rounds pair better on a noisy host than a few
    /// long ones.
    Probes {
        #[arg(long, default_value_t = 21)]
        rounds: usize,
        #[arg(long, default_value_t = 65536)]
        pages: usize,
        #[arg(long, default_value_t = 4)]
        loops: usize,
    },
    /// The monitor: engine events/s, `--replay --summary` events/s, TUI CPU under a paced stream.
    Monitor {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Events per second for the TUI run.
        #[arg(long, default_value_t = 100_000.0)]
        rate: f64,
    },
    /// The exporter: memory over a long replay of MR and process churn (RSS at 10%, 50% and
    /// 100%), and its CPU at a steady event rate with a scrape each second.
    Exporter {
        /// Events in the memory run (copies of the committed capture).
        #[arg(long, default_value_t = 50_000_000)]
        events: usize,
        /// Events per second in the CPU run.
        #[arg(long, default_value_t = 100_000.0)]
        rate: f64,
        /// Seconds measured in the CPU run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// The Perfetto export: events/s and bytes per event over 4 million events, beside
    /// `monitor --summary --replay` of the same file.
    Export {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The stress engine in the VM: action generator vs a bare madvise loop, throughput with
    /// and without probes.
    VmStress {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        #[command(flatten)]
        opts: VmOpts,
    },
    /// Cross-host throughput in two linked guests: register --peer against odp-ctl serve,
    /// ODP on both sides vs pinned on both, rounds interleaved, medians.
    VmPeer {
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Bytes moved per operation and round.
        #[arg(long, default_value = "16M")]
        size: String,
        #[arg(long, default_value = "64K")]
        message_size: String,
        #[command(flatten)]
        opts: VmOpts,
    },
    /// Loopback RDMA throughput on an ODP MR in the VM: full probe set by fentry, by kprobes, off.
    VmProbes {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[command(flatten)]
        opts: VmOpts,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    /// Download and assemble the guest; print what will boot.
    Prepare {
        #[command(flatten)]
        opts: VmOpts,
    },
    /// Boot the guest and run a shell command in it; exits with the command's status.
    Run {
        #[command(flatten)]
        opts: VmOpts,
        /// Host binaries to put on the guest's PATH (/job/bin).
        #[arg(long = "bin")]
        binaries: Vec<PathBuf>,
        /// Guests to boot: 2 links two by an Ethernet of their own (rxe0 on eth0, 10.20.0.1
        /// and .2; $ODP_VM_HOST says which one a command runs in, $ODP_VM_PEER the other's
        /// address). The command runs in each; the status is the first nonzero one.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        hosts: u8,
        /// The command (busybox sh syntax).
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn prepare(opts: &VmOpts) -> Result<vm::Guest> {
    host::ensure()?;
    vm::prepare(&vm::Prepare {
        kernel_pin: opts.kernel.clone(),
        refresh: opts.refresh,
    })
}

pub fn job(opts: &VmOpts, script: String, binaries: Vec<PathBuf>) -> vm::Job {
    vm::Job {
        script,
        binaries,
        modules: opts.modules.clone(),
        timeout: Duration::from_secs(opts.timeout),
        memory_mb: opts.memory,
        cpus: opts.cpus,
    }
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup => host::ensure(),
        Cmd::Demo { opts } => drive::demo(&opts),
        Cmd::Test {
            host_only,
            vm_only,
            filter,
            opts,
        } => drive::test(&drive::TestOpts {
            host: !vm_only,
            vm: !host_only,
            vm_opts: opts,
            filter,
        }),
        Cmd::Package => {
            host::ensure()?;
            bench::cargo_build_release(&["-p", "odp-ctl"])?;
            let binary = workspace_root().join("target/release/odp-ctl");
            println!("{}", package::build(&binary)?.display());
            Ok(())
        }
        Cmd::Bench { command } => match command {
            BenchCmd::Probes {
                rounds,
                pages,
                loops,
            } => bench::probes(rounds, pages, loops),
            BenchCmd::Monitor { rounds, rate } => bench::monitor(rounds, rate),
            BenchCmd::Exporter {
                events,
                rate,
                seconds,
            } => bench::exporter(events, rate, seconds),
            BenchCmd::Export { rounds } => bench::export(rounds),
            BenchCmd::VmProbes { rounds, opts } => bench::vm_probes(&opts, rounds),
            BenchCmd::VmPeer {
                rounds,
                size,
                message_size,
                opts,
            } => bench::vm_peer(&opts, rounds, &size, &message_size),
            BenchCmd::VmStress {
                rounds,
                seconds,
                opts,
            } => bench::vm_stress(&opts, rounds, seconds),
        },
        Cmd::Vm { command } => match command {
            VmCmd::Prepare { opts } => {
                let guest = prepare(&opts)?;
                println!("kernel    {}", guest.kernel.abi);
                println!("vmlinuz   {}", guest.vmlinuz.display());
                println!("initramfs {}", guest.initramfs.display());
                println!("root      {}", guest.root.display());
                Ok(())
            }
            VmCmd::Run {
                opts,
                binaries,
                hosts,
                command,
            } => {
                let guest = prepare(&opts)?;
                let job = job(&opts, command.join(" ") + "\n", binaries);
                let status = if hosts == 2 {
                    let outcomes = vm::run_pair(&guest, [&job, &job])?;
                    for (host, outcome) in (1..).zip(&outcomes) {
                        eprintln!(
                            "xtask: vm{host} exited {} (output: {})",
                            outcome.status,
                            vm::pair_job_dir(host).join("output.log").display()
                        );
                    }
                    outcomes
                        .iter()
                        .map(|o| o.status)
                        .find(|&s| s != 0)
                        .unwrap_or(0)
                } else {
                    vm::run_job(&guest, &job)?.status
                };
                std::process::exit(status);
            }
        },
    }
}
