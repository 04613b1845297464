//! CPU-side actions on ODP memory while the device uses it. Everything about one action lives
//! here: its name in a scenario, what it does to the pages, whether CPU writes must wait it out,
//! its default hold, the memory it needs, and the operation itself (`perform`, over the
//! mapping's memory operations in `crate::memory`). A new action is a variant and its arms.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::report::ActionRecord;
use serde::{Deserialize, Serialize};

use super::scenario::{ActionSpec, Window};
use super::{sleep_until, Shared, Target};
use crate::error::{Error, Result};
use crate::memory::{Backing, Mapping};
use crate::trace::monotonic_ns;

/// What the CPU side does to the ODP memory (a scenario's `[[invalidate]]` `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// madvise(MADV_DONTNEED): private pages dropped (they read back as zero).
    Dontneed,
    /// madvise(MADV_FREE): lazily freed; contents may vanish under memory pressure.
    Free,
    /// madvise(MADV_PAGEOUT): reclaim now (needs swap for anonymous memory).
    Pageout,
    /// madvise(MADV_COLD): deactivate.
    Cold,
    /// mmap(MAP_FIXED) over the range: the old pages are unmapped and fresh ones mapped at the
    /// same address in one step.
    Remap,
    /// mprotect to read-only and back.
    Mprotect,
    /// fork(); the child writes to every page of the range (copy-on-write), then exits.
    Fork,
    /// madvise(MADV_COLLAPSE): small pages into a transparent huge page (THP backing).
    Collapse,
    /// Split the transparent huge pages in the range, contents kept (debugfs
    /// `split_huge_pages`).
    Split,
    /// move_pages(2) to the other NUMA node, turn about (needs two nodes with memory).
    Migrate,
    /// mremap(MREMAP_DONTUNMAP) of the pages to another address, which is then unmapped: the
    /// range stays mapped and reads as zero (private anonymous memory only).
    Mremap,
    /// The range zeroed (identical pages), MADV_MERGEABLE, up to `hold` waiting for ksmd to merge
    /// it, then MADV_UNMERGEABLE (private anonymous memory only; ksmd is switched on for the run).
    Ksm,
}

impl Action {
    /// Every action, in the order of their wire codes (`code`): a new one goes at the end, and
    /// reordering them is a change of the peer protocol.
    pub const ALL: [Action; 12] = [
        Action::Dontneed,
        Action::Free,
        Action::Pageout,
        Action::Cold,
        Action::Remap,
        Action::Mprotect,
        Action::Fork,
        Action::Collapse,
        Action::Split,
        Action::Migrate,
        Action::Mremap,
        Action::Ksm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Dontneed => "dontneed",
            Action::Free => "free",
            Action::Pageout => "pageout",
            Action::Cold => "cold",
            Action::Remap => "remap",
            Action::Mprotect => "mprotect",
            Action::Fork => "fork",
            Action::Collapse => "collapse",
            Action::Split => "split",
            Action::Migrate => "migrate",
            Action::Mremap => "mremap",
            Action::Ksm => "ksm",
        }
    }
}

impl Action {
    /// Whether the pages it covered may read back as zero afterwards: dropped private pages
    /// come back zero-filled, which is no corruption.
    pub fn destroys_contents(self, backing: &Backing) -> bool {
        let private = matches!(
            backing,
            Backing::Anonymous | Backing::Thp | Backing::Hugetlb
        );
        match self {
            Action::Dontneed | Action::Free | Action::Mremap | Action::Ksm => private,
            Action::Remap => private || *backing == Backing::Shared,
            Action::Pageout
            | Action::Cold
            | Action::Mprotect
            | Action::Fork
            | Action::Collapse
            | Action::Split
            | Action::Migrate => false,
        }
    }

