//! Processing time, made explicit: a [`Clock`] that ingestion-time sources read, injectable so
//! that tests control it.
//!
//! Tideline computes in event time (DESIGN §1). Some jobs want the time records *arrive*
//! instead — counting what came in during the last 10 s of wall-clock time (Nexmark q12),
//! alerting on silence. They opt in per source with
//! [`SourceConfig::ingestion_time`](crate::source::SourceConfig::ingestion_time): every record
//! gets the clock's time when the source reads it as its dataflow time, the source's watermark
//! follows the clock (also while nothing arrives, so windows close on a silent stream), and
//! [`AtIngestionTime::at_ingestion_time`] writes that time into the events, so that the
//! ordinary windows, sessions and process functions compute over arrival time.
//!
//! # When it gives wrong answers
//!
//! Arrival time is not a property of the data: the same input read twice gives different
//! results. A replay, a backlog after an outage, or a restart from a checkpoint puts hours of
//! events into the seconds it takes to read them; a slow consumer stretches them. Results are
//! not deterministic across runs nor across worker counts (each worker reads its partitions at
//! its own pace), and late data does not exist (nothing arrives before the clock). Use it for
//! monitoring what a system receives, never for facts about what happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::time::Time;

/// A source of processing time, in ms since the Unix epoch: the system clock, or one a test
/// sets ([`Clock::manual`]).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Time + Send + Sync>);

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock(now = {})", self.now())
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(Arc::new(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Time)
        }))
    }

    /// A clock that stands at `start` until its handle moves it: for tests, without sleeps.
    ///
    /// ```
    /// use tideline::time::clock::Clock;
    ///
    /// let (clock, hand) = Clock::manual(1_000);
    /// assert_eq!(clock.now(), 1_000);
    /// hand.advance(250);
    /// assert_eq!(clock.now(), 1_250);
    /// ```
    pub fn manual(start: Time) -> (Self, ManualClock) {
        let now = Arc::new(AtomicU64::new(start));
        let read = Arc::clone(&now);
        (Clock(Arc::new(move || read.load(Ordering::SeqCst))), ManualClock(now))
    }

    /// A clock read from `now`.
    pub fn from_fn(now: impl Fn() -> Time + Send + Sync + 'static) -> Self {
        Clock(Arc::new(now))
    }

    /// The current time.
    pub fn now(&self) -> Time {
        (self.0)()
    }
}

/// Moves a [`Clock::manual`] clock.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: Time) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock (it never goes back: a time before the current one is ignored).
    pub fn set(&self, now: Time) {
        self.0.fetch_max(now, Ordering::SeqCst);
    }
}

/// Event time := ingestion time, for the events of an ingestion-time source.
pub trait AtIngestionTime {
    /// Sets each event's [`time`](crate::time::Event::time) to the dataflow time it travels at
    /// — for a source read with
    /// [`SourceConfig::ingestion_time`](crate::source::SourceConfig::ingestion_time), the
    /// clock's time when it was read — so that windows and the other temporal operators
    /// compute over arrival time (see the [module documentation](self) for when that is wrong).
    fn at_ingestion_time(self) -> Self;
}

impl<'scope, K, V> AtIngestionTime for crate::VecCollection<'scope, Time, crate::time::Event<K, V>>
where
    K: crate::ExchangeData,
    V: crate::ExchangeData,
{
    fn at_ingestion_time(self) -> Self {
        use differential_dataflow::AsCollection;
        use timely::dataflow::operators::core::Map;
        self.inner
            .map(|(mut event, time, diff)| {
                event.time = time;
                (event, time, diff)
            })
            .as_collection()
    }
}
