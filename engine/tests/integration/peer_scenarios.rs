//! Scenarios written from Apache Flink's and Kafka Streams' documented window semantics (our
//! own cases, not their test code): lateness is decided per window, allowed lateness (Flink) and
//! grace (Kafka Streams) are measured from the window's end, session gaps are inclusive.
//!
//! Each scenario feeds one partition in a fixed order through a source with a monotonic or
//! bounded-out-of-orderness watermark, at 1 and 2 workers, and checks the changelog, the late
//! output and the late count.

use std::sync::Arc;
use std::time::Duration;

use tideline::prelude::*;
use tideline::window::aggregate::Count;

use crate::common::*;

type Row = WindowResult<u32, i64>;

fn row(start: Time, end: Time, value: i64) -> Row {
    WindowResult { window: Window { start, end }, key: 1, value }
}

fn ev(time: Time) -> Ev {
    Event::new(time, 1, 0)
}

struct Outcome {
    results: Vec<(Row, Time, isize)>,
    late: Vec<(Ev, Time, isize)>,
    late_counted: u64,
}

/// Runs `operator` over the events in order (one partition, read one at a time), at 1 and 2
/// workers, and checks that both give the same outcome.
fn run<F>(events: Vec<Ev>, bound: u64, operator: F) -> Outcome
where
    F: for<'s> Fn(VecCollection<'s, Time, Ev>) -> (VecCollection<'s, Time, Row>, VecCollection<'s, Time, Ev>)
        + Send
        + Sync
        + Clone
        + 'static,
{
    let partitions = Arc::new(vec![events]);
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(bound));
    let mut outcomes = Vec::new();
    for workers in [1, 2] {
        let operator = operator.clone();
        let got = run_operator(workers, &partitions, &strategy, 1, move |events, state| {
            let (results, late) = operator(events);
            // The operator's own gauges are not this one: count late records from the output.
            let _ = state;
            (results, late)
        });
        outcomes.push(Outcome {
            late_counted: got.operator_late.len() as u64,
            results: got.results,
            late: got.operator_late,
        });
    }
    let (first, second) = (&outcomes[0], &outcomes[1]);
    assert_eq!(first.results, second.results, "1 and 2 workers agree");
    assert_eq!(first.late, second.late, "1 and 2 workers agree on late records");
    outcomes.remove(0)
}

fn tumbling(
    size: u64,
    lateness: u64,
) -> impl for<'s> Fn(VecCollection<'s, Time, Ev>) -> (VecCollection<'s, Time, Row>, VecCollection<'s, Time, Ev>)
+ Clone
+ Send
+ Sync
+ 'static {
    move |events| {
        events
            .tumbling(Duration::from_millis(size))
            .allowed_lateness(Duration::from_millis(lateness))
            .aggregate_with_late(Count)
    }
}

/// Flink `isWindowLate` / Kafka Streams grace: a record behind the watermark whose window has
/// not fired is counted in it, silently — no correction, nothing late.
#[test]
fn a_record_behind_the_watermark_counts_in_a_window_that_has_not_fired() {
    // Monotonic watermark: after 1 985 the watermark is 1 985; 1 980 arrives behind it. Its
    // window [0, 3 000) fires at 2 999.
    let got = run(vec![ev(1_000), ev(1_985), ev(1_980), ev(3_500)], 0, tumbling(3_000, 0));
    assert_eq!(got.results, vec![(row(0, 3_000, 3), 2_999, 1), (row(3_000, 6_000, 1), 5_999, 1)]);
    assert!(got.late.is_empty() && got.late_counted == 0);
}

