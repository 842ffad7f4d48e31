//! Oracle tests for interval joins: random streams with retractions, re-deliveries, records
//! arriving behind the watermark (within their interval's allowed lateness and beyond it) and
//! out of order, at 1, 2 and 4 workers, every kind and emission mode, compared with a
//! from-scratch computation of the per-interval rule (DESIGN §3).

use std::sync::Arc;
use std::time::Duration;

use tideline::join::TooLate;
use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::runtime::{Cluster, execute};
use tideline::sink::Collected;
use tideline::source::{SourceConfig, memory};

use crate::common::*;

type Opt = Option<Ev>;

#[derive(Clone, Default)]
struct Outputs {
    inner: Collected<(Ev, Ev)>,
    left: Collected<(Ev, Opt)>,
    right: Collected<(Opt, Ev)>,
    full: Collected<(Opt, Opt)>,
    late_left: Collected<Ev>,
    late_right: Collected<Ev>,
}

/// Builds the four kinds of interval join over the same inputs.
fn build<'scope>(
    a: VecCollection<'scope, Time, Ev>,
    b: VecCollection<'scope, Time, Ev>,
    bounds: IntervalBounds,
    emit: Emit,
    lateness: u64,
    out: &Outputs,
    metrics: &Arc<StateMetrics>,
) {
    let lateness = Duration::from_millis(lateness);
    let join = || {
        a.clone()
            .interval_join(b.clone(), bounds)
            .emit(emit)
            .allowed_lateness(lateness)
            .state_metrics(Arc::clone(metrics))
    };
    let (inner, TooLate { left, right }) = join().inner_with_late();
    inner.collect_into(&out.inner);
    left.collect_into(&out.late_left);
    right.collect_into(&out.late_right);
    join().left().collect_into(&out.left);
    join().right().collect_into(&out.right);
    join().full().collect_into(&out.full);
}

fn event(key: u32, record: (Time, i64)) -> Ev {
    Event::new(record.0, key, record.1)
}

/// Expected outputs of each kind, from the documented semantics.
struct Expected {
    inner: Updates<(Ev, Ev)>,
    left: Updates<(Ev, Opt)>,
    right: Updates<(Opt, Ev)>,
    full: Updates<(Opt, Opt)>,
    late_left: Updates<Ev>,
    late_right: Updates<Ev>,
}

/// Expected outputs, from the documented semantics: a left record at `t` takes part if it
/// arrives by the end of its interval plus the lateness, `t + upper + L` (a right one by
/// `t - lower + L`); in `Final` mode its unmatched row shows from the last time a partner can
/// take part, `t + upper - lower + L` (for a right one `t - lower + upper + L`).
fn expected(a: &Updates<Ev>, b: &Updates<Ev>, bounds: IntervalBounds, emit: Emit, lateness: u64) -> Expected {
    let (lower, upper) = (bounds.lower(), bounds.upper());
    let width = upper - lower;
    let admitted =
        |e: &Ev, at: Time, end: i64| i128::from(at) <= i128::from(e.time) + i128::from(end) + i128::from(lateness);
    let close = |time: Time, end: i64| match emit {
        // The last admission of a partner: our interval's end, plus L, plus how much further the
        // partners' intervals reach.
        Emit::Final => (time as i64 + end + lateness as i64 + (width - end)).max(0) as Time,
        Emit::Updates => 0,
    };
    let parts = |updates: &Updates<Ev>, end: i64| -> Vec<Part<u32>> {
        updates
            .iter()
            .filter(|(e, at, _)| admitted(e, *at, end))
            .map(|(e, at, diff)| Part {
                group: e.key,
                time: e.time,
                value: e.value,
                at: *at,
                diff: *diff,
                close: close(e.time, end),
            })
            .collect()
    };
    let (left, right) = (parts(a, upper), parts(b, -lower));
    let rows = |outer_left, outer_right| {
        temporal_join_reference(&left, &right, |l, r| bounds.matches(l, r), outer_left, outer_right)
    };
    let late = |updates: &Updates<Ev>, end: i64| {
        changelog(updates.iter().filter(|(e, at, _)| !admitted(e, *at, end)).cloned())
    };
    Expected {
        inner: changelog(
            rows(false, false)
                .into_iter()
                .map(|((k, l, r), t, d)| ((event(k, l.unwrap()), event(k, r.unwrap())), t, d)),
        ),
        left: changelog(
            rows(true, false)
                .into_iter()
                .map(|((k, l, r), t, d)| ((event(k, l.unwrap()), r.map(|r| event(k, r))), t, d)),
        ),
        right: changelog(
            rows(false, true)
                .into_iter()
                .map(|((k, l, r), t, d)| ((l.map(|l| event(k, l)), event(k, r.unwrap())), t, d)),
        ),
        full: changelog(
            rows(true, true)
                .into_iter()
                .map(|((k, l, r), t, d)| ((l.map(|l| event(k, l)), r.map(|r| event(k, r))), t, d)),
        ),
        late_left: late(a, upper),
        late_right: late(b, -lower),
    }
}