    /// The notifier causes (`enum mmu_notifier_event` names) the kernel gives the invalidation
    /// this action makes, as its code paths set them: zap (dontneed, free), reclaim and
    /// migration's unmap (pageout, migrate), huge-page collapse and split all CLEAR; munmap and
    /// mremap's page-table move UNMAP; mprotect PROTECTION_VMA; fork write-protecting the
    /// parent's copy-on-write pages PROTECTION_PAGE; ksmd's write-protect and merge CLEAR.
    /// Empty for cold, which only ages pages and invalidates nothing.
    pub fn invalidation_causes(self) -> &'static [&'static str] {
        match self {
            Action::Dontneed
            | Action::Free
            | Action::Pageout
            | Action::Collapse
            | Action::Split
            | Action::Migrate
            | Action::Ksm => &["CLEAR"],
            Action::Remap | Action::Mremap => &["UNMAP"],
            Action::Mprotect => &["PROTECTION_VMA"],
            Action::Fork => &["PROTECTION_PAGE"],
            Action::Cold => &[],
        }
    }

    /// Whether its invalidation comes from a kernel thread rather than the acting task: ksm's
    /// merge is ksmd's, while its own unmerge (CPU faults breaking the merge) is a follow-up
    /// that must not count as the action seen.
    pub fn invalidated_by_kernel_thread(self) -> bool {
        self == Action::Ksm
    }

    /// Whether CPU writes into the MR must wait while it runs: they would fault on mprotect's
    /// read-only window, and would make ksm's zeroed pages differ before ksmd compares them.
    pub fn holds_cpu_writes(self) -> bool {
        matches!(self, Action::Mprotect | Action::Ksm)
    }

    /// How long it holds its state when the scenario does not say: mprotect's read-only
    /// window, ksm's longest wait for the merge.
    pub fn default_hold(self) -> Duration {
        match self {
            Action::Ksm => Duration::from_secs(1),
            _ => Duration::from_micros(200),
        }
    }

    /// Works only on private anonymous memory (mremap leaves it zero-filled; ksm merges only
    /// anonymous pages).
    pub fn needs_private_anonymous(self) -> bool {
        matches!(self, Action::Mremap | Action::Ksm)
    }

    /// Whether `odp-ctl serve` can run it on the region it serves while a peer's traffic lands
    /// there: the madvise family and page moves, which keep the mapping and the process as they
    /// are. Not mprotect (a read-only window fails the peer's WRITEs), fork (of the service),
    /// remap or mremap (the mapping under the MR replaced), or ksm (ksmd for a whole host).
    pub fn runs_on_a_peer(self) -> bool {
        matches!(
            self,
            Action::Dontneed
                | Action::Free
                | Action::Pageout
                | Action::Cold
                | Action::Collapse
                | Action::Split
                | Action::Migrate
        )
    }

    /// The storm's wire code between the two sides of `stress --peer` (its place in ALL).
    pub fn code(self) -> u64 {
        Action::ALL.iter().position(|&a| a == self).unwrap_or(0) as u64
    }

    pub fn from_code(code: u64) -> Option<Action> {
        Action::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// Whether failing it leaves the memory unusable for the rest of the run: a failed
    /// mprotect back to read-write would fault every later CPU write.
    fn failure_is_fatal(self) -> bool {
        self == Action::Mprotect
    }

    /// Does the action once on [offset, offset + len) of `m`; returns the pages it moved or
    /// merged, for the actions that can change nothing.
    pub(crate) fn perform(
        self,
        m: &Mapping,
        offset: usize,
        len: usize,
        hold: Duration,
        nodes: &mut NodeCycle,
    ) -> Result<Option<usize>> {
        match self {
            Action::Dontneed => {
                m.madvise(offset, len, libc::MADV_DONTNEED, "madvise(MADV_DONTNEED)")
            }
            Action::Free => m.madvise(offset, len, libc::MADV_FREE, "madvise(MADV_FREE)"),
            Action::Pageout => m.madvise(offset, len, libc::MADV_PAGEOUT, "madvise(MADV_PAGEOUT)"),
            Action::Cold => m.madvise(offset, len, libc::MADV_COLD, "madvise(MADV_COLD)"),
            Action::Remap => m.remap(offset, len),
            Action::Mprotect => m.protect(offset, len, false).and_then(|()| {
                std::thread::sleep(hold);
                m.protect(offset, len, true)
            }),
            Action::Fork => m.fork_and_touch(offset, len),
            Action::Collapse => {
                m.madvise(offset, len, libc::MADV_COLLAPSE, "madvise(MADV_COLLAPSE)")
            }
            Action::Split => m.split_huge_pages(offset, len),
            Action::Migrate => return m.migrate(offset, len, nodes.next()?).map(Some),
            Action::Mremap => m.move_pages_out(offset, len),
            Action::Ksm => return m.ksm_merge(offset, len, hold).map(Some),
        }
        .map(|()| None)
    }
}

