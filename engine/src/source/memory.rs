//! In-memory sources: partitions of records held by (or generated in) the program.
//!
//! For tests, documentation and generators. Partition `p` is read by worker `p % peers`, in
//! order, so results do not depend on the number of workers.

use std::sync::Arc;

use timely::dataflow::Scope;

use crate::source::{ReadContext, ReadStatus, SourceConfig, SourceReader, SourceStreams, source};
use crate::time::watermark::PartitionId;
use crate::time::{EventTime, Time};

/// Reads partitions given as iterators; see [`from_partitions`] and [`from_generators`].
pub struct IterReader<I: Iterator> {
    partitions: Vec<(PartitionId, u64, Option<I>)>,
    started: bool,
    next: usize,
}

impl<I> SourceReader for IterReader<I>
where
    I: Iterator + 'static,
    I::Item: EventTime,
{
    type Item = I::Item;

    fn poll(&mut self, ctx: &mut ReadContext<'_, I::Item>) -> ReadStatus {
        if !self.started {
            for (id, _, _) in &self.partitions {
                ctx.add_partition(*id);
            }
            self.started = true;
        }
        // Round-robin over partitions, a slice of the budget each, so that their watermarks
        // advance together.
        let live = self.partitions.iter().filter(|p| p.2.is_some()).count();
        if live == 0 {
            return ReadStatus::Done;
        }
        let share = (ctx.budget() / live).max(1);
        for _ in 0..self.partitions.len() {
            let slot = self.next % self.partitions.len();
            self.next += 1;
            let (id, position, iter) = &mut self.partitions[slot];
            let Some(records) = iter.as_mut() else { continue };
            for _ in 0..share {
                match records.next() {
                    Some(record) => {
                        let time: Time = record.event_time();
                        ctx.record(*id, *position, time, record);
                        *position += 1;
                    }
                    None => {
                        ctx.finish_partition(*id);
                        *iter = None;
                        break;
                    }
                }
            }
            if ctx.budget() == 0 {
                break;
            }
        }
        if self.partitions.iter().all(|p| p.2.is_none()) { ReadStatus::Done } else { ReadStatus::Busy }
    }
}

/// A source over fixed partitions of records; partition `p` is read by worker `p % peers`.
///
/// ```
/// use tideline::prelude::*;
/// use tideline::source::{SourceConfig, memory};
/// use std::sync::Arc;
///
/// let partitions = Arc::new(vec![
///     vec![Event::new(1_000, 'a', 1), Event::new(3_000, 'b', 2)],
///     vec![Event::new(2_000, 'a', 5)],
/// ]);
/// let out = tideline::runtime::collect(1, move |scope| {
///     memory::from_partitions(scope, SourceConfig::new("events"), partitions.clone()).data
/// });
/// assert_eq!(out.len(), 3);
/// ```
pub fn from_partitions<'scope, D>(
    scope: Scope<'scope, Time>,
    config: SourceConfig,
    partitions: Arc<Vec<Vec<D>>>,
) -> SourceStreams<'scope, D>
where
    D: EventTime + Clone + 'static,
{
    let count = partitions.len();
    from_generators(scope, config, count, move |p| {
        let partitions = Arc::clone(&partitions);
        (0..partitions[p as usize].len()).map(move |i| partitions[p as usize][i].clone())
    })
}

/// A source over `count` partitions, each produced by `make(partition)` on the worker that
/// reads it (worker `partition % peers`): for generators too large to hold in memory.
pub fn from_generators<'scope, I, F>(
    scope: Scope<'scope, Time>,
    config: SourceConfig,
    count: usize,
    mut make: F,
) -> SourceStreams<'scope, I::Item>
where
    I: Iterator + 'static,
    I::Item: EventTime + Clone + 'static,
    F: FnMut(PartitionId) -> I,
{
    source(scope, config, move |setup| {
        let (index, peers) = (setup.index(), setup.peers());
        IterReader {
            partitions: (0..count)
                .filter(|p| p % peers == index)
                .map(|p| (p as PartitionId, 0, Some(make(p as PartitionId))))
                .collect(),
            started: false,
            next: 0,
        }
    })
}

/// A single-partition source over an iterator made on worker 0.
pub fn from_iter<'scope, I, F>(
    scope: Scope<'scope, Time>,
    config: SourceConfig,
    make: F,
) -> SourceStreams<'scope, I::Item>
where
    I: Iterator + 'static,
    I::Item: EventTime + Clone + 'static,
    F: FnOnce() -> I,
{
    let mut make = Some(make);
    from_generators(scope, config, 1, move |_| (make.take().expect("one partition"))())
}
