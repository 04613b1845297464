//! Typed errors for the verbs layer. Every variant says what happened and what to do about it,
//! because the people reading them are debugging an RDMA setup, not this crate.

use std::fmt;

/// Broad classes of failure, stable enough for a CLI to turn into exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// No libibverbs, or no RDMA device at all.
    NoDevice,
    /// The device, provider or kernel lacks the feature.
    Unsupported,
    /// Privileges or resource limits (memlock) stand in the way.
    Permission,
    /// The caller asked for something invalid: unknown device, bad range, unknown key.
    InvalidInput,
    /// A work request completed with an error, or a completion never came.
    Completion,
    /// The peer on another host could not be reached, refused, or went away.
    Peer,
    /// Anything else the system reported.
    System,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "libibverbs.so.1 could not be loaded: install libibverbs1 and ibverbs-providers \
         (rdma-core), or run the bundled soft-RoCE VM with `cargo xtask demo`"
    )]
    LibraryMissing,

    #[error(
        "librdmacm.so.1 could not be loaded: install librdmacm1 (rdma-core) to connect to a peer"
    )]
    CmLibraryMissing,

    #[error(
        "rdma_create_event_channel failed: {errno_name} ({errno}): no /dev/infiniband/rdma_cm: \
         this kernel has no rdma_cm (load rdma_ucm and an RDMA driver), or run the two-guest VM \
         (`cargo xtask vm run --hosts 2`)"
    )]
    CmUnavailable {
        errno: i32,
        errno_name: &'static str,
    },

    #[error("peer {peer}: {what}")]
    Peer { peer: String, what: String },

    #[error(
        "no RDMA devices found: load a driver (for soft-RoCE: `rdma link add rxe0 type rxe \
         netdev <if>`), check /dev/infiniband, or run `cargo xtask demo` for the bundled VM"
    )]
    NoDevices,

    #[error("RDMA device {name:?} not found (available: {available})")]
    UnknownDevice { name: String, available: String },

    #[error("device {device} does not support On-Demand Paging (ODP general caps are empty)")]
    OdpUnsupported { device: String },

    #[error(
        "device {device} does not support implicit ODP (IBV_ODP_SUPPORT_IMPLICIT not advertised); \
         register an explicit range instead (rxe never supports implicit ODP)"
    )]
    ImplicitUnsupported { device: String },

    #[error("{op} failed: {errno_name} ({errno}): {hint}")]
    Os {
        op: &'static str,
        errno: i32,
        errno_name: &'static str,
        hint: &'static str,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error(
        "{opcode} work request {wr_id} completed with status {status_name} ({status}), \
         vendor error {vendor_err:#x}"
    )]
    Completion {
        wr_id: u64,
        opcode: &'static str,
        status: u32,
        status_name: String,
        vendor_err: u32,
    },

    #[error("no completion for {what} within {timeout_ms} ms")]
    CompletionTimeout { what: String, timeout_ms: u128 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The end of `offset..offset+len` when it lies inside `total` bytes of `what`, else an error
/// that says which bound was crossed.
pub fn checked_end(
    offset: usize,
    len: usize,
    total: usize,
    what: impl fmt::Display,
) -> Result<usize> {
    let end = offset
        .checked_add(len)
        .ok_or_else(|| Error::invalid(format!("range {offset}+{len} overflows")))?;
    if end > total {
        return Err(Error::invalid(format!(
            "range {offset}..{end} lies outside the {total}-byte {what}"
        )));
    }
    Ok(end)
}

impl Error {
    /// An error from a verbs or libc call that reported `errno`.
    pub fn os(op: &'static str, errno: i32) -> Self {
        Error::Os {
            op,
            errno,
            errno_name: errno_name(errno),
            hint: hint(op, errno),
        }
    }

    /// The same, reading `errno` from the thread (for calls that return NULL or -1).
    pub fn last_os(op: &'static str) -> Self {
        Self::os(
            op,
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        )
    }

    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidArgument(msg.to_string())
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::LibraryMissing
            | Error::CmLibraryMissing
            | Error::CmUnavailable { .. }
            | Error::NoDevices => ErrorKind::NoDevice,
            Error::Peer { .. } => ErrorKind::Peer,
            Error::OdpUnsupported { .. } | Error::ImplicitUnsupported { .. } => {
                ErrorKind::Unsupported
            }
            Error::UnknownDevice { .. } | Error::InvalidArgument(_) => ErrorKind::InvalidInput,
            Error::Completion { .. } | Error::CompletionTimeout { .. } => ErrorKind::Completion,
            Error::Os { errno, .. } => match *errno {
                libc::EOPNOTSUPP | libc::ENOSYS => ErrorKind::Unsupported,
                // ENOMEM: the memlock limit (or memory itself) refused it: a resource limit.
                libc::EPERM | libc::EACCES | libc::ENOMEM => ErrorKind::Permission,
                libc::EINVAL | libc::ENOENT | libc::EFAULT | libc::ERANGE | libc::EOVERFLOW => {
                    ErrorKind::InvalidInput
                }
                _ => ErrorKind::System,
            },
        }
    }

    /// The errno behind an OS error, for callers that match on it.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { errno, .. } | Error::CmUnavailable { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "errno",
    }
}

