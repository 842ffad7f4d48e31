#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! Criterion benches of the joins' hot path: a window join (q8's shape, the keyed join core
//! with state release) and an unbounded equi-join (q20's shape, differential arrangements).

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tideline_benches::joins::{engine, generate};
use tideline_benches::{Kind, workloads};

fn joins(c: &mut Criterion) {
    let events = 100_000;
    let input = Arc::new(generate(events));
    let mut group = c.benchmark_group("joins");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    for workload in workloads() {
        if !matches!(workload.kind, Kind::WindowJoin(_) | Kind::Join) {
            continue;
        }
        group.bench_function(workload.name, |b| {
            b.iter_batched(|| Arc::clone(&input), |input| engine(workload.kind, &input, 1), BatchSize::SmallInput)
        });
    }
    group.finish();
}

criterion_group!(benches, joins);
criterion_main!(benches);
