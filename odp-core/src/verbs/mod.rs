//! Safe Rust over libibverbs (through rdma-mummy-sys, which dlopens libibverbs at run time):
//! devices, attributes with the full ODP capabilities, protection domains, ODP memory
//! registration, prefetch and a loopback RC queue-pair pair.
//!
//! Every handle owns its verbs object and releases it on drop, in dependency order: an MR or QP
//! keeps its PD alive, a PD keeps its device context alive.

mod cm;
mod mr;
mod qp;

use std::net::Ipv6Addr;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_mummy_sys as sys;
use serde::Serialize;

use crate::error::{Error, Result};

pub use cm::{Listener, PeerConfig, PeerRc, Request, Route};
pub use mr::{advise, Access, Advice, MemoryRegion, Sge};
pub use qp::{Completion, LoopbackConfig, LoopbackRc, Opcode, Remote};

/// A device as listed, before opening it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub node_guid: String,
    pub node_type: &'static str,
    pub transport: &'static str,
}

/// Whether a library rdma-mummy-sys opens (libibverbs.so.1, librdmacm.so.1) could be loaded
/// into this process at all.
fn library_loaded(name: &std::ffi::CStr) -> bool {
    // rdma-mummy-sys dlopens the libraries from a constructor; RTLD_NOLOAD only asks whether one
    // is resident, so this neither loads it twice nor changes anything.
    // SAFETY: the name is a valid NUL-terminated string; the returned handle is closed at once.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
        true
    }
}

/// The device list, released on drop. Contexts opened from it stay valid after that.
struct DeviceList {
    list: NonNull<*mut sys::ibv_device>,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<Self> {
        if !library_loaded(c"libibverbs.so.1") {
            return Err(Error::LibraryMissing);
        }
        let mut n: i32 = 0;
        // SAFETY: n is a valid out-pointer; the list is freed in Drop.
        let list = unsafe { sys::ibv_get_device_list(&mut n) };
        // libibverbs returns NULL (ENOSYS) when the kernel has no uverbs at all: for the user that
        // is the same situation as an empty list.
        let list = NonNull::new(list).ok_or(Error::NoDevices)?;
        Ok(DeviceList {
            list,
            len: usize::try_from(n).unwrap_or(0),
        })
    }

    fn devices(&self) -> impl Iterator<Item = *mut sys::ibv_device> + '_ {
        // SAFETY: libibverbs guarantees `len` valid device pointers while the list lives.
        (0..self.len).map(move |i| unsafe { *self.list.as_ptr().add(i) })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from ibv_get_device_list and is freed exactly once.
        unsafe { sys::ibv_free_device_list(self.list.as_ptr()) };
    }
}

fn c_chars_to_string(chars: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn format_guid(be: u64) -> String {
    let v = u64::from_be(be);
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        (v >> 48) & 0xffff,
        (v >> 32) & 0xffff,
        (v >> 16) & 0xffff,
        v & 0xffff
    )
}

fn device_info(dev: *mut sys::ibv_device) -> DeviceInfo {
    // SAFETY: dev is a live entry of a live device list.
    let (name, node_type, transport, guid) = unsafe {
        (
            c_chars_to_string(&(*dev).name),
            (*dev).node_type,
            (*dev).transport_type,
            sys::ibv_get_device_guid(dev),
        )
    };
    DeviceInfo {
        name,
        node_guid: format_guid(guid),
        node_type: match node_type {
            sys::ibv_node_type::IBV_NODE_CA => "CA",
            sys::ibv_node_type::IBV_NODE_SWITCH => "switch",
            sys::ibv_node_type::IBV_NODE_ROUTER => "router",
            sys::ibv_node_type::IBV_NODE_RNIC => "RNIC",
            _ => "unknown",
        },
        transport: match transport {
            sys::ibv_transport_type::IBV_TRANSPORT_IB => "InfiniBand",
            sys::ibv_transport_type::IBV_TRANSPORT_IWARP => "iWARP",
            sys::ibv_transport_type::IBV_TRANSPORT_USNIC => "usNIC",
            _ => "unknown",
        },
    }
}

