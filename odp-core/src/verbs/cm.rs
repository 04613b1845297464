//! RC connections to a peer on another host, set up by rdma_cm (librdmacm, through
//! rdma-mummy-sys, opened at run time like libibverbs).
//!
//! The QP is this crate's own (created on the caller's PD, so the caller's ODP MRs can be its
//! targets); rdma_cm resolves the address and route, exchanges the QP numbers and a few bytes of
//! private data, and supplies each state transition's attributes (`rdma_init_qp_attr`). Each
//! connection has an event channel of its own, so a disconnect is seen by its owner.

use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_mummy_sys as sys;

use super::qp::{QueuePair, WorkQueues, QP_ACCESS};
use super::{Completion, MemoryRegion, Opcode, ProtectionDomain, Remote};
use crate::error::{Error, Result};

/// How a peer connection is set up and how long its steps may take.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Outstanding work requests per queue.
    pub depth: u32,
    /// How long to wait for any one completion.
    pub timeout: Duration,
    /// How long address and route resolution, and the connection handshake, may take.
    pub connect_timeout: Duration,
    /// Transport retries before a request fails with "retry exceeded" (0..=7).
    pub retry_count: u8,
    /// RNR retries (0..=7; 7 is infinite).
    pub rnr_retry: u8,
    /// The local ACK timeout exponent (4.096 us x 2^N before a request is sent again; 0 waits
    /// forever); None takes rdma_cm's default.
    pub ack_timeout: Option<u8>,
    /// The RNR NAK timer this QP's responder asks the peer to wait before sending again when
    /// no receive is posted (IB's 5-bit code: 1 is 0.01 ms, 14 is 1.28 ms, 31 is 491.52 ms, 0
    /// is 655.36 ms); None takes what rdma_cm sets.
    pub min_rnr_timer: Option<u8>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            depth: 64,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry_count: 7,
            rnr_retry: 7,
            ack_timeout: None,
            min_rnr_timer: None,
        }
    }
}

/// How often a wait on the peer looks for its disconnection.
const PEER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// rdma_cma.h's option level and name for the ACK timeout (an anonymous enum there).
const RDMA_OPTION_ID: i32 = 0;
const RDMA_OPTION_ID_ACK_TIMEOUT: i32 = 3;

/// RDMA READs and atomics a side keeps in flight toward, or serves for, the other.
const RD_ATOMIC: u8 = 16;

struct Channel(NonNull<sys::rdma_event_channel>);

impl Channel {
    fn new() -> Result<Channel> {
        if !super::library_loaded(c"librdmacm.so.1") {
            return Err(Error::CmLibraryMissing);
        }
        // SAFETY: no arguments; NULL is checked.
        let ch = NonNull::new(unsafe { sys::rdma_create_event_channel() }).ok_or_else(|| {
            match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
                errno @ (libc::ENODEV | libc::ENOENT) => Error::CmUnavailable {
                    errno,
                    errno_name: crate::error::errno_name(errno),
                },
                errno => Error::os("rdma_create_event_channel", errno),
            }
        })?;
        let channel = Channel(ch);
        // Non-blocking, so every wait is bounded by poll and a stop flag.
        let fd = channel.fd();
        // SAFETY: fd is the channel's open descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(Error::last_os("fcntl(rdma_cm channel)"));
        }
        Ok(channel)
    }

    fn fd(&self) -> RawFd {
        // SAFETY: the channel is live until drop.
        unsafe { self.0.as_ref().fd }
    }

    /// The next event, waiting up to `timeout` (None when none came, or `stop` was set).
    fn next(&self, timeout: Duration, stop: Option<&AtomicBool>) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut raw = std::ptr::null_mut();
            // SAFETY: the channel is live; raw is a valid out-pointer.
            if unsafe { sys::rdma_get_cm_event(self.0.as_ptr(), &mut raw) } == 0 {
                // SAFETY: a returned event is valid until acked, which happens right here
                // once its fields are copied out.
                let event = unsafe { Event::copy(&*raw) };
                // SAFETY: raw came from rdma_get_cm_event and is acked once.
                unsafe { sys::rdma_ack_cm_event(raw) };
                return Ok(Some(event));
            }
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno != libc::EAGAIN && errno != libc::EWOULDBLOCK {
                return Err(Error::os("rdma_get_cm_event", errno));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let slice = left.min(Duration::from_millis(100)).as_millis() as i32;
            // SAFETY: pfd is one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, slice.max(1)) };
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: every id on the channel is destroyed first (field order in the owners).
        unsafe { sys::rdma_destroy_event_channel(self.0.as_ptr()) };
    }
}

