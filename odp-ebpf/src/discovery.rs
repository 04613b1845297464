//! What the running kernel allows, decided before the main object is loaded: which probe points
//! exist (kallsyms, module BTF), whether fentry and kprobes really work here (a real load and
//! attach of a trivial program), and so which method each point gets, or why it is skipped.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bpf_common::{Group, Method, Point};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::Serialize;

use crate::feature_skel::FeatureSkelBuilder;

/// How one point will be (or was) attached.
#[derive(Debug, Clone, Serialize)]
pub struct PointPlan {
    pub point: Point,
    pub group: &'static str,
    pub target: String,
    /// The method chosen; None when skipped.
    pub method: Option<Method>,
    /// The symbol actually probed (kallsyms may carry a suffix such as `.isra.0`).
    pub symbol: Option<String>,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "kebab-case")]
pub enum Status {
    /// Chosen, not yet attached.
    Planned,
    Attached,
    /// Not attempted, with the reason.
    Skipped(String),
    /// Attempted and refused by the kernel, with its error.
    Failed(String),
}

/// Facts about the running kernel that decide the plan.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFacts {
    pub release: String,
    /// None when fentry works; otherwise why not.
    pub fentry_refused: Option<String>,
    pub kprobe_refused: Option<String>,
    pub loaded_modules: Vec<String>,
    pub libibverbs: Option<PathBuf>,
    /// kallsyms, read only when some point needs it (a kprobe, or no BTF for its function):
    /// generating /proc/kallsyms is the slowest step of discovery, seconds in a TCG guest.
    #[serde(skip)]
    symbols: OnceLock<HashMap<String, String>>,
    #[serde(skip)]
    btf_funcs: HashSet<String>,
    pub tp_btf_page_fault: bool,
    /// Why an empty tp_btf program on the page-fault tracepoint could not attach, if it could not.
    pub tp_btf_refused: Option<String>,
    pub tracefs_page_fault: bool,
    /// Whether kernel code can be preempted here, which decides fentry against kprobes.
    pub preemption: Preemption,
}

/// Which attach method kernel functions get when both work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AttachPreference {
    /// kprobes where kernel code is preemptible, fentry elsewhere.
    #[default]
    Auto,
    Fentry,
    Kprobe,
}

/// The kernel's preemption model. It matters because a BPF program is not run again on a CPU
/// where it is already running: fentry/fexit programs run preemptible (migration disabled
/// only), so a task preempted inside one blocks that program on its CPU, and every call other
/// tasks make meanwhile is skipped (counted in recursion_misses, the event lost). kprobe programs
/// run with preemption off and cannot be blocked that way. Measured in the 7.3 guest
/// (preempt=lazy), 4 s dontneed storm: fentry skipped 1,361 calls, kprobes 0 (FINDINGS #8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preemption {
    /// none, voluntary, full, lazy or rt; None when the kernel does not say.
    pub mode: Option<String>,
    pub preemptible: bool,
    /// Where the answer came from.
    pub source: String,
}