/// Flink allowed lateness: a record for a fired window within `end + allowed lateness` corrects
/// it (a retraction and the new result, at the watermark); beyond it, it is late.
#[test]
fn allowed_lateness_is_measured_from_the_window_end() {
    // Window [0, 3 000), allowed lateness 1 000: correctable while the watermark is below 4 000.
    let events = vec![ev(1_000), ev(3_200), ev(2_000), ev(3_999), ev(2_500), ev(4_000), ev(2_600)];
    let got = run(events, 0, tumbling(3_000, 1_000));
    assert_eq!(
        got.results,
        vec![
            (row(0, 3_000, 1), 2_999, 1),
            // 2 000 arrives at watermark 3 200: a correction.
            (row(0, 3_000, 1), 3_200, -1),
            (row(0, 3_000, 2), 3_200, 1),
            // 2 500 arrives at watermark 3 999, the last instant of the allowed lateness.
            (row(0, 3_000, 2), 3_999, -1),
            (row(0, 3_000, 3), 3_999, 1),
            (row(3_000, 6_000, 3), 5_999, 1),
        ]
    );
    // 2 600 arrives at watermark 4 000 = end + allowed lateness: late.
    assert_eq!(got.late, vec![(ev(2_600), 4_000, 1)]);
}

/// Kafka Streams grace of zero: a window closes at its end; a record for it afterwards is
/// dropped as late, never folded into a later window.
#[test]
fn without_allowed_lateness_an_emitted_result_is_never_corrected() {
    let got = run(vec![ev(500), ev(1_000), ev(999), ev(1_500)], 0, tumbling(1_000, 0));
    assert_eq!(got.results, vec![(row(0, 1_000, 1), 999, 1), (row(1_000, 2_000, 2), 1_999, 1)]);
    assert_eq!(got.late, vec![(ev(999), 1_000, 1)]);
}

/// Flink sliding windows (`isSkippedElement && isElementLate`): a record takes part in those of
/// its windows still open or correctable and skips the expired ones; it is late only when all
/// have expired.
#[test]
fn sliding_windows_skip_only_their_expired_windows() {
    fn sliding(events: VecCollection<'_, Time, Ev>) -> (VecCollection<'_, Time, Row>, VecCollection<'_, Time, Ev>) {
        events.sliding(Duration::from_millis(10_000), Duration::from_millis(2_000)).aggregate_with_late(Count)
    }
    // Watermark 11 000 when 7 000 arrives: [0, 10 000) has fired (at 9 999) and expired;
    // [2 000, 12 000), [4 000, 14 000) and [6 000, 16 000) have not fired: 7 000 counts in them.
    let got = run(vec![ev(1_000), ev(11_000), ev(7_000)], 0, sliding);
    let window = |start: Time, value| (row(start, start + 10_000, value), start + 9_999, 1);
    assert_eq!(
        got.results,
        vec![window(0, 1), window(2_000, 2), window(4_000, 2), window(6_000, 2), window(8_000, 1), window(10_000, 1)]
    );
    assert!(got.late.is_empty(), "7 000 still had open windows");
    // Watermark 20 000 when 9 000 arrives: every window of 9 000 ([0, 10 000) to
    // [8 000, 18 000)) has expired: late.
    let got = run(vec![ev(1_000), ev(20_000), ev(9_000)], 0, sliding);
    assert_eq!(got.late, vec![(ev(9_000), 20_000, 1)]);
}

fn sessions(
    gap: u64,
    lateness: u64,
) -> impl for<'s> Fn(VecCollection<'s, Time, Ev>) -> (VecCollection<'s, Time, Row>, VecCollection<'s, Time, Ev>)
+ Clone
+ Send
+ Sync
+ 'static {
    move |events| {
        events
            .sessions(Duration::from_millis(gap))
            .allowed_lateness(Duration::from_millis(lateness))
            .aggregate_with_late(Count)
    }
}

/// Flink `TimeWindow.intersects` (touching windows merge) and Kafka Streams
/// `findSessions(t - gap, t + gap)`: two events exactly one gap apart share a session.
#[test]
fn two_events_exactly_one_gap_apart_form_one_session() {
    let got = run(vec![ev(1_000), ev(6_000), ev(11_001), ev(30_000)], 0, sessions(5_000, 0));
    assert_eq!(
        got.results,
        vec![
            (row(1_000, 11_000, 2), 11_000, 1),
            (row(11_001, 16_001, 1), 16_001, 1),
            (row(30_000, 35_000, 1), 35_000, 1)
        ]
    );
}

