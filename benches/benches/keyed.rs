#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! Criterion benches of the keyed temporal operators' hot path: session windows (q11's shape)
//! and dedup (q18's shape) over pre-generated bids, through the keyed driver.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tideline_benches::keyed::{Op, engine, generate};

fn keyed(c: &mut Criterion) {
    let events = 100_000;
    let input = Arc::new(generate(events));
    let mut group = c.benchmark_group("keyed");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    for (name, op) in [("sessions", Op::Sessions), ("dedup", Op::Dedup)] {
        group.bench_function(name, |b| {
            b.iter_batched(|| Arc::clone(&input), |input| engine(op, &input, 1), BatchSize::SmallInput)
        });
    }
    group.finish();
}

criterion_group!(benches, keyed);
criterion_main!(benches);
