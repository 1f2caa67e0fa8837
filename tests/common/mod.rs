//! Seeded test data shared by the integration tests.
#![allow(dead_code)]

use faer::Mat;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A seeded source of uniform and standard normal numbers.
pub struct Rng(Xoshiro256PlusPlus);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(Xoshiro256PlusPlus::seed_from_u64(seed))
    }
    pub fn uniform(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A random m x r matrix with orthonormal columns.
pub fn orthonormal(m: usize, r: usize, rng: &mut Rng) -> Mat<f64> {
    let g = Mat::from_fn(m, r, |_, _| rng.normal());
    g.qr().compute_thin_Q()
}

/// N planted matrices U* C_i V*^T + noise in C-order (N, m, n), with the truth.
pub struct Planted {
    pub data: Vec<f64>,
    pub u: Mat<f64>,
    pub v: Mat<f64>,
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
}

pub fn planted(
    count: usize,
    rows: usize,
    cols: usize,
    r: usize,
    s: usize,
    noise: f64,
    seed: u64,
) -> Planted {
    let mut rng = Rng::new(seed);
    let u = orthonormal(rows, r, &mut rng);
    let v = orthonormal(cols, s, &mut rng);
    let mut data = vec![0.0; count * rows * cols];
    for i in 0..count {
        // Decaying core scales give a clear spectrum.
        let c = Mat::from_fn(r, s, |a, b| {
            rng.normal() * (1.0 + (r * s - (a + b * r)) as f64)
        });
        let x = &u * &c * v.transpose();
        for a in 0..rows {
            for b in 0..cols {
                data[(i * rows + a) * cols + b] = x[(a, b)] + noise * rng.normal();
            }
        }
    }
    Planted {
        data,
        u,
        v,
        count,
        rows,
        cols,
    }
}

/// ||U U^T - W W^T|| / sqrt(2 r).
pub fn subspace_distance(u: faer::MatRef<f64>, w: faer::MatRef<f64>) -> f64 {
    let p = u * u.transpose() - w * w.transpose();
    p.norm_l2() / (2.0 * u.ncols() as f64).sqrt()
}

/// Fit options for the large-core tests (r = s = `rank`): a few HOOI
/// iterations and a tiny flow of at most 4 dimensions, so that the core
/// model's storage, not its training, is what the test sees.
pub fn large_core_options(
    rank: usize,
    core_model: coreflow::core_model::CoreModelChoice,
) -> coreflow::FitOptions {
    coreflow::FitOptions {
        rank_rows: rank,
        rank_cols: rank,
        threads: 1,
        subspace_max_iter: 5,
        flow: coreflow::core_model::FlowOptions {
            core_model,
            steps: 5,
            hidden: 8,
            layers: 1,
            time_freqs: 2,
            moment_samples: 50,
            flow_max_dim: 4,
            ..Default::default()
        },
        ..Default::default()
    }
}
