//! RC connections: the work requests and completions every connection shares (`WorkQueues`),
//! and the loopback pair: two queue pairs on one port connected to each other, so one device
//! can both issue and serve RDMA WRITE, RDMA READ and SEND/RECV against ODP memory. A peer on
//! another host is connected by rdma_cm (`super::cm`).

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_mummy_sys as sys;

use super::{mtu_from_bytes, MemoryRegion, ProtectionDomain, Sge};
use crate::error::{Error, Result};

/// How to build the loopback pair.
#[derive(Debug, Clone)]
pub struct LoopbackConfig {
    pub port: u8,
    /// GID index for RoCE; None picks a RoCE v2 IPv4 entry, then any RoCE v2, then index 0.
    pub gid_index: Option<u32>,
    /// Path MTU in bytes; None uses the port's active MTU.
    pub path_mtu: Option<u32>,
    /// Outstanding work requests per queue.
    pub depth: u32,
    /// How long to wait for any one completion.
    pub timeout: Duration,
    /// The requester's local ACK timeout, IB's 5-bit exponent (4.096 us x 2^N; 0 is none): how
    /// long a request goes unanswered before it is retransmitted.
    pub ack_timeout: u8,
}

impl Default for LoopbackConfig {
    fn default() -> Self {
        LoopbackConfig {
            port: 1,
            gid_index: None,
            path_mtu: None,
            depth: 64,
            timeout: Duration::from_secs(10),
            ack_timeout: 14,
        }
    }
}

/// The operations the pair performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Opcode {
    Write,
    Read,
    Send,
    Recv,
    FetchAdd,
}

impl Opcode {
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Write => "RDMA WRITE",
            Opcode::Read => "RDMA READ",
            Opcode::Send => "SEND",
            Opcode::Recv => "RECV",
            Opcode::FetchAdd => "ATOMIC FETCH_ADD",
        }
    }
}

/// A successful work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub wr_id: u64,
    pub opcode: Opcode,
    pub byte_len: u32,
}

pub(super) struct CompletionQueue(NonNull<sys::ibv_cq>);

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: QPs using this CQ are destroyed first (field order in their owners).
        unsafe { sys::ibv_destroy_cq(self.0.as_ptr()) };
    }
}

pub(super) struct QueuePair(NonNull<sys::ibv_qp>);

impl QueuePair {
    /// An RC QP on `pd` completing into `cq`.
    pub(super) fn create_rc(
        pd: &ProtectionDomain,
        cq: &CompletionQueue,
        depth: u32,
    ) -> Result<Self> {
        // SAFETY: ibv_qp_init_attr is plain old data; zero is valid for unused fields.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.0.as_ptr();
        init.recv_cq = cq.0.as_ptr();
        init.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        init.cap.max_send_wr = depth;
        init.cap.max_recv_wr = depth;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        // SAFETY: pd is live and init is fully initialised.
        let qp = unsafe { sys::ibv_create_qp(pd.as_ptr(), &mut init) };
        NonNull::new(qp)
            .map(QueuePair)
            .ok_or_else(|| Error::last_os("ibv_create_qp"))
    }

    pub(super) fn num(&self) -> u32 {
        // SAFETY: the QP is live until drop.
        unsafe { self.0.as_ref().qp_num }
    }

    pub(super) fn modify(
        &self,
        attr: &mut sys::ibv_qp_attr,
        mask: sys::ibv_qp_attr_mask,
        op: &'static str,
    ) -> Result<()> {
        let mask =
            i32::try_from(mask.0).map_err(|_| Error::invalid("QP attribute mask overflow"))?;
        // SAFETY: the QP is live and attr is a valid, fully initialised attribute block.
        let rc = unsafe { sys::ibv_modify_qp(self.0.as_ptr(), attr, mask) };
        if rc != 0 {
            return Err(Error::os(op, rc));
        }
        Ok(())
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: the QP came from ibv_create_qp and is destroyed exactly once.
        unsafe { sys::ibv_destroy_qp(self.0.as_ptr()) };
    }
}

