//! Memory the toolkit maps for ODP registration, in each backing that changes how the kernel
//! invalidates it (anonymous, THP, hugetlb, page cache, shared).
//!
//! A [`Mapping`] is raw memory, not a Rust slice: the device may write into it at any time while
//! work requests are posted, so all access goes through explicit copies at known points.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// How a buffer is backed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "path")]
pub enum Backing {
    /// Private anonymous memory: the common case.
    Anonymous,
    /// Private anonymous memory advised with MADV_HUGEPAGE, so THP split/collapse come into play.
    Thp,
    /// MAP_HUGETLB pages; needs pages reserved in /proc/sys/vm/nr_hugepages and, for ODP,
    /// registration with IBV_ACCESS_HUGETLB.
    Hugetlb,
    /// A MAP_SHARED file mapping (page cache); `None` makes an unlinked file in the temp dir.
    File(Option<PathBuf>),
    /// MAP_SHARED anonymous memory (survives fork shared, shmem-backed).
    Shared,
}

impl Backing {
    /// Parses the names the CLI and scenario files use.
    pub fn parse(name: &str, file: Option<PathBuf>) -> Result<Self> {
        Ok(match name {
            "anon" | "anonymous" => Backing::Anonymous,
            "thp" => Backing::Thp,
            "hugetlb" => Backing::Hugetlb,
            "file" => Backing::File(file),
            "shared" => Backing::Shared,
            other => {
                return Err(Error::invalid(format!(
                    "unknown backing {other:?}: use anon, thp, hugetlb, file or shared"
                )))
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backing::Anonymous => "anon",
            Backing::Thp => "thp",
            Backing::Hugetlb => "hugetlb",
            Backing::File(_) => "file",
            Backing::Shared => "shared",
        }
    }
}

/// A mapped buffer, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: NonNull<u8>,
    len: usize,
    backing: Backing,
    // Keeps a named file open for the mapping's lifetime; unnamed ones are already unlinked.
    _file: Option<File>,
}

// SAFETY: a Mapping is a plain address range; it has no thread affinity, and every access to its
// bytes goes through methods that take &self/&mut self with explicit copies.
unsafe impl Send for Mapping {}
// SAFETY: see Send; shared references only copy bytes in or out at the caller's chosen time.
unsafe impl Sync for Mapping {}

/// move_pages(2) flag from <numaif.h>, which the libc crate does not carry: move pages used by
/// this process only.
const MPOL_MF_MOVE: libc::c_int = 1 << 1;

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// The default huge page size from /proc/meminfo (2 MiB on x86-64 when unreadable).
pub fn huge_page_size() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Hugepagesize:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
        })
        .map_or(2 << 20, |kib| kib * 1024)
}

impl Mapping {
    /// Whether a buffer of `len` bytes can be asked for in `backing` at all, before anything is
    /// mapped (or any device opened). The length must be non-zero; for hugetlb it must be a
    /// multiple of the huge page size (the kernel would round it silently otherwise, and the
    /// registered range would not match what the user asked for).
    pub fn check_len(len: usize, backing: &Backing) -> Result<()> {
        if len == 0 {
            return Err(Error::invalid("buffer length must be greater than zero"));
        }
        if len > isize::MAX as usize {
            return Err(Error::invalid(format!(
                "buffer length {len} overflows the address space"
            )));
        }
        if *backing == Backing::Hugetlb && len % huge_page_size() != 0 {
            return Err(Error::invalid(format!(
                "hugetlb buffers must be a multiple of the huge page size ({} bytes); got {len}",
                huge_page_size()
            )));
        }
        Ok(())
    }

