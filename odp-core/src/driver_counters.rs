//! The drivers' own counters, read as the `rdma` tool reads them, over the RDMA netlink device
//! client (NETLINK_RDMA, nldev): per-MR ODP counters (`rdma stat show mr`: a dump of each
//! device's MR resources; mlx5 fills page_faults, page_invalidations and page_prefetch for its
//! ODP MRs, drivers that keep none (rxe) list their MRs with no counters), and a port's hardware
//! counters (`rdma stat show link DEV/PORT`: packets, retransmissions, RNR NAKs, retries
//! exceeded, by the driver's names).
//!
//! The message layout is the kernel's UAPI, include/uapi/rdma/rdma_netlink.h; netlink framing,
//! attributes and the socket come from the rust-netlink crates.

use std::io;

use netlink_packet_core::{
    parse_string, parse_u32, parse_u64, DefaultNla, Emitable, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable, NlasIterator, NLA_HEADER_SIZE, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{protocols::NETLINK_RDMA, Socket, SocketAddr};

/// RDMA_NL_NLDEV: the device client; a message type is (client << 10) + command.
const NLDEV_CLIENT: u16 = 5;
const CMD_GET: u16 = 1;
const CMD_STAT_GET: u16 = 17;

const ATTR_DEV_INDEX: u16 = 1;
const ATTR_DEV_NAME: u16 = 2;
const ATTR_PORT_INDEX: u16 = 3;
const ATTR_RES_MR: u16 = 40;
const ATTR_RES_MR_ENTRY: u16 = 41;
const ATTR_RES_MRN: u16 = 62;
const ATTR_STAT_RES: u16 = 75;
const ATTR_STAT_HWCOUNTERS: u16 = 80;
const ATTR_STAT_HWCOUNTER_ENTRY: u16 = 81;
const ATTR_STAT_HWCOUNTER_ENTRY_NAME: u16 = 82;
const ATTR_STAT_HWCOUNTER_ENTRY_VALUE: u16 = 83;

/// One MR as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MrCounters {
    /// The kernel's resource id of the MR (what `rdma stat show mr` prints as mrn).
    pub mrn: u32,
    /// The driver's counters, by name; empty where it keeps none.
    pub counters: Vec<(String, u64)>,
}

/// One device's MRs, or why they could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMrs {
    pub device: String,
    pub mrs: Result<Vec<MrCounters>, String>,
}

/// An nldev message: its command and its attributes, as bytes.
#[derive(Debug, Clone)]
struct Nldev {
    command: u16,
    attributes: Vec<u8>,
}

impl Nldev {
    fn request(command: u16, attributes: &[DefaultNla]) -> Nldev {
        let mut bytes = vec![0; attributes.buffer_len()];
        attributes.emit(&mut bytes);
        Nldev {
            command,
            attributes: bytes,
        }
    }
}

impl NetlinkSerializable for Nldev {
    fn message_type(&self) -> u16 {
        (NLDEV_CLIENT << 10) + self.command
    }

    fn buffer_len(&self) -> usize {
        self.attributes.len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.attributes);
    }
}

impl NetlinkDeserializable for Nldev {
    type Error = io::Error;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, Self::Error> {
        Ok(Nldev {
            command: header.message_type & 0x3ff,
            attributes: payload.to_vec(),
        })
    }
}

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("rdma netlink: {what}"))
}

/// The attributes of a buffer as (kind, value) pairs.
fn attributes(bytes: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    NlasIterator::new(bytes)
        .map(|nla| {
            let nla = nla.map_err(bad)?;
            let (kind, length) = (nla.kind(), usize::from(nla.length()));
            let value = nla
                .into_inner()
                .get(NLA_HEADER_SIZE..length)
                .ok_or_else(|| bad("an attribute shorter than its header"))?;
            Ok((kind, value))
        })
        .collect()
}

fn u32_attr(attrs: &[(u16, &[u8])], kind: u16) -> Option<u32> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .and_then(|(_, v)| parse_u32(v).ok())
}

fn string_attr(attrs: &[(u16, &[u8])], kind: u16) -> Option<String> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .and_then(|(_, v)| parse_string(v).ok())
}

/// A socket on the kernel's RDMA netlink.
pub struct RdmaNetlink {
    socket: Socket,
    sequence: u32,
}

impl RdmaNetlink {
    pub fn open() -> io::Result<RdmaNetlink> {
        let mut socket = Socket::new(NETLINK_RDMA)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(RdmaNetlink {
            socket,
            sequence: 0,
        })
    }

