//! The principal-component core model and the low-rank core prior: the same
//! numbers as the dense formulas they replace, a flow block of as many
//! components as the cores have directions of variation, and storage of
//! `d x min(d, N)` numbers.

mod common;

use common::{orthonormal, Rng};
use coreflow::completion::{complete_one, complete_one_scratch, CorePrior, Observed};
use coreflow::core_model::{CoreModel, CoreModelChoice, CoreModelKind, FlowOptions};
use coreflow::datasets::{planted_low_rank, PlantedSpec};
use coreflow::flow::ode::SolverOptions;
use coreflow::numerics::{MemBuffer, MemStack, Par};
use coreflow::pca::{principal_components, shrinkage_intensity};
use coreflow::reduce::LocalReducer;
use coreflow::{MatrixBatch, Model};
use faer::prelude::Solve;
use faer::{Mat, MatRef, Side};

/// `n` cores in `R^d`: `mu + sum_j z_j g_j / (1 + j)` over `rank` fixed
/// random directions `g_j` (seed `dirs`) plus isotropic noise of standard
/// deviation `noise`; `seed` draws the samples. Mean, directions and noise
/// live in the first `support` coordinates (the others are exactly 0).
fn cores_in(
    n: usize,
    d: usize,
    support: usize,
    rank: usize,
    noise: f64,
    dirs: u64,
    seed: u64,
) -> Mat<f64> {
    let mut rd = Rng::new(dirs);
    let g = Mat::from_fn(d, rank, |c, _| if c < support { rd.normal() } else { 0.0 });
    let mu: Vec<f64> = (0..d)
        .map(|c| if c < support { rd.normal() } else { 0.0 })
        .collect();
    let mut rs = Rng::new(seed);
    let mut x = Mat::<f64>::zeros(n, d);
    for i in 0..n {
        let z: Vec<f64> = (0..rank).map(|_| rs.normal()).collect();
        for c in 0..d {
            let e = if c < support {
                noise * rs.normal()
            } else {
                0.0
            };
            let mut v = mu[c] + e;
            for (j, zj) in z.iter().enumerate() {
                v += zj * g[(c, j)] / (1.0 + j as f64);
            }
            x[(i, c)] = v;
        }
    }
    x
}

/// [`cores_in`] with every coordinate in the support.
fn cores(n: usize, d: usize, rank: usize, noise: f64, dirs: u64, seed: u64) -> Mat<f64> {
    cores_in(n, d, d, rank, noise, dirs, seed)
}

/// `x + noise N(0, I)`, seeded.
fn jitter(x: &Mat<f64>, noise: f64, seed: u64) -> Mat<f64> {
    let mut rng = Rng::new(seed);
    Mat::from_fn(x.nrows(), x.ncols(), |i, j| {
        x[(i, j)] + noise * rng.normal()
    })
}

/// Points in the affine span of the rows of `x`: `mean + sum_i w_i (x_i - mean)`.
fn in_span(x: &Mat<f64>, count: usize, seed: u64) -> Mat<f64> {
    let (n, d) = x.shape();
    let (mean, _) = moments(x.as_ref());
    let mut rng = Rng::new(seed);
    let w = Mat::from_fn(count, n, |_, _| rng.normal() / (n as f64).sqrt());
    let c = Mat::from_fn(n, d, |i, j| x[(i, j)] - mean[j]);
    let mut out = &w * &c;
    for i in 0..count {
        for j in 0..d {
            out[(i, j)] += mean[j];
        }
    }
    out
}

/// Mean and sample covariance (`1 / (N - 1)`) of the rows.
fn moments(x: MatRef<'_, f64>) -> (Vec<f64>, Mat<f64>) {
    let (n, d) = x.shape();
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| x[(i, j)]).sum::<f64>() / n as f64)
        .collect();
    let c = Mat::from_fn(n, d, |i, j| x[(i, j)] - mean[j]);
    let cov = c.transpose() * &c * faer::Scale(1.0 / (n as f64 - 1.0));
    (mean, cov)
}

/// `y^T sigma^-1 y` by a dense Cholesky solve with one step of iterative
/// refinement (the ridge makes `sigma` ill-conditioned, `cond ~ 1e7`, and a
/// plain solve would be the less accurate side of the comparison).
fn dense_quad(sigma: &Mat<f64>, y: &Mat<f64>) -> f64 {
    let llt = sigma.llt(Side::Lower).unwrap();
    let x0 = llt.solve(y);
    let r = y - sigma * &x0;
    let x = &x0 + llt.solve(&r);
    (y.transpose() * &x)[(0, 0)]
}