/// Where an RDMA operation lands on the responder: an address range under its remote key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Remote {
    pub addr: u64,
    pub rkey: u32,
    pub len: usize,
}

impl Remote {
    /// The address of `len` bytes at `offset`, if they lie inside the region.
    fn at(&self, offset: usize, len: usize) -> Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.addr + offset as u64),
            _ => Err(Error::invalid(format!(
                "{len} bytes at offset {offset} exceed the remote region of {} bytes",
                self.len
            ))),
        }
    }
}

impl From<&MemoryRegion> for Remote {
    fn from(mr: &MemoryRegion) -> Remote {
        Remote {
            addr: mr.addr(),
            rkey: mr.rkey(),
            len: mr.len(),
        }
    }
}

/// One CQ and the work requests posted against it: what every RC connection does the same way
/// (post, complete, wait with a timeout), whichever QPs it posts on.
pub(super) struct WorkQueues {
    pub(super) cq: CompletionQueue,
    next_wr_id: u64,
    outstanding: HashMap<u64, Opcode>,
    finished: HashMap<u64, Result<Completion>>,
    timeout: Duration,
}

impl WorkQueues {
    /// A CQ on `pd`'s device with room for `depth` sends and receives.
    pub(super) fn new(pd: &ProtectionDomain, depth: u32, timeout: Duration) -> Result<Self> {
        if depth == 0 {
            return Err(Error::invalid("queue depth must be greater than zero"));
        }
        let cqe = i32::try_from(depth.saturating_mul(2).saturating_add(1))
            .map_err(|_| Error::invalid("queue depth too large"))?;
        // SAFETY: the context is live; no channel, no user context.
        let cq = NonNull::new(unsafe {
            sys::ibv_create_cq(
                pd.context().as_ptr(),
                cqe,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        })
        .ok_or_else(|| Error::last_os("ibv_create_cq"))?;
        Ok(WorkQueues {
            cq: CompletionQueue(cq),
            next_wr_id: 1,
            outstanding: HashMap::new(),
            finished: HashMap::new(),
            timeout,
        })
    }

    fn take_wr_id(&mut self, opcode: Opcode) -> u64 {
        let id = self.next_wr_id;
        self.next_wr_id += 1;
        self.outstanding.insert(id, opcode);
        id
    }

    /// Posts an RDMA WRITE or READ on `qp` between `local` and as many bytes of `remote` at
    /// `remote_offset`.
    pub(super) fn post_rdma(
        &mut self,
        qp: &QueuePair,
        opcode: Opcode,
        local: Sge,
        remote: Remote,
        remote_offset: usize,
    ) -> Result<u64> {
        let wr_opcode = match opcode {
            Opcode::Write => sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            Opcode::Read => sys::ibv_wr_opcode::IBV_WR_RDMA_READ,
            other => {
                return Err(Error::invalid(format!(
                    "{} is not an RDMA operation",
                    other.name()
                )))
            }
        };
        let remote_addr = remote.at(remote_offset, local.len as usize)?;
        let wr_id = self.take_wr_id(opcode);
        let mut raw_sge = local.raw();
        // SAFETY: ibv_send_wr is plain old data (pointers and integers); zero is valid.
        let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut raw_sge;
        wr.num_sge = 1;
        wr.opcode = wr_opcode;
        wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr.rdma = sys::rdma_t {
            remote_addr,
            rkey: remote.rkey,
        };
        self.post_send_wr(qp, wr_id, &mut wr)
    }

    /// Posts an atomic fetch-and-add on `qp` of `add` to the 8-byte word at `remote_offset`;
    /// the word's old value lands in `local` at `local_offset`.
    pub(super) fn post_fetch_add(
        &mut self,
        qp: &QueuePair,
        local: &MemoryRegion,
        local_offset: usize,
        remote: Remote,
        remote_offset: usize,
        add: u64,
    ) -> Result<u64> {
        if remote_offset % 8 != 0 {
            return Err(Error::invalid(
                "atomics need an 8-byte aligned remote address",
            ));
        }
        let sge = local.sge(local_offset, 8)?;
        let remote_addr = remote.at(remote_offset, 8)?;
        let wr_id = self.take_wr_id(Opcode::FetchAdd);
        let mut raw_sge = sge.raw();
        // SAFETY: ibv_send_wr is plain old data (pointers and integers); zero is valid.
        let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut raw_sge;
        wr.num_sge = 1;
        wr.opcode = sys::ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD;
        wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr.atomic = sys::atomic_t {
            remote_addr,
            compare_add: add,
            swap: 0,
            rkey: remote.rkey,
        };
        self.post_send_wr(qp, wr_id, &mut wr)
    }

    /// Posts a receive on `qp` into `local` at `offset`.
    pub(super) fn post_recv(
        &mut self,
        qp: &QueuePair,
        local: &MemoryRegion,
        offset: usize,
        len: usize,
    ) -> Result<u64> {
        let sge = local.sge(offset, len)?;
        let wr_id = self.take_wr_id(Opcode::Recv);
        let mut raw_sge = sge.raw();
        let mut wr = sys::ibv_recv_wr {
            wr_id,
            next: std::ptr::null_mut(),
            sg_list: &mut raw_sge,
            num_sge: 1,
        };
        let mut bad = std::ptr::null_mut();
        // SAFETY: the QP is live; wr and its SGE outlive the call (the provider copies them).
        let rc = unsafe { sys::ibv_post_recv(qp.0.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            self.outstanding.remove(&wr_id);
            return Err(Error::os("ibv_post_recv", rc));
        }
        Ok(wr_id)
    }

    /// Posts a SEND on `qp` out of `local` at `offset`.
    pub(super) fn post_send(
        &mut self,
        qp: &QueuePair,
        local: &MemoryRegion,
        offset: usize,
        len: usize,
    ) -> Result<u64> {
        let sge = local.sge(offset, len)?;
        let wr_id = self.take_wr_id(Opcode::Send);
        let mut raw_sge = sge.raw();
        // SAFETY: ibv_send_wr is plain old data; zero is valid.
        let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut raw_sge;
        wr.num_sge = 1;
        wr.opcode = sys::ibv_wr_opcode::IBV_WR_SEND;
        wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        self.post_send_wr(qp, wr_id, &mut wr)
    }

    fn post_send_wr(
        &mut self,
        qp: &QueuePair,
        wr_id: u64,
        wr: &mut sys::ibv_send_wr,
    ) -> Result<u64> {
        let mut bad = std::ptr::null_mut();
        // SAFETY: the QP is live; wr and its SGE outlive the call (the provider copies them).
        let rc = unsafe { sys::ibv_post_send(qp.0.as_ptr(), wr, &mut bad) };
        if rc != 0 {
            self.outstanding.remove(&wr_id);
            return Err(Error::os("ibv_post_send", rc));
        }
        Ok(wr_id)
    }

    /// Drains whatever the CQ holds now into `finished`; returns how many it found.
    fn drain_cq(&mut self) -> Result<usize> {
        const BATCH: usize = 16;
        // SAFETY: ibv_wc is plain old data.
        let mut wcs: [sys::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: the CQ is live and wcs has room for BATCH entries.
        let n = unsafe { sys::ibv_poll_cq(self.cq.0.as_ptr(), BATCH as i32, wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(Error::os("ibv_poll_cq", libc::EIO));
        }
        let n = n as usize;
        for wc in &wcs[..n] {
            let opcode = self.outstanding.remove(&wc.wr_id).unwrap_or(Opcode::Send);
            let result = if wc.status == sys::ibv_wc_status::IBV_WC_SUCCESS {
                Ok(Completion {
                    wr_id: wc.wr_id,
                    opcode,
                    byte_len: wc.byte_len,
                })
            } else {
                // SAFETY: ibv_wc_status_str returns a static string for any status value.
                let name = unsafe { std::ffi::CStr::from_ptr(sys::ibv_wc_status_str(wc.status)) };
                Err(Error::Completion {
                    wr_id: wc.wr_id,
                    opcode: opcode.name(),
                    status: wc.status,
                    status_name: name.to_string_lossy().into_owned(),
                    vendor_err: wc.vendor_err,
                })
            };
            self.finished.insert(wc.wr_id, result);
        }
        Ok(n)
    }

    /// Waits for one work request to complete, with the configured timeout.
    pub(super) fn wait(&mut self, wr_id: u64) -> Result<Completion> {
        self.wait_for(wr_id, self.timeout)
    }

    /// Waits up to `timeout` for one work request to complete.
    pub(super) fn wait_for(&mut self, wr_id: u64, timeout: Duration) -> Result<Completion> {
        let deadline = Instant::now() + timeout;
        let mut idle_polls = 0u32;
        loop {
            if let Some(result) = self.finished.remove(&wr_id) {
                return result;
            }
            if self.drain_cq()? == 0 {
                if Instant::now() >= deadline {
                    let what = self
                        .outstanding
                        .get(&wr_id)
                        .map_or_else(String::new, |op| format!("{} ", op.name()));
                    return Err(Error::CompletionTimeout {
                        what: format!("{what}work request {wr_id}"),
                        timeout_ms: timeout.as_millis(),
                    });
                }
                // Spin briefly (soft-RoCE completes from a kernel worker), then back off so a
                // slow fault does not burn a core.
                idle_polls += 1;
                if idle_polls > 1000 {
                    std::thread::sleep(Duration::from_micros(50));
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

/// Two connected RC QPs sharing one CQ. `requester` posts; `responder` is the target of RDMA
/// operations and the receiver of SENDs.
pub struct LoopbackRc {
    // Field order is drop order: QPs before the CQ they complete into, the PD last.
    requester: QueuePair,
    responder: QueuePair,
    queues: WorkQueues,
    pd: Arc<ProtectionDomain>,
    gid_index: Option<u32>,
    path_mtu: u32,
}

// SAFETY: verbs handles are thread-safe and have no thread affinity; the bookkeeping maps are
// owned data moved with the struct.
unsafe impl Send for LoopbackRc {}

pub(super) const QP_ACCESS: u32 = 1 | 2 | 4 | 8; // local write, remote write/read/atomic

impl LoopbackRc {
    pub fn new(pd: &Arc<ProtectionDomain>, config: &LoopbackConfig) -> Result<Self> {
        let ctx = pd.context();
        let port = ctx.port(config.port)?;
        if port.state != "ACTIVE" {
            return Err(Error::invalid(format!(
                "port {} of {} is {}, not ACTIVE: bring the netdev up (for rxe: `ip link set <if> up`)",
                config.port,
                ctx.name(),
                port.state
            )));
        }
        let path_mtu = match config.path_mtu {
            Some(bytes) => {
                if bytes > port.active_mtu {
                    return Err(Error::invalid(format!(
                        "path MTU {bytes} exceeds the port's active MTU {}",
                        port.active_mtu
                    )));
                }
                bytes
            }
            None => port.active_mtu,
        };
        let ethernet = port.link_layer == "Ethernet";
        let gid_index = if ethernet {
            let pick = match config.gid_index {
                Some(index) => port.gids.iter().find(|g| g.index == index),
                None => port
                    .gids
                    .iter()
                    .find(|g| g.kind == "RoCEv2" && g.gid.starts_with("::ffff:"))
                    .or_else(|| port.gids.iter().find(|g| g.kind == "RoCEv2"))
                    .or_else(|| port.gids.first()),
            };
            let gid = pick.ok_or_else(|| {
                Error::invalid(format!(
                    "no usable GID on port {} of {}{}: give the netdev an IP address",
                    config.port,
                    ctx.name(),
                    config
                        .gid_index
                        .map(|i| format!(" at index {i}"))
                        .unwrap_or_default()
                ))
            })?;
            Some(gid.index)
        } else {
            None
        };

        let queues = WorkQueues::new(pd, config.depth, config.timeout)?;
        let requester = QueuePair::create_rc(pd, &queues.cq, config.depth)?;
        let responder = QueuePair::create_rc(pd, &queues.cq, config.depth)?;
        let mtu = mtu_from_bytes(path_mtu)?;
        let gid = match gid_index {
            Some(index) => {
                // SAFETY: ibv_gid is plain old data.
                let mut gid: sys::ibv_gid = unsafe { std::mem::zeroed() };
                // SAFETY: context live, gid a valid out-pointer.
                let rc = unsafe {
                    sys::ibv_query_gid(ctx.as_ptr(), config.port, index as i32, &mut gid)
                };
                if rc != 0 {
                    return Err(Error::last_os("ibv_query_gid"));
                }
                Some(gid)
            }
            None => None,
        };
        for (qp, peer) in [(&requester, responder.num()), (&responder, requester.num())] {
            connect(qp, peer, config, port.lid, gid, gid_index, mtu)?;
        }

        Ok(LoopbackRc {
            requester,
            responder,
            queues,
            pd: Arc::clone(pd),
            gid_index,
            path_mtu,
        })
    }

    pub fn gid_index(&self) -> Option<u32> {
        self.gid_index
    }

    pub fn path_mtu(&self) -> u32 {
        self.path_mtu
    }

    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// Posts an RDMA WRITE or READ from `local` (at `local_offset`) to/from `remote`.
    pub fn post_rdma(
        &mut self,
        opcode: Opcode,
        local: &MemoryRegion,
        local_offset: usize,
        remote: &MemoryRegion,
        remote_offset: usize,
        len: usize,
    ) -> Result<u64> {
        self.queues.post_rdma(
            &self.requester,
            opcode,
            local.sge(local_offset, len)?,
            remote.into(),
            remote_offset,
        )
    }

    /// Posts an atomic fetch-and-add of `add` to the 8-byte word at `remote_offset` of `remote`;
    /// the word's old value lands in `local` at `local_offset`.
    pub fn post_fetch_add(
        &mut self,
        local: &MemoryRegion,
        local_offset: usize,
        remote: &MemoryRegion,
        remote_offset: usize,
        add: u64,
    ) -> Result<u64> {
        self.queues.post_fetch_add(
            &self.requester,
            local,
            local_offset,
            remote.into(),
            remote_offset,
            add,
        )
    }

    /// Posts a receive on the responder into `local` at `offset`.
    pub fn post_recv(&mut self, local: &MemoryRegion, offset: usize, len: usize) -> Result<u64> {
        self.queues.post_recv(&self.responder, local, offset, len)
    }

    /// Posts a SEND from the requester out of `local` at `offset`.
    pub fn post_send(&mut self, local: &MemoryRegion, offset: usize, len: usize) -> Result<u64> {
        self.queues.post_send(&self.requester, local, offset, len)
    }

    /// Waits for one work request to complete, with the configured timeout.
    pub fn wait(&mut self, wr_id: u64) -> Result<Completion> {
        self.queues.wait(wr_id)
    }

    /// RDMA WRITE `len` bytes from `src` to `dst`, waiting for completion.
    pub fn write(
        &mut self,
        src: &MemoryRegion,
        src_offset: usize,
        dst: &MemoryRegion,
        dst_offset: usize,
        len: usize,
    ) -> Result<Completion> {
        let id = self.post_rdma(Opcode::Write, src, src_offset, dst, dst_offset, len)?;
        self.wait(id)
    }

    /// RDMA READ `len` bytes of `src` into `dst`, waiting for completion.
    pub fn read(
        &mut self,
        dst: &MemoryRegion,
        dst_offset: usize,
        src: &MemoryRegion,
        src_offset: usize,
        len: usize,
    ) -> Result<Completion> {
        let id = self.post_rdma(Opcode::Read, dst, dst_offset, src, src_offset, len)?;
        self.wait(id)
    }

    /// SEND `len` bytes of `src` into a receive posted on `dst`, waiting for both completions.
    pub fn send_recv(
        &mut self,
        src: &MemoryRegion,
        src_offset: usize,
        dst: &MemoryRegion,
        dst_offset: usize,
        len: usize,
    ) -> Result<Completion> {
        let recv = self.post_recv(dst, dst_offset, len)?;
        let send = self.post_send(src, src_offset, len)?;
        let sent = self.wait(send);
        let received = self.wait(recv);
        sent?;
        received
    }
}

fn connect(
    qp: &QueuePair,
    peer_qpn: u32,
    config: &LoopbackConfig,
    lid: u16,
    gid: Option<sys::ibv_gid>,
    gid_index: Option<u32>,
    mtu: sys::ibv_mtu::Type,
) -> Result<()> {
    use sys::ibv_qp_attr_mask as m;
    // SAFETY: ibv_qp_attr is plain old data; zero is valid for fields the masks leave out.
    let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
    attr.qp_state = sys::ibv_qp_state::IBV_QPS_INIT;
    attr.pkey_index = 0;
    attr.port_num = config.port;
    attr.qp_access_flags = QP_ACCESS;
    qp.modify(
        &mut attr,
        m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
        "ibv_modify_qp(INIT)",
    )?;

    // SAFETY: as above.
    let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
    attr.qp_state = sys::ibv_qp_state::IBV_QPS_RTR;
    attr.path_mtu = mtu;
    attr.dest_qp_num = peer_qpn;
    attr.rq_psn = 0;
    attr.max_dest_rd_atomic = 16;
    attr.min_rnr_timer = 12;
    attr.ah_attr.port_num = config.port;
    attr.ah_attr.dlid = lid;
    if let (Some(gid), Some(index)) = (gid, gid_index) {
        attr.ah_attr.is_global = 1;
        attr.ah_attr.grh.dgid = gid;
        attr.ah_attr.grh.sgid_index = u8::try_from(index).map_err(|_| {
            Error::invalid(format!("GID index {index} does not fit the address vector"))
        })?;
        attr.ah_attr.grh.hop_limit = 64;
    }
    qp.modify(
        &mut attr,
        m::IBV_QP_STATE
            | m::IBV_QP_AV
            | m::IBV_QP_PATH_MTU
            | m::IBV_QP_DEST_QPN
            | m::IBV_QP_RQ_PSN
            | m::IBV_QP_MAX_DEST_RD_ATOMIC
            | m::IBV_QP_MIN_RNR_TIMER,
        "ibv_modify_qp(RTR)",
    )?;

    // SAFETY: as above.
    let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
    attr.qp_state = sys::ibv_qp_state::IBV_QPS_RTS;
    attr.timeout = config.ack_timeout;
    attr.retry_cnt = 7;
    attr.rnr_retry = 7;
    attr.sq_psn = 0;
    attr.max_rd_atomic = 16;
    qp.modify(
        &mut attr,
        m::IBV_QP_STATE
            | m::IBV_QP_TIMEOUT
            | m::IBV_QP_RETRY_CNT
            | m::IBV_QP_RNR_RETRY
            | m::IBV_QP_SQ_PSN
            | m::IBV_QP_MAX_QP_RD_ATOMIC,
        "ibv_modify_qp(RTS)",
    )
}