impl Preemption {
    fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        Self::from_sources(
            read("/sys/kernel/debug/sched/preempt").as_deref(),
            read("/proc/cmdline").as_deref(),
            read("/proc/sys/kernel/version").as_deref().unwrap_or(""),
        )
    }

    /// From debugfs's current dynamic mode (`none voluntary (full) lazy`), else a `preempt=`
    /// boot option, else the build flags in the kernel's version string. A dynamic kernel that
    /// says nothing more counts as preemptible: losing events costs more than a kprobe does.
    pub fn from_sources(debugfs: Option<&str>, cmdline: Option<&str>, version: &str) -> Self {
        let model = |mode: &str, source: &str| Preemption {
            preemptible: !matches!(mode, "none" | "voluntary"),
            mode: Some(mode.to_string()),
            source: source.to_string(),
        };
        let current = debugfs.and_then(|t| {
            t.split_whitespace()
                .find_map(|w| w.strip_prefix('(').and_then(|w| w.strip_suffix(')')))
        });
        if let Some(mode) = current {
            return model(mode, "/sys/kernel/debug/sched/preempt");
        }
        let boot = cmdline.and_then(|c| {
            c.split_whitespace()
                .find_map(|w| w.strip_prefix("preempt="))
        });
        if let Some(mode) = boot.filter(|m| !m.is_empty()) {
            return model(mode, "preempt= on the kernel command line");
        }
        let flags: Vec<&str> = version.split_whitespace().collect();
        let has = |f: &str| flags.contains(&f);
        let source = "the kernel's version string".to_string();
        let (mode, preemptible) = if has("PREEMPT_RT") {
            (Some("rt"), true)
        } else if has("PREEMPT_LAZY") {
            (Some("lazy"), true)
        } else if has("PREEMPT") {
            (Some("full"), true)
        } else if has("PREEMPT_DYNAMIC") {
            (None, true)
        } else {
            (Some("voluntary"), false)
        };
        Preemption {
            mode: mode.map(String::from),
            preemptible,
            source,
        }
    }

    /// What this kernel's programs are best attached with, and why.
    pub fn function_method(&self, preference: AttachPreference) -> Method {
        match preference {
            AttachPreference::Fentry => Method::Fentry,
            AttachPreference::Kprobe => Method::Kprobe,
            AttachPreference::Auto if self.preemptible => Method::Kprobe,
            AttachPreference::Auto => Method::Fentry,
        }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// kallsyms names of the catalog's functions, base name -> the symbol to probe. Compiler clones
/// (`foo.isra.0`, `foo.constprop.0`) count when the plain name is absent.
fn kallsyms(wanted: &HashSet<&str>) -> HashMap<String, String> {
    let mut found = HashMap::new();
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return found;
    };
    for line in text.lines() {
        let mut cols = line.split_whitespace();
        let (Some(_), Some(kind), Some(name)) = (cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let base = name.split('.').next().unwrap_or(name);
        if wanted.contains(base) {
            let exact = base == name;
            let entry = found
                .entry(base.to_string())
                .or_insert_with(|| name.to_string());
            if exact {
                *entry = name.to_string();
            }
        }
    }
    found
}

fn loaded_modules() -> Vec<String> {
    std::fs::read_to_string("/proc/modules")
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// What the BTF of vmlinux and the loaded modules says: which catalog functions have FUNC
/// records (fentry needs them), and whether vmlinux types the page-fault tracepoint (tp_btf).
/// One pass, since parsing vmlinux BTF is the costly part of discovery.
struct BtfFacts {
    funcs: HashSet<String>,
    page_fault_tp: bool,
}

fn scan_btf(wanted: &HashSet<&str>, modules: &[String]) -> BtfFacts {
    let mut facts = BtfFacts {
        funcs: HashSet::new(),
        page_fault_tp: false,
    };
    // SAFETY: libbpf BTF handles are created and freed here only; names are valid C strings.
    unsafe {
        let base = libbpf_sys::btf__load_vmlinux_btf();
        if base.is_null() {
            return facts;
        }
        let typedef = c"btf_trace_page_fault_user";
        facts.page_fault_tp = libbpf_sys::btf__find_by_name_kind(
            base,
            typedef.as_ptr(),
            libbpf_sys::BTF_KIND_TYPEDEF,
        ) > 0;
        let mut handles = vec![base];
        for module in modules {
            if !Path::new("/sys/kernel/btf").join(module).exists() {
                continue;
            }
            let Ok(name) = CString::new(module.as_str()) else {
                continue;
            };
            let btf = libbpf_sys::btf__load_module_btf(name.as_ptr(), base);
            if !btf.is_null() {
                handles.push(btf);
            }
        }
        for func in wanted {
            let Ok(cname) = CString::new(*func) else {
                continue;
            };
            let kind = libbpf_sys::BTF_KIND_FUNC;
            if handles
                .iter()
                .any(|&b| libbpf_sys::btf__find_by_name_kind(b, cname.as_ptr(), kind) > 0)
            {
                facts.funcs.insert((*func).to_string());
            }
        }
        for &b in handles.iter().skip(1) {
            libbpf_sys::btf__free(b);
        }
        libbpf_sys::btf__free(base);
    }
    facts
}

fn tracefs_event(path: &str) -> bool {
    [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ]
    .iter()
    .any(|root| Path::new(root).join(path).exists())
}

/// libibverbs' shared object, where the dynamic loader would find it.
pub fn find_libibverbs() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/libibverbs.so.1",
        "/usr/lib64/libibverbs.so.1",
        "/lib/x86_64-linux-gnu/libibverbs.so.1",
        "/usr/lib/libibverbs.so.1",
        "/lib64/libibverbs.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A vmlinux function every supported kernel has in BTF, to test fentry and kprobes against.
const FEATURE_TARGETS: &[&str] = &[
    "__mmu_notifier_invalidate_range_start",
    "do_sys_openat2",
    "vfs_read",
];

/// Loads and attaches a trivial fentry and kprobe program: the only reliable way to know, since
/// kernels and policies refuse them in ways no config file shows.
fn feature_probe(btf: &HashSet<String>) -> (Option<String>, Option<String>) {
    let target = FEATURE_TARGETS.iter().find(|t| btf.contains(**t)).copied();
    let fentry = match target {
        None => Some("no test function in vmlinux BTF".to_string()),
        Some(target) => try_feature(target, true).err(),
    };
    let kprobe = try_feature(target.unwrap_or("vfs_read"), false).err();
    (fentry, kprobe)
}

fn try_feature(target: &str, fentry: bool) -> Result<(), String> {
    let mut storage = MaybeUninit::uninit();
    let mut open = FeatureSkelBuilder::default()
        .open(&mut storage)
        .map_err(|e| format!("open: {e}"))?;
    open.progs.feature_tp_btf.set_autoload(false);
    if fentry {
        open.progs.feature_kprobe.set_autoload(false);
        open.progs
            .feature_fentry
            .set_attach_target(0, Some(target.to_string()))
            .map_err(|e| format!("set target: {e}"))?;
    } else {
        open.progs.feature_fentry.set_autoload(false);
    }
    let skel = open
        .load()
        .map_err(|e| format!("load refused: {}", short_error(&e)))?;
    let link = if fentry {
        skel.progs.feature_fentry.attach()
    } else {
        skel.progs.feature_kprobe.attach_kprobe(false, target)
    };
    link.map(drop)
        .map_err(|e| format!("attach refused: {}", short_error(&e)))
}

/// An empty program attached to the page-fault tracepoint through tp_btf, detached on drop.
/// Discovery attaches one for real before choosing tp_btf; held attached, it measures what the
/// hook itself costs.
pub struct EmptyPageFaultProbe {
    // Dropped in this order: the link, the skeleton, then the room its object lives in.
    _link: libbpf_rs::Link,
    _skel: crate::feature_skel::FeatureSkel<'static>,
    _room: crate::ObjectRoom,
}

impl EmptyPageFaultProbe {
    pub fn attach() -> Result<Self, String> {
        let (room, storage) = crate::ObjectRoom::new();
        let mut open = FeatureSkelBuilder::default()
            .open(storage)
            .map_err(|e| format!("open: {e}"))?;
        open.progs.feature_fentry.set_autoload(false);
        open.progs.feature_kprobe.set_autoload(false);
        let skel = open
            .load()
            .map_err(|e| format!("load refused: {}", short_error(&e)))?;
        let link = skel
            .progs
            .feature_tp_btf
            .attach()
            .map_err(|e| format!("attach refused: {}", short_error(&e)))?;
        Ok(EmptyPageFaultProbe {
            _link: link,
            _skel: skel,
            _room: room,
        })
    }
}

pub(crate) fn short_error(e: &libbpf_rs::Error) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or(&text).to_string()
}

impl KernelFacts {
    /// Gathers the facts (needs root for kallsyms, BTF and the feature probe).
    pub fn gather() -> Self {
        let wanted = wanted_functions();
        let loaded_modules = loaded_modules();
        let btf = scan_btf(&wanted, &loaded_modules);
        let (fentry_refused, kprobe_refused) = crate::quiet_libbpf(|| feature_probe(&btf.funcs));
        KernelFacts {
            release: kernel_release(),
            fentry_refused,
            kprobe_refused,
            symbols: OnceLock::new(),
            btf_funcs: btf.funcs,
            loaded_modules,
            libibverbs: find_libibverbs(),
            tp_btf_refused: if btf.page_fault_tp {
                crate::quiet_libbpf(|| EmptyPageFaultProbe::attach().err())
            } else {
                None
            },
            tp_btf_page_fault: btf.page_fault_tp,
            tracefs_page_fault: tracefs_event("exceptions/page_fault_user"),
            preemption: Preemption::detect(),
        }
    }

    /// Decides each point's method, or why it is skipped.
    pub fn plan(
        &self,
        wanted: &dyn Fn(Point) -> bool,
        preference: AttachPreference,
    ) -> Vec<PointPlan> {
        Point::ALL
            .iter()
            .map(|&point| {
                let mut plan = PointPlan {
                    point,
                    group: point.group().name(),
                    target: point.target().to_string(),
                    method: None,
                    symbol: None,
                    status: Status::Planned,
                };
                if !wanted(point) {
                    plan.status = Status::Skipped("not selected".into());
                    return plan;
                }
                match self.decide(point, preference) {
                    Ok((method, symbol)) => {
                        plan.method = Some(method);
                        plan.symbol = Some(symbol);
                    }
                    Err(reason) => plan.status = Status::Skipped(reason),
                }
                plan
            })
            .collect()
    }

    fn decide(
        &self,
        point: Point,
        preference: AttachPreference,
    ) -> Result<(Method, String), String> {
        match point.group() {
            Group::Cpu => {
                if self.tp_btf_page_fault && self.tp_btf_refused.is_none() {
                    Ok((Method::TpBtf, point.target().into()))
                } else if self.tracefs_page_fault {
                    Ok((Method::Tracepoint, point.target().into()))
                } else {
                    Err("no page_fault_user tracepoint in BTF or tracefs".into())
                }
            }
            Group::Verbs => match &self.libibverbs {
                Some(_) => Ok((Method::Uprobe, point.target().into())),
                None => Err("libibverbs.so.1 not found".into()),
            },
            group => {
                let target = point.target();
                // A BTF record means the kernel has the function under its own name: kallsyms
                // can wait.
                if self.btf_funcs.contains(target) {
                    let preferred = self.preemption.function_method(preference);
                    let usable = |m: Method| match m {
                        Method::Kprobe => self.kprobe_refused.is_none(),
                        _ => self.fentry_refused.is_none(),
                    };
                    let other = match preferred {
                        Method::Kprobe => Method::Fentry,
                        _ => Method::Kprobe,
                    };
                    if let Some(method) = [preferred, other].into_iter().find(|&m| usable(m)) {
                        return Ok((method, target.to_string()));
                    }
                }
                let module_absent = group.module().filter(|m| {
                    !self.loaded_modules.iter().any(|l| l == m)
                        && !Path::new("/sys/module").join(m).exists()
                });
                if let Some(m) = module_absent {
                    return Err(format!("module {m} not loaded"));
                }
                let symbols = self.symbols.get_or_init(|| kallsyms(&wanted_functions()));
                let Some(symbol) = symbols.get(target) else {
                    return Err(format!(
                        "{target} not in this kernel (renamed, inlined or absent)"
                    ));
                };
                let fentry = match &self.fentry_refused {
                    None => format!("{target} has no BTF"),
                    Some(why) => format!("fentry {why}"),
                };
                match &self.kprobe_refused {
                    None => Ok((Method::Kprobe, symbol.clone())),
                    Some(why) => Err(format!("{fentry}; kprobe {why}")),
                }
            }
        }
    }
}

/// The kernel functions discovery looks up: the catalog's and the feature probe's.
fn wanted_functions() -> HashSet<&'static str> {
    Point::ALL
        .iter()
        .filter(|p| p.group().is_kernel_function())
        .map(|p| p.target())
        .chain(FEATURE_TARGETS.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preemption_model_comes_from_the_strongest_source() {
        let version = "#1 SMP PREEMPT_DYNAMIC Debian 7.3.4-1~bpo13+1 (2026-11-15)";
        let p = Preemption::from_sources(Some("full (lazy) \n"), Some("preempt=none"), version);
        assert_eq!(p.mode.as_deref(), Some("lazy"));
        assert!(p.preemptible);
        assert_eq!(p.function_method(AttachPreference::Auto), Method::Kprobe);
        assert_eq!(p.function_method(AttachPreference::Fentry), Method::Fentry);

        let p = Preemption::from_sources(None, Some("root=/dev/vda preempt=voluntary"), version);
        assert_eq!(
            (p.mode.as_deref(), p.preemptible),
            (Some("voluntary"), false)
        );
        assert_eq!(p.function_method(AttachPreference::Auto), Method::Fentry);
        assert_eq!(p.function_method(AttachPreference::Kprobe), Method::Kprobe);

        // Dynamic with nothing more said: assumed preemptible.
        let p = Preemption::from_sources(None, Some("quiet"), version);
        assert_eq!((p.mode, p.preemptible), (None, true));
        let p = Preemption::from_sources(None, None, "#1 SMP PREEMPT_RT Thu");
        assert_eq!((p.mode.as_deref(), p.preemptible), (Some("rt"), true));
        let p = Preemption::from_sources(None, None, "#1 SMP Debian 6.1.0");
        assert!(!p.preemptible);
    }
}
