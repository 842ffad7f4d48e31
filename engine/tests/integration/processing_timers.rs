//! Processing-time timers on an event-time stream (both clocks in one process function), with
//! an injectable clock (no sleeps): they fire when the clock passes them while the watermark
//! stands still, a deleted or cleared one never fires, one set past the end of the input is
//! dropped, and event-time timers keep following the watermark.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tideline::keyed::process::{Context, KeyedProcessFunction, Process};
use tideline::prelude::*;
use tideline::sink::{Collected, Sink};
use tideline::source::{ReadContext, ReadStatus, SourceConfig, SourceReader, source};
use tideline::time::clock::{Clock, ManualClock};

/// What a user sends: `Start` sets a processing-time timer 1 s (of the clock) ahead and an
/// event-time timer 500 ms (of event time) ahead; `Cancel` deletes the processing timer;
/// `Forget` clears the key; `Late` moves the processing timer an hour ahead.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Op {
    Start,
    Cancel,
    Forget,
    Late,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Pending {
    timer: Option<Time>,
}

struct Reminders {
    fired: Arc<AtomicUsize>,
}

impl KeyedProcessFunction<u32, Op> for Reminders {
    type State = Pending;
    type Output = (u32, String);

    fn on_event(&self, event: &Event<u32, Op>, state: &mut Pending, ctx: &mut Context<'_, u32, (u32, String)>) {
        match event.value {
            Op::Start => {
                state.timer = Some(ctx.set_processing_timer(ctx.processing_time() + 1_000));
                ctx.set_timer(event.time + 500);
            }
            Op::Cancel => {
                if let Some(at) = state.timer.take() {
                    ctx.delete_processing_timer(at);
                }
            }
            Op::Forget => ctx.clear(),
            Op::Late => {
                if let Some(at) = state.timer.take() {
                    ctx.delete_processing_timer(at);
                }
                state.timer = Some(ctx.set_processing_timer(ctx.processing_time() + 3_600_000));
            }
        }
    }

    fn on_timer(&self, at: Time, key: &u32, _state: &mut Pending, ctx: &mut Context<'_, u32, (u32, String)>) {
        ctx.emit((*key, format!("event-time timer at {at}")));
    }

    fn on_processing_timer(
        &self,
        _at: Time,
        key: &u32,
        state: &mut Pending,
        ctx: &mut Context<'_, u32, (u32, String)>,
    ) {
        self.fired.fetch_add(1, Ordering::SeqCst);
        state.timer = None;
        ctx.emit((*key, "reminder".to_string()));
        // An event-time timer for now: it fires once the watermark passes this time.
        ctx.set_timer(ctx.time());
    }
}

/// Gives its events (in event-time order, so the watermark ends at the last one), then
/// stays silent — the watermark stands still — moving the clock 5 ms per poll (so the 1 s
/// reminders come due some 200 polls after the last event, once it has been applied), until
/// `done` says so or 20 000 polls have passed.
struct Script {
    events: std::vec::IntoIter<Event<u32, Op>>,
    hand: ManualClock,
    started: bool,
    polls: u32,
    done: Box<dyn Fn() -> bool>,
}

impl SourceReader for Script {
    type Item = Event<u32, Op>;

    fn poll(&mut self, ctx: &mut ReadContext<'_, Self::Item>) -> ReadStatus {
        if !self.started {
            // Only the worker with events has the partition (the other follows its watermark).
            if !self.events.as_slice().is_empty() {
                ctx.add_partition(0);
            }
            self.started = true;
        }
        if let Some(event) = self.events.next() {
            ctx.record(0, 0, event.time, event);
            return ReadStatus::Busy;
        }
        if (self.done)() || self.polls >= 20_000 {
            return ReadStatus::Done;
        }
        self.polls += 1;
        self.hand.advance(5);
        ReadStatus::Waiting(Duration::from_millis(1))
    }
}