/// A session completes only once the watermark has passed `last + gap`: a record arriving
/// behind the watermark exactly when the watermark is at `last + gap` still joins it, silently.
#[test]
fn a_record_arriving_at_the_session_end_still_joins_it() {
    // Key 1's session {1 000} completes at 6 000. Key 2's event moves the (monotonic) watermark
    // to 6 000; key 1's 5 500 then arrives behind it, at 6 000, and joins.
    let got = run(vec![ev(1_000), Event::new(6_000, 2, 0), ev(5_500)], 0, sessions(5_000, 0));
    let key2 = WindowResult { window: Window { start: 6_000, end: 11_000 }, key: 2, value: 1 };
    assert_eq!(got.results, vec![(row(1_000, 10_500, 2), 10_500, 1), (key2, 11_000, 1)]);
    assert!(got.late.is_empty());
}

/// Flink session merging with allowed lateness: a record behind the watermark that bridges two
/// emitted sessions, within their allowed lateness, merges them: both are retracted and the
/// merged session inserted.
#[test]
fn a_record_behind_the_watermark_bridging_two_emitted_sessions_merges_them() {
    // Gap 1 000, lateness 5 000: sessions {0} and {1 900} are emitted at 1 000 and 2 900; at
    // watermark 3 500, 950 arrives and is within a gap of both.
    let got = run(vec![ev(0), ev(1_900), ev(3_500), ev(950)], 0, sessions(1_000, 5_000));
    assert_eq!(
        got.results,
        vec![
            (row(0, 1_000, 1), 1_000, 1),
            (row(1_900, 2_900, 1), 2_900, 1),
            (row(0, 1_000, 1), 3_500, -1),
            (row(0, 2_900, 3), 3_500, 1),
            (row(1_900, 2_900, 1), 3_500, -1),
            (row(3_500, 4_500, 1), 4_500, 1),
        ]
    );
    assert!(got.late.is_empty());
}

/// A record behind the watermark that reaches no live session and whose own session would
/// already have expired is late; one whose session has not yet been emitted joins it silently.
#[test]
fn session_lateness_is_decided_by_the_session_it_would_join() {
    // Gap 5 000, no allowed lateness. {1 000} would complete at 6 000. At watermark 5 800, 5 500
    // joins it silently, as does 5 800 itself. At watermark 17 000, 3 000 finds [1 000, 10 800)
    // emitted and not correctable, and its own [3 000, 8 000) expired: late.
    let got = run(vec![ev(1_000), ev(5_800), ev(5_500), ev(17_000), ev(3_000)], 0, sessions(5_000, 0));
    assert_eq!(got.results, vec![(row(1_000, 10_800, 3), 10_800, 1), (row(17_000, 22_000, 1), 22_000, 1)]);
    assert_eq!(got.late, vec![(ev(3_000), 17_000, 1)]);
    assert_eq!(got.late_counted, 1);
}

/// Kafka Streams `suppress(untilWindowCloses)` and Flink's default trigger: with a bounded
/// out-of-orderness watermark, each window is emitted once, when the watermark passes its end,
/// with every record that arrived before then, in whatever order.
#[test]
fn final_results_wait_for_the_watermark_and_include_out_of_order_records() {
    // Out-of-orderness 2 000: the watermark trails the largest time by 2 s, so 2 900 and
    // 2 500 arrive on time and count in [0, 3 000), emitted once the watermark passes 2 999.
    let got = run(vec![ev(1_000), ev(4_000), ev(2_900), ev(4_900), ev(2_500), ev(5_100)], 2_000, tumbling(3_000, 0));
    assert_eq!(got.results, vec![(row(0, 3_000, 3), 2_999, 1), (row(3_000, 6_000, 3), 5_999, 1)]);
    assert!(got.late.is_empty());
}
