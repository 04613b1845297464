//! odp-ctl: the command line of the ODP toolkit.
//!
//! Owns: argument parsing, human tables and `--json` output, exit codes, signal handling.
//! Must not: call libibverbs directly; every RDMA operation goes through odp-core.

mod cmd;
mod live;
mod output;
mod perfetto;
mod tui;

use clap::{CommandFactory, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other failure
  2  usage error
  3  no RDMA device (or libibverbs missing)
  4  not supported by the device, provider or kernel
  5  permission or resource limit (root, memlock, huge pages)
  6  invalid input (unknown device, bad range, unknown key)
  7  data error: a work completion failed or bytes did not match
  8  the peer (register --peer, serve) could not be reached, refused or went away
trace -- CMD and monitor -- CMD exit as CMD did, as time(1) and strace(1) do: its exit status
when it failed, 128+N when signal N ended it, 127 when it could not be executed.";

#[derive(Parser)]
#[command(
    name = "odp-ctl",
    version,
    about = "Inspect, register, prefetch and exercise RDMA On-Demand Paging (ODP) memory",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List RDMA devices and whether they support ODP.
    Devices,
    /// Show a device's attributes, full ODP capabilities, ports and GIDs.
    Caps(cmd::caps::Args),
    /// Map a buffer, register it as an ODP MR, and optionally touch it, run verified loopback
    /// traffic over it, or hold it until Ctrl-C.
    Register(cmd::register::Args),
    /// Own an ODP MR and serve it to `register --peer` on other hosts over rdma_cm: fill,
    /// zero and verify it on their request, until Ctrl-C or SIGTERM (or --once).
    Serve(cmd::serve::Args),
    /// Register an ODP MR, then prefetch ranges of it with ibv_advise_mr and time each call.
    Prefetch(cmd::prefetch::Args),
    /// Show every probe point: the method this kernel allows (fentry, kprobe, tracepoint,
    /// uprobe), attached or why not.
    Probes(cmd::probes::Args),
    /// Stream decoded ODP events (faults, invalidations, prefetches, registrations) as lines or
    /// JSON Lines, ending with counts and drops.
    Trace(cmd::trace::Args),
    /// Live view of ODP faults, invalidations, races, retries and timeouts per MR, process and
    /// device (a TUI; --summary for a table or --json), from probes or a --replay recording.
    Monitor(cmd::monitor::Args),
    /// Run a stress scenario: RDMA traffic over ODP MRs while the CPU side invalidates the
    /// same memory (madvise, remap, mprotect, fork), every byte verified, probes watching.
    Stress(cmd::stress::Args),
    /// Serve the correlation engine's figures as Prometheus metrics (/metrics, Prometheus text
    /// or OpenMetrics), from live probes or a --replay recording, until Ctrl-C or SIGTERM.
    Exporter(cmd::exporter::Args),
    /// Write a recording as a timeline: Perfetto's trace format, with a track per process and
    /// MR, faults, invalidations, prefetches and library calls as slices, races as flows.
    Export(cmd::export::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions { shell: clap_complete::Shell },
    /// Write a man page for odp-ctl and each subcommand into a directory (for packaging).
    #[command(hide = true)]
    Manpages { dir: std::path::PathBuf },
}

fn main() {
    // `odp-ctl ... | head` should end quietly like any Unix tool, not panic in println!: restore
    // the default SIGPIPE action that Rust's runtime sets to ignore.
    // SAFETY: setting a signal disposition to SIG_DFL before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let out = output::Output { json: cli.json };
    let result = match cli.command {
        Command::Devices => cmd::devices::run(&out),
        Command::Caps(args) => cmd::caps::run(&out, &args),
        Command::Register(args) => cmd::register::run(&out, &args),
        Command::Serve(args) => cmd::serve::run(&out, &args),
        Command::Prefetch(args) => cmd::prefetch::run(&out, &args),
        Command::Probes(args) => cmd::probes::run(&out, &args),
        Command::Trace(args) => cmd::trace::run(&out, &args),
        Command::Monitor(args) => cmd::monitor::run(&out, &args),
        Command::Exporter(args) => cmd::exporter::run(&out, &args),
        Command::Export(args) => cmd::export::run(&out, &args),
        Command::Stress(args) => cmd::stress::run(&out, &args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "odp-ctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpages { dir } => clap_mangen::generate_to(Cli::command(), &dir)
            .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display())),
    };
    if let Err(err) = result {
        std::process::exit(out.error(&err));
    }
}
