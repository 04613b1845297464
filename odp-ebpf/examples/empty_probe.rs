//! Benchmark helper: runs a command with an empty BPF program attached to the page-fault
//! tracepoint (tp_btf), so that `cargo xtask bench probes` can tell the cost of the hook itself
//! from the cost of odp-ctl's programs on it.
//!
//! Usage (as root): empty_probe COMMAND [ARGS...]   (the command's output passes through)

use std::process::Command;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: empty_probe COMMAND [ARGS...]");
        std::process::exit(2);
    };
    let probe = match odp_ebpf::EmptyPageFaultProbe::attach() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("empty_probe: {e}");
            std::process::exit(1);
        }
    };
    let status = Command::new(cmd).args(rest).status();
    drop(probe);
    match status {
        Ok(s) => std::process::exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("empty_probe: cannot run {cmd}: {e}");
            std::process::exit(127);
        }
    }
}
