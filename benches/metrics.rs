//! `evaluate` on the design's size: 1000 real against 1000 generated
//! matrices of 200 x 200 (two draws of the blobs set), and on a small case.

use coreflow::datasets::{Dataset, DatasetSpec};
use coreflow::metrics::{evaluate, EvalOptions};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Duration;

fn bench_evaluate(c: &mut Criterion) {
    let mut group = c.benchmark_group("evaluate");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(100));
    for (count, size) in [(200, 64), (1000, 200)] {
        let real = Dataset::Blobs
            .generate(&DatasetSpec::new(count, size, size, 1))
            .unwrap();
        let generated = Dataset::Blobs
            .generate(&DatasetSpec::new(count, size, size, 2))
            .unwrap();
        let opts = EvalOptions::default();
        group.measurement_time(Duration::from_secs(if size > 100 { 70 } else { 5 }));
        group.bench_function(format!("{count}_vs_{count}_of_{size}x{size}"), |b| {
            b.iter(|| {
                evaluate(
                    black_box(&real.batch()),
                    black_box(&generated.batch()),
                    &opts,
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_evaluate);
criterion_main!(benches);
