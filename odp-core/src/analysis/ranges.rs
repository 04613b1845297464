//! A set of disjoint address ranges: which pages of an MR a prefetch mapped.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct RangeSet {
    /// start -> end, disjoint and not touching.
    spans: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn insert(&mut self, mut lo: u64, mut hi: u64) {
        if lo >= hi {
            return;
        }
        // Merge with every span that overlaps or touches [lo, hi).
        let touching: Vec<(u64, u64)> = self
            .spans
            .range(..=hi)
            .rev()
            .take_while(|(_, &e)| e >= lo)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.spans.remove(&s);
            lo = lo.min(s);
            hi = hi.max(e);
        }
        self.spans.insert(lo, hi);
    }

    /// Removes [lo, hi) and returns how many bytes of it were in the set.
    pub fn take(&mut self, lo: u64, hi: u64) -> u64 {
        if lo >= hi {
            return 0;
        }
        let overlapping: Vec<(u64, u64)> = self
            .spans
            .range(..hi)
            .rev()
            .take_while(|(_, &e)| e > lo)
            .map(|(&s, &e)| (s, e))
            .collect();
        let mut taken = 0;
        for (s, e) in overlapping {
            self.spans.remove(&s);
            taken += e.min(hi) - s.max(lo);
            if s < lo {
                self.spans.insert(s, lo);
            }
            if e > hi {
                self.spans.insert(hi, e);
            }
        }
        taken
    }

    pub fn bytes(&self) -> u64 {
        self.spans.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_merge_and_takes_split() {
        let mut set = RangeSet::default();
        set.insert(0x1000, 0x3000);
        set.insert(0x3000, 0x4000); // touching: merged
        set.insert(0x8000, 0x9000);
        assert_eq!(set.bytes(), 0x4000);
        assert_eq!(set.take(0x2000, 0x8800), 0x2000 + 0x800);
        assert_eq!(set.bytes(), 0x1000 + 0x800);
        assert_eq!(set.take(0x2000, 0x8800), 0, "already taken");
        assert_eq!(set.take(0x0, 0x10000), 0x1800);
        assert_eq!(set.bytes(), 0);
    }
}