struct CmId(NonNull<sys::rdma_cm_id>);

impl CmId {
    fn create(channel: &Channel) -> Result<CmId> {
        let mut id = std::ptr::null_mut();
        // SAFETY: the channel is live; id is a valid out-pointer; no user context.
        let rc = unsafe {
            sys::rdma_create_id(
                channel.0.as_ptr(),
                &mut id,
                std::ptr::null_mut(),
                sys::rdma_port_space::RDMA_PS_TCP,
            )
        };
        if rc != 0 {
            return Err(Error::last_os("rdma_create_id"));
        }
        NonNull::new(id)
            .map(CmId)
            .ok_or_else(|| Error::last_os("rdma_create_id"))
    }

    fn ptr(&self) -> *mut sys::rdma_cm_id {
        self.0.as_ptr()
    }

    /// The device and port the id is bound to (after bind to an address, resolution or a
    /// connection request).
    fn device(&self) -> Result<(String, u8)> {
        // SAFETY: the id is live; verbs is NULL or a context librdmacm keeps open.
        let id = unsafe { self.0.as_ref() };
        let verbs = NonNull::new(id.verbs).ok_or_else(|| {
            Error::invalid("the address is not on an RDMA device (no rxe or NIC port holds it)")
        })?;
        // SAFETY: a live context's device pointer is valid; the name is NUL-terminated.
        let name =
            unsafe { std::ffi::CStr::from_ptr(sys::ibv_get_device_name(verbs.as_ref().device)) };
        Ok((name.to_string_lossy().into_owned(), id.port_num))
    }

    /// Sets the ACK timeout the QP's RTS attributes will carry.
    fn set_ack_timeout(&self, exponent: u8) -> Result<()> {
        if exponent > 31 {
            return Err(Error::invalid(format!(
                "ACK timeout exponent {exponent} is over 31"
            )));
        }
        let mut value = exponent;
        // SAFETY: the id is live; the option is one byte, given as such.
        let rc = unsafe {
            sys::rdma_set_option(
                self.ptr(),
                RDMA_OPTION_ID,
                RDMA_OPTION_ID_ACK_TIMEOUT,
                (&mut value as *mut u8).cast(),
                1,
            )
        };
        if rc != 0 {
            return Err(Error::last_os("rdma_set_option(ACK_TIMEOUT)"));
        }
        Ok(())
    }

