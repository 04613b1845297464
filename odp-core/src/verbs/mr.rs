//! ODP memory regions and prefetch (`ibv_advise_mr`).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_mummy_sys as sys;

use super::ProtectionDomain;
use crate::error::{Error, Result};
use crate::memory::Mapping;

/// IBV_ACCESS_* flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access(pub u32);

impl Access {
    pub const LOCAL_WRITE: Access = Access(1);
    pub const REMOTE_WRITE: Access = Access(1 << 1);
    pub const REMOTE_READ: Access = Access(1 << 2);
    pub const REMOTE_ATOMIC: Access = Access(1 << 3);
    pub const ON_DEMAND: Access = Access(1 << 6);
    pub const HUGETLB: Access = Access(1 << 7);
    pub const RELAXED_ORDERING: Access = Access(1 << 20);

    const NAMES: [(Access, &'static str); 7] = [
        (Access::LOCAL_WRITE, "local-write"),
        (Access::REMOTE_WRITE, "remote-write"),
        (Access::REMOTE_READ, "remote-read"),
        (Access::REMOTE_ATOMIC, "remote-atomic"),
        (Access::ON_DEMAND, "on-demand"),
        (Access::HUGETLB, "hugetlb"),
        (Access::RELAXED_ORDERING, "relaxed-ordering"),
    ];

    /// Everything a loopback test needs: local and remote read/write/atomic.
    pub const FULL: Access = Access(1 | (1 << 1) | (1 << 2) | (1 << 3));

    pub const fn empty() -> Self {
        Access(0)
    }

    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parses a comma-separated list such as `local-write,remote-read`; `full` is the four
    /// data-access flags, `none` is read-only local access.
    pub fn parse(list: &str) -> Result<Self> {
        let mut access = Access::empty();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            access = access
                | match word {
                    "full" => Access::FULL,
                    "none" | "ro" | "read-only" => Access::empty(),
                    _ => Access::NAMES
                        .iter()
                        .find(|(_, name)| *name == word)
                        .map(|(flag, _)| *flag)
                        .ok_or_else(|| {
                            Error::invalid(format!(
                                "unknown access flag {word:?}: use full, none, or a list of {}",
                                Access::NAMES.map(|(_, n)| n).join(", ")
                            ))
                        })?,
                };
        }
        Ok(access)
    }