fn hint(op: &'static str, errno: i32) -> &'static str {
    match errno {
        libc::EOPNOTSUPP | libc::ENOSYS if op.contains("advise") => {
            "the provider or kernel cannot prefetch: rxe needs kernel >= 6.17 and rdma-core >= 59"
        }
        libc::EOPNOTSUPP | libc::ENOSYS => "the device, provider or kernel does not implement this",
        libc::EPERM | libc::EACCES if op == "open file" => {
            "this user may not read it: check its permissions and those of its directories"
        }
        libc::EPERM | libc::EACCES => {
            "not permitted: run as root or raise the memlock limit (ulimit -l / CAP_IPC_LOCK)"
        }
        libc::ENOMEM if op.contains("hugetlb") => {
            "no free huge pages: reserve some, e.g. `echo 64 > /proc/sys/vm/nr_hugepages`"
        }
        libc::ENOMEM => "out of memory or over the memlock limit (ulimit -l)",
        libc::ENOENT => "no such object: the lkey or MR is unknown to this protection domain",
        libc::EFAULT => "the address range is not mapped in this process",
        libc::EINVAL if op.contains("advise") => {
            "the advice does not fit the MR: an lkey the PD does not know (rxe answers EINVAL, \
             mlx5 ENOENT), a range outside the MR, or PREFETCH_WRITE without local write access"
        }
        libc::EINVAL if op.contains("reg_mr") => {
            "the device rejected these access flags or this range (ODP flags the device lacks?)"
        }
        libc::EINVAL => "the kernel rejected an argument",
        libc::EBUSY => "busy: a fault collided with an invalidation and gave up",
        libc::ENODEV => "the device went away",
        _ => "see the kernel log (dmesg) for details",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_classify_by_errno() {
        assert_eq!(
            Error::os("ibv_advise_mr", libc::EOPNOTSUPP).kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            Error::os("ibv_reg_mr", libc::EPERM).kind(),
            ErrorKind::Permission
        );
        assert_eq!(
            Error::os("ibv_advise_mr", libc::ENOENT).kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            Error::os("ibv_reg_mr", libc::ENOMEM).kind(),
            ErrorKind::Permission,
            "a memlock limit is a resource limit (exit 5)"
        );
        assert_eq!(Error::os("read", libc::EIO).kind(), ErrorKind::System);
    }

    #[test]
    fn messages_name_the_errno_and_a_remedy() {
        let msg = Error::os("ibv_advise_mr", libc::EOPNOTSUPP).to_string();
        assert!(msg.contains("EOPNOTSUPP (95)"), "{msg}");
        assert!(msg.contains("rdma-core >= 59"), "{msg}");
        let msg = Error::os("mmap hugetlb", libc::ENOMEM).to_string();
        assert!(msg.contains("nr_hugepages"), "{msg}");
    }
}
