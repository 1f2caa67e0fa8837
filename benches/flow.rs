//! Criterion benchmarks of the flow module: one training step, sampling and
//! log-densities (sampling also in hidden coordinates where that is
//! cheaper), single-threaded, at the default architecture
//! (H = 256, L = 3, 16 time frequencies).
//!
//! `cargo bench --bench flow`; for side-by-side numbers with the PyTorch
//! peer use `examples/flow_bench.rs` (see BENCHMARKS.md).

use coreflow::flow::latent::{self, LatentMaps};
use coreflow::flow::ode::{integrate, integrate_scratch};
use coreflow::flow::{
    likelihood, NetConfig, Solver, SolverOptions, TrainOptions, Trainer, VelocityNet,
};
use coreflow::rng;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::{Mat, Par};
use std::hint::black_box;
use std::time::Duration;

fn config(dim: usize) -> NetConfig {
    NetConfig {
        dim,
        hidden: 256,
        layers: 3,
        time_freqs: 16,
    }
}

fn normals(n: usize, d: usize, seed: u64) -> Mat<f64> {
    let mut m = Mat::<f64>::zeros(n, d);
    let mut row = vec![0.0; d];
    for i in 0..n {
        rng::fill_normal(&mut rng::stream(seed, i as u64), &mut row);
        for j in 0..d {
            m[(i, j)] = row[j];
        }
    }
    m
}

fn train_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_train_step");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for dim in [64, 400] {
        let data = normals(1000, dim, 1);
        let opts = TrainOptions {
            steps: usize::MAX / 2,
            batch_size: 256,
            ..Default::default()
        };
        let mut t = Trainer::<f32>::new(config(dim), data.as_ref(), &opts, None, Par::Seq).unwrap();
        t.step().unwrap();
        g.throughput(Throughput::Elements(256));
        g.bench_function(format!("d{dim}_h256_b256"), |b| {
            b.iter(|| black_box(t.step().unwrap()))
        });
    }
    g.finish();
}

fn sample(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_sample");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let n = 256;
    for (dim, solver, steps) in [
        (64, Solver::Euler, 100),
        (64, Solver::Rk4, 25),
        (400, Solver::Rk4, 25),
    ] {
        let net = VelocityNet::<f32>::new(config(dim), 2).unwrap();
        let opts = SolverOptions {
            solver,
            steps,
            ..Default::default()
        };
        let x0 = normals(n, dim, 3);
        let mut x = x0.clone();
        let mut mem = MemBuffer::new(integrate_scratch(&net, n, &opts));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("d{dim}_{solver:?}{steps}_n{n}"), |b| {
            b.iter(|| {
                x.copy_from(&x0);
                integrate(&net, &opts, 0.0, 1.0, x.as_mut(), MemStack::new(&mut mem)).unwrap();
                black_box(x[(0, 0)])
            })
        });
        // The same solve in the network's hidden coordinates, where cheaper.
        if LatentMaps::<f32>::pays(net.config(), &opts) {
            let maps = LatentMaps::new(&net);
            let mut mem = MemBuffer::new(latent::integrate_scratch(&net, Some(&maps), n, &opts));
            g.bench_function(format!("d{dim}_{solver:?}{steps}_n{n}_hidden"), |b| {
                b.iter(|| {
                    x.copy_from(&x0);
                    let stack = MemStack::new(&mut mem);
                    latent::integrate(&net, Some(&maps), &opts, 0.0, 1.0, x.as_mut(), stack)
                        .unwrap();
                    black_box(x[(0, 0)])
                })
            });
        }
    }
    g.finish();
}

fn log_prob(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_log_prob");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let dim = 32;
    let n = 64;
    let net = VelocityNet::<f32>::new(config(dim), 4).unwrap();
    let x = normals(n, dim, 5);
    let mut out = vec![0.0; n];
    for (name, opts) in [
        ("exact_rk4_16", SolverOptions::default()),
        (
            "hutchinson_rk4_16",
            SolverOptions {
                divergence: coreflow::flow::Divergence::Hutchinson { seed: 1 },
                ..Default::default()
            },
        ),
    ] {
        let mut mem = MemBuffer::new(likelihood::log_prob_scratch(&net, n, &opts));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("d{dim}_{name}_n{n}"), |b| {
            b.iter(|| {
                likelihood::log_prob(
                    &net,
                    &opts,
                    0,
                    x.as_ref(),
                    &mut out,
                    MemStack::new(&mut mem),
                )
                .unwrap();
                black_box(out[0])
            })
        });
    }
    g.finish();
}

criterion_group!(benches, train_step, sample, log_prob);
criterion_main!(benches);