    pub fn names(self) -> Vec<&'static str> {
        Access::NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
            .collect()
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Access({:#x}: {})", self.0, self.names().join("|"))
    }
}

impl serde::Serialize for Access {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// What `ibv_advise_mr` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Advice {
    /// Fault the pages in for reading.
    Prefetch,
    /// Fault the pages in writable (needs local write access on the MR).
    PrefetchWrite,
    /// Map only pages already present on the CPU side; never faults.
    PrefetchNoFault,
}

impl Advice {
    pub const ALL: [Advice; 3] = [
        Advice::Prefetch,
        Advice::PrefetchWrite,
        Advice::PrefetchNoFault,
    ];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "prefetch" => Ok(Advice::Prefetch),
            "prefetch-write" | "write" => Ok(Advice::PrefetchWrite),
            "prefetch-no-fault" | "no-fault" => Ok(Advice::PrefetchNoFault),
            other => Err(Error::invalid(format!(
                "unknown advice {other:?}: use prefetch, prefetch-write or prefetch-no-fault"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Advice::Prefetch => "prefetch",
            Advice::PrefetchWrite => "prefetch-write",
            Advice::PrefetchNoFault => "prefetch-no-fault",
        }
    }

    fn raw(self) -> sys::ibv_advise_mr_advice {
        match self {
            Advice::Prefetch => {
                sys::ib_uverbs_advise_mr_advice::IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH
            }
            Advice::PrefetchWrite => {
                sys::ib_uverbs_advise_mr_advice::IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE
            }
            Advice::PrefetchNoFault => {
                sys::ib_uverbs_advise_mr_advice::IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT
            }
        }
    }
}

/// IBV_ADVISE_MR_FLAG_FLUSH: wait until the pages are mapped instead of queueing the work.
const ADVISE_FLAG_FLUSH: u32 = 1;

/// A scatter/gather element: an address range under a local key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sge {
    pub addr: u64,
    pub len: u32,
    pub lkey: u32,
}

impl Sge {
    pub(crate) fn raw(self) -> sys::ibv_sge {
        sys::ibv_sge {
            addr: self.addr,
            length: self.len,
            lkey: self.lkey,
        }
    }
}

/// A registered memory region, deregistered on drop.
#[derive(Debug)]
pub struct MemoryRegion {
    mr: NonNull<sys::ibv_mr>,
    pd: Arc<ProtectionDomain>,
    access: Access,
    addr: u64,
    len: usize,
    // Explicit MRs keep their buffer mapped for as long as the device may use the keys.
    mapping: Option<Arc<Mapping>>,
    deregistered: bool,
}

// SAFETY: an MR handle is thread-safe in libibverbs and has no thread affinity.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above; the handle is only read after registration.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Registers `len` bytes at `offset` of `mapping`. ODP is requested by `Access::ON_DEMAND` in
    /// `access`; it is refused up front when the device does not advertise ODP, since some
    /// providers would silently pin the memory instead.
    pub fn register(
        pd: &Arc<ProtectionDomain>,
        mapping: &Arc<Mapping>,
        offset: usize,
        len: usize,
        access: Access,
    ) -> Result<Self> {
        if len == 0 {
            return Err(Error::invalid("MR length must be greater than zero"));
        }
        mapping.check_range(offset, len)?;
        let odp = &pd.context().attributes().odp;
        if access.contains(Access::ON_DEMAND) && !odp.supported {
            return Err(Error::OdpUnsupported {
                device: pd.context().name().to_string(),
            });
        }
        let addr = mapping.addr() + offset as u64;
        // SAFETY: the range lies inside `mapping`, which this MR keeps alive until dereg.
        let mr = unsafe { sys::ibv_reg_mr_iova2(pd.as_ptr(), addr as *mut _, len, addr, access.0) };
        let mr = NonNull::new(mr).ok_or_else(|| Error::last_os("ibv_reg_mr"))?;
        Ok(MemoryRegion {
            mr,
            pd: Arc::clone(pd),
            access,
            addr,
            len,
            mapping: Some(Arc::clone(mapping)),
            deregistered: false,
        })
    }

    /// Registers an implicit ODP MR over the whole address space (addr 0, length SIZE_MAX).
    pub fn register_implicit(pd: &Arc<ProtectionDomain>, access: Access) -> Result<Self> {
        let ctx = pd.context();
        let odp = &ctx.attributes().odp;
        if !odp.supported {
            return Err(Error::OdpUnsupported {
                device: ctx.name().to_string(),
            });
        }
        if !odp.implicit {
            return Err(Error::ImplicitUnsupported {
                device: ctx.name().to_string(),
            });
        }
        let access = access | Access::ON_DEMAND;
        // SAFETY: implicit ODP registers no particular memory; the kernel validates the request.
        let mr = unsafe {
            sys::ibv_reg_mr_iova2(pd.as_ptr(), std::ptr::null_mut(), usize::MAX, 0, access.0)
        };
        let mr = NonNull::new(mr).ok_or_else(|| Error::last_os("ibv_reg_mr implicit"))?;
        Ok(MemoryRegion {
            mr,
            pd: Arc::clone(pd),
            access,
            addr: 0,
            len: usize::MAX,
            mapping: None,
            deregistered: false,
        })
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: mr is live until drop.
        unsafe { self.mr.as_ref().lkey }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: mr is live until drop.
        unsafe { self.mr.as_ref().rkey }
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn access(&self) -> Access {
        self.access
    }

    pub fn is_implicit(&self) -> bool {
        self.mapping.is_none()
    }

    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// The buffer under an explicit MR.
    pub fn mapping(&self) -> Option<&Arc<Mapping>> {
        self.mapping.as_ref()
    }

    /// A scatter/gather element for `len` bytes at `offset` into this MR, bounds-checked.
    pub fn sge(&self, offset: usize, len: usize) -> Result<Sge> {
        crate::error::checked_end(
            offset,
            len,
            self.len,
            format_args!("MR (lkey {:#x})", self.lkey()),
        )?;
        let len = u32::try_from(len)
            .map_err(|_| Error::invalid(format!("one range may span at most 4 GiB, got {len}")))?;
        Ok(Sge {
            addr: self.addr + offset as u64,
            len,
            lkey: self.lkey(),
        })
    }

    /// Advises the whole MR, or the given (offset, len) ranges of it.
    pub fn advise(&self, advice: Advice, sync: bool, ranges: &[(usize, usize)]) -> Result<()> {
        let sges = if ranges.is_empty() {
            vec![self.sge(0, self.len)?]
        } else {
            ranges
                .iter()
                .map(|&(offset, len)| self.sge(offset, len))
                .collect::<Result<Vec<_>>>()?
        };
        advise(&self.pd, advice, sync, &sges)
    }
}

impl MemoryRegion {
    /// Deregisters now and says whether the kernel agreed; dropping an MR deregisters it too,
    /// but has nobody to tell of a failure.
    pub fn deregister(mut self) -> Result<()> {
        match self.dereg_once() {
            0 => Ok(()),
            errno => Err(Error::os("ibv_dereg_mr", errno)),
        }
    }