/// `log N(x; mean, sigma)` by a dense Cholesky factor of `sigma`.
fn dense_log_density(x: &[f64], mean: &[f64], sigma: &Mat<f64>) -> f64 {
    let d = x.len();
    let llt = sigma.llt(Side::Lower).unwrap();
    let l = llt.L();
    let log_det: f64 = (0..d).map(|j| 2.0 * l[(j, j)].ln()).sum();
    let y = Mat::from_fn(d, 1, |j, _| x[j] - mean[j]);
    -0.5 * (d as f64 * (2.0 * std::f64::consts::PI).ln() + log_det + dense_quad(sigma, &y))
}

/// The Ledoit–Wolf intensity of the components `from..` of the rows of `x`.
fn shrinkage(x: &Mat<f64>, from: usize) -> f64 {
    let pcs = principal_components(x.as_ref(), &LocalReducer, Par::Seq).unwrap();
    shrinkage_intensity(x.as_ref(), &pcs, from, &LocalReducer, Par::Seq).unwrap()
}

fn log_probs(model: &CoreModel, x: MatRef<'_, f64>) -> Vec<f64> {
    let s = SolverOptions::default();
    let mut out = vec![0.0; x.nrows()];
    let mut mem = MemBuffer::new(model.log_prob_scratch(x.nrows(), &s));
    model
        .log_prob(&s, x, &mut out, MemStack::new(&mut mem))
        .unwrap();
    out
}

fn gaussian_opts() -> FlowOptions {
    FlowOptions {
        core_model: CoreModelChoice::Gaussian,
        steps: 0,
        holdout_fraction: 0.0,
        threads: 1,
        ..FlowOptions::default()
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0)
}

// Accuracy of the dense reference. With the ridge, `cond(Sigma) = lambda_max
// / delta ~ 1e7` here, and a dense solve computes `y^T Sigma^-1 y` to about
// `eps x cond ~ 1e-9` (relative) when `y` has a part outside the span of the
// training cores (`d > N`): the dense side is then the less accurate one.
// The comparisons at 1e-10 use cases where the dense value is accurate to
// that: `d <= N`; points in the span of the training cores; and training
// cores supported on a coordinate subspace, where the dense Cholesky factor
// is block-diagonal and the part outside the span exact. Points outside the
// span of general-position cores are compared at 1e-8.

#[test]
fn the_gaussian_core_model_has_the_dense_log_density() {
    // (N, d, support, tolerance for points outside the span):
    // d <= N (complete basis), d > N (range finder, q = N) on a coordinate
    // subspace and in general position.
    for (n, d, support, off_span_tol) in
        [(60, 12, 12, 1e-10), (10, 24, 9, 1e-10), (10, 24, 24, 1e-8)]
    {
        let train = cores_in(n, d, support, 4, 0.05, 1, 2);
        let model = CoreModel::fit(train.as_ref(), &gaussian_opts(), &mut |_, _, _| true).unwrap();
        assert_eq!(model.kind(), CoreModelKind::Gaussian);
        assert_eq!(model.components(), d.min(n));
        // Fewer than 10 d cores: N(mu, (1 - alpha) Cov + delta I) with the
        // Ledoit–Wolf intensity alpha and delta = max(alpha, 1e-6) x the
        // mean variance.
        let alpha = shrinkage(&train, 0);
        assert!(alpha > 0.0 && alpha < 1.0, "{alpha}");
        let (mean, mut sigma) = moments(train.as_ref());
        let trace: f64 = (0..d).map(|j| sigma[(j, j)]).sum();
        let delta = alpha.max(1e-6) * trace / d as f64;
        assert!(close(model.to_parts().ridge, delta, 1e-12));
        sigma *= faer::Scale(1.0 - alpha);
        for j in 0..d {
            sigma[(j, j)] += delta;
        }
        let fresh = jitter(&cores_in(20, d, support, 4, 0.05, 1, 3), 0.05, 4);
        let span = in_span(&train, 20, 5);
        for (x, tol) in [(&train, 1e-10), (&span, 1e-10), (&fresh, off_span_tol)] {
            let lp = log_probs(&model, x.as_ref());
            for (i, v) in lp.iter().enumerate() {
                let row: Vec<f64> = (0..d).map(|j| x[(i, j)]).collect();
                let want = dense_log_density(&row, &mean, &sigma);
                assert!(
                    close(*v, want, tol),
                    "n {n}, d {d}, support {support}, row {i}: {v} vs {want}"
                );
            }
        }
    }
}