    /// Maps `len` bytes with the given backing, once `check_len` allows them.
    pub fn new(len: usize, backing: Backing) -> Result<Self> {
        Self::check_len(len, &backing)?;
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let mut file = None;
        let mut op = "mmap";
        match &backing {
            Backing::Anonymous | Backing::Thp => {}
            Backing::Hugetlb => {
                flags |= libc::MAP_HUGETLB;
                op = "mmap hugetlb";
            }
            Backing::Shared => flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            Backing::File(path) => {
                let f = match path {
                    Some(path) => std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(path)
                        .map_err(|e| {
                            Error::invalid(format!("cannot open {}: {e}", path.display()))
                        })?,
                    None => tempfile::tempfile()
                        .map_err(|e| Error::invalid(format!("cannot create a temp file: {e}")))?,
                };
                let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if file_len < len as u64 {
                    f.set_len(len as u64).map_err(|e| {
                        Error::invalid(format!("cannot size the backing file: {e}"))
                    })?;
                }
                flags = libc::MAP_SHARED;
                file = Some(f);
                op = "mmap file";
            }
        }
        let fd = file.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a fresh mapping at a kernel-chosen address; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::last_os(op));
        }
        let addr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::last_os(op))?;
        let mapping = Mapping {
            addr,
            len,
            backing,
            _file: file,
        };
        if mapping.backing == Backing::Thp {
            mapping.madvise(0, len, libc::MADV_HUGEPAGE, "madvise(MADV_HUGEPAGE)")?;
        }
        Ok(mapping)
    }

    pub fn addr(&self) -> u64 {
        self.addr.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Checks that `offset..offset+len` lies inside the mapping and returns its end.
    pub fn check_range(&self, offset: usize, len: usize) -> Result<usize> {
        crate::error::checked_end(offset, len, self.len, "buffer")
    }

    /// Copies `data` into the buffer at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        // SAFETY: the range was checked to lie inside this live mapping, and `data` is a
        // separate Rust allocation, so the two cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Copies bytes out of the buffer at `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len())?;
        // SAFETY: as in `write`, with the direction reversed.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.addr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// Returns a copy of `len` bytes at `offset`.
    pub fn to_vec(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        self.read(offset, &mut out)?;
        Ok(out)
    }

    /// Fills the whole buffer with one byte.
    pub fn fill(&self, byte: u8) {
        // SAFETY: the whole live mapping is writable (PROT_READ|PROT_WRITE).
        unsafe { std::ptr::write_bytes(self.addr.as_ptr(), byte, self.len) };
    }

    /// Writes one byte per page so every page is present on the CPU side.
    pub fn touch(&self) {
        let step = page_size();
        for offset in (0..self.len).step_by(step) {
            // SAFETY: offset < len, inside the live writable mapping; volatile keeps the store.
            unsafe {
                let p = self.addr.as_ptr().add(offset);
                std::ptr::write_volatile(p, std::ptr::read_volatile(p));
            }
        }
    }

    /// madvise over a sub-range; `what` names the call in errors.
    pub fn madvise(
        &self,
        offset: usize,
        len: usize,
        advice: i32,
        what: &'static str,
    ) -> Result<()> {
        self.check_range(offset, len)?;
        // SAFETY: the range lies inside this mapping; the advices the toolkit uses may drop page
        // contents (DONTNEED) but never unmap, so the mapping stays valid.
        let rc = unsafe { libc::madvise(self.addr.as_ptr().add(offset).cast(), len, advice) };
        if rc != 0 {
            return Err(Error::last_os(what));
        }
        Ok(())
    }
}

impl Mapping {
    fn sub_range(&self, offset: usize, len: usize) -> Result<*mut u8> {
        self.check_range(offset, len)?;
        let page = page_size();
        if offset % page != 0 || len % page != 0 {
            return Err(Error::invalid("the range must be page-aligned"));
        }
        // SAFETY: offset was checked to lie inside the mapping.
        Ok(unsafe { self.addr.as_ptr().add(offset) })
    }