/// The NUMA nodes with memory, taken in turn by migrate (checked only when one is needed).
pub(crate) struct NodeCycle {
    nodes: Vec<i32>,
    turn: usize,
}

impl NodeCycle {
    pub(crate) fn for_action(action: Action) -> Result<NodeCycle> {
        let nodes = if action == Action::Migrate {
            let nodes = numa_nodes_with_memory();
            if nodes.len() < 2 {
                return Err(Error::os(
                    "migrate needs two NUMA nodes with memory (see /sys/devices/system/node/has_memory)",
                    libc::EOPNOTSUPP,
                ));
            }
            nodes
        } else {
            Vec::new()
        };
        Ok(NodeCycle { nodes, turn: 0 })
    }

    fn next(&mut self) -> Result<i32> {
        self.turn += 1;
        self.nodes
            .get(self.turn % self.nodes.len().max(1))
            .copied()
            .ok_or_else(|| Error::invalid("no NUMA node to migrate to"))
    }
}

pub(super) fn action_worker(
    spec: &ActionSpec,
    name: &str,
    target: &Target,
    shared: &Shared,
    seed: u64,
) -> Result<()> {
    let page = shared.page;
    let window = spec.range.unwrap_or(Window {
        offset: 0,
        len: target.mapping.len(),
    });
    let len = spec.length.0;
    let step = spec.align.map_or(page, |a| a.0);
    let slots = (window.len - len) / step + 1;
    let mut rng = SmallRng::seed_from_u64(seed);
    let interval = 1.0 / spec.rate;
    let destroys = spec.action.destroys_contents(target.mapping.backing());
    let mut nodes = NodeCycle::for_action(spec.action)?;
    // Shared, not copied, into every record: an allocation per action showed in the rate.
    let worker: Arc<str> = name.into();
    let mr_name: Arc<str> = target.name.as_str().into();
    // The schedule runs on the same clock as the action timestamps, so pacing costs no clock
    // reads of its own (they dominated the generator's overhead in the VM).
    let mut next_ns = monotonic_ns();
    while !shared.control.stopping() {
        if !shared.control.active(spec.name.as_deref()) {
            std::thread::sleep(Duration::from_millis(5));
            next_ns = monotonic_ns();
            continue;
        }
        let offset = window.offset + rng.random_range(0..slots) * step;
        if destroys {
            target.bump(offset, len, page);
        }
        let start_ns = monotonic_ns();
        let m = &target.mapping;
        let exclusive = spec.action.holds_cpu_writes();
        let _writes_held = exclusive
            .then(|| target.exclusive_cpu_writes())
            .transpose()?;
        let result = spec.action.perform(m, offset, len, spec.hold(), &mut nodes);
        let end_ns = monotonic_ns();
        if destroys {
            target.bump(offset, len, page);
        }
        let fatal = spec.action.failure_is_fatal() && result.is_err();
        let record = ActionRecord {
            action: spec.action,
            worker: Arc::clone(&worker),
            mr: Arc::clone(&mr_name),
            addr: m.addr() + offset as u64,
            len,
            start_ns,
            end_ns,
            pages_moved: result.as_ref().ok().copied().flatten(),
            error: result.as_ref().err().map(|e| e.to_string()),
        };
        if let Ok(mut log) = shared.log.lock() {
            log.push(record);
        }
        shared.counters.actions.fetch_add(1, Ordering::Relaxed);
        if fatal {
            return result.map(drop);
        }
        let spread = 1.0 + spec.jitter * (rng.random::<f64>() * 2.0 - 1.0);
        next_ns += (interval * spread * 1e9) as u64;
        if next_ns + 1_000_000_000 < end_ns {
            // Behind by more than a second: do not try to catch up in a burst.
            next_ns = end_ns;
        } else if next_ns > end_ns {
            sleep_until(
                Instant::now() + Duration::from_nanos(next_ns - end_ns),
                &shared.control,
            );
        }
    }
    Ok(())
}

