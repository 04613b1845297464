//! Host prerequisites: whatever the build, the VM and the tests need from Debian, installed on
//! first use when running as root (a fresh machine of this kind has none of it).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// One prerequisite: how to tell it is present, and the Debian package that provides it.
struct Need {
    present: fn() -> bool,
    package: &'static str,
    why: &'static str,
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
}

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

const NEEDS: &[Need] = &[
    Need {
        present: || on_path("qemu-system-x86_64"),
        package: "qemu-system-x86",
        why: "boots the soft-RoCE VM",
    },
    Need {
        present: || on_path("clang-19"),
        package: "clang-19",
        why: "bindgen's libclang; BPF C",
    },
    Need {
        present: || on_path("llvm-strip-19"),
        package: "llvm-19",
        why: "BPF object tooling",
    },
    Need {
        present: || on_path("cmake"),
        package: "cmake",
        why: "builds rdma-mummy-sys' libibverbs shim",
    },
    Need {
        present: || on_path("pkg-config"),
        package: "pkg-config",
        why: "locates libelf/zlib",
    },
    Need {
        present: || Path::new("/usr/include/libelf.h").exists(),
        package: "libelf-dev",
        why: "libbpf",
    },
    Need {
        present: || Path::new("/usr/include/zlib.h").exists(),
        package: "zlib1g-dev",
        why: "libbpf",
    },
    Need {
        present: || on_path("dpkg-deb"),
        package: "dpkg",
        why: "unpacks the guest's packages",
    },
    Need {
        present: || on_path("xz"),
        package: "xz-utils",
        why: "decompresses initramfs modules",
    },
    Need {
        present: || Path::new(LIBDIR).join("libibverbs.so.1").exists(),
        package: "libibverbs1",
        why: "lets odp-ctl on the host report its RDMA state",
    },
    Need {
        present: || Path::new(LIBDIR).join("libibverbs").is_dir(),
        package: "ibverbs-providers",
        why: "verbs providers for real hosts",
    },
    Need {
        present: || on_path("tmux"),
        package: "tmux",
        why: "drives the TUI in real-terminal tests",
    },
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Installs every missing prerequisite (as root), or says exactly what to install.
pub fn ensure() -> Result<()> {
    let missing: Vec<&Need> = NEEDS.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    for need in &missing {
        eprintln!("xtask: missing {} ({})", need.package, need.why);
    }
    if !is_root() {
        bail!(
            "host packages missing; run as root, or install them: apt-get install -y {}",
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    run_apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&packages);
    run_apt(&args)?;
    let still: Vec<&str> = NEEDS
        .iter()
        .filter(|n| !(n.present)())
        .map(|n| n.package)
        .collect();
    if !still.is_empty() {
        bail!("installed, but still missing: {}", still.join(" "));
    }
    Ok(())
}

fn run_apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed with {status}", args.join(" "));
    }
    Ok(())
}
