//! Oracle tests for window joins: random streams with retractions, re-deliveries, records
//! arriving late (within and beyond the allowed lateness) and out of order, at 1, 2 and 4
//! workers, tumbling and sliding windows, every kind and emission mode, compared with a
//! from-scratch computation.

use std::sync::Arc;
use std::time::Duration;

use tideline::join::TooLate;
use tideline::prelude::*;
use tideline::runtime::metrics::StateMetrics;
use tideline::sink::Collected;

use crate::common::*;

type Opt = Option<Ev>;

#[derive(Clone, Default)]
struct Outputs {
    inner: Collected<(Window, Ev, Ev)>,
    left: Collected<(Window, Ev, Opt)>,
    right: Collected<(Window, Opt, Ev)>,
    full: Collected<(Window, Opt, Opt)>,
    late_left: Collected<Ev>,
    late_right: Collected<Ev>,
}

fn windows(spec: WindowSpec, time: Time) -> Vec<Window> {
    let mut out = Vec::new();
    let mut start = 0;
    while start <= time {
        let window = Window { start, end: start + spec.size() };
        if window.contains(time) {
            out.push(window);
        }
        start += spec.slide();
    }
    out
}

fn event(key: u32, record: (Time, i64)) -> Ev {
    Event::new(record.0, key, record.1)
}

fn check(seed: u64, spec: WindowSpec) {
    let lateness = 60;
    let a = Arc::new(random_event_updates(seed, 500, 4, lateness));
    let b = Arc::new(random_event_updates(seed + 100, 500, 4, lateness));
    for emit in [Emit::Final, Emit::Updates] {
        // The documented semantics: a record takes part in each window `w` containing it that
        // it reaches before `w.end + lateness`, from `max(τ, w.end − 1)` (Final) or `τ`.
        let parts = |updates: &Updates<Ev>| -> (Vec<Part<(u32, Window)>>, Updates<Ev>) {
            let (mut parts, mut late) = (Vec::new(), Vec::new());
            for (e, at, diff) in updates.iter() {
                let mut admitted = false;
                for w in windows(spec, e.time).into_iter().filter(|w| *at < w.end + lateness) {
                    admitted = true;
                    let (at, close) = match emit {
                        Emit::Final => ((*at).max(w.end - 1), w.end - 1),
                        Emit::Updates => (*at, 0),
                    };
                    parts.push(Part { group: (e.key, w), time: e.time, value: e.value, at, diff: *diff, close });
                }
                if !admitted {
                    late.push((e.clone(), *at, *diff));
                }
            }
            (parts, changelog(late))
        };
        let ((left, late_left), (right, late_right)) = (parts(&a), parts(&b));
        assert!(!late_left.is_empty() && !late_right.is_empty(), "the inputs have too-late records");
        let rows =
            |outer_left, outer_right| temporal_join_reference(&left, &right, |_, _| true, outer_left, outer_right);
        let inner = changelog(
            rows(false, false)
                .into_iter()
                .map(|(((k, w), l, r), t, d)| ((w, event(k, l.unwrap()), event(k, r.unwrap())), t, d)),
        );
        let left_rows = changelog(
            rows(true, false)
                .into_iter()
                .map(|(((k, w), l, r), t, d)| ((w, event(k, l.unwrap()), r.map(|r| event(k, r))), t, d)),
        );
        let right_rows = changelog(
            rows(false, true)
                .into_iter()
                .map(|(((k, w), l, r), t, d)| ((w, l.map(|l| event(k, l)), event(k, r.unwrap())), t, d)),
        );
        let full = changelog(
            rows(true, true)
                .into_iter()
                .map(|(((k, w), l, r), t, d)| ((w, l.map(|l| event(k, l)), r.map(|r| event(k, r))), t, d)),
        );
        assert!(
            full.iter().any(|((_, l, r), _, d)| l.is_some() && r.is_none() && *d < 0),
            "unmatched rows get retracted"
        );
        if emit == Emit::Final {
            assert!(
                inner.iter().any(|((w, _, _), t, _)| *t > w.end - 1)
                    && inner.iter().any(|((w, _, _), t, _)| *t == w.end - 1),
                "final results and late corrections"
            );
        }
        for workers in [1, 2, 4] {
            let out = Outputs::default();
            let metrics = StateMetrics::new();
            let (o, m) = (out.clone(), Arc::clone(&metrics));
            run_two(workers, seed, &a, &b, move |a, b| {
                let join = || {
                    a.clone()
                        .window_join(b.clone(), spec)
                        .emit(emit)
                        .allowed_lateness(Duration::from_millis(lateness))
                        .state_metrics(Arc::clone(&m))
                };
                let (inner, TooLate { left, right }) = join().inner_with_late();
                inner.collect_into(&o.inner);
                left.collect_into(&o.late_left);
                right.collect_into(&o.late_right);
                join().left().collect_into(&o.left);
                join().right().collect_into(&o.right);
                join().full().collect_into(&o.full);
            });
            let context = format!("seed {seed} {spec:?} {emit:?} workers {workers}");
            assert_eq!(out.inner.changelog(), inner, "{context}: inner");
            assert_eq!(out.left.changelog(), left_rows, "{context}: left");
            assert_eq!(out.right.changelog(), right_rows, "{context}: right");
            assert_eq!(out.full.changelog(), full, "{context}: full");
            assert_eq!(out.late_left.changelog(), late_left, "{context}: too-late left records");
            assert_eq!(out.late_right.changelog(), late_right, "{context}: too-late right records");
            assert_eq!(metrics.total(), 0, "{context}: all state released at the end");
            assert!(metrics.late_skipped() > 0, "{context}: too-late records counted");
        }
    }
}

#[test]
fn tumbling_window_joins_match_the_oracle() {
    check(31, WindowSpec::tumbling(Duration::from_millis(100)).unwrap());
}

#[test]
fn sliding_window_joins_match_the_oracle() {
    check(32, WindowSpec::sliding(Duration::from_millis(100), Duration::from_millis(40)).unwrap());
}

/// A record arriving on the window's last admissible instant (`end + lateness − 1`) still
/// joins the window's records; one millisecond later it is too late.
#[test]
fn window_joins_hold_windows_until_their_last_admissible_instant() {
    let spec = WindowSpec::tumbling(Duration::from_millis(100)).unwrap();
    let window = Window { start: 0, end: 100 };
    let a_record = Event::new(10, 1u32, 1i64);
    let (b_edge, b_too_late) = (Event::new(20, 1, 2), Event::new(30, 1, 3));
    let a = Arc::new(vec![(a_record.clone(), 10, 1)]);
    let b = Arc::new(vec![(b_edge.clone(), 149, 1), (b_too_late.clone(), 150, 1)]);
    for workers in [1, 2] {
        let (full, late) = (Collected::new(), Collected::new());
        let (f, l) = (full.clone(), late.clone());
        run_two_with(workers, 1, 0, &a, &b, move |a, b| {
            let (joined, too_late) =
                a.window_join(b, spec).allowed_lateness(Duration::from_millis(50)).full_with_late();
            joined.collect_into(&f);
            too_late.right.collect_into(&l);
        });
        assert_eq!(
            full.changelog(),
            vec![
                ((window, Some(a_record.clone()), None), 99, 1),
                ((window, Some(a_record.clone()), None), 149, -1),
                ((window, Some(a_record.clone()), Some(b_edge.clone())), 149, 1),
            ],
            "workers {workers}"
        );
        assert_eq!(late.changelog(), vec![(b_too_late.clone(), 150, 1)], "workers {workers}");
    }
}