    /// Moves `qp` to `state` with the attributes rdma_cm gives for this connection.
    fn transition(
        &self,
        qp: &QueuePair,
        state: sys::ibv_qp_state::Type,
        config: &PeerConfig,
        op: &'static str,
    ) -> Result<()> {
        // SAFETY: ibv_qp_attr is plain old data; zero is valid.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = state;
        let mut mask = 0;
        // SAFETY: the id is live; attr and mask are valid out-pointers.
        if unsafe { sys::rdma_init_qp_attr(self.ptr(), &mut attr, &mut mask) } != 0 {
            return Err(Error::last_os("rdma_init_qp_attr"));
        }
        if state == sys::ibv_qp_state::IBV_QPS_INIT {
            // Remote READs, WRITEs and atomics, whatever rdma_cm's defaults allow.
            attr.qp_access_flags = QP_ACCESS;
            mask |= sys::ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS.0 as i32;
        }
        if let (sys::ibv_qp_state::IBV_QPS_RTR, Some(timer)) = (state, config.min_rnr_timer) {
            attr.min_rnr_timer = timer;
            mask |= sys::ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER.0 as i32;
        }
        if state == sys::ibv_qp_state::IBV_QPS_RTS {
            // The CM hands each side the counts the *other* side asked for (the REQ's RNR
            // retries go to the passive QP, the REP's to the active one; the passive side's
            // transport retries come from the REQ too): each side's own are set here.
            attr.retry_cnt = config.retry_count.min(7);
            attr.rnr_retry = config.rnr_retry.min(7);
            mask |= (sys::ibv_qp_attr_mask::IBV_QP_RETRY_CNT.0
                | sys::ibv_qp_attr_mask::IBV_QP_RNR_RETRY.0) as i32;
        }
        qp.modify(&mut attr, sys::ibv_qp_attr_mask(mask as u32), op)
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the id is destroyed once; its QP (ours, not rdma_cm's) goes first.
        unsafe { sys::rdma_destroy_id(self.0.as_ptr()) };
    }
}

/// A connection manager event, copied out before it is acked.
struct Event {
    kind: sys::rdma_cm_event_type::Type,
    status: i32,
    /// The id a connection request created (owned by whoever takes it).
    id: *mut sys::rdma_cm_id,
    private: Vec<u8>,
}

impl Event {
    /// # Safety
    /// `raw` must be an event from rdma_get_cm_event that has not been acked.
    unsafe fn copy(raw: &sys::rdma_cm_event) -> Event {
        use sys::rdma_cm_event_type as t;
        // Private data rides on connection events only.
        let private = match raw.event {
            t::RDMA_CM_EVENT_CONNECT_REQUEST
            | t::RDMA_CM_EVENT_CONNECT_RESPONSE
            | t::RDMA_CM_EVENT_ESTABLISHED
            | t::RDMA_CM_EVENT_REJECTED => {
                // SAFETY: conn is the union member for these events (RC, port space TCP).
                let conn = unsafe { raw.param.conn };
                if conn.private_data.is_null() {
                    Vec::new()
                } else {
                    // SAFETY: librdmacm gives private_data_len readable bytes until the ack.
                    unsafe {
                        std::slice::from_raw_parts(
                            conn.private_data.cast::<u8>(),
                            usize::from(conn.private_data_len),
                        )
                    }
                    .to_vec()
                }
            }
            _ => Vec::new(),
        };
        Event {
            kind: raw.event,
            status: raw.status,
            id: raw.id,
            private,
        }
    }

