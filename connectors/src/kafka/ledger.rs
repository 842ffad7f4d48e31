//! Which offsets of a partition are safe to commit (at-least-once, DESIGN §7).
//!
//! Every record a source reads is assigned a time in the dataflow (its event time, or the
//! watermark for late ones), and everything derived from it is at or after that time. The
//! engine's safe time says below which time everything is durably written by the sinks and
//! no state refers to it any more. So the offset after record `n` may be committed once the
//! safe time is above the largest time assigned to records `0..=n`.
//!
//! The ledger keeps, per partition, a queue of `(next offset, largest time assigned up to
//! there)`: the largest times are increasing, so each entry covers every record read before
//! it. Entries with the same largest time merge, and a full ledger halves itself by merging
//! neighbouring entries: that only delays a commit (the merged records wait for the largest
//! time among them), never advances one, so the memory stays bounded without giving up safety.
//! Halving keeps the resolution even over the pending offsets: merging every new record into
//! the last entry instead (as this ledger once did) made one entry of everything read past the
//! first thousand times during a backlog, and an idle pipeline then committed nothing of it
//! until the next window closed.

use std::collections::VecDeque;

use tideline::Time;

/// At most this many entries per partition (see the module documentation).
const MAX_ENTRIES: usize = 1024;

/// The commit bookkeeping of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OffsetLedger {
    /// Every record before this offset is safe.
    safe: i64,
    /// The largest time assigned to a record before `safe`, if known.
    safe_max: Option<Time>,
    /// `(next offset, largest time assigned to the records before it)`, times increasing.
    pending: VecDeque<(i64, Time)>,
}

impl OffsetLedger {
    /// A ledger for a partition read from `start`: nothing before `start` is this reader's
    /// business, so committing `start` is always safe.
    #[cfg(test)]
    pub(crate) fn new(start: i64) -> Self {
        OffsetLedger::resumed(start, None)
    }

    /// A ledger for a partition read again from `start` (a checkpoint's position), where the
    /// largest time assigned before it was `max_before`.
    pub(crate) fn resumed(start: i64, max_before: Option<Time>) -> Self {
        OffsetLedger { safe: start, safe_max: max_before, pending: VecDeque::new() }
    }

    /// For a checkpoint: the latest offset before which every record was assigned a time
    /// below `time`, and the largest time assigned before it (the partition's largest event
    /// time there, which restores its watermark). Never before the safe point: what a commit
    /// may pass, a checkpoint's replay may skip.
    pub(crate) fn resume_point(&self, time: Time) -> (i64, Option<Time>) {
        let (mut offset, mut max) = (self.safe, self.safe_max);
        for &(next, t) in &self.pending {
            if t >= time {
                break;
            }
            (offset, max) = (next, Some(t));
        }
        (offset, max)
    }

    /// Records the message at `offset`, whose derived updates are at `time` or later (`None`:
    /// nothing is derived from it, e.g. a late record that was dropped).
    pub(crate) fn record(&mut self, offset: i64, time: Option<Time>) {
        let next = offset + 1;
        match (time, self.pending.back_mut()) {
            (None, None) => self.safe = self.safe.max(next),
            (None, Some(last)) => last.0 = next,
            (Some(t), Some(last)) if t <= last.1 => last.0 = next,
            (Some(t), _) => {
                if self.pending.len() >= MAX_ENTRIES {
                    self.halve();
                }
                self.pending.push_back((next, t));
            }
        }
    }

    /// Merges each pair of neighbouring entries into one: the later entry covers both (its
    /// time is the larger, the times being increasing).
    fn halve(&mut self) {
        let entries = std::mem::take(&mut self.pending);
        let mut merged = VecDeque::with_capacity(MAX_ENTRIES);
        let mut entries = entries.into_iter();
        while let Some(first) = entries.next() {
            merged.push_back(entries.next().unwrap_or(first));
        }
        self.pending = merged;
    }

    /// Skips to `offset` (e.g. past transaction markers or deleted records): nothing was read
    /// in between.
    pub(crate) fn skip_to(&mut self, offset: i64) {
        match self.pending.back_mut() {
            Some(last) => last.0 = last.0.max(offset),
            None => self.safe = self.safe.max(offset),
        }
    }

