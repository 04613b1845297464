//! Debian packages for the guest, through apt with private side sources (sid and
//! trixie-backports). The host's own apt configuration and state are never touched: every path
//! apt would use is redirected under the cache directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main
";

/// The guest userspace: a shell, module loading, the `rdma` tool, verbs with the rxe provider
/// (rdma-core >= 59 for prefetch), third-party verbs clients, libbpf's runtime libraries, and
/// tmux (with libc-bin's C.UTF-8 locale, which it insists on) for driving the TUIs in a real
/// terminal.
pub const GUEST_PACKAGES: &[&str] = &[
    "busybox-static",
    "tmux",
    "libc-bin",
    "libc6",
    "kmod",
    "iproute2",
    "libibverbs1",
    "ibverbs-providers",
    "ibverbs-utils",
    "perftest",
    // rdma_cm for the two-guest runs: the library odp-ctl opens and rping to check the link.
    "librdmacm1t64",
    "rdmacm-utils",
    "libelf1t64",
    "zlib1g",
    // The package test installs odp-ctl's .deb with them (dpkg-deb runs GNU tar).
    "dpkg",
    "tar",
];

/// Oldest kernel whose rxe supports both ODP registration (6.15) and prefetch (6.17).
pub const MIN_KERNEL: (u32, u32) = (6, 17);

/// Lists older than this are refreshed: sid rotates kernels out within weeks.
const LISTS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

pub struct Apt {
    root: PathBuf,
}

/// A kernel package's ABI name, e.g. `7.3.4+deb13-amd64`, and its upstream version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAbi {
    pub abi: String,
    pub version: Vec<u32>,
}

impl KernelAbi {
    /// Parses `linux-image-<abi>` for the plain amd64 flavour; cloud and rt builds lack pieces
    /// the VM needs or behave differently, so they are not candidates.
    pub fn from_package(name: &str) -> Option<Self> {
        let abi = name.strip_prefix("linux-image-")?;
        let upstream = abi.strip_suffix("-amd64")?;
        if upstream.ends_with("-cloud") || upstream.ends_with("-rt") || upstream.contains("-dbg") {
            return None;
        }
        let numeric = upstream.split(['+', '-']).next()?;
        let version: Vec<u32> = numeric
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if version.len() < 2 {
            return None;
        }
        Some(KernelAbi {
            abi: abi.to_string(),
            version,
        })
    }

    pub fn at_least(&self, (major, minor): (u32, u32)) -> bool {
        (self.version[0], self.version[1]) >= (major, minor)
    }

    /// Whether a `--kernel` pin selects this kernel: an exact ABI name, or a version prefix
    /// such as `7.2` or `7.2.13`.
    pub fn matches_pin(&self, pin: &str) -> bool {
        if self.abi == pin {
            return true;
        }
        let wanted: Option<Vec<u32>> = pin.split('.').map(|p| p.parse().ok()).collect();
        wanted.is_some_and(|w| !w.is_empty() && self.version.starts_with(&w))
    }
}

/// Picks the newest suitable kernel, or the newest one matching the pin.
pub fn choose_kernel(candidates: &[KernelAbi], pin: Option<&str>) -> Result<KernelAbi> {
    let mut usable: Vec<&KernelAbi> = candidates
        .iter()
        .filter(|k| match pin {
            Some(pin) => k.matches_pin(pin),
            None => k.at_least(MIN_KERNEL),
        })
        .collect();
    usable.sort_by(|a, b| a.version.cmp(&b.version).then_with(|| a.abi.cmp(&b.abi)));
    match usable.last() {
        Some(k) => Ok((*k).clone()),
        None => {
            let mut all: Vec<&str> = candidates.iter().map(|k| k.abi.as_str()).collect();
            all.sort();
            match pin {
                Some(pin) => bail!(
                    "no kernel matching {pin:?} in the archive (it rotates); available: {}",
                    all.join(", ")
                ),
                None => bail!(
                    "no kernel >= {}.{} in the archive; available: {}",
                    MIN_KERNEL.0,
                    MIN_KERNEL.1,
                    all.join(", ")
                ),
            }
        }
    }
}