#[test]
fn processing_timers_fire_by_the_clock_while_the_watermark_stands_still() {
    // Keys 0..40: Start for all; then Cancel for multiples of 5, Forget for multiples of 7
    // (not of 5), Late for multiples of 11 (neither). Reminders are due for the others.
    let mut events = Vec::new();
    for key in 0..40u32 {
        events.push(Event::new(1_000 + u64::from(key), key, Op::Start));
    }
    for key in 0..40u32 {
        let op = match key {
            k if k % 5 == 0 => Op::Cancel,
            k if k % 7 == 0 => Op::Forget,
            k if k % 11 == 0 => Op::Late,
            _ => continue,
        };
        events.push(Event::new(2_000 + u64::from(key), key, op));
    }
    // A last event moves the watermark past every operation (an event at the watermark is not
    // passed yet).
    events.push(Event::new(3_000, 99, Op::Forget));
    let reminded: BTreeSet<u32> = (0..40u32).filter(|k| k % 5 != 0 && k % 7 != 0 && k % 11 != 0).collect();
    for workers in [1, 2] {
        let collected = Collected::new();
        let fired = Arc::new(AtomicUsize::new(0));
        let (sink, counter, script) = (collected.clone(), Arc::clone(&fired), events.clone());
        let expected = reminded.len();
        let (clock, hand) = Clock::manual(1_767_225_600_000);
        tideline::runtime::execute(&tideline::runtime::Cluster::threads(workers), move |worker| {
            let (sink, counter, script, clock, hand) =
                (sink.clone(), Arc::clone(&counter), script.clone(), clock.clone(), hand.clone());
            let index = worker.index();
            worker.dataflow::<Time, _, _>(move |scope| {
                let watched = Arc::clone(&counter);
                let streams = source(scope, SourceConfig::new("script"), move |_| Script {
                    // One worker reads; the other's source has no partition.
                    events: if index == 0 { script } else { Vec::new() }.into_iter(),
                    hand,
                    started: false,
                    polls: 0,
                    // The reader stops only once every reminder has fired: only the clock can
                    // get them there, the watermark stands at the last event.
                    done: Box::new(move || watched.load(Ordering::SeqCst) >= expected),
                });
                streams
                    .data
                    .process(Reminders { fired: counter })
                    .clock(clock)
                    .name("reminders")
                    .build()
                    .collect_into(&sink);
            });
            Ok::<(), String>(())
        })
        .unwrap();
        let reminders = |rows: &[((u32, String), Time, isize)]| -> Vec<(u32, Time)> {
            rows.iter()
                .filter(|((_, what), _, _)| what == "reminder")
                .map(|((key, _), time, _)| (*key, *time))
                .collect()
        };
        assert_eq!(
            fired.load(Ordering::SeqCst),
            expected,
            "{workers} workers: every reminder, once: {:?}",
            reminders(&collected.changelog())
        );
        let rows: Vec<((u32, String), Time)> = collected
            .changelog()
            .into_iter()
            .map(|(row, time, diff)| {
                assert_eq!(diff, 1);
                (row, time)
            })
            .collect();
        let got: BTreeSet<u32> =
            rows.iter().filter(|((_, what), _)| what == "reminder").map(|((key, _), _)| *key).collect();
        assert_eq!(got, reminded, "{workers} workers: cancelled, cleared and hour-away timers never fire");
        // Reminders go out at the operator's input frontier, which the watermark held at the
        // last event (3 000): before the end of the input.
        for ((key, what), time) in &rows {
            if what == "reminder" {
                assert!(*time <= 3_000, "{workers} workers: key {key}'s reminder at {time}, after the watermark");
            }
        }
        // Event-time timers are unchanged: one per Start, at its time + 500, fired as the
        // watermark passes them (before any key is cleared, at 2 000 and later); and one per
        // reminder, set by it for its own time, fired once the end of the input passes that.
        let event_timers: BTreeSet<(u32, Time)> = rows
            .iter()
            .filter(|((_, what), _)| what.starts_with("event-time"))
            .map(|((key, _), time)| (*key, *time))
            .collect();
        let mut expected_timers: BTreeSet<(u32, Time)> = (0..40u32).map(|k| (k, 1_500 + u64::from(k))).collect();
        expected_timers
            .extend(rows.iter().filter(|((_, what), _)| what == "reminder").map(|((key, _), time)| (*key, *time)));
        assert_eq!(event_timers, expected_timers, "{workers} workers");
    }
}
