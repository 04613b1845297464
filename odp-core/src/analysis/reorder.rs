//! Puts a stream of events in order of their end time (when each call returned, which is when
//! the probes emit it) within a bounded window, before anything analyses or writes them.
//!
//! Live streams are only nearly ordered: CPU page faults reach the ring in per-CPU batches up to
//! CPU_FAULT_FLUSH_NS (10 ms) late, CPUs reserve ring records in their own order, and the reader
//! and the pump each wake every 20 ms. A live stream is therefore held by the clock: an event
//! goes on once the monotonic clock is LIVE_HOLD_NS past its end. A recording has no clock to
//! go by and can be in any order at all (shuffled, repeated, reversed, edited): an event goes on
//! once the stream has moved RECORDING_WINDOW_NS past it. Within that every event takes its
//! place; what comes later, an exact repeat of an event still within it, and a timestamp that
//! leaps far past the stream and is not followed there are counted and left out, never silently
//! taken as truth.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use bpf_common::OdpEvent;
use rustc_hash::{FxHashMap, FxHasher};
use serde::Serialize;

/// How far a recording's stream must move past an event before it goes on: ten times the
/// longest delay a source documents (the CPU-fault batches' 10 ms flush).
pub const RECORDING_WINDOW_NS: u64 = 100_000_000;

/// How long past its end a live event waits: five times the longest way an event takes to the
/// pump (a 10 ms batch flush, then the reader's and the pump's 20 ms wake-ups).
pub const LIVE_HOLD_NS: u64 = 250_000_000;

/// A step forward in event time longer than this is believed only when the next event
/// confirms it (quiet periods of a live stream are real; one stray timestamp in a file is not).
pub const LEAP_NS: u64 = 600_000_000_000;

/// What the window could not place.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OrderFacts {
    /// Events that came later than the window allows (their place had passed).
    pub late: u64,
    /// Exact repeats of an event still within the window.
    pub duplicates: u64,
    /// Events whose time leapt more than LEAP_NS past the stream and was not followed there.
    pub out_of_span: u64,
}

impl OrderFacts {
    pub fn total(&self) -> u64 {
        self.late + self.duplicates + self.out_of_span
    }
}

/// Where a waiting event stands in the order: its end, then its arrival (so events ending at
/// the same nanosecond keep it), and the slot that holds it. Small, so placing it moves little.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    end: u64,
    seq: u64,
    slot: u32,
}

#[derive(Debug)]
pub struct Reorder {
    /// How far behind the newest event (a recording) or the clock (live) an event goes on.
    window_ns: u64,
    /// Live: only the clock lets events go (`release_before`), not newer events.
    by_clock: bool,
    /// Waiting events in order. Streams arrive nearly in order, so most go on at the back;
    /// the rest are placed by binary search, never further back than the window.
    pending: VecDeque<Pending>,
    /// The events within the window (waiting, or handed on less than a window ago), by slot,
    /// with their fingerprints (a recording's only); `free` lists the slots out of the window.
    slots: Vec<(OdpEvent, Option<u64>)>,
    free: Vec<u32>,
    seq: u64,
    /// The latest end time taken in.
    newest: Option<u64>,
    /// The end time of the last event handed on: nothing earlier can be placed any more.
    released: u64,
    /// The slot of each event within the window by fingerprint, for repeats: a fingerprint
    /// match counts only when the events are equal.
    recent: FxHashMap<u64, u32>,
    /// Handed on and still within the window: (end, slot), in order.
    recent_released: VecDeque<(u64, u32)>,
    /// An event that leapt past the stream, waiting for the next one to confirm the leap.
    leap: Option<OdpEvent>,
    pub facts: OrderFacts,
}

/// What tells one call from another: a thread makes one call of a point per entry time. Equal
/// fingerprints are confirmed by comparing the whole events.
fn fingerprint(e: &OdpEvent) -> u64 {
    let mut h = FxHasher::default();
    (e.ts_ns, e.duration_ns, e.tid, e.point).hash(&mut h);
    h.finish()
}

fn end_of(e: &OdpEvent) -> u64 {
    e.ts_ns.saturating_add(e.duration_ns)
}

impl Reorder {
    /// For a recording: events go on as the stream moves past them.
    pub fn for_recording() -> Self {
        Reorder::with(RECORDING_WINDOW_NS, false)
    }

    /// For live probes: events go on as the monotonic clock moves past them.
    pub fn for_live() -> Self {
        Reorder::with(LIVE_HOLD_NS, true)
    }

    fn with(window_ns: u64, by_clock: bool) -> Self {
        Reorder {
            window_ns,
            by_clock,
            pending: VecDeque::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            newest: None,
            released: 0,
            recent: FxHashMap::default(),
            recent_released: VecDeque::new(),
            leap: None,
            facts: OrderFacts::default(),
        }
    }