    /// The offset up to which every record is safe, given the engine's safe time: every record
    /// whose assigned times are all below `safe_time`.
    pub(crate) fn advance(&mut self, safe_time: Time) -> i64 {
        while let Some(&(next, time)) = self.pending.front() {
            if time >= safe_time && safe_time != Time::MAX {
                break;
            }
            self.safe = next;
            self.safe_max = Some(time);
            self.pending.pop_front();
        }
        self.safe
    }

    /// Entries held (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_offsets_whose_records_are_all_below_the_safe_time() {
        let mut ledger = OffsetLedger::new(10);
        assert_eq!(ledger.advance(0), 10, "the start is always safe");
        ledger.record(10, Some(100));
        ledger.record(11, Some(50)); // out of order: covered by 100
        ledger.record(12, Some(200));
        ledger.record(13, None);
        ledger.record(14, Some(150));
        assert_eq!(ledger.advance(100), 10, "offset 10 is at 100, not below");
        assert_eq!(ledger.advance(101), 12, "10 and 11 are safe");
        assert_eq!(ledger.advance(200), 12);
        assert_eq!(ledger.advance(201), 15, "12..=14 are at most 200");
        ledger.record(15, None);
        assert_eq!(ledger.advance(201), 16, "nothing derived from 15");
    }

    #[test]
    fn a_resume_point_is_the_last_offset_with_everything_before_it_below_the_time() {
        let mut ledger = OffsetLedger::new(10);
        assert_eq!(ledger.resume_point(0), (10, None));
        ledger.record(10, Some(100));
        ledger.record(11, Some(50));
        ledger.record(12, Some(200));
        ledger.record(13, Some(150));
        assert_eq!(ledger.resume_point(100), (10, None));
        assert_eq!(ledger.resume_point(101), (12, Some(100)));
        assert_eq!(ledger.resume_point(201), (14, Some(200)));
        assert_eq!(ledger.advance(101), 12);
        assert_eq!(ledger.resume_point(50), (12, Some(100)), "the safe point, with its largest time");
        let resumed = OffsetLedger::resumed(12, Some(100));
        assert_eq!(resumed.resume_point(0), (12, Some(100)));
    }

    #[test]
    fn the_end_of_time_makes_everything_safe() {
        let mut ledger = OffsetLedger::new(0);
        ledger.record(0, Some(Time::MAX));
        ledger.record(1, Some(3));
        assert_eq!(ledger.advance(Time::MAX), 2);
    }

    #[test]
    fn skipped_offsets_are_safe_when_what_came_before_is() {
        let mut ledger = OffsetLedger::new(0);
        ledger.skip_to(5);
        assert_eq!(ledger.advance(0), 5);
        ledger.record(5, Some(10));
        ledger.skip_to(8);
        assert_eq!(ledger.advance(10), 5);
        assert_eq!(ledger.advance(11), 8);
    }

    #[test]
    fn memory_stays_bounded_and_merging_only_delays() {
        let mut ledger = OffsetLedger::new(0);
        for offset in 0..100_000 {
            ledger.record(offset, Some(offset as Time));
        }
        assert!(ledger.len() <= MAX_ENTRIES, "{} entries", ledger.len());
        // Never ahead of the exact answer (offset n is safe once the safe time exceeds n).
        for safe_time in [0, 1, 500, 1_023, 1_024, 50_000, 99_999, 100_000] {
            let committed = ledger.clone().advance(safe_time);
            assert!(committed <= safe_time as i64, "{committed} for safe time {safe_time}");
        }
        assert_eq!(ledger.advance(100_000), 100_000, "everything, eventually");
    }

    #[test]
    fn a_long_backlog_keeps_recent_offsets_committable() {
        // A backlog read far ahead of the sinks: 100 000 records at increasing times. When the
        // safe time then stops just below the newest records (an idle pipeline whose last
        // window is open), almost everything before it can be committed — not only the first
        // thousand records.
        let mut ledger = OffsetLedger::new(0);
        for offset in 0..100_000 {
            ledger.record(offset, Some(offset as Time));
        }
        let committed = ledger.advance(99_990);
        assert!(committed <= 99_990, "never ahead: {committed}");
        assert!(committed >= 99_990 - 2 * 100_000 / MAX_ENTRIES as i64, "committed only {committed}");
    }
}
