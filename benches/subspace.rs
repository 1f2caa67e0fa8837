//! Subspace fit at N = 1000, 200 x 200, r = s = 20 (C order, one thread):
//! HOSVD initialisation, the whole fit (HOOI to convergence), and the
//! projection of all samples to cores.

use coreflow::numerics::{self, MemBuffer, MemStack, Par};
use coreflow::reduce::LocalReducer;
use coreflow::subspace::{self, SubspaceOptions};
use coreflow::MatrixBatch;
use criterion::{criterion_group, criterion_main, Criterion};
use faer::Mat;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::hint::black_box;
use std::time::Duration;

const N: usize = 1000;
const M: usize = 200;
const R: usize = 20;

/// Box–Muller Gaussian draws.
fn gaussians(len: usize, seed: u64) -> Vec<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut uniform = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (0..len)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect()
}

/// `X_i = U* C_i V*^T + 0.01 E_i` with decaying core scales.
fn planted() -> Vec<f64> {
    let g = gaussians(2 * M * R, 1);
    let orth = |part: &[f64]| {
        let mut q = Mat::from_fn(M, R, |i, j| part[i + M * j]);
        let mut buf = MemBuffer::new(numerics::retract_qr_scratch(M, R, Par::Seq));
        numerics::retract_qr(q.as_mut(), Par::Seq, MemStack::new(&mut buf));
        q
    };
    let (u, v) = (orth(&g[..M * R]), orth(&g[M * R..]));
    let cores = gaussians(N * R * R, 2);
    let noise = gaussians(N * M * M, 3);
    let mut data = vec![0.0; N * M * M];
    for i in 0..N {
        let c = Mat::from_fn(R, R, |j, k| {
            cores[i * R * R + j + R * k] / ((j + 1) as f64 * (k + 1) as f64).sqrt()
        });
        let x = &u * &c * v.transpose();
        for a in 0..M {
            for b in 0..M {
                let idx = (i * M + a) * M + b;
                data[idx] = x[(a, b)] + 0.01 * noise[idx];
            }
        }
    }
    data
}

fn bench(c: &mut Criterion) {
    let data = planted();
    let batch = MatrixBatch::from_c_order(&data, N, M, M).unwrap();
    let par = Par::Seq;
    let opts = SubspaceOptions {
        rank_rows: R,
        rank_cols: R,
        threads: 1,
        ..Default::default()
    };
    let mut group = c.benchmark_group("subspace_n1000_200x200_r20");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    group.bench_function("hosvd_init", |b| {
        let mut row_vecs = Mat::<f64>::zeros(M, M);
        let mut col_vecs = Mat::<f64>::zeros(M, M);
        let (mut rv, mut cv) = (vec![0.0; M], vec![0.0; M]);
        let mut buf = MemBuffer::new(subspace::hosvd_init_scratch(M, M, par));
        b.iter(|| {
            subspace::hosvd_init(
                &batch,
                None,
                row_vecs.as_mut(),
                &mut rv,
                col_vecs.as_mut(),
                &mut cv,
                &LocalReducer,
                par,
                MemStack::new(&mut buf),
            )
            .unwrap();
            black_box(rv[0])
        })
    });

    group.bench_function("fit_hooi", |b| {
        b.iter(|| {
            let fit = subspace::fit(&batch, &opts, &LocalReducer, &mut |_, _, _| true).unwrap();
            black_box(fit.objective)
        })
    });

    let fit = subspace::fit(&batch, &opts, &LocalReducer, &mut |_, _, _| true).unwrap();
    group.bench_function("project_cores", |b| {
        let mut cores = vec![0.0; N * R * R];
        let mut buf = MemBuffer::new(subspace::project_cores_scratch(M, M, R, R, par));
        b.iter(|| {
            subspace::project_cores(
                &batch,
                None,
                fit.u.as_ref(),
                fit.v.as_ref(),
                &mut cores,
                par,
                MemStack::new(&mut buf),
            )
            .unwrap();
            black_box(cores[0])
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