    fn name(&self) -> String {
        // SAFETY: rdma_event_str returns a static string for any value.
        let s = unsafe { std::ffi::CStr::from_ptr(sys::rdma_event_str(self.kind)) };
        s.to_string_lossy().into_owned()
    }
}

/// What a peer says when it refuses a connection: the text it put in the reject's private data.
fn refusal(private: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(private)
        .trim_end_matches('\0')
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if text.is_empty() {
        "no reason given (nothing listening on that port?)".into()
    } else {
        text
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Waits on `channel` for `want`; any other event is the peer's refusal or a failure, named.
fn expect(
    channel: &Channel,
    want: sys::rdma_cm_event_type::Type,
    timeout: Duration,
    peer: &str,
    step: &str,
) -> Result<Event> {
    use sys::rdma_cm_event_type as t;
    let event = channel.next(timeout, None)?.ok_or_else(|| Error::Peer {
        peer: peer.to_string(),
        what: format!("no answer while {step} within {} ms", timeout.as_millis()),
    })?;
    if event.kind == want {
        return Ok(event);
    }
    let what = match event.kind {
        t::RDMA_CM_EVENT_REJECTED => format!("refused the connection: {}", refusal(&event.private)),
        t::RDMA_CM_EVENT_ADDR_ERROR
        | t::RDMA_CM_EVENT_ROUTE_ERROR
        | t::RDMA_CM_EVENT_UNREACHABLE => {
            format!(
                "unreachable while {step}: {} ({})",
                event.name(),
                std::io::Error::from_raw_os_error(-event.status)
            )
        }
        _ => format!("{} while {step} (status {})", event.name(), event.status),
    };
    Err(Error::Peer {
        peer: peer.to_string(),
        what,
    })
}

/// A route to a peer, resolved: the local device and port its packets leave through. The
/// caller opens that device, registers its memory there, then connects.
pub struct Route {
    id: CmId,
    channel: Channel,
    peer: SocketAddrV4,
    config: PeerConfig,
}

impl Route {
    pub fn resolve(peer: SocketAddrV4, config: &PeerConfig) -> Result<Route> {
        let channel = Channel::new()?;
        let id = CmId::create(&channel)?;
        let mut dst = sockaddr(peer);
        let timeout_ms = i32::try_from(config.connect_timeout.as_millis()).unwrap_or(i32::MAX);
        let name = peer.to_string();
        // SAFETY: the id is live; dst is a valid sockaddr_in for the call.
        let rc = unsafe {
            sys::rdma_resolve_addr(
                id.ptr(),
                std::ptr::null_mut(),
                (&mut dst as *mut libc::sockaddr_in).cast(),
                timeout_ms,
            )
        };
        if rc != 0 {
            return Err(Error::last_os("rdma_resolve_addr"));
        }
        let slack = config.connect_timeout + Duration::from_secs(1);
        expect(
            &channel,
            sys::rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED,
            slack,
            &name,
            "resolving its address",
        )?;
        // SAFETY: the id is live and its address resolved.
        if unsafe { sys::rdma_resolve_route(id.ptr(), timeout_ms) } != 0 {
            return Err(Error::last_os("rdma_resolve_route"));
        }
        expect(
            &channel,
            sys::rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED,
            slack,
            &name,
            "resolving the route",
        )?;
        Ok(Route {
            id,
            channel,
            peer,
            config: config.clone(),
        })
    }

    /// The local device and port toward the peer.
    pub fn device(&self) -> Result<(String, u8)> {
        self.id.device()
    }

    /// Connects with a QP on `pd` (which must be on the route's device), saying `hello`
    /// (at most 56 bytes); returns the connection and what the peer answered.
    pub fn connect(self, pd: &Arc<ProtectionDomain>, hello: &[u8]) -> Result<(PeerRc, Vec<u8>)> {
        let private_data_len = u8::try_from(hello.len())
            .ok()
            .filter(|&n| n <= 56)
            .ok_or_else(|| Error::invalid("a connection request carries at most 56 bytes"))?;
        check_device(pd, &self.id)?;
        if let Some(exponent) = self.config.ack_timeout {
            self.id.set_ack_timeout(exponent)?;
        }
        let queues = WorkQueues::new(pd, self.config.depth, self.config.timeout)?;
        let qp = QueuePair::create_rc(pd, &queues.cq, self.config.depth)?;
        self.id.transition(
            &qp,
            sys::ibv_qp_state::IBV_QPS_INIT,
            &self.config,
            "ibv_modify_qp(INIT)",
        )?;
        let mut param = conn_param(&self.config, pd, &qp, hello, private_data_len);
        // SAFETY: the id is live and routed; param and the hello it points to outlive the call.
        if unsafe { sys::rdma_connect(self.id.ptr(), &mut param) } != 0 {
            return Err(Error::last_os("rdma_connect"));
        }
        let name = self.peer.to_string();
        let answer = expect(
            &self.channel,
            sys::rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_RESPONSE,
            self.config.connect_timeout,
            &name,
            "connecting",
        )?;
        self.id.transition(
            &qp,
            sys::ibv_qp_state::IBV_QPS_RTR,
            &self.config,
            "ibv_modify_qp(RTR)",
        )?;
        self.id.transition(
            &qp,
            sys::ibv_qp_state::IBV_QPS_RTS,
            &self.config,
            "ibv_modify_qp(RTS)",
        )?;
        // SAFETY: the id is live and its QP ready to send.
        if unsafe { sys::rdma_establish(self.id.ptr()) } != 0 {
            return Err(Error::last_os("rdma_establish"));
        }
        Ok((
            PeerRc {
                qp,
                queues,
                pd: Arc::clone(pd),
                id: self.id,
                channel: self.channel,
                peer: name,
                disconnected: false,
            },
            answer.private,
        ))
    }
}

/// What a side says of its QP when it connects or accepts: its number, the READs and atomics it
/// takes and issues at once, its retries, and `private` (which the caller keeps alive, and
/// whose length it has checked).
fn conn_param(
    config: &PeerConfig,
    pd: &ProtectionDomain,
    qp: &QueuePair,
    private: &[u8],
    private_data_len: u8,
) -> sys::rdma_conn_param {
    let a = pd.context().attributes();
    let limit = a.max_qp_rd_atom.min(a.max_qp_init_rd_atom).max(1);
    let rd_atomic = u8::try_from(limit).unwrap_or(u8::MAX).min(RD_ATOMIC);
    sys::rdma_conn_param {
        private_data: private.as_ptr().cast(),
        private_data_len,
        responder_resources: rd_atomic,
        initiator_depth: rd_atomic,
        flow_control: 1,
        retry_count: config.retry_count.min(7),
        rnr_retry_count: config.rnr_retry.min(7),
        srq: 0,
        qp_num: qp.num(),
    }
}

fn check_device(pd: &ProtectionDomain, id: &CmId) -> Result<()> {
    let (device, _) = id.device()?;
    let ours = pd.context().name();
    if device != ours {
        return Err(Error::invalid(format!(
            "the connection is on {device}, the memory on {ours}: open {device}"
        )));
    }
    Ok(())
}

/// A passive side: listening on one address (and so one device).
pub struct Listener {
    id: CmId,
    channel: Channel,
    config: PeerConfig,
}

impl Listener {
    /// Listens on `addr`, which must be an address of an RDMA device's netdev (so the device is
    /// known before any peer comes).
    pub fn bind(addr: SocketAddrV4, config: &PeerConfig) -> Result<Listener> {
        if addr.ip().is_unspecified() {
            return Err(Error::invalid(
                "listen on the address of the RDMA device's netdev, not 0.0.0.0: the device's \
                 memory is registered before any peer connects",
            ));
        }
        let channel = Channel::new()?;
        let id = CmId::create(&channel)?;
        let mut src = sockaddr(addr);
        // SAFETY: the id is live; src is a valid sockaddr_in for the call.
        if unsafe { sys::rdma_bind_addr(id.ptr(), (&mut src as *mut libc::sockaddr_in).cast()) }
            != 0
        {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(match errno {
                libc::EADDRNOTAVAIL | libc::ENODEV => Error::invalid(format!(
                    "{} is not an address of this host's RDMA devices",
                    addr.ip()
                )),
                libc::EADDRINUSE => Error::invalid(format!("{addr} is already in use")),
                e => Error::os("rdma_bind_addr", e),
            });
        }
        // SAFETY: the id is live and bound.
        if unsafe { sys::rdma_listen(id.ptr(), 8) } != 0 {
            return Err(Error::last_os("rdma_listen"));
        }
        let listener = Listener {
            id,
            channel,
            config: config.clone(),
        };
        listener.device()?;
        Ok(listener)
    }

    /// The device and port the listener is on.
    pub fn device(&self) -> Result<(String, u8)> {
        self.id.device()
    }

    /// The next connection request, waiting up to `timeout` or until `stop` is set.
    pub fn next_request(&self, timeout: Duration, stop: &AtomicBool) -> Result<Option<Request>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.channel.next(left, Some(stop))? else {
                return Ok(None);
            };
            if event.kind != sys::rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST {
                // Nothing else concerns a listener whose connections have channels of their own.
                continue;
            }
            let id = NonNull::new(event.id)
                .map(CmId)
                .ok_or_else(|| Error::invalid("a connection request without an id"))?;
            // SAFETY: the id is live and came with a request, so its address is resolved.
            let from = unsafe { peer_of(&*id.ptr()) };
            return Ok(Some(Request {
                id,
                hello: event.private,
                from,
                config: self.config.clone(),
            }));
        }
    }
}

/// The requesting side's address, as text.
///
/// # Safety
/// `id` must be a live id whose route is resolved.
unsafe fn peer_of(id: &sys::rdma_cm_id) -> String {
    // SAFETY: the caller's promise; dst_addr is the peer's address for a request's id.
    let dst = unsafe { &id.route.addr.dst_addr_union.dst_sin };
    if i32::from(dst.sin_family) == libc::AF_INET {
        let ip = std::net::Ipv4Addr::from(u32::from_be(dst.sin_addr.s_addr));
        format!("{ip}:{}", u16::from_be(dst.sin_port))
    } else {
        "a peer".into()
    }
}

/// A peer's request to connect, to accept or refuse.
pub struct Request {
    id: CmId,
    pub hello: Vec<u8>,
    /// The peer's address.
    pub from: String,
    config: PeerConfig,
}

// SAFETY: an rdma_cm id has no thread affinity; the request is owned and used by one thread at
// a time.
unsafe impl Send for Request {}

impl Request {
    /// Refuses with a reason the peer is shown (at most 148 bytes).
    pub fn reject(self, reason: &str) {
        let bytes = &reason.as_bytes()[..reason.len().min(148)];
        // SAFETY: the id is live; bytes outlive the call and fit the reject's private data.
        unsafe { sys::rdma_reject(self.id.ptr(), bytes.as_ptr().cast(), bytes.len() as u8) };
    }