/// Lists the RDMA devices. An empty list is not an error here; opening one is.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    match DeviceList::get() {
        Ok(list) => Ok(list.devices().map(device_info).collect()),
        Err(Error::NoDevices) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// ODP operations a transport supports (IBV_ODP_SUPPORT_* bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TransportOdpCaps {
    pub raw: u32,
    pub send: bool,
    pub recv: bool,
    pub write: bool,
    pub read: bool,
    pub atomic: bool,
    pub srq_recv: bool,
    pub flush: bool,
    pub atomic_write: bool,
}

impl TransportOdpCaps {
    pub fn from_bits(raw: u32) -> Self {
        TransportOdpCaps {
            raw,
            send: raw & 1 != 0,
            recv: raw & 2 != 0,
            write: raw & 4 != 0,
            read: raw & 8 != 0,
            atomic: raw & 16 != 0,
            srq_recv: raw & 32 != 0,
            flush: raw & 64 != 0,
            atomic_write: raw & 128 != 0,
        }
    }

    /// Every bit with its name, in ibv_devinfo's order and spelling.
    pub fn flags(&self) -> [(&'static str, bool); 8] {
        [
            ("SEND", self.send),
            ("RECV", self.recv),
            ("WRITE", self.write),
            ("READ", self.read),
            ("ATOMIC", self.atomic),
            ("SRQ_RECV", self.srq_recv),
            ("FLUSH", self.flush),
            ("ATOMIC_WRITE", self.atomic_write),
        ]
    }

    /// The names of the set bits.
    pub fn names(&self) -> Vec<&'static str> {
        self.flags()
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }
}

/// The device's ODP capabilities from ibv_query_device_ex.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OdpCaps {
    pub general_raw: u64,
    pub supported: bool,
    pub implicit: bool,
    pub rc: TransportOdpCaps,
    pub uc: TransportOdpCaps,
    pub ud: TransportOdpCaps,
    pub xrc: TransportOdpCaps,
}

impl OdpCaps {
    pub fn from_raw(general: u64, rc: u32, uc: u32, ud: u32, xrc: u32) -> Self {
        OdpCaps {
            general_raw: general,
            supported: general & 1 != 0,
            implicit: general & 2 != 0,
            rc: TransportOdpCaps::from_bits(rc),
            uc: TransportOdpCaps::from_bits(uc),
            ud: TransportOdpCaps::from_bits(ud),
            xrc: TransportOdpCaps::from_bits(xrc),
        }
    }
}

/// Device attributes that matter when reasoning about ODP and traffic.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceAttributes {
    pub name: String,
    pub fw_ver: String,
    pub node_guid: String,
    pub sys_image_guid: String,
    pub vendor_id: u32,
    pub vendor_part_id: u32,
    pub hw_ver: u32,
    pub max_mr_size: u64,
    pub page_size_cap: u64,
    pub max_qp: i32,
    pub max_qp_wr: i32,
    pub max_sge: i32,
    pub max_cq: i32,
    pub max_cqe: i32,
    pub max_mr: i32,
    pub max_pd: i32,
    pub max_qp_rd_atom: i32,
    pub max_qp_init_rd_atom: i32,
    pub atomic_cap: &'static str,
    pub phys_port_cnt: u8,
    pub odp: OdpCaps,
}

/// One GID table entry.
#[derive(Debug, Clone, Serialize)]
pub struct GidInfo {
    pub index: u32,
    pub gid: String,
    pub kind: &'static str,
    pub ifindex: u32,
}

