#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! Criterion benches of the window operators' hot path: pre-aggregation, exchange and
//! emission of tumbling and sliding counts over pre-generated bids.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tideline_benches::windows::engine;
use tideline_benches::{InputShape, Kind, generate, workloads};

fn windows(c: &mut Criterion) {
    let events = 200_000;
    let input = Arc::new(generate(InputShape::bids(events)));
    let mut group = c.benchmark_group("windows");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    for workload in workloads() {
        let Kind::Windows(size, slide) = workload.kind else { continue };
        group.bench_function(workload.name, |b| {
            b.iter_batched(|| Arc::clone(&input), |input| engine(size, slide, &input, 1), BatchSize::SmallInput)
        });
    }
    group.finish();
}

criterion_group!(benches, windows);
criterion_main!(benches);