#[test]
fn the_gaussian_block_of_a_flow_model_has_the_dense_log_density() {
    // The flow takes the 2 leading components; the Gaussian block is the
    // rest of N(mu, Cov + delta I): moving a core within the block changes
    // its log-density as the dense Gaussian restricted to the block does.
    for (n, d, support, tol) in [(60, 12, 12, 1e-10), (10, 24, 9, 1e-10), (10, 24, 24, 1e-8)] {
        let train = cores_in(n, d, support, 5, 0.05, 4, 5);
        let opts = FlowOptions {
            core_model: CoreModelChoice::Flow,
            flow_max_dim: 2,
            steps: 5,
            hidden: 8,
            layers: 1,
            time_freqs: 2,
            moment_samples: 50,
            holdout_fraction: 0.0,
            threads: 1,
            ..FlowOptions::default()
        };
        let model = CoreModel::fit(train.as_ref(), &opts, &mut |_, _, _| true).unwrap();
        assert_eq!(model.flow_dim(), 2);
        let parts = model.to_parts();
        let q = parts.variances.len();
        let basis = MatRef::from_column_major_slice(&parts.basis, d, q);
        // The block is shrunk toward its own mean variance.
        let alpha = shrinkage(&train, 2);
        let (mean, sigma) = moments(train.as_ref());
        let mut sigma = sigma * faer::Scale(1.0 - alpha);
        for j in 0..d {
            sigma[(j, j)] += parts.ridge;
        }
        // Projector onto the block: I - Q_f Q_f^T.
        let qf = basis.subcols(0, 2);
        let proj = Mat::<f64>::identity(d, d) - qf * qf.transpose();
        let quad = |x: &[f64]| {
            let y = Mat::from_fn(d, 1, |j, _| x[j] - mean[j]);
            dense_quad(&sigma, &(&proj * &y))
        };
        let fresh = cores_in(10, d, support, 5, 0.05, 4, 6);
        let moved = jitter(&fresh, 0.3, 7);
        // Keep the flow scores: moved = fresh + (I - Q_f Q_f^T) (moved - fresh).
        let diff = &moved - &fresh;
        let moved = &fresh + &diff * &proj;
        let (a, b) = (
            log_probs(&model, fresh.as_ref()),
            log_probs(&model, moved.as_ref()),
        );
        for i in 0..10 {
            let xf: Vec<f64> = (0..d).map(|j| fresh[(i, j)]).collect();
            let xm: Vec<f64> = (0..d).map(|j| moved[(i, j)]).collect();
            let want = -0.5 * (quad(&xm) - quad(&xf));
            let got = b[i] - a[i];
            assert!(
                close(got, want, tol),
                "n {n}, d {d}, support {support}, row {i}: {got} vs {want}"
            );
        }
    }
}

/// `vec(U C V^T)` (row-major m x n) for the column-major core vector `c`.
fn decode(u: &Mat<f64>, v: &Mat<f64>, c: &[f64]) -> Vec<f64> {
    let (r, s) = (u.ncols(), v.ncols());
    let x = u * MatRef::from_column_major_slice(c, r, s) * v.transpose();
    let (m, n) = (u.nrows(), v.nrows());
    (0..m * n).map(|k| x[(k / n, k % n)]).collect()
}