impl Apt {
    pub fn new(cache: &Path) -> Result<Self> {
        let root = cache.join("apt");
        for dir in ["lists/partial", "archives/partial", "etc"] {
            std::fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        std::fs::write(root.join("etc/sources.list"), SOURCES)?;
        // An empty status file makes apt resolve the full dependency closure for the guest.
        let status = root.join("status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        Ok(Apt { root })
    }

    pub fn archives(&self) -> PathBuf {
        self.root.join("archives")
    }

    fn options(&self) -> Vec<String> {
        let r = self.root.display();
        let mut opts = vec![
            format!("Dir::Etc::sourcelist={r}/etc/sources.list"),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State={r}"),
            format!("Dir::State::Lists={r}/lists"),
            format!("Dir::State::status={r}/status"),
            format!("Dir::Cache={r}"),
            format!("Dir::Cache::archives={r}/archives"),
            "Debug::NoLocking=1".into(),
            "APT::Get::List-Cleanup=0".into(),
            "APT::Install-Recommends=0".into(),
            "APT::Default-Release=unstable".into(),
        ];
        if crate::host::is_root() {
            // The private cache is root's; apt's _apt sandbox user could not write into it.
            opts.push("APT::Sandbox::User=root".into());
        }
        opts.into_iter()
            .flat_map(|o| ["-o".to_string(), o])
            .collect()
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(self.options())
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn output(&self, tool: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Refreshes the package lists when missing or stale.
    pub fn update(&self, force: bool) -> Result<()> {
        let stamp = self.root.join("lists/.updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh && !force {
            return Ok(());
        }
        eprintln!("xtask: refreshing Debian package lists (sid, trixie-backports)");
        self.output("apt-get", &["update", "-q"])?;
        std::fs::write(stamp, "")?;
        Ok(())
    }

    /// Every plain amd64 kernel image in the side sources.
    pub fn kernels(&self) -> Result<Vec<KernelAbi>> {
        let out = self.output(
            "apt-cache",
            &["search", "--names-only", "^linux-image-[0-9].*-amd64$"],
        )?;
        Ok(out
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter_map(KernelAbi::from_package)
            .collect())
    }

    /// The kernel's own packages: the image and, on 7.x, its split binary/modules/base parts.
    pub fn kernel_packages(&self, kernel: &KernelAbi) -> Result<Vec<String>> {
        let image = format!("linux-image-{}", kernel.abi);
        let out = self.output("apt-cache", &["depends", &image])?;
        let mut packages = vec![image];
        for line in out.lines() {
            let line = line.trim().trim_start_matches('|');
            if let Some(dep) = line.strip_prefix("Depends: ") {
                if dep.starts_with("linux-") && dep.contains(&kernel.abi) {
                    packages.push(dep.to_string());
                }
            }
        }
        Ok(packages)
    }

    /// Downloads the named packages (no dependencies) into the archive cache and returns their
    /// file paths.
    pub fn download_exact(&self, packages: &[String]) -> Result<Vec<PathBuf>> {
        let archives = self.archives();
        let mut files = Vec::new();
        let mut to_fetch = Vec::new();
        for pkg in packages {
            let out = self.output("apt-cache", &["show", "--no-all-versions", pkg])?;
            let filename = out
                .lines()
                .find_map(|l| l.strip_prefix("Filename: "))
                .with_context(|| format!("no Filename for {pkg}"))?;
            let base = Path::new(filename)
                .file_name()
                .with_context(|| format!("bad Filename for {pkg}"))?
                .to_string_lossy()
                .replace("%3a", ":");
            let path = archives.join(&base);
            if !path.exists() {
                to_fetch.push(pkg.as_str());
            }
            files.push(path);
        }
        if !to_fetch.is_empty() {
            eprintln!("xtask: downloading {}", to_fetch.join(" "));
            let status = self
                .command("apt-get")
                .current_dir(&archives)
                .arg("download")
                .arg("-q")
                .args(&to_fetch)
                .status()
                .context("running apt-get download")?;
            if !status.success() {
                bail!("apt-get download {} failed", to_fetch.join(" "));
            }
        }
        for f in &files {
            if !f.exists() {
                bail!("expected {} after download", f.display());
            }
        }
        Ok(files)
    }

    /// Downloads the full dependency closure of `packages` and returns the .deb paths.
    pub fn download_closure(&self, packages: &[&str]) -> Result<Vec<PathBuf>> {
        // --print-uris lists only what the archive cache lacks, so ask against an empty one to
        // get the whole closure every time.
        let probe = self.root.join("uris-probe");
        std::fs::create_dir_all(probe.join("partial"))?;
        let probe_opt = format!("Dir::Cache::archives={}", probe.display());
        let mut args = vec![
            "-o",
            probe_opt.as_str(),
            "install",
            "--print-uris",
            "-qq",
            "-y",
        ];
        args.extend(packages);
        let uris = self.output("apt-get", &args)?;
        let files: Vec<PathBuf> = uris
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|name| self.archives().join(name))
            .collect();
        if files.is_empty() {
            bail!("apt resolved no packages for {}", packages.join(" "));
        }
        if files.iter().any(|f| !f.exists()) {
            eprintln!(
                "xtask: downloading guest userspace ({} packages)",
                files.len()
            );
            let mut args = vec!["install", "--download-only", "-q", "-y"];
            args.extend(packages);
            let status = self
                .command("apt-get")
                .args(&args)
                .status()
                .context("running apt-get")?;
            if !status.success() {
                bail!("downloading the guest userspace failed");
            }
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abi(name: &str) -> KernelAbi {
        KernelAbi::from_package(name).expect("parses")
    }

    #[test]
    fn only_plain_amd64_images_are_candidates() {
        assert_eq!(abi("linux-image-7.3.4+deb13-amd64").version, vec![7, 3, 4]);
        assert!(KernelAbi::from_package("linux-image-7.3.4+deb13-cloud-amd64").is_none());
        assert!(KernelAbi::from_package("linux-image-7.3.4+deb13-rt-amd64").is_none());
        assert!(KernelAbi::from_package("linux-image-amd64").is_none());
        assert!(KernelAbi::from_package("linux-headers-7.3.4+deb13-amd64").is_none());
    }

    #[test]
    fn newest_suitable_kernel_wins_by_version_not_by_text() {
        let all = [
            abi("linux-image-6.16.12+deb13-amd64"),
            abi("linux-image-7.2.13+deb14-amd64"),
            abi("linux-image-7.10.1+deb14-amd64"),
            abi("linux-image-7.3.4+deb13-amd64"),
        ];
        assert_eq!(
            choose_kernel(&all, None).expect("choice").abi,
            "7.10.1+deb14-amd64"
        );
        assert_eq!(
            choose_kernel(&all, Some("7.2")).expect("pin").abi,
            "7.2.13+deb14-amd64"
        );
        assert_eq!(
            choose_kernel(&all, Some("7.3.4+deb13-amd64"))
                .expect("pin")
                .abi,
            "7.3.4+deb13-amd64"
        );
        let err = choose_kernel(&all, Some("6.1"))
            .expect_err("must be refused")
            .to_string();
        assert!(err.contains("no kernel matching \"6.1\""), "{err}");
        assert!(err.contains("7.2.13+deb14-amd64"), "{err}");
    }

    #[test]
    fn kernels_below_the_minimum_are_never_chosen_by_default() {
        let old = [abi("linux-image-6.16.12+deb13-amd64")];
        assert!(choose_kernel(&old, None).is_err());
        assert!(choose_kernel(&old, Some("6.16")).is_ok());
    }
}