    /// Accepts with a QP on `pd`, answering `answer` (at most 196 bytes); returns once the
    /// connection is established.
    pub fn accept(self, pd: &Arc<ProtectionDomain>, answer: &[u8]) -> Result<PeerRc> {
        self.accept_with(pd, answer, |_| Ok(()))
            .map(|(conn, ())| conn)
    }

    /// `accept`, with `prepare` run on the ready QP before the accept goes out: receives posted
    /// there are up before the peer can send (a SEND that finds none waits out an RNR NAK).
    pub fn accept_with<T>(
        self,
        pd: &Arc<ProtectionDomain>,
        answer: &[u8],
        prepare: impl FnOnce(&mut PeerRc) -> Result<T>,
    ) -> Result<(PeerRc, T)> {
        let private_data_len = u8::try_from(answer.len())
            .ok()
            .filter(|&n| n <= 196)
            .ok_or_else(|| Error::invalid("an accept carries at most 196 bytes"))?;
        check_device(pd, &self.id)?;
        // Its own channel, so its events (a disconnect) reach this connection's owner.
        let channel = Channel::new()?;
        // SAFETY: the id and the new channel are live.
        if unsafe { sys::rdma_migrate_id(self.id.ptr(), channel.0.as_ptr()) } != 0 {
            return Err(Error::last_os("rdma_migrate_id"));
        }
        let queues = WorkQueues::new(pd, self.config.depth, self.config.timeout)?;
        let qp = QueuePair::create_rc(pd, &queues.cq, self.config.depth)?;
        for (state, op) in [
            (sys::ibv_qp_state::IBV_QPS_INIT, "ibv_modify_qp(INIT)"),
            (sys::ibv_qp_state::IBV_QPS_RTR, "ibv_modify_qp(RTR)"),
            (sys::ibv_qp_state::IBV_QPS_RTS, "ibv_modify_qp(RTS)"),
        ] {
            self.id.transition(&qp, state, &self.config, op)?;
        }
        let mut param = conn_param(&self.config, pd, &qp, answer, private_data_len);
        let mut conn = PeerRc {
            qp,
            queues,
            pd: Arc::clone(pd),
            id: self.id,
            channel,
            peer: self.from,
            disconnected: false,
        };
        let prepared = prepare(&mut conn)?;
        // SAFETY: the id is live; param and the answer it points to outlive the call.
        if unsafe { sys::rdma_accept(conn.id.ptr(), &mut param) } != 0 {
            return Err(Error::last_os("rdma_accept"));
        }
        expect(
            &conn.channel,
            sys::rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED,
            self.config.connect_timeout,
            &conn.peer,
            "establishing the connection",
        )?;
        Ok((conn, prepared))
    }
}

/// An RC connection to a peer on another host.
pub struct PeerRc {
    // Field order is drop order: the QP before its CQ, the id before its channel.
    qp: QueuePair,
    queues: WorkQueues,
    pd: Arc<ProtectionDomain>,
    id: CmId,
    channel: Channel,
    peer: String,
    disconnected: bool,
}

// SAFETY: verbs and rdma_cm handles have no thread affinity; the bookkeeping is owned data.
unsafe impl Send for PeerRc {}

impl PeerRc {
    /// The peer's address.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// This side's QP number (the probes name the QP by it).
    pub fn qp_num(&self) -> u32 {
        self.qp.num()
    }

