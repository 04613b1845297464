//! The Debian package of odp-ctl: the binary, man pages and shell completions generated from
//! its clap definitions, the exporter's systemd unit and the Grafana dashboard, laid out as
//! Debian puts them and built by dpkg-deb (Depends by dpkg-shlibdeps).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::workspace_root;

/// Runs a command, failing with its stderr.
fn output(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Builds `target/debian/odp-ctl_VERSION_ARCH.deb` around `binary` and returns its path.
pub fn build(binary: &Path) -> Result<PathBuf> {
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let arch = String::from_utf8(output(
        Command::new("dpkg").arg("--print-architecture"),
        "dpkg --print-architecture",
    )?)?
    .trim()
    .to_string();
    let out_dir = root.join("target/debian");
    let stage = out_dir.join(format!("odp-ctl_{version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let dir = |p: &str| -> Result<PathBuf> {
        let d = stage.join(p);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };

    let bin = dir("usr/bin")?.join("odp-ctl");
    std::fs::copy(binary, &bin).with_context(|| format!("copying {}", binary.display()))?;
    output(
        Command::new("strip").arg("--strip-debug").arg(&bin),
        "strip",
    )?;

    let man = dir("usr/share/man/man1")?;
    output(
        Command::new(&bin).arg("manpages").arg(&man),
        "odp-ctl manpages",
    )?;
    for page in std::fs::read_dir(&man)? {
        let page = page?.path();
        output(Command::new("gzip").arg("-9n").arg(&page), "gzip")?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/odp-ctl"),
        ("zsh", "usr/share/zsh/vendor-completions/_odp-ctl"),
        ("fish", "usr/share/fish/vendor_completions.d/odp-ctl.fish"),
    ] {
        let script = output(
            Command::new(&bin).args(["completions", shell]),
            "odp-ctl completions",
        )?;
        let path = stage.join(path);
        std::fs::create_dir_all(path.parent().context("completion dir")?)?;
        std::fs::write(path, script)?;
    }
    std::fs::copy(
        root.join("deploy/odp-exporter.service"),
        dir("usr/lib/systemd/system")?.join("odp-exporter.service"),
    )?;
    std::fs::copy(
        root.join("deploy/grafana-dashboard.json"),
        dir("usr/share/odp-toolkit")?.join("grafana-dashboard.json"),
    )?;
    std::fs::write(dir("usr/share/doc/odp-ctl")?.join("copyright"), COPYRIGHT)?;

    let control = dir("DEBIAN")?.join("control");
    let fields = format!(
        "Package: odp-ctl\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: odp-toolkit developers <odp-toolkit@invalid>\n\
         Section: net\n\
         Priority: optional\n\
         Depends: {}\n\
         Recommends: libibverbs1, ibverbs-providers\n\
         Installed-Size: {}\n\
         Description: RDMA On-Demand Paging (ODP) inspection, stress and metrics\n \
         odp-ctl registers, prefetches and stresses ODP memory regions through libibverbs,\n \
         traces the kernel's ODP fault and invalidation paths with BPF probes, finds races,\n \
         retries and timeouts between device faults and mmu-notifier invalidations, and\n \
         serves them as Prometheus metrics (odp-exporter.service), with a Grafana dashboard.\n",
        shlib_depends(&bin)?,
        installed_kib(&stage)?
    );
    std::fs::write(&control, fields)?;

    let deb = out_dir.join(format!("odp-ctl_{version}_{arch}.deb"));
    output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
        "dpkg-deb --build",
    )?;
    Ok(deb)
}

/// The libraries the binary links, as Debian packages with versions (dpkg-shlibdeps reads a
/// source package's control file, so it is given a minimal one). Libraries odp-ctl opens at run
/// time (libibverbs) are not linked and come as Recommends.
fn shlib_depends(binary: &Path) -> Result<String> {
    let scratch = workspace_root().join("target/debian/shlibdeps");
    std::fs::create_dir_all(scratch.join("debian"))?;
    std::fs::write(
        scratch.join("debian/control"),
        "Source: odp-ctl\n\nPackage: odp-ctl\nArchitecture: any\n",
    )?;
    let out = output(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(binary)
            .current_dir(&scratch),
        "dpkg-shlibdeps",
    )?;
    let text = String::from_utf8(out)?;
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

/// The staged files' size in KiB, as Installed-Size counts it.
fn installed_kib(stage: &Path) -> Result<u64> {
    let mut total = 0;
    let mut dirs = vec![stage.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                total += meta.len().div_ceil(1024);
            }
        }
    }
    Ok(total)
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: odp-toolkit

Files: *
Copyright: the odp-toolkit developers
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
";
