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
    run_apt_with(&[], &["update", "-q"])?;
    install_without_removals(&packages)?;
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

/// Installs `packages` only where apt would remove nothing the machine has. Where the stable
/// release's versions would (a newer qemu-utils from backports is what these machines carry,
/// and the stable qemu-system-x86 breaks it), the release's backports are tried, from a
/// private source list that leaves the machine's apt configuration as it was; failing that,
/// nothing is installed and the conflict is named.
fn install_without_removals(packages: &[&str]) -> Result<()> {
    let removed = simulated_removals(&[], packages)?;
    if removed.is_empty() {
        return install(&[], packages);
    }
    let codename = release_codename()?;
    let backports = format!("{codename}-backports");
    let side = crate::vm::cache_dir().join("host-apt");
    let options = with_backports(&side, &backports)?;
    eprintln!(
        "xtask: from {codename}, installing {} would remove {}; trying {backports}",
        packages.join(" "),
        removed.join(", ")
    );
    run_apt_with(&options, &["update", "-q"])?;
    let mut targeted = options.clone();
    targeted.extend(["-t".to_string(), backports.clone()]);
    let removed_too = simulated_removals(&targeted, packages)?;
    if !removed_too.is_empty() {
        bail!(
            "installing {} would remove packages this machine has ({} from {codename}, {} from \
             {backports}); nothing was installed. Install versions that fit them, or remove them \
             yourself, and run again",
            packages.join(" "),
            removed.join(", "),
            removed_too.join(", ")
        );
    }
    install(&targeted, packages)
}

/// What `apt-get install` would remove, from a dry run: "NAME [VERSION]" each.
fn simulated_removals(options: &[String], packages: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("apt-get")
        .args(options)
        .args(["install", "-s", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get install -s")?;
    if !out.status.success() {
        bail!(
            "apt-get install -s {} failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(removals(&String::from_utf8_lossy(&out.stdout)))
}

/// The "Remv NAME [VERSION]" lines of an apt-get dry run.
fn removals(dry_run: &str) -> Vec<String> {
    dry_run
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .map(|l| l.trim().to_string())
        .collect()
}

fn install(options: &[String], packages: &[&str]) -> Result<()> {
    let mut args = vec![
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "--no-remove",
    ];
    args.extend(packages);
    run_apt_with(options, &args)
}

fn release_codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME")
}

/// apt options that add `suite` from deb.debian.org beside the machine's own sources, with the
/// lists kept under `dir`: the machine's apt configuration and lists stay as they were.
fn with_backports(dir: &Path, suite: &str) -> Result<Vec<String>> {
    let parts = dir.join("sources.list.d");
    let lists = dir.join("lists");
    std::fs::create_dir_all(lists.join("partial"))?;
    let _ = std::fs::remove_dir_all(&parts);
    std::fs::create_dir_all(&parts)?;
    for entry in std::fs::read_dir("/etc/apt/sources.list.d")? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".sources") || name.ends_with(".list") {
            std::os::unix::fs::symlink(&path, parts.join(name))?;
        }
    }
    std::fs::write(
        parts.join("odp-toolkit-backports.sources"),
        format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )?;
    Ok([
        format!("Dir::Etc::sourceparts={}", parts.display()),
        format!("Dir::State::Lists={}", lists.display()),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect())
}

fn run_apt_with(options: &[String], args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(options)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Debian's Prometheus server for the exporter's tests, unpacked into the xtask cache rather
/// than installed: the package would start a system service on :9090, and the tests start
/// their own on loopback. Returns the server binary.
pub fn prometheus() -> Result<std::path::PathBuf> {
    let dir = crate::vm::cache_dir().join("prometheus");
    let binary = dir.join("root/usr/bin/prometheus");
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(dir.join("debs"))?;
    eprintln!("xtask: fetching Debian's prometheus package (for the exporter's tests)");
    let status = Command::new("apt-get")
        .args(["download", "-q", "prometheus"])
        .current_dir(dir.join("debs"))
        .status()
        .context("running apt-get download prometheus")?;
    if !status.success() {
        bail!("apt-get download prometheus failed with {status}");
    }
    let deb = std::fs::read_dir(dir.join("debs"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root"))
        .status()
        .context("running dpkg-deb -x")?;
    if !status.success() || !binary.is_file() {
        bail!("unpacking {} gave no {}", deb.display(), binary.display());
    }
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_names_what_it_would_remove() {
        let dry = "NOTE: This is only a simulation!\n\
                   Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\n\
                   Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])\n\
                   Conf qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])\n";
        assert_eq!(
            removals(dry),
            vec!["qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]".to_string()]
        );
        assert!(removals("Inst tmux (3.3a-3 Debian:12.15/oldstable [amd64])\n").is_empty());
    }
}