    /// Takes one event in; appends to `out` every event whose place is now certain.
    pub fn push(&mut self, e: &OdpEvent, out: &mut Vec<OdpEvent>) {
        let end = end_of(e);
        // The kernel's monotonic clock does not leap: only a recording is checked.
        if let Some(newest) = self.newest.filter(|_| !self.by_clock) {
            if end > newest.saturating_add(LEAP_NS) {
                // A second leap near the first confirms both; otherwise the first was stray.
                match self.leap.take() {
                    Some(first) if end.abs_diff(end_of(&first)) <= LEAP_NS => {
                        self.take(&first, out);
                    }
                    Some(_) => {
                        self.facts.out_of_span += 1;
                        self.leap = Some(*e);
                        return;
                    }
                    None => {
                        self.leap = Some(*e);
                        return;
                    }
                }
            } else if self.leap.take().is_some() {
                self.facts.out_of_span += 1;
            }
        }
        self.take(e, out);
    }

    fn take(&mut self, e: &OdpEvent, out: &mut Vec<OdpEvent>) {
        let end = end_of(e);
        // The kernel emits each call once: only a recording is checked for repeats.
        let print = (!self.by_clock).then(|| fingerprint(e));
        if let Some(print) = print {
            let seen = self
                .recent
                .get(&print)
                .and_then(|&slot| self.slots.get(slot as usize));
            if seen.is_some_and(|(other, _)| other == e) {
                self.facts.duplicates += 1;
                return;
            }
        }
        if self.seq > 0 && end < self.released {
            self.facts.late += 1;
            return;
        }
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = (*e, print);
                slot
            }
            None => {
                self.slots.push((*e, print));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        // A different event with the same fingerprint keeps its entry; this one is only not
        // checked for repeats.
        if let Some(print) = print {
            self.recent.entry(print).or_insert(slot);
        }
        let waiting = Pending {
            end,
            seq: self.seq,
            slot,
        };
        if self.pending.back().is_none_or(|last| *last <= waiting) {
            self.pending.push_back(waiting);
        } else {
            let at = self.pending.partition_point(|p| *p <= waiting);
            self.pending.insert(at, waiting);
        }
        let newest = self.newest.map_or(end, |n| n.max(end));
        self.newest = Some(newest);
        if !self.by_clock {
            self.release_until(newest.saturating_sub(self.window_ns), out);
        }
    }

    /// For a live stream on the monotonic clock: hands on what ended a window before `now_ns`,
    /// so a stream gone quiet is not held back waiting for newer events.
    pub fn release_before(&mut self, now_ns: u64, out: &mut Vec<OdpEvent>) {
        self.release_until(now_ns.saturating_sub(self.window_ns), out);
    }