fn check(seed: u64, bounds: IntervalBounds) {
    let lateness = 60;
    let a = Arc::new(random_event_updates(seed, 500, 5, lateness));
    let b = Arc::new(random_event_updates(seed + 100, 500, 5, lateness));
    for emit in [Emit::Final, Emit::Updates] {
        let want = expected(&a, &b, bounds, emit, lateness);
        assert!(!want.late_left.is_empty() && !want.late_right.is_empty(), "the inputs have too-late records");
        if emit == Emit::Updates {
            assert!(
                want.full.iter().any(|((l, r), _, d)| l.is_some() && r.is_none() && *d < 0),
                "unmatched rows get retracted"
            );
        }
        assert!(want.inner.iter().any(|(_, _, d)| *d < 0), "pairs get retracted");
        for workers in [1, 2, 4] {
            let out = Outputs::default();
            let metrics = StateMetrics::new();
            let (o, m) = (out.clone(), Arc::clone(&metrics));
            run_two(workers, seed, &a, &b, move |a, b| build(a, b, bounds, emit, lateness, &o, &m));
            let context = format!("seed {seed} {bounds:?} {emit:?} workers {workers}");
            assert_eq!(out.inner.changelog(), want.inner, "{context}: inner");
            assert_eq!(out.left.changelog(), want.left, "{context}: left");
            assert_eq!(out.right.changelog(), want.right, "{context}: right");
            assert_eq!(out.full.changelog(), want.full, "{context}: full");
            assert_eq!(out.late_left.changelog(), want.late_left, "{context}: too-late left records");
            assert_eq!(out.late_right.changelog(), want.late_right, "{context}: too-late right records");
            assert_eq!(metrics.total(), 0, "{context}: all state released at the end");
            let late = (want.late_left.len() + want.late_right.len()) as u64;
            assert!(metrics.late_skipped() >= late, "{context}: too-late records counted");
        }
    }
}

#[test]
fn interval_joins_around_each_record_match_the_oracle() {
    check(11, IntervalBounds::new(-30, 50).unwrap());
}

#[test]
fn interval_joins_with_partners_only_before_match_the_oracle() {
    check(12, IntervalBounds::new(-80, -10).unwrap());
}

