//! What the source operator logs: partitions going idle and active, dead letters (rate-limited).

use std::time::{Duration, Instant};

use crate::time::Time;
use crate::time::late::DeadLetter;
use crate::time::watermark::WatermarkTracker;

/// Logs partitions that became idle or active since the last call.
pub(super) fn log_idle_changes(source: &str, worker: usize, tracker: &WatermarkTracker, logged: &mut Vec<bool>) {
    for (slot, (partition, watermark, idle)) in tracker.partitions().enumerate() {
        if logged.len() <= slot {
            logged.push(false);
        }
        if logged[slot] != idle {
            logged[slot] = idle;
            if idle {
                tracing::info!(
                    source,
                    worker,
                    partition,
                    watermark,
                    "partition idle: it no longer holds the watermark back"
                );
            } else {
                tracing::info!(source, worker, partition, watermark, "partition active again");
            }
        }
    }
}

/// Logs dead letters at most once per [`DEAD_LETTER_LOG_EVERY`] per worker: the first one of
/// the period, and how many more there were.
#[derive(Default)]
pub(super) struct DeadLetterLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// How often a worker logs dead letters (their counter counts every one).
const DEAD_LETTER_LOG_EVERY: Duration = Duration::from_secs(10);

impl DeadLetterLog {
    pub(super) fn log(&mut self, source: &str, worker: usize, now: Instant, dead: &[(DeadLetter, Time, isize)]) {
        if self.last.is_some_and(|at| now.duration_since(at) < DEAD_LETTER_LOG_EVERY) {
            self.suppressed += dead.len() as u64;
            return;
        }
        let (first, _, _) = &dead[0];
        tracing::warn!(
            source,
            worker,
            input = %first.source,
            partition = first.partition,
            position = first.position,
            reason = %first.reason,
            more = dead.len() as u64 - 1 + self.suppressed,
            "record failed to decode, sent to the dead letters (logged at most every {}s per worker)",
            DEAD_LETTER_LOG_EVERY.as_secs()
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    /// Runs `f` with a subscriber that records every event's text, one per line.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt().with_writer(buffer.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap().lines().map(String::from).collect()
    }

    fn letters(n: usize) -> Vec<(DeadLetter, Time, isize)> {
        (0..n)
            .map(|i| {
                let letter = DeadLetter {
                    source: "in.csv".into(),
                    partition: 0,
                    position: i as u64 + 1,
                    key: None,
                    payload: b"x".to_vec(),
                    reason: "bad".into(),
                };
                (letter, 0, 1)
            })
            .collect()
    }

    #[test]
    fn dead_letters_are_logged_at_most_once_per_period_with_the_count_of_the_rest() {
        let start = Instant::now();
        let mut log = DeadLetterLog::default();
        let lines = logged(|| {
            log.log("events", 0, start, &letters(3));
            log.log("events", 0, start + Duration::from_secs(1), &letters(5));
            log.log("events", 0, start + DEAD_LETTER_LOG_EVERY, &letters(1));
        });
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].contains("WARN") && lines[0].contains("position=1") && lines[0].contains("more=2"));
        // The second line accounts for the five that were not logged, and is its own first.
        assert!(lines[1].contains("more=5"), "{}", lines[1]);
    }

    #[test]
    fn idle_changes_are_logged_once_each_way() {
        let strategy = crate::time::watermark::WatermarkStrategy::monotonic().with_idle_timeout(Duration::from_secs(1));
        let mut tracker = WatermarkTracker::new(strategy.clone());
        let start = Instant::now();
        let slot = tracker.add(7, strategy.generator(), start, 0);
        let mut seen = Vec::new();
        let lines = logged(|| {
            log_idle_changes("events", 0, &tracker, &mut seen);
            tracker.detect_idle(start + Duration::from_secs(2));
            log_idle_changes("events", 0, &tracker, &mut seen);
            log_idle_changes("events", 0, &tracker, &mut seen);
            tracker.touch(slot, start + Duration::from_secs(3), 0);
            log_idle_changes("events", 0, &tracker, &mut seen);
        });
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].contains("partition idle") && lines[0].contains("partition=7"));
        assert!(lines[1].contains("partition active again"));
    }
}