    /// Replaces a sub-range with fresh pages of the same backing at the same address: one
    /// mmap(MAP_FIXED), in which the kernel unmaps the old pages (an UNMAP invalidation) and maps
    /// new ones, so the address is never free for anything else to take. Private memory reads
    /// back as zero afterwards; a file mapping shows the file's contents again.
    pub fn remap(&self, offset: usize, len: usize) -> Result<()> {
        let at = self.sub_range(offset, len)?;
        let (flags, fd, file_offset) = match &self.backing {
            Backing::Anonymous | Backing::Thp => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0),
            Backing::Hugetlb => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                -1,
                0,
            ),
            Backing::Shared => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0),
            Backing::File(_) => (
                libc::MAP_SHARED,
                self._file.as_ref().map_or(-1, |f| f.as_raw_fd()),
                offset as libc::off_t,
            ),
        };
        // SAFETY: MAP_FIXED over a page-aligned sub-range of this mapping only; the range stays
        // mapped read-write, and all access to it goes through explicit copies.
        let ptr = unsafe {
            libc::mmap(
                at.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED,
                fd,
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::last_os("mmap(MAP_FIXED)"));
        }
        if self.backing == Backing::Thp {
            self.madvise(offset, len, libc::MADV_HUGEPAGE, "madvise(MADV_HUGEPAGE)")?;
        }
        Ok(())
    }

    /// Moves a sub-range's pages away with mremap(MREMAP_DONTUNMAP) to a scratch address, then
    /// unmaps the scratch. The range stays mapped (so the device never meets a hole) and private
    /// memory reads back as zero, but unlike DONTNEED the kernel gets there through mremap's
    /// page-table move, which invalidates the range as UNMAP while its VMA lives on.
    pub fn move_pages_out(&self, offset: usize, len: usize) -> Result<()> {
        let at = self.sub_range(offset, len)?;
        // SAFETY: a fresh PROT_NONE reservation the kernel places; nothing else refers to it.
        let scratch = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if scratch == libc::MAP_FAILED {
            return Err(Error::last_os("mmap (mremap scratch)"));
        }
        // SAFETY: moves a page-aligned sub-range of this mapping onto our own reservation;
        // with DONTUNMAP the source stays mapped read-write, so the mapping stays valid.
        let moved = unsafe {
            libc::mremap(
                at.cast(),
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP,
                scratch,
            )
        };
        let result = if moved == libc::MAP_FAILED {
            Err(Error::last_os("mremap(MREMAP_DONTUNMAP)"))
        } else {
            Ok(())
        };
        // SAFETY: the scratch range (the reservation, or the pages moved onto it) is ours alone.
        unsafe { libc::munmap(scratch, len) };
        result
    }

    /// Zeroes a sub-range so its pages are identical, marks it MADV_MERGEABLE and waits up to
    /// `wait` for ksmd to merge them (each merge write-protects and replaces a page: a CLEAR
    /// invalidation), then MADV_UNMERGEABLE (copy-on-write broken again). Returns how many pages
    /// were seen merged; needs ksmd running (see [`KsmDaemon`]).
    pub fn ksm_merge(&self, offset: usize, len: usize, wait: std::time::Duration) -> Result<usize> {
        let at = self.sub_range(offset, len)?;
        let pages = len / page_size();
        // SAFETY: the sub-range lies inside this mapping, which is mapped read-write; the
        // device may write it concurrently, which makes a page unmergeable, never unsafe.
        unsafe { std::ptr::write_bytes(at, 0, len) };
        let before = ksm_merging_pages()?;
        self.madvise(offset, len, libc::MADV_MERGEABLE, "madvise(MADV_MERGEABLE)")?;
        let deadline = std::time::Instant::now() + wait;
        let mut merged = 0;
        loop {
            merged = merged.max(ksm_merging_pages()?.saturating_sub(before));
            if merged >= pages || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.madvise(
            offset,
            len,
            libc::MADV_UNMERGEABLE,
            "madvise(MADV_UNMERGEABLE)",
        )?;
        Ok(merged)
    }

    /// mprotect over a sub-range. While it is read-only, CPU writes to it would fault: callers
    /// keep their own writes out of that window.
    pub fn protect(&self, offset: usize, len: usize, writable: bool) -> Result<()> {
        let at = self.sub_range(offset, len)?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a page-aligned sub-range of this mapping; nothing is unmapped.
        if unsafe { libc::mprotect(at.cast(), len, prot) } != 0 {
            return Err(Error::last_os("mprotect"));
        }
        Ok(())
    }

    /// Moves the sub-range's pages to NUMA node `node` with move_pages(2), contents kept; returns
    /// how many pages moved (pages not present, or already there, do not).
    pub fn migrate(&self, offset: usize, len: usize, node: i32) -> Result<usize> {
        let at = self.sub_range(offset, len)?;
        let page = page_size();
        let pages: Vec<*mut libc::c_void> = (0..len / page)
            // SAFETY: each address lies inside the checked sub-range; only passed to the kernel.
            .map(|i| unsafe { at.add(i * page) }.cast())
            .collect();
        let move_pages = |nodes: Option<&[i32]>, status: &mut [i32]| {
            // SAFETY: the arrays hold pages.len() entries each and outlive the call (a null
            // node list only queries); pid 0 is this process.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_move_pages,
                    0,
                    pages.len(),
                    pages.as_ptr(),
                    nodes.map_or(std::ptr::null(), |n| n.as_ptr()),
                    status.as_mut_ptr(),
                    MPOL_MF_MOVE,
                )
            };
            if rc < 0 {
                return Err(Error::last_os("move_pages"));
            }
            Ok(())
        };
        // Where each page is now (a negative errno for pages not present), then the move.
        let mut before = vec![0i32; pages.len()];
        move_pages(None, &mut before)?;
        let mut after = vec![0i32; pages.len()];
        move_pages(Some(&vec![node; pages.len()]), &mut after)?;
        Ok(before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b >= 0 && **b != node && **a == node)
            .count())
    }

    /// Splits the transparent huge pages in a sub-range into base pages, keeping their
    /// contents, through debugfs (`split_huge_pages`: "pid,start,end"; needs debugfs mounted).
    pub fn split_huge_pages(&self, offset: usize, len: usize) -> Result<()> {
        let at = self.sub_range(offset, len)? as u64;
        let request = format!("{},{at:#x},{:#x}", std::process::id(), at + len as u64);
        std::fs::write("/sys/kernel/debug/split_huge_pages", request).map_err(|e| {
            Error::os(
                "writing /sys/kernel/debug/split_huge_pages",
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })
    }

    /// fork(); the child writes every page of the sub-range (breaking copy-on-write on its side)
    /// and exits; the parent waits for it.
    pub fn fork_and_touch(&self, offset: usize, len: usize) -> Result<()> {
        let at = self.sub_range(offset, len)?;
        let page = page_size();
        // SAFETY: the child only stores to its own copy of this mapping and calls _exit: no
        // locks, no allocation, nothing of the parent's other threads.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::last_os("fork"));
        }
        if pid == 0 {
            // SAFETY: see above; the range is inside the mapping, inherited by the child.
            unsafe {
                for off in (0..len).step_by(page) {
                    let p = at.add(off);
                    std::ptr::write_volatile(p, std::ptr::read_volatile(p) ^ 0xff);
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting on our own child; status is a valid out-pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited != pid {
            return Err(Error::last_os("waitpid"));
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(Error::os(
                "the forked child (it died or failed)",
                libc::ECHILD,
            ));
        }
        Ok(())
    }
}

/// Pages of this process that KSM has merged (`/proc/self/ksm_merging_pages`, Linux 6.1+).
fn ksm_merging_pages() -> Result<usize> {
    let path = "/proc/self/ksm_merging_pages";
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::os(path, e.raw_os_error().unwrap_or(libc::ENOENT)))?;
    text.trim()
        .parse()
        .map_err(|_| Error::invalid(format!("{path}: unexpected {text:?}")))
}

/// ksmd switched on and told to scan fast for the length of a run; the settings it found are
/// put back on drop, since they are the whole system's.
#[derive(Debug)]
pub struct KsmDaemon {
    saved: Vec<(&'static str, String)>,
}

impl KsmDaemon {
    const DIR: &'static str = "/sys/kernel/mm/ksm";

    pub fn start() -> Result<Self> {
        let mut daemon = KsmDaemon { saved: Vec::new() };
        // Scanning fast first, so ksmd's first pass is already a fast one.
        // Zero pages merge into one KSM page, not the shared zero page, so they show in
        // ksm_merging_pages.
        for (knob, value) in [
            ("use_zero_pages", "0"),
            ("sleep_millisecs", "0"),
            ("pages_to_scan", "10000"),
            ("run", "1"),
        ] {
            let path = format!("{}/{knob}", Self::DIR);
            let old = std::fs::read_to_string(&path).map_err(|e| {
                Error::os(
                    "reading /sys/kernel/mm/ksm (a kernel with KSM is needed)",
                    e.raw_os_error().unwrap_or(libc::ENOENT),
                )
            })?;
            std::fs::write(&path, value).map_err(|e| {
                Error::os(
                    "writing /sys/kernel/mm/ksm (needs root)",
                    e.raw_os_error().unwrap_or(libc::EACCES),
                )
            })?;
            daemon.saved.push((knob, old.trim().to_string()));
        }
        Ok(daemon)
    }
}

impl Drop for KsmDaemon {
    fn drop(&mut self) {
        // Restored in reverse, so ksmd stops before its pace slows.
        for (knob, old) in self.saved.iter().rev() {
            let _ = std::fs::write(format!("{}/{knob}", Self::DIR), old);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly what mmap returned, and this is the only unmap.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_length_is_rejected() {
        let err = Mapping::new(0, Backing::Anonymous).expect_err("must be refused");
        assert!(err.to_string().contains("greater than zero"), "{err}");
    }

    #[test]
    fn overflowing_length_is_rejected_before_mmap() {
        let err = Mapping::new(usize::MAX, Backing::Anonymous).expect_err("must be refused");
        assert!(err.to_string().contains("overflows"), "{err}");
    }

    #[test]
    fn hugetlb_length_must_be_whole_huge_pages() {
        let err = Mapping::new(4096, Backing::Hugetlb).expect_err("must be refused");
        assert!(
            err.to_string().contains("multiple of the huge page size"),
            "{err}"
        );
    }

    #[test]
    fn every_backing_round_trips_bytes() {
        for backing in [
            Backing::Anonymous,
            Backing::Thp,
            Backing::Shared,
            Backing::File(None),
        ] {
            let m = Mapping::new(3 * page_size() + 17, backing.clone()).expect("map");
            let data: Vec<u8> = (0..m.len()).map(|i| (i * 7 + 3) as u8).collect();
            m.write(0, &data).expect("write");
            assert_eq!(m.to_vec(0, m.len()).expect("read"), data, "{backing:?}");
        }
    }

    #[test]
    fn out_of_range_copies_are_refused() {
        let m = Mapping::new(4096, Backing::Anonymous).expect("map");
        assert!(m.write(4090, &[0; 7]).is_err());
        assert!(m.check_range(usize::MAX, 2).is_err());
        assert!(m.check_range(0, 4096).is_ok());
    }

    #[test]
    fn dontneed_drops_anonymous_contents() {
        let m = Mapping::new(2 * page_size(), Backing::Anonymous).expect("map");
        m.fill(0xab);
        m.madvise(0, page_size(), libc::MADV_DONTNEED, "madvise")
            .expect("madvise");
        assert_eq!(m.to_vec(0, 4).expect("read"), vec![0; 4]);
        assert_eq!(m.to_vec(page_size(), 4).expect("read"), vec![0xab; 4]);
    }

    #[test]
    fn moving_pages_out_leaves_the_range_mapped_and_zero() {
        let page = page_size();
        let m = Mapping::new(3 * page, Backing::Anonymous).expect("map");
        m.fill(0xab);
        m.move_pages_out(page, page).expect("mremap");
        assert_eq!(m.to_vec(page, page).expect("read"), vec![0; page]);
        assert_eq!(m.to_vec(0, 4).expect("read"), vec![0xab; 4]);
        assert_eq!(m.to_vec(2 * page, 4).expect("read"), vec![0xab; 4]);
        // Still mapped read-write: a store lands.
        m.write(page, &[7]).expect("write");
        assert_eq!(m.to_vec(page, 1).expect("read"), vec![7]);
        assert!(m.move_pages_out(1, page).is_err(), "unaligned refused");
    }

    #[test]
    fn ksm_merges_identical_pages_and_restores_ksmd() {
        let test = "ksm_merges_identical_pages_and_restores_ksmd";
        if !crate::testing::root_or_skip(test, "switching ksmd") {
            return;
        }
        if !std::path::Path::new("/sys/kernel/mm/ksm").exists() {
            crate::testing::skip(test, "this kernel has no KSM");
            return;
        }
        let run_before = std::fs::read_to_string("/sys/kernel/mm/ksm/run").expect("run");
        let pages = 16;
        let m = Mapping::new(pages * page_size(), Backing::Anonymous).expect("map");
        m.fill(0x5a);
        let merged = {
            let _ksmd = KsmDaemon::start().expect("ksmd");
            m.ksm_merge(0, m.len(), std::time::Duration::from_secs(20))
                .expect("merge")
        };
        assert_eq!(merged, pages, "every zeroed page merged");
        assert_eq!(m.to_vec(0, m.len()).expect("read"), vec![0; m.len()]);
        assert_eq!(
            std::fs::read_to_string("/sys/kernel/mm/ksm/run").expect("run"),
            run_before
        );
    }
}
