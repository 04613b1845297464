//! Loopback traffic over an MR with every byte checked: RDMA WRITE out of it, RDMA READ into it,
//! SEND out of it, each compared against the pattern that should have arrived.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::verbs::{LoopbackRc, MemoryRegion, Opcode};

/// The byte a buffer holds at `offset` for a given `seed`: cheap, position-dependent, and
/// different per seed, so a stale page, a shifted copy or a lost write all show up.
pub fn pattern_byte(seed: u64, offset: usize) -> u8 {
    let x = (offset as u64).wrapping_add(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (x >> 32) as u8
}

pub fn fill_pattern(mr: &MemoryRegion, seed: u64) -> Result<()> {
    fill_pattern_range(mr, seed, 0, mr.len())
}

/// The pattern of `seed` over `len` bytes of the MR from `offset` (each byte the pattern's at
/// its offset in the MR, so a range moved to the same offset elsewhere checks there).
pub(crate) fn fill_pattern_range(
    mr: &MemoryRegion,
    seed: u64,
    offset: usize,
    len: usize,
) -> Result<()> {
    let data: Vec<u8> = (offset..offset + len)
        .map(|i| pattern_byte(seed, i))
        .collect();
    explicit(mr)?.write(offset, &data)
}

/// The first differing offset, if any, between an MR's bytes and the pattern.
pub fn first_mismatch(mr: &MemoryRegion, seed: u64) -> Result<Option<Mismatch>> {
    first_mismatch_in(mr, seed, 0, mr.len())
}

/// `first_mismatch` over `len` bytes from `offset`.
pub(crate) fn first_mismatch_in(
    mr: &MemoryRegion,
    seed: u64,
    offset: usize,
    len: usize,
) -> Result<Option<Mismatch>> {
    let actual = explicit(mr)?.to_vec(offset, len)?;
    let mut bad = actual
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b != pattern_byte(seed, offset + i));
    let Some((first, &got)) = bad.next() else {
        return Ok(None);
    };
    Ok(Some(Mismatch {
        offset: offset + first,
        expected: pattern_byte(seed, offset + first),
        actual: got,
        bytes_wrong: 1 + bad.count(),
    }))
}

pub(crate) fn explicit(mr: &MemoryRegion) -> Result<&crate::memory::Mapping> {
    mr.mapping()
        .map(|m| m.as_ref())
        .ok_or_else(|| Error::invalid("byte verification needs an explicit MR over a buffer"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub offset: usize,
    pub expected: u8,
    pub actual: u8,
    pub bytes_wrong: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpResult {
    pub op: Opcode,
    pub messages: usize,
    pub bytes: usize,
    pub elapsed_us: u128,
    pub mismatch: Option<Mismatch>,
    /// Pages found zeroed where an invalidation storm dropped them (two-host traffic under
    /// `--remote-dontneed`): accepted, since the page was taken away after the data landed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zeroed_pages: Option<u64>,
    /// Pages of the peer's region under the pass it left never touched before the pass, for
    /// the device to fault in (`[peer] cold_pages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_pages: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    pub message_size: usize,
    pub ops: Vec<OpResult>,
}

impl TrafficReport {
    pub fn mismatches(&self) -> usize {
        self.ops.iter().filter(|o| o.mismatch.is_some()).count()
    }
}

/// Moves the whole of `subject` through the loopback pair in `message_size` pieces, against
/// `peer` (same length), verifying every byte after each operation kind.
pub fn verify_loopback(
    lb: &mut LoopbackRc,
    subject: &MemoryRegion,
    peer: &MemoryRegion,
    message_size: usize,
) -> Result<TrafficReport> {
    if subject.len() != peer.len() {
        return Err(Error::invalid(
            "subject and peer MRs must have the same length",
        ));
    }
    if message_size == 0 {
        return Err(Error::invalid("message size must be greater than zero"));
    }
    let len = subject.len();
    let chunks: Vec<(usize, usize)> = (0..len)
        .step_by(message_size)
        .map(|off| (off, message_size.min(len - off)))
        .collect();
    // Each operation starts from a fresh pattern (its own seed) in the MR the data leaves and
    // a zeroed MR it arrives in, so nothing left by the previous operation can pass for it.
    let steps = [
        (Opcode::Write, 1, subject, peer),
        (Opcode::Read, 2, peer, subject),
        (Opcode::Send, 3, subject, peer),
    ];
    let mut ops = Vec::new();
    for (op, seed, source, target) in steps {
        fill_pattern(source, seed)?;
        explicit(target)?.fill(0);
        let started = Instant::now();
        for &(off, n) in &chunks {
            match op {
                Opcode::Write => lb.write(subject, off, peer, off, n)?,
                Opcode::Read => lb.read(subject, off, peer, off, n)?,
                _ => lb.send_recv(subject, off, peer, off, n)?,
            };
        }
        ops.push(OpResult {
            op,
            messages: chunks.len(),
            bytes: len,
            elapsed_us: started.elapsed().as_micros(),
            mismatch: first_mismatch(target, seed)?,
            zeroed_pages: None,
            cold_pages: None,
        });
    }

    Ok(TrafficReport { message_size, ops })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_seed_and_position() {
        let a: Vec<u8> = (0..4096).map(|i| pattern_byte(1, i)).collect();
        let b: Vec<u8> = (0..4096).map(|i| pattern_byte(2, i)).collect();
        assert_ne!(a, b);
        // A copy shifted by one byte must not match: the pattern is position-dependent.
        assert_ne!(&a[1..], &a[..4095]);
        // Roughly uniform: every byte value appears in 64 KiB.
        let mut seen = [false; 256];
        for i in 0..65536 {
            seen[pattern_byte(7, i) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
