#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! Criterion benches of tables and rankings: an upsert table (latest value per key by event
//! time, with tombstones) and top-N per window over window counts (q19's shape).

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tideline::prelude::*;
use tideline::runtime::{Cluster, execute};
use tideline::source::{SourceConfig, memory};
use tideline::window::aggregate::Count;
use tideline_benches::{Bid, Digest, DigestInto, InputShape, Row, generate};

fn config() -> SourceConfig {
    SourceConfig::new("bids").watermarks(WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(200)))
}

/// Runs `pipeline` over the bids on one worker, its output digested.
fn run(
    input: &Arc<Vec<Vec<Bid>>>,
    pipeline: for<'s> fn(VecCollection<'s, Time, Bid>) -> VecCollection<'s, Time, Row>,
) -> Digest {
    let digest = Digest::default();
    let (d, input) = (digest.clone(), Arc::clone(input));
    execute(&Cluster::threads(1), move |worker| {
        let (d, input) = (d.clone(), Arc::clone(&input));
        worker.dataflow::<Time, _, _>(move |scope| {
            pipeline(memory::from_partitions(scope, config(), input).data).digest_into(&d);
        });
        while worker.step_or_park(None) {}
    })
    .expect("bench run");
    digest
}

/// Latest price per auction; one bid in 16 deletes its auction.
fn upsert(bids: VecCollection<'_, Time, Bid>) -> VecCollection<'_, Time, Row> {
    bids.map(|b| Event::new(b.time, b.key, (b.value % 16 != 0).then_some(b.value)))
        .upsert()
        .table()
        .into_collection()
        .map(|(key, value)| [key, value, 0, 0])
}

/// The 10 busiest keys of each 1 s window.
fn top_n(bids: VecCollection<'_, Time, Bid>) -> VecCollection<'_, Time, Row> {
    bids.tumbling(Duration::from_secs(1))
        .aggregate(Count)
        .top_n(10, |r: &WindowResult<u64, i64>| r.window, |r| r.value)
        .release_at(|window: &Window| window.end)
        .build()
        .map(|r| [r.group.start, r.rank as u64, r.record.key, r.record.value as u64])
}

fn tables(c: &mut Criterion) {
    let events = 100_000;
    let input = Arc::new(generate(InputShape::bids(events)));
    let mut group = c.benchmark_group("tables");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.bench_function("upsert", |b| {
        b.iter_batched(|| Arc::clone(&input), |input| run(&input, upsert), BatchSize::SmallInput)
    });
    group.bench_function("top-n per window", |b| {
        b.iter_batched(|| Arc::clone(&input), |input| run(&input, top_n), BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, tables);
criterion_main!(benches);
