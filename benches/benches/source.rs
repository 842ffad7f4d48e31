#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! Criterion benches of the source path: per-partition watermark tracking and the decision
//! whether a record is behind the watermark, the work done for every record read.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tideline::time::watermark::{WatermarkStrategy, WatermarkTracker};

fn watermarks(c: &mut Criterion) {
    let records = 1_000_000u64;
    let mut group = c.benchmark_group("source");
    group.throughput(Throughput::Elements(records));
    group.bench_function("watermark+behind decision", |b| {
        b.iter(|| {
            let strategy = WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(50));
            let mut tracker = WatermarkTracker::new(strategy.clone());
            let now = Instant::now();
            let slots: Vec<usize> = (0..8).map(|p| tracker.add(p, strategy.generator(), now, 0)).collect();
            let mut behind = 0u64;
            for i in 0..records {
                let slot = slots[(i % 8) as usize];
                let time = i * 3 + 40 - (i * 7919) % 40;
                let generator = tracker.touch(slot, now, 0);
                if time >= generator.watermark() {
                    generator.observe(time);
                } else {
                    behind += 1;
                }
            }
            std::hint::black_box((behind, tracker.watermark()))
        })
    });
    group.finish();
}

criterion_group!(benches, watermarks);
criterion_main!(benches);