/// A port's state, MTU and addressing.
#[derive(Debug, Clone, Serialize)]
pub struct PortInfo {
    pub port: u8,
    pub state: &'static str,
    pub max_mtu: u32,
    pub active_mtu: u32,
    pub link_layer: &'static str,
    pub lid: u16,
    pub gid_tbl_len: i32,
    pub gids: Vec<GidInfo>,
}

const GID_TYPE_IB: u32 = 0;
const GID_TYPE_ROCE_V1: u32 = 1;
const GID_TYPE_ROCE_V2: u32 = 2;
const LINK_LAYER_ETHERNET: u8 = 2;

/// An open device.
#[derive(Debug)]
pub struct Context {
    ctx: NonNull<sys::ibv_context>,
    attributes: DeviceAttributes,
}

// SAFETY: libibverbs contexts are thread-safe; the handle has no thread affinity.
unsafe impl Send for Context {}
// SAFETY: as above; all verbs on a context may be called concurrently.
unsafe impl Sync for Context {}

impl Context {
    /// Opens the named device, or the first one when `name` is None.
    pub fn open(name: Option<&str>) -> Result<Arc<Context>> {
        let list = DeviceList::get()?;
        let devices: Vec<_> = list.devices().collect();
        if devices.is_empty() {
            return Err(Error::NoDevices);
        }
        let dev = match name {
            None => devices[0],
            Some(wanted) => *devices
                .iter()
                .find(|&&d| device_info(d).name == wanted)
                .ok_or_else(|| Error::UnknownDevice {
                    name: wanted.to_string(),
                    available: devices
                        .iter()
                        .map(|&d| device_info(d).name)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
        };
        let info = device_info(dev);
        // SAFETY: dev is a live entry of the live list; the context outlives the list by design.
        let ctx = NonNull::new(unsafe { sys::ibv_open_device(dev) })
            .ok_or_else(|| Error::last_os("ibv_open_device"))?;
        let mut context = Context {
            ctx,
            attributes: DeviceAttributes {
                name: info.name,
                fw_ver: String::new(),
                node_guid: info.node_guid,
                sys_image_guid: String::new(),
                vendor_id: 0,
                vendor_part_id: 0,
                hw_ver: 0,
                max_mr_size: 0,
                page_size_cap: 0,
                max_qp: 0,
                max_qp_wr: 0,
                max_sge: 0,
                max_cq: 0,
                max_cqe: 0,
                max_mr: 0,
                max_pd: 0,
                max_qp_rd_atom: 0,
                max_qp_init_rd_atom: 0,
                atomic_cap: "none",
                phys_port_cnt: 0,
                odp: OdpCaps::default(),
            },
        };
        context.query_attributes()?;
        Ok(Arc::new(context))
    }

    fn query_attributes(&mut self) -> Result<()> {
        // SAFETY: ibv_device_attr_ex is plain old data; all-zero is a valid initial value.
        let mut attr: sys::ibv_device_attr_ex = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is live, input may be NULL, attr is a valid out-pointer of the right size.
        let rc =
            unsafe { sys::ibv_query_device_ex(self.ctx.as_ptr(), std::ptr::null(), &mut attr) };
        if rc != 0 {
            return Err(Error::os("ibv_query_device_ex", rc));
        }
        let o = &attr.orig_attr;
        let a = &mut self.attributes;
        a.fw_ver = c_chars_to_string(&o.fw_ver);
        a.sys_image_guid = format_guid(o.sys_image_guid);
        a.vendor_id = o.vendor_id;
        a.vendor_part_id = o.vendor_part_id;
        a.hw_ver = o.hw_ver;
        a.max_mr_size = o.max_mr_size;
        a.page_size_cap = o.page_size_cap;
        a.max_qp = o.max_qp;
        a.max_qp_wr = o.max_qp_wr;
        a.max_sge = o.max_sge;
        a.max_cq = o.max_cq;
        a.max_cqe = o.max_cqe;
        a.max_mr = o.max_mr;
        a.max_pd = o.max_pd;
        a.max_qp_rd_atom = o.max_qp_rd_atom;
        a.max_qp_init_rd_atom = o.max_qp_init_rd_atom;
        a.atomic_cap = match o.atomic_cap {
            sys::ibv_atomic_cap::IBV_ATOMIC_HCA => "hca",
            sys::ibv_atomic_cap::IBV_ATOMIC_GLOB => "global",
            _ => "none",
        };
        a.phys_port_cnt = o.phys_port_cnt;
        let t = &attr.odp_caps.per_transport_caps;
        a.odp = OdpCaps::from_raw(
            attr.odp_caps.general_caps,
            t.rc_odp_caps,
            t.uc_odp_caps,
            t.ud_odp_caps,
            attr.xrc_odp_caps,
        );
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.attributes.name
    }

    pub fn attributes(&self) -> &DeviceAttributes {
        &self.attributes
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_context {
        self.ctx.as_ptr()
    }

    /// Port attributes and its populated GID entries.
    pub fn port(&self, port: u8) -> Result<PortInfo> {
        if port == 0 || port > self.attributes.phys_port_cnt {
            return Err(Error::invalid(format!(
                "port {port} does not exist on {} (ports 1..={})",
                self.name(),
                self.attributes.phys_port_cnt
            )));
        }
        // SAFETY: ibv_port_attr is plain old data; all-zero is valid.
        let mut attr: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is live and attr is a valid out-pointer.
        let rc = unsafe { sys::ibv_query_port(self.ctx.as_ptr(), port, &mut attr) };
        if rc != 0 {
            return Err(Error::os("ibv_query_port", rc));
        }
        Ok(PortInfo {
            port,
            state: match attr.state {
                sys::ibv_port_state::IBV_PORT_DOWN => "DOWN",
                sys::ibv_port_state::IBV_PORT_INIT => "INIT",
                sys::ibv_port_state::IBV_PORT_ARMED => "ARMED",
                sys::ibv_port_state::IBV_PORT_ACTIVE => "ACTIVE",
                sys::ibv_port_state::IBV_PORT_ACTIVE_DEFER => "ACTIVE_DEFER",
                _ => "NOP",
            },
            max_mtu: mtu_bytes(attr.max_mtu),
            active_mtu: mtu_bytes(attr.active_mtu),
            link_layer: if attr.link_layer == LINK_LAYER_ETHERNET {
                "Ethernet"
            } else {
                "InfiniBand"
            },
            lid: attr.lid,
            gid_tbl_len: attr.gid_tbl_len,
            gids: self.gids(port)?,
        })
    }

    /// The populated GID entries of a port. Uses the table query (one call) rather than walking
    /// every index: rxe has 1024 slots and sysfs walks of them take tens of seconds in a VM.
    pub fn gids(&self, port: u8) -> Result<Vec<GidInfo>> {
        const MAX: usize = 1024;
        // SAFETY: ibv_gid_entry is plain old data; zeroed entries are valid.
        let mut entries: Vec<sys::ibv_gid_entry> = vec![unsafe { std::mem::zeroed() }; MAX];
        // SAFETY: entries has room for MAX entries of the size the call is told.
        let n =
            unsafe { sys::ibv_query_gid_table(self.ctx.as_ptr(), entries.as_mut_ptr(), MAX, 0) };
        if n < 0 {
            return Err(Error::os(
                "ibv_query_gid_table",
                i32::try_from(-n).unwrap_or(libc::EIO),
            ));
        }
        entries.truncate(usize::try_from(n).unwrap_or(0));
        Ok(entries
            .iter()
            .filter(|e| e.port_num == u32::from(port))
            .map(|e| {
                // SAFETY: reading the raw bytes of a GID union is always valid.
                let raw = unsafe { e.gid.raw };
                GidInfo {
                    index: e.gid_index,
                    gid: Ipv6Addr::from(raw).to_string(),
                    kind: match e.gid_type {
                        GID_TYPE_IB => "IB",
                        GID_TYPE_ROCE_V1 => "RoCEv1",
                        GID_TYPE_ROCE_V2 => "RoCEv2",
                        _ => "unknown",
                    },
                    ifindex: e.ndev_ifindex,
                }
            })
            .collect())
    }

    /// Allocates a protection domain.
    pub fn alloc_pd(self: &Arc<Self>) -> Result<Arc<ProtectionDomain>> {
        // SAFETY: ctx is live; the PD is released in ProtectionDomain's Drop.
        let pd = NonNull::new(unsafe { sys::ibv_alloc_pd(self.ctx.as_ptr()) })
            .ok_or_else(|| Error::last_os("ibv_alloc_pd"))?;
        Ok(Arc::new(ProtectionDomain {
            pd,
            ctx: Arc::clone(self),
        }))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: every object created on this context holds an Arc to it, so none remain.
        unsafe { sys::ibv_close_device(self.ctx.as_ptr()) };
    }
}

pub(crate) fn mtu_bytes(mtu: sys::ibv_mtu::Type) -> u32 {
    if (1..=5).contains(&mtu) {
        128 << mtu
    } else {
        0
    }
}

pub(crate) fn mtu_from_bytes(bytes: u32) -> Result<sys::ibv_mtu::Type> {
    Ok(match bytes {
        256 => sys::ibv_mtu::IBV_MTU_256,
        512 => sys::ibv_mtu::IBV_MTU_512,
        1024 => sys::ibv_mtu::IBV_MTU_1024,
        2048 => sys::ibv_mtu::IBV_MTU_2048,
        4096 => sys::ibv_mtu::IBV_MTU_4096,
        other => {
            return Err(Error::invalid(format!(
                "path MTU {other} is not one of 256, 512, 1024, 2048, 4096"
            )))
        }
    })
}

/// A protection domain.
#[derive(Debug)]
pub struct ProtectionDomain {
    pd: NonNull<sys::ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe in libibverbs; the handle has no thread affinity.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_pd {
        self.pd.as_ptr()
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: MRs and QPs hold an Arc to this PD, so none remain when it drops.
        unsafe { sys::ibv_dealloc_pd(self.pd.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_caps_decode_every_bit() {
        let caps = TransportOdpCaps::from_bits(0xff);
        assert_eq!(
            caps.names(),
            [
                "SEND",
                "RECV",
                "WRITE",
                "READ",
                "ATOMIC",
                "SRQ_RECV",
                "FLUSH",
                "ATOMIC_WRITE"
            ]
        );
        let caps = TransportOdpCaps::from_bits(4 | 8);
        assert_eq!(caps.names(), ["WRITE", "READ"]);
        assert!(!caps.send && caps.write && caps.read && !caps.atomic);
    }

    #[test]
    fn general_caps_decode_support_and_implicit() {
        let caps = OdpCaps::from_raw(1, 0x3f, 0, 0x23, 0);
        assert!(caps.supported && !caps.implicit);
        assert!(caps.rc.send && caps.rc.srq_recv && !caps.rc.flush);
        assert!(caps.ud.send && caps.ud.recv && caps.ud.srq_recv && !caps.ud.write);
        assert!(OdpCaps::from_raw(3, 0, 0, 0, 0).implicit);
    }

    #[test]
    fn guids_print_in_ibv_devinfo_form() {
        assert_eq!(
            format_guid(0x0123_4567_89ab_cdefu64.to_be()),
            "0123:4567:89ab:cdef"
        );
    }

    #[test]
    fn mtus_round_trip() {
        for bytes in [256, 512, 1024, 2048, 4096] {
            assert_eq!(mtu_bytes(mtu_from_bytes(bytes).expect("valid mtu")), bytes);
        }
        assert!(mtu_from_bytes(1500).is_err());
    }
}