#[test]
fn the_map_completion_equals_the_dense_solve() {
    // d = 12 <= N = 40 and d = 24 > N = 10.
    for (n_train, r, s) in [(40, 3, 4), (10, 4, 6)] {
        let (m, n) = (14, 12);
        let d = r * s;
        let mut rng = Rng::new(11);
        let (u, v) = (orthonormal(m, r, &mut rng), orthonormal(n, s, &mut rng));
        let train = cores(n_train, d, 5, 0.05, 12, 13);
        // Noise variance 0.05 per entry (residual 5 over 100 entries).
        let prior =
            CorePrior::from_cores(train.as_ref(), 5.0, 100.0, m * n, &LocalReducer, Par::Seq)
                .unwrap();
        assert_eq!(prior.components(), d.min(n_train));
        assert_eq!(prior.noise_var, 0.05);
        let fresh = cores(1, d, 5, 0.05, 12, 14);
        let c_true: Vec<f64> = (0..d).map(|j| fresh[(0, j)]).collect();
        let y: Vec<f64> = decode(&u, &v, &c_true)
            .iter()
            .map(|x| x + 0.2 * rng.normal())
            .collect();
        let mask: Vec<u8> = (0..m * n).map(|_| (rng.uniform() < 0.5) as u8).collect();
        let batch = MatrixBatch::from_c_order(&y, 1, m, n)
            .unwrap()
            .with_mask(&mask)
            .unwrap();
        let mut out = Mat::<f64>::zeros(m, n);
        let mut mem = MemBuffer::new(complete_one_scratch(m, n, r, s, prior.components()));
        complete_one(
            u.as_ref(),
            v.as_ref(),
            None,
            &prior,
            None,
            batch.sample(0),
            Observed::Mask(batch.mask(0).unwrap()),
            out.as_mut(),
            MemStack::new(&mut mem),
        )
        .unwrap();

        // Dense: Sigma = Cov + delta I, S = Sigma^(1/2) by eigendecomposition,
        // A the m n x d decoding matrix, P the mask;
        // (I + S A^T P A S / s2) z = S A^T P (y - A mu) / s2, c = mu + S z.
        let (mean, mut sigma) = moments(train.as_ref());
        for j in 0..d {
            sigma[(j, j)] += prior.ridge;
        }
        let evd = sigma.self_adjoint_eigen(Side::Lower).unwrap();
        let w = evd.U();
        let sv = evd.S();
        let sqrt_sigma =
            w * Mat::from_fn(d, d, |i, j| if i == j { sv[i].sqrt() } else { 0.0 }) * w.transpose();
        let a = Mat::from_fn(m * n, d, |k, j| {
            let mut e = vec![0.0; d];
            e[j] = 1.0;
            decode(&u, &v, &e)[k] * mask[k] as f64
        });
        let s2 = prior.noise_var;
        let ys = Mat::from_fn(m * n, 1, |k, _| y[k] * mask[k] as f64);
        let mu = Mat::from_fn(d, 1, |j, _| mean[j]);
        let sa = &sqrt_sigma * a.transpose();
        let lhs = Mat::<f64>::identity(d, d) + &sa * sa.transpose() * faer::Scale(1.0 / s2);
        let rhs = &sa * (&ys - &a * &mu) * faer::Scale(1.0 / s2);
        let z = lhs.partial_piv_lu().solve(&rhs);
        let c = &mu + &sqrt_sigma * &z;
        let c: Vec<f64> = (0..d).map(|j| c[(j, 0)]).collect();
        let pred = decode(&u, &v, &c);
        let scale = pred.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        for k in 0..m * n {
            let (i, j) = (k / n, k % n);
            if mask[k] == 0 {
                assert!(
                    (out[(i, j)] - pred[k]).abs() <= 1e-10 * scale,
                    "d {d}, N {n_train}, entry {k}: {} vs {}",
                    out[(i, j)],
                    pred[k]
                );
            } else {
                assert_eq!(out[(i, j)].to_bits(), y[k].to_bits());
            }
        }
    }
}

