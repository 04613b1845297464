//! The self-describing data pattern: every 8-byte word says which MR, which generation (write
//! number) and which offset it belongs to, so a wrong word tells where it came from.

use serde::Serialize;

/// Word layout (little endian u64): MR number in the top 8 bits, generation in the next 24, and
/// the word's index in the MR (offset / 8) in the low 32. MR numbers and generations start at 1,
/// so no pattern word is zero.
pub fn word(mr: u8, generation: u32, offset: usize) -> u64 {
    (u64::from(mr) << 56)
        | (u64::from(generation & 0xff_ffff) << 32)
        | ((offset as u64 / 8) & 0xffff_ffff)
}

/// What a word found in memory claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decoded {
    pub mr: u8,
    pub generation: u32,
    pub offset: u64,
}

pub fn decode(w: u64) -> Decoded {
    Decoded {
        mr: (w >> 56) as u8,
        generation: ((w >> 32) & 0xff_ffff) as u32,
        offset: (w & 0xffff_ffff) * 8,
    }
}

/// Fills `out` (which starts at `offset` in the MR, 8-byte aligned) with the pattern.
pub fn fill(out: &mut [u8], mr: u8, generation: u32, offset: usize) {
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(mr, generation, offset + i * 8).to_le_bytes());
    }
}

/// How one page of a checked buffer turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    Exact,
    /// All zero: what a page dropped by the CPU side (DONTNEED, remap) reads as.
    Zero,
    /// Expected words and zero words only: a page dropped while it was being written (by the
    /// CPU filling it for a READ, or by the device), so part of the copy landed in the old page.
    Torn {
        zero_bytes: usize,
    },
    /// Anything else; the first word that is neither expected nor zero.
    Wrong {
        first_bad: usize,
        bad_bytes: usize,
        expected: u64,
        actual: u64,
    },
}

/// Checks `data` (MR bytes from `offset`) page by page against generation `generation`.
pub fn check_pages(
    data: &[u8],
    mr: u8,
    generation: u32,
    offset: usize,
    page: usize,
) -> Vec<PageCheck> {
    data.chunks(page)
        .enumerate()
        .map(|(p, bytes)| {
            let base = offset + p * page;
            let mut first = None;
            let mut bad = 0;
            let mut zero = 0;
            for (i, w) in bytes.chunks_exact(8).enumerate() {
                let expected = word(mr, generation, base + i * 8);
                let actual = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
                if actual == expected {
                    continue;
                }
                if actual == 0 {
                    zero += 8;
                } else {
                    bad += 8;
                    first.get_or_insert((base + i * 8, expected, actual));
                }
            }
            match first {
                Some((first_bad, expected, actual)) => PageCheck::Wrong {
                    first_bad,
                    bad_bytes: bad + zero,
                    expected,
                    actual,
                },
                None if zero == 0 => PageCheck::Exact,
                None if zero == bytes.len() => PageCheck::Zero,
                None => PageCheck::Torn { zero_bytes: zero },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        let w = word(3, 0x12_3456, 0x7_fff8);
        assert_eq!(
            decode(w),
            Decoded {
                mr: 3,
                generation: 0x12_3456,
                offset: 0x7_fff8
            }
        );
        assert_ne!(word(1, 1, 0), 0, "no pattern word is zero");
    }

    #[test]
    fn pages_are_exact_zero_or_wrong() {
        let page = 4096;
        let mut data = vec![0u8; 4 * page];
        fill(&mut data, 1, 7, 8192);
        data[page..2 * page].fill(0);
        fill(&mut data[2 * page..3 * page], 1, 6, 8192 + 2 * page); // a stale generation
        data[3 * page + 32..].fill(0); // torn: the head landed, the rest was dropped
        let checks = check_pages(&data, 1, 7, 8192, page);
        assert_eq!(checks[0], PageCheck::Exact);
        assert_eq!(checks[1], PageCheck::Zero);
        assert_eq!(
            checks[3],
            PageCheck::Torn {
                zero_bytes: page - 32
            }
        );
        match checks[2] {
            PageCheck::Wrong {
                first_bad,
                bad_bytes,
                actual,
                ..
            } => {
                assert_eq!(first_bad, 8192 + 2 * page);
                assert_eq!(bad_bytes, page);
                assert_eq!(decode(actual).generation, 6);
            }
            other => panic!("{other:?}"),
        }
    }
}