    /// ibv_dereg_mr's result (0, or an errno value), at most once per MR.
    fn dereg_once(&mut self) -> i32 {
        if self.deregistered {
            return 0;
        }
        self.deregistered = true;
        // SAFETY: mr came from ibv_reg_mr* and is deregistered exactly once (the flag above).
        // Any QP using it is the caller's to quiesce first; dereg itself is safe while work is
        // outstanding.
        unsafe { sys::ibv_dereg_mr(self.mr.as_ptr()) }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // Callers that must know the result call deregister() first.
        let _ = self.dereg_once();
    }
}

/// Raw `ibv_advise_mr` over arbitrary elements: keys and ranges are passed to the kernel as they
/// are, so the kernel's own validation (unknown lkey, range outside the MR) is what the caller
/// sees. Most callers want [`MemoryRegion::advise`], which checks ranges first.
pub fn advise(pd: &ProtectionDomain, advice: Advice, sync: bool, sges: &[Sge]) -> Result<()> {
    if sges.is_empty() {
        return Err(Error::invalid("prefetch needs at least one range"));
    }
    let mut raw: Vec<sys::ibv_sge> = sges.iter().map(|s| s.raw()).collect();
    let count = u32::try_from(raw.len())
        .map_err(|_| Error::invalid(format!("too many ranges: {}", raw.len())))?;
    let flags = if sync { ADVISE_FLAG_FLUSH } else { 0 };
    // SAFETY: pd is live; raw holds `count` valid elements for the duration of the call.
    let rc =
        unsafe { sys::ibv_advise_mr(pd.as_ptr(), advice.raw(), flags, raw.as_mut_ptr(), count) };
    // ibv_advise_mr returns the errno value itself (and some providers a negative one).
    if rc != 0 {
        return Err(Error::os("ibv_advise_mr", rc.abs()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lists_parse_and_print() {
        let a = Access::parse("local-write, remote-read").expect("parse");
        assert_eq!(a, Access::LOCAL_WRITE | Access::REMOTE_READ);
        assert_eq!(a.names(), ["local-write", "remote-read"]);
        assert_eq!(Access::parse("full").expect("parse"), Access::FULL);
        assert_eq!(Access::parse("none").expect("parse"), Access::empty());
        let err = Access::parse("local-write,bogus")
            .expect_err("must be refused")
            .to_string();
        assert!(err.contains("\"bogus\""), "{err}");
    }

    #[test]
    fn advice_names_round_trip() {
        for advice in Advice::ALL {
            assert_eq!(Advice::parse(advice.name()).expect("parse"), advice);
        }
        assert!(Advice::parse("prefetch-all").is_err());
    }
}