    /// Hands on, in order, every waiting event that ended at or before `until`.
    fn release_until(&mut self, until: u64, out: &mut Vec<OdpEvent>) {
        while let Some(p) = self.pending.front() {
            if p.end > until {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let Some(&(e, _)) = self.slots.get(p.slot as usize) else {
                continue;
            };
            self.released = p.end;
            self.recent_released.push_back((p.end, p.slot));
            out.push(e);
        }
        let forget_before = self.released.saturating_sub(self.window_ns);
        while let Some(&(end, slot)) = self.recent_released.front() {
            if end >= forget_before {
                break;
            }
            self.recent_released.pop_front();
            if let Some(&(_, Some(print))) = self.slots.get(slot as usize) {
                if self.recent.get(&print) == Some(&slot) {
                    self.recent.remove(&print);
                }
            }
            self.free.push(slot);
        }
    }

    /// The stream ended: everything still waiting goes out in order; a leap nothing followed
    /// is counted out of span.
    pub fn finish(&mut self, out: &mut Vec<OdpEvent>) {
        if self.leap.take().is_some() {
            self.facts.out_of_span += 1;
        }
        self.release_until(u64::MAX, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts_ns: u64, tid: u32) -> OdpEvent {
        OdpEvent {
            ts_ns,
            duration_ns: 1_000,
            tid,
            ..OdpEvent::default()
        }
    }

    fn run(events: &[OdpEvent]) -> (Vec<u64>, OrderFacts) {
        let mut r = Reorder::for_recording();
        let mut out = Vec::new();
        for e in events {
            r.push(e, &mut out);
        }
        r.finish(&mut out);
        (out.iter().map(|e| e.ts_ns).collect(), r.facts)
    }

    const MS: u64 = 1_000_000;
    /// Past the recording window.
    const FAR: u64 = RECORDING_WINDOW_NS + MS;

    #[test]
    fn events_within_the_window_come_out_in_end_order() {
        let (order, facts) = run(&[ev(5 * MS, 1), ev(MS, 2), ev(12 * MS, 3), ev(3 * MS, 4)]);
        assert_eq!(order, vec![MS, 3 * MS, 5 * MS, 12 * MS]);
        assert_eq!(facts, OrderFacts::default());
        // A long call ends after a short one that began later: it goes after it.
        let long = OdpEvent {
            duration_ns: 9 * MS,
            ..ev(MS, 1)
        };
        let (order, _) = run(&[long, ev(2 * MS, 2)]);
        assert_eq!(order, vec![2 * MS, MS]);
    }

    #[test]
    fn what_comes_later_than_the_window_is_counted_not_placed() {
        let (order, facts) = run(&[ev(MS, 1), ev(FAR + MS, 2), ev(50 * MS, 3), ev(FAR, 4)]);
        // 1 ms went out when FAR + 1 ms came in; 50 ms still had its place after it.
        assert_eq!(order, vec![MS, 50 * MS, FAR, FAR + MS]);
        assert_eq!(facts.late, 0, "50 ms is after the last event handed on");
        // 2 ms went out when FAR + 2 ms came in: 1 ms has no place left.
        let (order, facts) = run(&[ev(2 * MS, 1), ev(FAR + 2 * MS, 2), ev(MS, 3)]);
        assert_eq!(order, vec![2 * MS, FAR + 2 * MS]);
        assert_eq!(facts.late, 1);
    }

    #[test]
    fn exact_repeats_are_dropped_and_counted() {
        let a = ev(MS, 1);
        let b = ev(2 * MS, 2);
        let (order, facts) = run(&[a, a, b, a, b, b]);
        assert_eq!(order, vec![MS, 2 * MS]);
        assert_eq!(facts.duplicates, 4);
        // The same time on another thread is another event.
        let (order, facts) = run(&[a, ev(MS, 2)]);
        assert_eq!(order.len(), 2);
        assert_eq!(facts.duplicates, 0);
    }

    #[test]
    fn a_stray_leap_is_left_out_but_a_followed_one_is_a_quiet_period() {
        let stray = ev(u64::MAX / 2, 9);
        let (order, facts) = run(&[ev(MS, 1), stray, ev(2 * MS, 2), ev(3 * MS, 3)]);
        assert_eq!(order, vec![MS, 2 * MS, 3 * MS]);
        assert_eq!(facts.out_of_span, 1);
        // The last event leaps and nothing follows: out of span too.
        let (order, facts) = run(&[ev(MS, 1), stray]);
        assert_eq!(order, vec![MS]);
        assert_eq!(facts.out_of_span, 1);
        // An hour of quiet, then the stream goes on from there: all of it is real.
        let hour = 3_600_000 * MS;
        let (order, facts) = run(&[ev(MS, 1), ev(hour, 2), ev(hour + MS, 3)]);
        assert_eq!(order, vec![MS, hour, hour + MS]);
        assert_eq!(facts, OrderFacts::default());
    }

    #[test]
    fn a_live_stream_goes_on_by_the_clock() {
        let mut r = Reorder::for_live();
        let mut out = Vec::new();
        r.push(&ev(10 * MS, 1), &mut out);
        r.push(&ev(5 * MS, 2), &mut out);
        r.push(&ev(FAR * 100, 3), &mut out);
        // Nothing goes on by newer events alone...
        assert!(out.is_empty());
        // ...but once the clock is the hold past an event's end.
        r.release_before(10 * MS + LIVE_HOLD_NS, &mut out);
        assert_eq!(
            out.iter().map(|e| e.ts_ns).collect::<Vec<_>>(),
            vec![5 * MS]
        );
        r.release_before(10 * MS + 1_000 + LIVE_HOLD_NS, &mut out);
        assert_eq!(out.len(), 2);
        // A batch of CPU faults 40 ms behind still has its place.
        r.push(&ev(30 * MS, 4), &mut out);
        r.finish(&mut out);
        let order: Vec<u64> = out.iter().map(|e| e.ts_ns).collect();
        assert_eq!(order, vec![5 * MS, 10 * MS, 30 * MS, FAR * 100]);
        assert_eq!(r.facts, OrderFacts::default());
    }

    #[test]
    fn a_reversed_stream_is_flagged_not_believed() {
        let events: Vec<OdpEvent> = (0..1000).rev().map(|i| ev(i * MS, i as u32)).collect();
        let (order, facts) = run(&events);
        assert_eq!(order.len() as u64 + facts.late, 1000);
        assert!(facts.late > 800, "{facts:?}");
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    }
}