/// Through real sources: records behind the watermark arrive at it, and the join takes those
/// whose interval (plus the allowed lateness) has not passed.
#[test]
fn interval_joins_take_records_behind_the_watermark() {
    let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(40));
    let left = Arc::new(random_partitions(21, 2, 300, 4, 40, 10));
    let right = Arc::new(random_partitions(22, 2, 300, 4, 40, 10));
    let bounds = IntervalBounds::new(-20, 30).unwrap();
    let arrivals = |partitions: &[Vec<Ev>]| -> Updates<Ev> {
        model_source(partitions, &strategy).records.into_iter().map(|(e, at)| (e, at, 1)).collect()
    };
    let (a, b) = (arrivals(&left), arrivals(&right));
    let want = expected(&a, &b, bounds, Emit::Final, 20);
    let behind_taken =
        a.iter().filter(|(e, at, _)| e.time < *at && !want.late_left.iter().any(|(l, _, _)| l == e)).count();
    assert!(behind_taken > 0, "some records behind the watermark are taken");
    assert!(!want.late_left.is_empty(), "some are late");
    for workers in [1, 3] {
        let full = Collected::new();
        let too_late = Collected::new();
        let (f, l, s) = (full.clone(), too_late.clone(), strategy.clone());
        let (left, right) = (Arc::clone(&left), Arc::clone(&right));
        execute(&Cluster::threads(workers), move |worker| {
            let (f, l) = (f.clone(), l.clone());
            let config = |name: &str| SourceConfig::new(name).watermarks(s.clone()).batch_size(50);
            let (left, right) = (Arc::clone(&left), Arc::clone(&right));
            worker.dataflow::<Time, _, _>(move |scope| {
                let left = memory::from_partitions(scope, config("left"), left).data;
                let right = memory::from_partitions(scope, config("right"), right).data;
                let (joined, late) =
                    left.interval_join(right, bounds).allowed_lateness(Duration::from_millis(20)).full_with_late();
                joined.collect_into(&f);
                late.left.concat(late.right).collect_into(&l);
            });
            while worker.step_or_park(None) {}
        })
        .unwrap();
        assert_eq!(full.changelog(), want.full, "workers {workers}");
        let mut want_late = want.late_left.clone();
        want_late.extend(want.late_right.clone());
        assert_eq!(too_late.changelog(), changelog(want_late), "workers {workers}");
    }
}

/// Partners at the edge of the interval arriving exactly at the end of their own interval plus
/// the lateness still match; one millisecond later they are late; a retraction within it is
/// applied; unmatched rows show once no partner can come any more.
#[test]
fn interval_joins_hold_records_until_their_last_admissible_partner() {
    let (bounds, lateness) = (IntervalBounds::new(-30, 50).unwrap(), 60);
    let a_first = Event::new(1_000, 1u32, 1i64);
    let a_second = Event::new(2_000, 1, 5);
    let b_edge = Event::new(1_050, 1, 2);
    let b_too_late = Event::new(1_050, 1, 3);
    let b_other = Event::new(2_010, 1, 6);
    // A right record at 1 050 is admitted until 1 050 + 30 + 60 = 1 140.
    let a = Arc::new(vec![(a_first.clone(), 1_000, 1), (a_second.clone(), 2_000, 1), (a_second.clone(), 2_060, -1)]);
    let b = Arc::new(vec![(b_edge.clone(), 1_140, 1), (b_too_late.clone(), 1_141, 1), (b_other.clone(), 2_010, 1)]);
    let want = expected(&a, &b, bounds, Emit::Final, lateness);
    assert_eq!(
        want.full,
        vec![
            ((Some(a_first), Some(b_edge)), 1_140, 1),
            ((Some(a_second.clone()), Some(b_other.clone())), 2_010, 1),
            ((Some(a_second), Some(b_other.clone())), 2_060, -1),
            // b_other's last possible partner could arrive until 2 010 + 30 + 50 + 60.
            ((None, Some(b_other)), 2_150, 1),
        ],
        "the reference agrees with the documented semantics"
    );
    for workers in [1, 2] {
        let out = Outputs::default();
        let metrics = StateMetrics::new();
        let (o, m) = (out.clone(), Arc::clone(&metrics));
        run_two_with(workers, 1, 0, &a, &b, move |a, b| build(a, b, bounds, Emit::Final, lateness, &o, &m));
        assert_eq!(out.full.changelog(), want.full, "workers {workers}");
        assert_eq!(out.late_right.changelog(), vec![(b_too_late.clone(), 1_141, 1)], "workers {workers}");
    }
}