/// NUMA nodes with memory, from sysfs ("0-1", "0,2-3").
fn numa_nodes_with_memory() -> Vec<i32> {
    let text = std::fs::read_to_string("/sys/devices/system/node/has_memory").unwrap_or_default();
    text.trim()
        .split(',')
        .filter(|part| !part.is_empty())
        .flat_map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            match (lo.parse::<i32>(), hi.parse::<i32>()) {
                (Ok(lo), Ok(hi)) => (lo..=hi).collect(),
                _ => Vec::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_memory_reads_back_zero_after_dropping() {
        assert!(Action::Dontneed.destroys_contents(&Backing::Anonymous));
        assert!(!Action::Dontneed.destroys_contents(&Backing::Shared));
        assert!(!Action::Dontneed.destroys_contents(&Backing::File(None)));
        assert!(Action::Remap.destroys_contents(&Backing::Shared));
        assert!(!Action::Remap.destroys_contents(&Backing::File(None)));
        assert!(!Action::Fork.destroys_contents(&Backing::Anonymous));
        assert!(!Action::Mprotect.destroys_contents(&Backing::Thp));
    }

    #[test]
    fn every_action_has_its_own_wire_code_and_storm_thread_name() {
        let mut names = std::collections::HashSet::new();
        for (i, action) in Action::ALL.into_iter().enumerate() {
            assert_eq!(action.code(), i as u64);
            assert_eq!(Action::from_code(action.code()), Some(action));
            // Linux keeps 15 bytes of a thread's name: the storm's must stay whole and apart.
            let thread = crate::peer::storm_thread(action);
            assert!(thread.len() <= 15, "{thread}");
            assert!(names.insert(thread));
        }
        assert_eq!(Action::from_code(Action::ALL.len() as u64), None);
        assert_eq!(Action::from_code(u64::MAX), None);
        // Protocol 5's codes: a peer speaking it reads these numbers.
        assert_eq!(Action::Dontneed.code(), 0);
        assert_eq!(Action::Migrate.code(), 9);
    }

    #[test]
    fn a_peer_runs_only_actions_that_leave_its_process_and_mapping_as_they_are() {
        let on_a_peer: Vec<&str> = Action::ALL
            .into_iter()
            .filter(|a| a.runs_on_a_peer())
            .map(Action::name)
            .collect();
        assert_eq!(
            on_a_peer,
            ["dontneed", "free", "pageout", "cold", "collapse", "split", "migrate"]
        );
        assert_eq!(
            crate::peer::peer_actions(),
            "dontneed, free, pageout, cold, collapse, split, migrate"
        );
    }

    /// The VM stress tests of these actions count on it: no zero page is ever excused for them,
    /// so a page they lost would be a mismatch.
    #[test]
    fn actions_that_keep_contents_never_excuse_a_zero_page() {
        let backings = [
            Backing::Anonymous,
            Backing::Thp,
            Backing::Hugetlb,
            Backing::Shared,
            Backing::File(None),
        ];
        for action in [
            Action::Fork,
            Action::Collapse,
            Action::Split,
            Action::Migrate,
            Action::Mprotect,
            Action::Pageout,
            Action::Cold,
        ] {
            for b in &backings {
                assert!(!action.destroys_contents(b), "{action:?} over {b:?}");
            }
        }
    }
}
