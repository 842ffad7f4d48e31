//! Ingestion time with an injectable clock (no sleeps): records travel at the clock's time when
//! read, whatever their own event time, windows over arrival time match a model, and the
//! watermark follows the clock while nothing arrives, so a window closes on a silent stream.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tideline::prelude::*;
use tideline::sink::{Collected, Sink};
use tideline::source::{ReadContext, ReadStatus, SourceConfig, SourceReader, source};
use tideline::time::clock::{AtIngestionTime, Clock, ManualClock};
use tideline::timely::dataflow::operators::probe::Handle;
use tideline::window::aggregate::Count;

/// Gives one record per poll and moves the clock `step` ms after each; once the records are
/// given it stays silent, moving the clock, until `until` says to stop (or 10 000 polls pass).
struct Arrivals {
    records: std::vec::IntoIter<Event<u32, u32>>,
    hand: ManualClock,
    step: u64,
    started: bool,
    until: Box<dyn Fn() -> bool>,
    silent_polls: Rc<Cell<u32>>,
}

impl SourceReader for Arrivals {
    type Item = Event<u32, u32>;

    fn poll(&mut self, ctx: &mut ReadContext<'_, Self::Item>) -> ReadStatus {
        if !self.started {
            ctx.add_partition(0);
            self.started = true;
        }
        match self.records.next() {
            Some(event) => {
                ctx.record(0, 0, event.time, event);
                self.hand.advance(self.step);
                ReadStatus::Busy
            }
            None if (self.until)() || self.silent_polls.get() >= 10_000 => ReadStatus::Done,
            None => {
                self.silent_polls.set(self.silent_polls.get() + 1);
                self.hand.advance(self.step);
                ReadStatus::Waiting(Duration::from_millis(1))
            }
        }
    }
}

#[test]
fn windows_over_arrival_time_follow_the_clock_not_the_events() {
    for step in [130u64, 400, 1_000] {
        let start = 50_000;
        // Event times are decreasing and far from the clock: arrival time alone decides.
        let events: Vec<Event<u32, u32>> =
            (0..40u32).map(|i| Event::new(9_000_000 - u64::from(i) * 7_777, i % 3, i)).collect();
        let mut expected = std::collections::BTreeMap::<(u64, u32), isize>::new();
        for (i, event) in events.iter().enumerate() {
            let arrival = start + step * i as u64;
            *expected.entry((arrival / 1_000 * 1_000, event.key)).or_default() += 1;
        }
        let collected = Collected::new();
        let sink = collected.clone();
        tideline::runtime::execute(&tideline::runtime::Cluster::default(), move |worker| {
            let (clock, hand) = Clock::manual(start);
            let events = events.clone();
            let sink = sink.clone();
            worker.dataflow::<Time, _, _>(move |scope| {
                let config = SourceConfig::new("arrivals").ingestion_time(clock);
                let streams = source(scope, config, move |_| Arrivals {
                    records: events.into_iter(),
                    hand,
                    step,
                    started: false,
                    until: Box::new(|| true),
                    silent_polls: Rc::default(),
                });
                streams.data.at_ingestion_time().tumbling(Duration::from_secs(1)).aggregate(Count).collect_into(&sink);
            });
            Ok::<(), String>(())
        })
        .unwrap();
        let got: std::collections::BTreeMap<(u64, u32), isize> = collected
            .contents()
            .into_iter()
            .map(|(result, diff)| {
                assert_eq!(diff, 1);
                ((result.window.start, result.key), result.value as isize)
            })
            .collect();
        assert_eq!(got, expected, "step {step} ms");
    }
}

#[test]
fn a_window_over_arrival_time_closes_while_nothing_arrives() {
    let collected = Collected::new();
    let sink = collected.clone();
    let outcome = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = std::sync::Arc::clone(&outcome);
    tideline::runtime::execute(&tideline::runtime::Cluster::default(), move |worker| {
        let (clock, hand) = Clock::manual(10_000);
        let probe = Handle::new();
        let watched = probe.clone();
        let sink = sink.clone();
        let seen = std::sync::Arc::clone(&seen);
        let polls = Rc::new(Cell::new(0u32));
        worker.dataflow::<Time, _, _>(move |scope| {
            let config = SourceConfig::new("arrivals").ingestion_time(clock);
            let events = vec![Event::new(1, 1u32, 0u32), Event::new(2, 1, 0), Event::new(3, 2, 0)];
            let counted = Rc::clone(&polls);
            let streams = source(scope, config, move |_| Arrivals {
                records: events.into_iter(),
                hand,
                step: 100,
                started: false,
                // Stop once the window [10 s, 11 s) is complete downstream: only the clock
                // moving the watermark can get it there (the reader is not done).
                until: Box::new(move || {
                    let complete = !watched.less_than(&11_000);
                    if complete {
                        *seen.lock().unwrap() = Some(counted.get());
                    }
                    complete
                }),
                silent_polls: polls,
            });
            streams
                .data
                .at_ingestion_time()
                .tumbling(Duration::from_secs(1))
                .aggregate(Count)
                .probe_with(&probe)
                .collect_into(&sink);
        });
        Ok::<(), String>(())
    })
    .unwrap();
    let polls = outcome.lock().unwrap().expect("the window completed before the reader stopped");
    assert!(polls < 10_000, "the watermark followed the clock within {polls} silent polls");
    let counts: Vec<(u32, i128)> = collected.contents().into_iter().map(|(r, _)| (r.key, r.value as i128)).collect();
    assert_eq!(counts, vec![(1, 2), (2, 1)]);
}