    /// Posts an RDMA WRITE or READ between `local` (at `local_offset`) and the peer's `remote`.
    pub fn post_rdma(
        &mut self,
        opcode: Opcode,
        local: &MemoryRegion,
        local_offset: usize,
        remote: Remote,
        remote_offset: usize,
        len: usize,
    ) -> Result<u64> {
        self.queues.post_rdma(
            &self.qp,
            opcode,
            local.sge(local_offset, len)?,
            remote,
            remote_offset,
        )
    }

    pub fn post_send(&mut self, local: &MemoryRegion, offset: usize, len: usize) -> Result<u64> {
        self.queues.post_send(&self.qp, local, offset, len)
    }

    pub fn post_recv(&mut self, local: &MemoryRegion, offset: usize, len: usize) -> Result<u64> {
        self.queues.post_recv(&self.qp, local, offset, len)
    }

    /// Waits for one work request, with the configured timeout.
    pub fn wait(&mut self, wr_id: u64) -> Result<Completion> {
        self.queues.wait(wr_id)
    }

    /// Waits up to `timeout` for one work request.
    pub fn wait_for(&mut self, wr_id: u64, timeout: Duration) -> Result<Completion> {
        self.queues.wait_for(wr_id, timeout)
    }

    /// Waits for a work request that completes when the peer's application acts (the receive
    /// of its answer), not when the transport does: as long as the peer stays connected, up to
    /// `patience`. A transport's wait would give up on a peer that is busy doing what it was
    /// asked, in a loaded host for longer than any ACK takes.
    pub fn wait_on_peer(&mut self, wr_id: u64, patience: Duration) -> Result<Completion> {
        let started = Instant::now();
        loop {
            let slice = patience
                .saturating_sub(started.elapsed())
                .min(PEER_CHECK_INTERVAL);
            match self.queues.wait_for(wr_id, slice) {
                Err(Error::CompletionTimeout { .. }) if self.disconnected()? => {
                    return Err(Error::Peer {
                        peer: self.peer.clone(),
                        what: "disconnected before it answered".into(),
                    })
                }
                Err(Error::CompletionTimeout { what, .. }) if started.elapsed() >= patience => {
                    return Err(Error::CompletionTimeout {
                        what: format!("{what} (the peer's answer; it stayed connected)"),
                        timeout_ms: patience.as_millis(),
                    })
                }
                Err(Error::CompletionTimeout { .. }) => {}
                done => return done,
            }
        }
    }

    /// Whether the peer has disconnected (looked up without waiting).
    pub fn disconnected(&mut self) -> Result<bool> {
        while !self.disconnected {
            match self.channel.next(Duration::ZERO, None)? {
                Some(e) if e.kind == sys::rdma_cm_event_type::RDMA_CM_EVENT_DISCONNECTED => {
                    self.disconnected = true;
                }
                Some(_) => {}
                None => break,
            }
        }
        Ok(self.disconnected)
    }
}

impl Drop for PeerRc {
    fn drop(&mut self) {
        // The peer learns at once instead of at its next timeout; then the QP, CQ and id go.
        // SAFETY: the id is live; disconnecting twice is harmless.
        unsafe { sys::rdma_disconnect(self.id.ptr()) };
    }
}
