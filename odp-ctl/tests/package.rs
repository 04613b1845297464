//! odp-ctl's Debian package (`cargo xtask package`; the test command passes the one it built as
//! ODP_DEB): what it carries, that its man pages, completions and systemd unit are well formed,
//! and, in the VM guest, that dpkg installs it, its exporter serves live probes, and dpkg
//! removes it again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::odp_ctl;

/// The package under test, or None after a named skip.
fn package(test: &str) -> Option<PathBuf> {
    match std::env::var_os("ODP_DEB").map(PathBuf::from) {
        Some(deb) if deb.is_file() => Some(deb),
        _ => {
            odp_core::testing::skip(test, "no package (ODP_DEB; cargo xtask test builds one)");
            None
        }
    }
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether PATH has an executable of this name.
fn have(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Copies a directory tree (the guest has no cp of its own).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path()).expect("link");
            std::os::unix::fs::symlink(link, target).expect("symlink");
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// The package's files, unpacked into a fresh directory.
fn unpacked(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
    assert!(ok, "dpkg-deb -x: {err}");
    dir
}

/// The subcommands `odp-ctl --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let (ok, help, _) = run(odp_ctl().arg("--help"));
    assert!(ok);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_package_carries_the_binary_man_pages_completions_unit_and_dashboard() {
    let test = "the_package_carries_the_binary_man_pages_completions_unit_and_dashboard";
    let Some(deb) = package(test) else {
        return;
    };
    let field = |name: &str| {
        let (ok, out, err) = run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(name));
        assert!(ok, "dpkg-deb -f {name}: {err}");
        out.trim().to_string()
    };
    assert_eq!(field("Package"), "odp-ctl");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert!(
        field("Depends").contains("libc6 (>="),
        "{}",
        field("Depends")
    );
    assert!(field("Recommends").contains("libibverbs1"));

    let root = unpacked(&deb);
    let at = |p: &str| root.path().join(p);
    let (ok, version, _) = run(Command::new(at("usr/bin/odp-ctl")).arg("--version"));
    assert!(ok);
    assert_eq!(
        version.trim(),
        format!("odp-ctl {}", env!("CARGO_PKG_VERSION"))
    );
    // One man page per subcommand, and one for odp-ctl itself; each renders without a warning.
    let commands = subcommands();
    assert!(commands.iter().any(|c| c == "exporter"), "{commands:?}");
    let mut pages = vec!["odp-ctl".to_string()];
    pages.extend(commands.iter().map(|c| format!("odp-ctl-{c}")));
    for page in &pages {
        let path = at(&format!("usr/share/man/man1/{page}.1.gz"));
        assert!(path.is_file(), "no man page {}", path.display());
        if have("groff") {
            let (ok, _, warnings) = run(Command::new("sh").arg("-c").arg(format!(
                "zcat '{}' | groff -man -Tutf8 -ww -z",
                path.display()
            )));
            assert!(ok && warnings.is_empty(), "{page}: {warnings}");
        }
    }
    // The exporter's page says what its options are.
    let (_, exporter_page, _) = run(Command::new("sh").arg("-c").arg(format!(
        "zcat '{}'",
        at("usr/share/man/man1/odp-ctl-exporter.1.gz").display()
    )));
    assert!(exporter_page.contains("listen"), "{exporter_page}");
    for completion in [
        "usr/share/zsh/vendor-completions/_odp-ctl",
        "usr/share/fish/vendor_completions.d/odp-ctl.fish",
    ] {
        let text = std::fs::read_to_string(at(completion)).expect(completion);
        assert!(text.contains("exporter"), "{completion}");
    }
    // Bash completes a subcommand from its prefix with the packaged script: every subcommand
    // that begins so (export, exporter).
    if have("bash") {
        let script = at("usr/share/bash-completion/completions/odp-ctl");
        let (ok, words, err) = run(Command::new("bash").arg("-c").arg(format!(
            "source '{}' && f=$(complete -p odp-ctl | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p') \
             && COMP_WORDS=(odp-ctl expo) COMP_CWORD=1 && $f odp-ctl expo odp-ctl \
             && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        )));
        assert!(ok, "{err}");
        let mut words: Vec<&str> = words.split_whitespace().collect();
        words.sort_unstable();
        let mut expected: Vec<&str> = commands
            .iter()
            .map(String::as_str)
            .filter(|c| c.starts_with("expo"))
            .collect();
        expected.sort_unstable();
        assert_eq!(words, expected, "{err}");
        assert!(words.contains(&"exporter"));
    }
    assert_eq!(
        std::fs::read(at("usr/share/odp-toolkit/grafana-dashboard.json")).expect("dashboard"),
        include_bytes!("../../deploy/grafana-dashboard.json")
    );
    assert!(at("usr/share/doc/odp-ctl/copyright").is_file());

    // systemd reads the unit without a complaint: its keys, its command, its man page.
    if !have("systemd-analyze") {
        odp_core::testing::skip(test, "the systemd unit's check: no systemd-analyze");
        return;
    }
    let unit = at("usr/lib/systemd/system/odp-exporter.service");
    assert!(unit.is_file());
    // The targets the unit names come from the host's systemd.
    let (ok, _, err) = run(Command::new("sh").arg("-c").arg(format!(
        "cp -rn /usr/lib/systemd/system/*.target '{}'",
        at("usr/lib/systemd/system").display()
    )));
    assert!(ok, "{err}");
    // Where man itself is missing (the guest), systemd cannot look the unit's page up; the
    // pages were rendered above.
    let man = if have("man") { "--man=yes" } else { "--man=no" };
    let (ok, out, complaints) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(man)
        .arg(format!("--root={}", root.path().display()))
        .arg("odp-exporter.service")
        .env("MANPATH", at("usr/share/man")));
    assert!(
        ok && complaints.is_empty() && out.is_empty(),
        "systemd-analyze verify: {out}{complaints}"
    );
}

/// GET /metrics once, or None while nothing answers.
fn metrics(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn dpkg_installs_the_package_its_exporter_serves_and_dpkg_removes_it() {
    let test = "dpkg_installs_the_package_its_exporter_serves_and_dpkg_removes_it";
    if odp_core::testing::device_or_skip(test).is_none()
        || !odp_core::testing::root_or_skip(test, "loading BPF")
    {
        return;
    }
    let Some(deb) = package(test) else {
        return;
    };
    if !Path::new("/var/lib/dpkg/status").is_file() || !have("dpkg") {
        odp_core::testing::skip(test, "no dpkg with a database here");
        return;
    }
    // A root of its own, with the system's dpkg database: dpkg resolves the package's Depends
    // against the packages really installed, and the system itself stays untouched.
    let root = tempfile::tempdir().expect("tempdir");
    copy_tree(
        Path::new("/var/lib/dpkg"),
        &root.path().join("var/lib/dpkg"),
    );
    // dpkg looks for sh, rm and diff on PATH (and runs GNU tar); busybox provides rm and diff
    // where nothing else does.
    let tools = tempfile::tempdir().expect("tempdir");
    if let Ok(busybox) = std::fs::canonicalize("/usr/bin/busybox") {
        for applet in ["rm", "diff"] {
            if !have(applet) {
                std::os::unix::fs::symlink(&busybox, tools.path().join(applet)).expect("symlink");
            }
        }
    }
    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dpkg = |args: &[&std::ffi::OsStr]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.path().display()))
            .args(args)
            .env("PATH", &path))
    };
    let (ok, out, err) = dpkg(&["-i".as_ref(), deb.as_os_str()]);
    assert!(ok, "dpkg -i: {out}{err}");
    let (ok, status, _) = dpkg(&["-s".as_ref(), "odp-ctl".as_ref()]);
    assert!(
        ok && status.contains("Status: install ok installed"),
        "{status}"
    );
    let installed = root.path().join("usr/bin/odp-ctl");

    // The installed binary, as the unit runs it: live probes, metrics on a loopback port.
    let (ok, devices, err) = run(Command::new(&installed).args(["--json", "devices"]));
    assert!(ok && devices.contains("rxe0"), "{devices}{err}");
    let mut exporter = Command::new(&installed)
        .args(["exporter", "--listen", "127.0.0.1:0", "--duration", "60s"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("the installed exporter");
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut stderr = std::io::BufReader::new(exporter.stderr.take().expect("stderr"));
        stderr.read_line(&mut first).expect("first line");
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    }
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match metrics(&addr) {
            Some(body) if body.contains("odp_exporter_probe") => break body,
            _ if Instant::now() > deadline => panic!("the installed exporter served nothing"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(exporter.id() as libc::pid_t, libc::SIGTERM) };
    let status = exporter.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("odp_exporter_probe{") && l.contains("status=\"attached\"")),
        "{body}"
    );

    // Removed, then purged: nothing of it is left in the root.
    let (ok, out, err) = dpkg(&["--purge".as_ref(), "odp-ctl".as_ref()]);
    assert!(ok, "dpkg --purge: {out}{err}");
    assert!(!installed.exists());
    for left in [
        "usr/share/man/man1/odp-ctl.1.gz",
        "usr/lib/systemd/system/odp-exporter.service",
        "usr/share/odp-toolkit/grafana-dashboard.json",
    ] {
        assert!(!root.path().join(left).exists(), "{left} left behind");
    }
}