#[test]
fn the_flow_block_counts_principal_components_not_coordinates() {
    // Four non-Gaussian latent coordinates (a mixture of five centres)
    // spread by a random rotation over all 30 core coordinates, plus tiny
    // noise: every coordinate carries variance, four components carry it
    // all.
    let (n, d, k_true) = (300, 30, 4);
    let mut rng = Rng::new(21);
    let rot = orthonormal(d, k_true, &mut rng);
    let centres = [
        [2.0, 0.0, 1.0, -1.0],
        [-2.0, 1.0, 0.0, 0.5],
        [0.0, -2.0, -1.0, 1.0],
        [1.0, 1.5, 2.0, -2.0],
        [-1.0, -1.0, 1.5, 2.0],
    ];
    // Five centres span all four latent directions (four would span three,
    // and the fourth direction would hold only the isotropic spread, a
    // Gaussian below a gap that the noise-floor rule leaves out).
    let latent = Mat::from_fn(n, k_true, |i, j| centres[i % 5][j] + 0.3 * rng.normal());
    let noise = Mat::from_fn(n, d, |_, _| 1e-3 * rng.normal());
    let train = &latent * rot.transpose() + noise;
    // The coordinates ordered by variance need many more than four to hold
    // 0.999 of it.
    let (_, cov) = moments(train.as_ref());
    let mut var: Vec<f64> = (0..d).map(|j| cov[(j, j)]).collect();
    let total: f64 = var.iter().sum();
    var.sort_by(|a, b| b.total_cmp(a));
    let mut acc = 0.0;
    let coords = var
        .iter()
        .take_while(|v| {
            let before = acc;
            acc += *v;
            before < 0.999 * total
        })
        .count();
    assert!(coords > 20, "{coords} coordinates");
    let opts = FlowOptions {
        steps: 20,
        hidden: 16,
        layers: 1,
        time_freqs: 2,
        moment_samples: 100,
        holdout_fraction: 0.0,
        threads: 1,
        ..FlowOptions::default()
    };
    let model = CoreModel::fit(train.as_ref(), &opts, &mut |_, _, _| true).unwrap();
    let info = model.info();
    assert_eq!(info.flow_block, k_true);
    assert_eq!(model.flow_dim(), k_true);
    assert_eq!(model.kind(), CoreModelKind::Flow);
    assert!(info.flow_energy > 0.999, "{}", info.flow_energy);
    // With 3 k = 12 <= N, AUTO keeps the flow even at N = 12; the
    // coordinate rule (k > 20) would have needed N >= 60.
    let small = CoreModel::fit(train.as_ref().subrows(0, 12), &opts, &mut |_, _, _| true).unwrap();
    assert_eq!(small.info().flow_block, k_true);
    assert_eq!(small.kind(), CoreModelKind::Flow);
}

#[test]
fn storage_is_d_times_n_when_the_cores_outnumber_the_samples() {
    // r = s = 40: d = 1600 core coordinates from N = 50 matrices.
    let (count, m, n, r) = (50, 64, 64, 40);
    let mut spec = PlantedSpec::new(count, m, n, 3, 3, 31);
    spec.noise = 1e-2;
    let data = planted_low_rank(&spec).unwrap();
    let batch = MatrixBatch::from_c_order(&data.data.data, count, m, n).unwrap();
    let d = r * r;
    for core_model in [CoreModelChoice::Gaussian, CoreModelChoice::Flow] {
        let opts = common::large_core_options(r, core_model);
        let model = Model::fit(&batch, &opts).unwrap();
        let prior = model.core_prior();
        assert_eq!(prior.mean.len(), d);
        assert_eq!(prior.basis.shape(), (d, count));
        assert_eq!(prior.variances.len(), count);
        let core = model.core_model().unwrap();
        let parts = core.to_parts();
        // The default hold-out chooses and scores on 40 training cores;
        // the model is then refitted on all 50.
        let n_t = core.info().train_count;
        assert_eq!(n_t, 50);
        assert_eq!(core.info().holdout_count, 10);
        assert_eq!(core.components(), n_t);
        assert_eq!(parts.basis.len(), d * n_t);
        assert_eq!(parts.variances.len(), n_t);
        assert_eq!(parts.mean.len(), d);
        if let Some(f) = &parts.flow {
            assert_eq!(f.scale.len(), 4);
            assert_eq!(f.mm_matrix.len(), 16);
        }
        // The model file: U, V, two d x q bases and small change, far from
        // one d x d matrix (20 MB).
        let bytes = model.to_bytes().len();
        let budget = 8 * (d * (count + n_t + 2) + (m + n) * r) + 64 * 1024;
        assert!(bytes <= budget, "{bytes} bytes > {budget}");
        assert!(bytes < 8 * d * d / 4);
        // Sampling, scoring and completion work at this size.
        let so = SolverOptions::default();
        let mut out = vec![0.0; 3 * m * n];
        let mut ob = coreflow::MatrixBatchMut::from_c_order(&mut out, 3, m, n).unwrap();
        let req = model
            .sample_scratch(3, &so)
            .or(model.log_prob_scratch(3, &so))
            .or(model.complete_scratch(3));
        let mut buf = MemBuffer::new(req);
        model
            .sample(&so, 1, 0, &mut ob, MemStack::new(&mut buf))
            .unwrap();
        let gen = MatrixBatch::from_c_order(&out, 3, m, n).unwrap();
        let mut lp = vec![0.0; 3];
        model
            .log_prob(&so, &gen, &mut lp, None, MemStack::new(&mut buf))
            .unwrap();
        assert!(lp.iter().all(|x| x.is_finite()));
        // The buffers stay O(d) per row, far from d x d.
        let ws = req.unaligned_bytes_required();
        assert!(ws < 8 * d * d / 4, "workspace {ws} bytes");
    }
}