    /// Sends a dump request and returns every reply's attributes, up to the dump's end.
    fn dump(&mut self, request: Nldev) -> io::Result<Vec<Vec<u8>>> {
        self.exchange(request, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// Sends a request and returns every reply's attributes: up to a dump's end, or to the
    /// acknowledgement of a single request.
    fn exchange(&mut self, request: Nldev, flags: u16) -> io::Result<Vec<Vec<u8>>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut message = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(request),
        );
        message.header.flags = flags;
        message.header.sequence_number = self.sequence;
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            if datagram.is_empty() {
                return Err(bad("the kernel closed the dump"));
            }
            let mut at = 0;
            while at < datagram.len() {
                let reply = NetlinkMessage::<Nldev>::deserialize(&datagram[at..]).map_err(bad)?;
                let length = reply.header.length as usize;
                if length == 0 {
                    return Err(bad("a reply of length 0"));
                }
                at += length.next_multiple_of(4);
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m.attributes),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    // The acknowledgement: a request's replies are all in.
                    NetlinkPayload::Error(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
    }

    /// The RDMA devices: (index, name).
    pub fn devices(&mut self) -> io::Result<Vec<(u32, String)>> {
        let mut devices = Vec::new();
        for reply in self.dump(Nldev::request(CMD_GET, &[]))? {
            let attrs = attributes(&reply)?;
            if let (Some(index), Some(name)) = (
                u32_attr(&attrs, ATTR_DEV_INDEX),
                string_attr(&attrs, ATTR_DEV_NAME),
            ) {
                devices.push((index, name));
            }
        }
        Ok(devices)
    }

    /// One device's MRs with their driver counters (`rdma stat show mr dev NAME`).
    pub fn mr_counters(&mut self, index: u32) -> io::Result<Vec<MrCounters>> {
        let request = Nldev::request(
            CMD_STAT_GET,
            &[
                DefaultNla::new(ATTR_DEV_INDEX, index.to_ne_bytes().to_vec()),
                DefaultNla::new(ATTR_STAT_RES, u32::from(ATTR_RES_MR).to_ne_bytes().to_vec()),
            ],
        );
        let mut mrs = Vec::new();
        for reply in self.dump(request)? {
            parse_mr_table(&reply, &mut mrs)?;
        }
        Ok(mrs)
    }

    /// A port's hardware counters (`rdma stat show link DEV/PORT`), by the driver's names.
    pub fn port_counters(&mut self, device: &str, port: u32) -> io::Result<Vec<(String, u64)>> {
        let index = self
            .devices()?
            .into_iter()
            .find(|(_, name)| name == device)
            .map(|(index, _)| index)
            .ok_or_else(|| bad(format!("no RDMA device {device}")))?;
        let request = Nldev::request(
            CMD_STAT_GET,
            &[
                DefaultNla::new(ATTR_DEV_INDEX, index.to_ne_bytes().to_vec()),
                DefaultNla::new(ATTR_PORT_INDEX, port.to_ne_bytes().to_vec()),
            ],
        );
        let mut counters = Vec::new();
        for reply in self.exchange(request, NLM_F_REQUEST | NLM_F_ACK)? {
            for (kind, table) in attributes(&reply)? {
                if kind == ATTR_STAT_HWCOUNTERS {
                    hardware_counters(table, &mut counters)?;
                }
            }
        }
        Ok(counters)
    }

    /// Every device's MRs; a device whose MRs cannot be read says why.
    pub fn all_mr_counters(&mut self) -> io::Result<Vec<DeviceMrs>> {
        let devices = self.devices()?;
        Ok(devices
            .into_iter()
            .map(|(index, device)| DeviceMrs {
                mrs: self.mr_counters(index).map_err(|e| e.to_string()),
                device,
            })
            .collect())
    }
}

/// The MR entries of one STAT_GET reply: RES_MR { RES_MR_ENTRY { RES_MRN, STAT_HWCOUNTERS
/// { STAT_HWCOUNTER_ENTRY { NAME, VALUE } ... } } ... }.
fn parse_mr_table(reply: &[u8], mrs: &mut Vec<MrCounters>) -> io::Result<()> {
    for (kind, table) in attributes(reply)? {
        if kind != ATTR_RES_MR {
            continue;
        }
        for (kind, entry) in attributes(table)? {
            if kind != ATTR_RES_MR_ENTRY {
                continue;
            }
            let fields = attributes(entry)?;
            let mrn = u32_attr(&fields, ATTR_RES_MRN).ok_or_else(|| bad("an MR without mrn"))?;
            let mut counters = Vec::new();
            for (kind, table) in &fields {
                if *kind == ATTR_STAT_HWCOUNTERS {
                    hardware_counters(table, &mut counters)?;
                }
            }
            mrs.push(MrCounters { mrn, counters });
        }
    }
    Ok(())
}

/// What `device`'s `port` counters gained since `before` (read with `port_counters`), by name.
pub fn gained_since(
    device: &str,
    port: u8,
    before: &[(String, u64)],
) -> Result<std::collections::BTreeMap<String, u64>, String> {
    port_counters(device, port).map(|after| deltas(before, &after).into_iter().collect())
}

/// A port's hardware counters now (`rdma stat show link DEVICE/PORT`), or why they cannot be
/// read.
pub fn port_counters(device: &str, port: u8) -> Result<Vec<(String, u64)>, String> {
    RdmaNetlink::open()
        .and_then(|mut nl| nl.port_counters(device, u32::from(port)))
        .map_err(|e| format!("cannot read {device}/{port}'s counters: {e}"))
}

/// A STAT_HWCOUNTERS table: STAT_HWCOUNTER_ENTRY { NAME, VALUE } ...
fn hardware_counters(table: &[u8], counters: &mut Vec<(String, u64)>) -> io::Result<()> {
    for (kind, counter) in attributes(table)? {
        if kind != ATTR_STAT_HWCOUNTER_ENTRY {
            continue;
        }
        let pair = attributes(counter)?;
        let name = string_attr(&pair, ATTR_STAT_HWCOUNTER_ENTRY_NAME);
        let value = pair
            .iter()
            .find(|(k, _)| *k == ATTR_STAT_HWCOUNTER_ENTRY_VALUE)
            .and_then(|(_, v)| parse_u64(v).ok());
        if let (Some(name), Some(value)) = (name, value) {
            counters.push((name, value));
        }
    }
    Ok(())
}

/// What each counter gained between two readings (counters absent from the first count from 0;
/// a counter that went back, a driver reset, counts as its new value).
pub fn deltas(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|(name, value)| {
            let was = before
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v);
            let gained = if *value >= was { value - was } else { *value };
            (name.clone(), gained)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLA_F_NESTED;

    fn nested(kind: u16, inner: &[DefaultNla]) -> DefaultNla {
        let mut bytes = vec![0; inner.buffer_len()];
        inner.emit(&mut bytes);
        DefaultNla::new(kind | NLA_F_NESTED, bytes)
    }

    fn counter(name: &str, value: u64) -> DefaultNla {
        let mut name = name.as_bytes().to_vec();
        name.push(0);
        nested(
            ATTR_STAT_HWCOUNTER_ENTRY,
            &[
                DefaultNla::new(ATTR_STAT_HWCOUNTER_ENTRY_NAME, name),
                DefaultNla::new(
                    ATTR_STAT_HWCOUNTER_ENTRY_VALUE,
                    value.to_ne_bytes().to_vec(),
                ),
            ],
        )
    }

    #[test]
    fn an_mlx5_reply_gives_each_mrs_counters_and_an_rxe_reply_none() {
        // The shape mlx5's fill_stat_mr_entry gives an ODP MR, beside a non-ODP MR (no
        // counters) and rxe's MRs (none ever).
        let reply = [
            DefaultNla::new(ATTR_DEV_INDEX, 3u32.to_ne_bytes().to_vec()),
            DefaultNla::new(ATTR_DEV_NAME, b"mlx5_0\0".to_vec()),
            nested(
                ATTR_RES_MR,
                &[
                    nested(
                        ATTR_RES_MR_ENTRY,
                        &[
                            DefaultNla::new(ATTR_RES_MRN, 7u32.to_ne_bytes().to_vec()),
                            nested(
                                ATTR_STAT_HWCOUNTERS,
                                &[
                                    counter("page_faults", 1473),
                                    counter("page_invalidations", 195),
                                    counter("page_prefetch", 0),
                                ],
                            ),
                        ],
                    ),
                    nested(
                        ATTR_RES_MR_ENTRY,
                        &[DefaultNla::new(ATTR_RES_MRN, 8u32.to_ne_bytes().to_vec())],
                    ),
                ],
            ),
        ];
        let mut bytes = vec![0; reply.as_slice().buffer_len()];
        reply.as_slice().emit(&mut bytes);
        let mut mrs = Vec::new();
        parse_mr_table(&bytes, &mut mrs).expect("parse");
        assert_eq!(
            mrs,
            [
                MrCounters {
                    mrn: 7,
                    counters: vec![
                        ("page_faults".into(), 1473),
                        ("page_invalidations".into(), 195),
                        ("page_prefetch".into(), 0),
                    ],
                },
                MrCounters {
                    mrn: 8,
                    counters: vec![],
                },
            ]
        );
        // Truncated: an error, not a panic or a made-up MR.
        let mut cut = Vec::new();
        assert!(parse_mr_table(&bytes[..bytes.len() - 6], &mut cut).is_err());
    }

    #[test]
    fn a_ports_counters_are_read_by_name_and_their_gains_taken() {
        let table = nested(
            ATTR_STAT_HWCOUNTERS,
            &[counter("sent_pkts", 4100), counter("rcvd_rnr_err", 2)],
        );
        let mut bytes = vec![0; table.buffer_len()];
        table.emit(&mut bytes);
        let mut counters = Vec::new();
        for (kind, inner) in attributes(&bytes).expect("attributes") {
            assert_eq!(kind, ATTR_STAT_HWCOUNTERS);
            hardware_counters(inner, &mut counters).expect("table");
        }
        assert_eq!(
            counters,
            [
                ("sent_pkts".to_string(), 4100),
                ("rcvd_rnr_err".to_string(), 2)
            ]
        );
        let before = [("sent_pkts".to_string(), 100)];
        assert_eq!(
            deltas(&before, &counters),
            [
                ("sent_pkts".to_string(), 4000),
                ("rcvd_rnr_err".to_string(), 2)
            ]
        );
        // A counter that went back (the driver reset it) gained its new value.
        assert_eq!(
            deltas(&[("sent_pkts".to_string(), 9000)], &counters)[0].1,
            4100
        );
    }
}
