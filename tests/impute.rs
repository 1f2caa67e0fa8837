//! Multiple imputation through the public Rust API: the exact posteriors of
//! the Gaussian and mixture kinds against dense reference formulas,
//! determinism, threads, the flow's importance resampling and argument
//! checks.

use coreflow::core_model::{CoreModelChoice, CoreModelKind, FlowOptions};
use coreflow::flow::ode::SolverOptions;
use coreflow::model::ImputeReport;
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::rng;
use coreflow::{ErrorKind, FitOptions, ImputeLevel, Layout, MatrixBatch, MatrixBatchMut, Model};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// `count` matrices `U0 C V0^T + noise` (C-order), with `core(i, normals)`
/// giving the r x s core (column-major) of matrix `i`.
#[allow(clippy::too_many_arguments)]
fn generate(
    count: usize,
    u0: &Mat<f64>,
    v0: &Mat<f64>,
    noise: f64,
    seed: u64,
    core: impl Fn(&[f64]) -> Vec<f64>,
) -> Vec<f64> {
    generate_with(count, u0, v0, &|_, _| noise, None, seed, core)
}

/// As [`generate`], with noise of standard deviation `sd(a, b)` at entry
/// `(a, b)`, Gaussian or (with `dof`) Student-t scaled to that standard
/// deviation.
#[allow(clippy::too_many_arguments)]
fn generate_with(
    count: usize,
    u0: &Mat<f64>,
    v0: &Mat<f64>,
    sd: &dyn Fn(usize, usize) -> f64,
    dof: Option<f64>,
    seed: u64,
    core: impl Fn(&[f64]) -> Vec<f64>,
) -> Vec<f64> {
    let (m, r) = u0.shape();
    let (n, s) = v0.shape();
    let mut out = vec![0.0; count * m * n];
    let mut z = vec![0.0; r * s + 1 + m * n];
    for i in 0..count {
        rng::fill_normal(&mut rng::stream(seed, i as u64), &mut z);
        if let Some(nu) = dof {
            // Unit-variance Student-t noise.
            let mut t = rng::stream(seed ^ 0x7474, i as u64);
            for e in &mut z[r * s + 1..] {
                *e = rng::student_t(&mut t, nu) * ((nu - 2.0) / nu).sqrt();
            }
        }
        let c = core(&z[..r * s + 1]);
        let cm = Mat::from_fn(r, s, |a, b| c[a + b * r]);
        let x = u0 * cm * v0.transpose();
        for a in 0..m {
            for b in 0..n {
                out[i * m * n + a * n + b] = x[(a, b)] + sd(a, b) * z[r * s + 1 + a * n + b];
            }
        }
    }
    out
}

fn orthonormal(rows: usize, cols: usize, seed: u64) -> Mat<f64> {
    let mut z = vec![0.0; rows * cols];
    rng::fill_normal(&mut rng::stream(seed, 0), &mut z);
    let a = Mat::from_fn(rows, cols, |i, j| z[i + j * rows]);
    a.qr().compute_thin_Q()
}

fn fit(
    data: &[f64],
    count: usize,
    m: usize,
    n: usize,
    r: usize,
    s: usize,
    flow: FlowOptions,
) -> Model {
    let batch = MatrixBatch::from_c_order(data, count, m, n).unwrap();
    let opts = FitOptions {
        rank_rows: r,
        rank_cols: s,
        threads: 1,
        seed: 3,
        flow,
        ..FitOptions::default()
    };
    Model::fit(&batch, &opts).unwrap()
}

/// [`fit`] with the Gaussian core model.
fn fit_gaussian(data: &[f64], count: usize, m: usize, n: usize, r: usize, s: usize) -> Model {
    let flow = FlowOptions {
        core_model: CoreModelChoice::Gaussian,
        ..FlowOptions::default()
    };
    fit(data, count, m, n, r, s, flow)
}

/// `count` draws of the single matrix `y` (mask, or NaN when `mask` is
/// None) through a partial view of sample stride 0.
fn impute_repeated(
    model: &Model,
    y: &[f64],
    mask: Option<&[u8]>,
    seed: u64,
    first: u64,
    count: usize,
) -> Vec<f64> {
    let (m, n) = (model.info().rows, model.info().cols);
    let layout = Layout {
        count,
        rows: m,
        cols: n,
        sample_stride: 0,
        row_stride: n as isize,
        col_stride: 1,
    };
    let mut batch = MatrixBatch::new(y, 0, layout).unwrap();
    if let Some(mk) = mask {
        batch = batch.with_mask(mk).unwrap();
    }
    let mut out = vec![0.0; count * m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, count, m, n).unwrap();
    let so = SolverOptions::default();
    let mut buf = MemBuffer::new(model.impute_scratch(count, &so));
    model
        .impute(&so, seed, first, &batch, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    out
}

/// The core law of a fitted Gaussian- or mixture-kind model as dense
/// components `(weight, mean, covariance)` on the core.
fn dense_components(model: &Model) -> Vec<(f64, Vec<f64>, Mat<f64>)> {
    let p = model.core_model().unwrap().to_parts();
    let (d, q) = (p.dim, p.variances.len());
    let qm = Mat::from_fn(d, q, |i, j| p.basis[i + j * d]);
    let proj = &qm * qm.transpose();
    let rest = Mat::from_fn(d, d, |i, j| (if i == j { 1.0 } else { 0.0 }) - proj[(i, j)]);
    let mut out = Vec::new();
    let comps = p.mixture.as_ref().map_or(1, |mx| mx.weights.len());
    for c in 0..comps {
        let mut inner = Mat::<f64>::zeros(q, q);
        let mut a_mean = vec![0.0; q];
        let mut k = 0;
        let mut w = 1.0;
        if let Some(mx) = &p.mixture {
            k = mx.scale.len();
            w = mx.weights[c];
            let l = Mat::from_fn(k, k, |i, j| mx.chols[c * k * k + i + j * k]);
            let sc = &l * l.transpose();
            for i in 0..k {
                a_mean[i] = mx.scale[i] * mx.means[c * k + i];
                for j in 0..k {
                    inner[(i, j)] = mx.scale[i] * sc[(i, j)] * mx.scale[j];
                }
            }
        }
        for j in k..q {
            inner[(j, j)] = p.variances[j] + p.ridge;
        }
        let cov = &qm * &inner * qm.transpose() + &rest * faer::Scale(p.ridge);
        let am = Mat::from_fn(q, 1, |i, _| a_mean[i]);
        let shift = &qm * am;
        let mean = (0..d).map(|i| p.mean[i] + shift[(i, 0)]).collect();
        out.push((w, mean, cov));
    }
    out
}

/// The exact law of the missing entries of `y` (observed where `obs`):
/// components `(weight, mean, covariance)` over the missing entries in
/// row-major order, from dense Gaussian conditioning with the noise
/// variance `sigma^2 rho_a gamma_b` of the model's noise law. Exact for
/// Gaussian tails; with Student-t tails the missing entries' noise is
/// replaced by the Gaussian of its variance (the mixture test compares
/// only mode probabilities, which the small noise's tails do not move).
fn dense_conditional(model: &Model, y: &[f64], obs: &[bool]) -> Vec<(f64, Vec<f64>, Mat<f64>)> {
    let (m, n) = (model.info().rows, model.info().cols);
    let (u, v) = (model.u(), model.v());
    let r = u.ncols();
    let d = model.core_dim();
    let s2 = model.info().noise_variance;
    let law = model.noise();
    let var = |e: usize| s2 * law.row_profile()[e / n] * law.col_profile()[e % n];
    let var_h = |e: usize| s2 * law.variance_factor(e / n, e % n);
    let xbar = |a: usize, b: usize| model.mean().map_or(0.0, |mm| mm[(a, b)]);
    let row = |a: usize, b: usize| Mat::from_fn(1, d, |_, k| u[(a, k % r)] * v[(b, k / r)]);
    let (o_idx, h_idx): (Vec<usize>, Vec<usize>) = (0..m * n).partition(|&e| obs[e]);
    let ao = Mat::from_fn(o_idx.len(), d, |i, k| {
        row(o_idx[i] / n, o_idx[i] % n)[(0, k)]
    });
    let ah = Mat::from_fn(h_idx.len(), d, |i, k| {
        row(h_idx[i] / n, h_idx[i] % n)[(0, k)]
    });
    let yo = Mat::from_fn(o_idx.len(), 1, |i, _| {
        let (a, b) = (o_idx[i] / n, o_idx[i] % n);
        y[o_idx[i]] - xbar(a, b)
    });
    let noise_o = Mat::from_fn(o_idx.len(), o_idx.len(), |i, j| {
        if i == j {
            var(o_idx[i])
        } else {
            0.0
        }
    });
    let noise_h = Mat::from_fn(h_idx.len(), h_idx.len(), |i, j| {
        if i == j {
            var_h(h_idx[i])
        } else {
            0.0
        }
    });
    let mut comps = Vec::new();
    let mut top = f64::NEG_INFINITY;
    for (w, mean, cov) in dense_components(model) {
        let mu = Mat::from_fn(d, 1, |i, _| mean[i]);
        let marg = &ao * &cov * ao.transpose() + &noise_o;
        let llt = marg.llt(Side::Lower).unwrap();
        let resid = &yo - &ao * &mu;
        let solved = llt.solve(&resid);
        let quad = (resid.transpose() * &solved)[(0, 0)];
        let logdet: f64 = (0..o_idx.len()).map(|i| 2.0 * llt.L()[(i, i)].ln()).sum();
        let lw = w.ln() - 0.5 * (logdet + quad);
        top = top.max(lw);
        // Posterior of c, then of the missing entries.
        let gain =
            &cov * ao.transpose() * llt.solve(&Mat::<f64>::identity(o_idx.len(), o_idx.len()));
        let post_mean = &mu + &gain * &resid;
        let post_cov = &cov - &gain * &ao * &cov;
        let hm = &ah * &post_mean;
        let hc = &ah * &post_cov * ah.transpose() + &noise_h;
        let mean_h = (0..h_idx.len())
            .map(|i| hm[(i, 0)] + xbar(h_idx[i] / n, h_idx[i] % n))
            .collect();
        comps.push((lw, mean_h, hc));
    }
    let total: f64 = comps.iter().map(|c| (c.0 - top).exp()).sum();
    for c in &mut comps {
        c.0 = (c.0 - top).exp() / total;
    }
    comps
}

fn missing_values(draws: &[f64], j: usize, obs: &[bool]) -> Vec<f64> {
    let mn = obs.len();
    (0..mn)
        .filter(|&e| !obs[e])
        .map(|e| draws[j * mn + e])
        .collect()
}

#[test]
fn gaussian_kind_draws_match_the_exact_conditional_and_the_map_completion() {
    // White noise: a nearly flat fitted profile.
    gaussian_kind_against_the_exact_conditional(&|_, _| 0.1);
}

#[test]
fn with_a_noise_profile_draws_and_map_match_the_weighted_conditional() {
    // Row and column noise levels over a factor 30 in variance: the fitted
    // profile weights the observations, and the draws' mean, their
    // covariance and the MAP completion all match the dense conditional
    // with that noise (they coincide for the Gaussian kind).
    let rows: [f64; 8] = [0.3, 1.0, 0.2, 1.6, 0.5, 0.25, 1.2, 0.4];
    let cols = [1.0, 0.3, 0.5, 1.4, 0.35, 0.8];
    gaussian_kind_against_the_exact_conditional(&|a, b| 0.1 * (rows[a] * cols[b]).sqrt());
}

fn gaussian_kind_against_the_exact_conditional(sd: &dyn Fn(usize, usize) -> f64) {
    let (m, n, r, s) = (8, 6, 2, 2);
    let u0 = orthonormal(m, r, 1);
    let v0 = orthonormal(n, s, 2);
    // A correlated Gaussian core law.
    let law = |z: &[f64]| {
        vec![
            2.0 * z[0] + 1.0,
            z[0] + z[1],
            0.7 * z[2] - 0.5,
            0.4 * z[3] + 0.3 * z[1],
        ]
    };
    let data = generate_with(3000, &u0, &v0, sd, None, 11, law);
    let model = fit(
        &data,
        3000,
        m,
        n,
        r,
        s,
        FlowOptions {
            core_model: CoreModelChoice::Gaussian,
            ..FlowOptions::default()
        },
    );
    assert_eq!(model.core_model().unwrap().kind(), CoreModelKind::Gaussian);
    // The completion prior and the Gaussian kind's law coincide here
    // (enough cores per dimension for no shrinkage, complete data for no
    // noise cap): the same mean, components and ridge.
    let parts = model.core_model().unwrap().to_parts();
    let prior = model.core_prior();
    assert!((parts.ridge - prior.ridge).abs() <= 1e-12 * prior.ridge);
    for (a, b) in parts.variances.iter().zip(&prior.variances) {
        assert!((a - b).abs() <= 1e-10 * b.abs().max(1e-300), "{a} vs {b}");
    }
    for (a, b) in parts.mean.iter().zip(&prior.mean) {
        assert!((a - b).abs() <= 1e-12);
    }
    assert!(model.noise().is_gaussian(), "{:?}", model.noise());
    let y = generate_with(1, &u0, &v0, sd, None, 999, law);
    let mut obs = vec![true; m * n];
    for e in [0, 3, 7, 8, 14, 20, 21, 29, 33, 40, 41, 46, 47, 11] {
        obs[e] = false;
    }
    let mask: Vec<u8> = obs.iter().map(|&o| o as u8).collect();
    let exact = dense_conditional(&model, &y, &obs);
    assert_eq!(exact.len(), 1);
    let (_, mean, cov) = &exact[0];
    let k = mean.len();
    let draws_n = 4000;
    let draws = impute_repeated(&model, &y, Some(&mask), 7, 0, draws_n);
    let vals: Vec<Vec<f64>> = (0..draws_n)
        .map(|j| missing_values(&draws, j, &obs))
        .collect();
    // Observed entries come back bitwise.
    for j in [0, 1, draws_n - 1] {
        for e in 0..m * n {
            if obs[e] {
                assert_eq!(draws[j * m * n + e].to_bits(), y[e].to_bits());
            }
        }
    }
    let emp_mean: Vec<f64> = (0..k)
        .map(|i| vals.iter().map(|v| v[i]).sum::<f64>() / draws_n as f64)
        .collect();
    for i in 0..k {
        let se = (cov[(i, i)] / draws_n as f64).sqrt();
        assert!(
            (emp_mean[i] - mean[i]).abs() <= 4.5 * se,
            "entry {i}: mean {} vs exact {} (se {se})",
            emp_mean[i],
            mean[i]
        );
    }
    for i in 0..k {
        for j in 0..k {
            let c: f64 = vals
                .iter()
                .map(|v| (v[i] - emp_mean[i]) * (v[j] - emp_mean[j]))
                .sum::<f64>()
                / (draws_n - 1) as f64;
            let se = ((cov[(i, i)] * cov[(j, j)] + cov[(i, j)].powi(2)) / draws_n as f64).sqrt();
            assert!(
                (c - cov[(i, j)]).abs() <= 5.0 * se,
                "cov ({i}, {j}): {c} vs exact {} (se {se})",
                cov[(i, j)]
            );
        }
    }
    // The MAP completion is the exact conditional mean.
    let batch = MatrixBatch::from_c_order(&y, 1, m, n)
        .unwrap()
        .with_mask(&mask)
        .unwrap();
    let mut map = vec![0.0; m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut map, 1, m, n).unwrap();
    let mut buf = MemBuffer::new(model.complete_scratch(1));
    model
        .complete(&batch, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    let map_h = missing_values(&map, 0, &obs);
    for i in 0..k {
        assert!(
            (map_h[i] - mean[i]).abs() <= 1e-6 * (1.0 + mean[i].abs()),
            "MAP {} vs exact mean {}",
            map_h[i],
            mean[i]
        );
    }
}

/// Bimodal cores: C_00 = C_11 = +-3 (weights 0.3, 0.7) plus N(0, 0.3^2)
/// each, the other two coordinates N(0, 1), on the canonical directions.
fn bimodal_model() -> (Model, usize, usize) {
    let (m, n) = (6, 5);
    let u0 = Mat::from_fn(m, 2, |i, j| (i == j) as u8 as f64);
    let v0 = Mat::from_fn(n, 2, |i, j| (i == j) as u8 as f64);
    let law = |z: &[f64]| {
        let u = 0.5 * (1.0 + libm::erf(z[4] / std::f64::consts::SQRT_2));
        let mode = if u < 0.3 { 3.0 } else { -3.0 };
        vec![mode + 0.3 * z[0], z[1], z[2], mode + 0.3 * z[3]]
    };
    let data = generate(1500, &u0, &v0, 0.05, 21, law);
    let model = fit(
        &data,
        1500,
        m,
        n,
        2,
        2,
        FlowOptions {
            core_model: CoreModelChoice::Mixture,
            ..FlowOptions::default()
        },
    );
    assert_eq!(model.core_model().unwrap().kind(), CoreModelKind::Mixture);
    (model, m, n)
}

/// The probability that missing entry `i` exceeds `t` under the exact
/// mixture conditional.
fn exact_above(exact: &[(f64, Vec<f64>, Mat<f64>)], i: usize, t: f64) -> f64 {
    exact
        .iter()
        .map(|(w, mean, cov)| {
            let z = (mean[i] - t) / cov[(i, i)].sqrt();
            w * 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
        })
        .sum()
}

#[test]
fn mixture_kind_draws_cover_the_modes_in_the_exact_proportions() {
    let (model, m, n) = bimodal_model();
    let xbar = |a: usize, b: usize| model.mean().map_or(0.0, |mm| mm[(a, b)]);
    // A matrix of the +3 mode.
    let mut y = vec![0.0; m * n];
    y[0] = 3.1;
    y[n + 1] = 2.9;
    y[1] = 0.4;
    y[n] = -0.8;
    let draws_n = 4000;
    // Ambiguous: both mode entries missing (NaN marks them: no mask).
    let mut obs = vec![true; m * n];
    obs[0] = false;
    obs[n + 1] = false;
    obs[2 * n + 3] = false;
    let mut ya = y.clone();
    for e in 0..m * n {
        if !obs[e] {
            ya[e] = f64::NAN;
        }
    }
    let exact = dense_conditional(&model, &ya, &obs);
    // Missing entry 1 is (1, 1), the second mode entry.
    let t = xbar(1, 1);
    let p = exact_above(&exact, 1, t);
    assert!(p > 0.15 && p < 0.45, "the case must be ambiguous: {p}");
    let draws = impute_repeated(&model, &ya, None, 5, 0, draws_n);
    let above = (0..draws_n)
        .filter(|&j| missing_values(&draws, j, &obs)[1] > t)
        .count() as f64
        / draws_n as f64;
    let se = (p * (1.0 - p) / draws_n as f64).sqrt();
    assert!(
        (above - p).abs() <= 4.5 * se,
        "{above} of the draws above, exact {p}"
    );
    // Both mode entries move together in every draw.
    for j in 0..draws_n {
        let v = missing_values(&draws, j, &obs);
        assert_eq!(v[0] > xbar(0, 0), v[1] > t);
    }
    // Fixed: (0, 0) observed at +3.1, so (1, 1) stays in the + mode.
    let mut obs = vec![true; m * n];
    obs[n + 1] = false;
    obs[2 * n + 3] = false;
    let mask: Vec<u8> = obs.iter().map(|&o| o as u8).collect();
    let exact = dense_conditional(&model, &y, &obs);
    let p = exact_above(&exact, 0, t);
    assert!(p > 0.999, "{p}");
    let draws = impute_repeated(&model, &y, Some(&mask), 5, 0, draws_n);
    let above = (0..draws_n)
        .filter(|&j| missing_values(&draws, j, &obs)[0] > t)
        .count();
    assert_eq!(above, draws_n);
}

fn bits(x: &[f64]) -> Vec<u64> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn draws_depend_only_on_seed_and_index() {
    let (model, m, n) = bimodal_model();
    let mut y = vec![0.5; m * n];
    y[0] = f64::NAN;
    y[n + 1] = f64::NAN;
    y[7] = f64::NAN;
    let all = impute_repeated(&model, &y, None, 9, 0, 100);
    let a = impute_repeated(&model, &y, None, 9, 0, 37);
    let b = impute_repeated(&model, &y, None, 9, 37, 63);
    assert_eq!(bits(&all), bits(&[a, b].concat()));
    // 8 threads, each its own range and workspace.
    let chunks: Vec<Vec<f64>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let (model, y) = (&model, &y);
                let (lo, hi) = (t * 100 / 8, (t + 1) * 100 / 8);
                sc.spawn(move || impute_repeated(model, y, None, 9, lo as u64, hi - lo))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(bits(&all), bits(&chunks.concat()));
    // A partial with one copy per draw gives the same draws as stride 0.
    let copies = y.repeat(100);
    let batch = MatrixBatch::from_c_order(&copies, 100, m, n).unwrap();
    let mut out = vec![0.0; 100 * m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, 100, m, n).unwrap();
    let so = SolverOptions::default();
    let mut buf = MemBuffer::new(model.impute_scratch(100, &so));
    model
        .impute(&so, 9, 0, &batch, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    assert_eq!(bits(&all), bits(&out));
    // Another seed gives other draws.
    let other = impute_repeated(&model, &y, None, 10, 0, 100);
    assert_ne!(bits(&all), bits(&other));
}

#[test]
fn flow_kind_resamples_with_reported_effective_sample_size() {
    let (m, n) = (6, 5);
    let u0 = Mat::from_fn(m, 2, |i, j| (i == j) as u8 as f64);
    let v0 = Mat::from_fn(n, 2, |i, j| (i == j) as u8 as f64);
    let law = |z: &[f64]| {
        let mode = if z[4] < 0.0 { 3.0 } else { -3.0 };
        vec![mode + 0.3 * z[0], z[1], z[2], mode + 0.3 * z[3]]
    };
    let data = generate(600, &u0, &v0, 0.05, 31, law);
    let model = fit(
        &data,
        600,
        m,
        n,
        2,
        2,
        FlowOptions {
            core_model: CoreModelChoice::Flow,
            hidden: 64,
            layers: 2,
            steps: 3000,
            batch_size: 64,
            ..FlowOptions::default()
        },
    );
    assert_eq!(model.core_model().unwrap().kind(), CoreModelKind::Flow);
    let xbar = |a: usize, b: usize| model.mean().map_or(0.0, |mm| mm[(a, b)]);
    let mut y = vec![0.0; m * n];
    y[0] = 3.1;
    y[n + 1] = f64::NAN;
    y[2 * n + 2] = f64::NAN;
    let count = 200;
    let layout = Layout {
        count,
        rows: m,
        cols: n,
        sample_stride: 0,
        row_stride: n as isize,
        col_stride: 1,
    };
    let batch = MatrixBatch::new(&y, 0, layout).unwrap();
    let mut out = vec![0.0; count * m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, count, m, n).unwrap();
    let so = SolverOptions::default();
    let mut buf = MemBuffer::new(model.impute_scratch(count, &so));
    let report = model
        .impute(&so, 1, 0, &batch, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    let props = coreflow::core_model::IMPUTE_PROPOSALS as f64;
    assert!(
        report.min_ess >= 1.0 && report.mean_ess <= props,
        "{report:?}"
    );
    // The observed +3.1 fixes the mode: the draws of (1, 1) stay in it.
    let stay = (0..count)
        .filter(|&j| out[j * m * n + n + 1] > xbar(1, 1))
        .count();
    assert!(stay as f64 >= 0.97 * count as f64, "{stay} of {count}");
    // Ambiguous: both mode entries missing; the modes have weight 1/2 each
    // in the generating law, and the draws must cover both.
    let mut ya = y.clone();
    ya[0] = f64::NAN;
    let batch = MatrixBatch::new(&ya, 0, layout).unwrap();
    let mut ob = MatrixBatchMut::from_c_order(&mut out, count, m, n).unwrap();
    let report = model
        .impute(&so, 2, 0, &batch, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    let plus = (0..count)
        .filter(|&j| out[j * m * n + n + 1] > xbar(1, 1))
        .count() as f64
        / count as f64;
    let between = (0..count)
        .filter(|&j| (out[j * m * n + n + 1] - xbar(1, 1)).abs() < 1.5)
        .count();
    eprintln!("flow, ambiguous mode: {plus} of the draws in the + mode, {between} between the modes; {report:?}");
    assert!(plus > 0.25 && plus < 0.75, "{plus} in the + mode");
    // The Gaussian proposal puts about a quarter of its draws between the
    // modes; the resampling must remove them (measured: none of 200, mean
    // effective sample size 8 of 64).
    assert!(between <= count / 20, "{between} draws between the modes");
}

#[test]
fn arguments_are_checked_and_out_is_untouched_on_failure() {
    let (model, m, n) = bimodal_model();
    let so = SolverOptions::default();
    let y = vec![0.0; 2 * m * n];
    let batch = MatrixBatch::from_c_order(&y, 2, m, n).unwrap();
    let mut buf = MemBuffer::new(model.impute_scratch(2, &so));
    // Count mismatch.
    let mut out = vec![7.0; m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, 1, m, n).unwrap();
    let e = model
        .impute(&so, 0, 0, &batch, &mut ob, MemStack::new(&mut buf))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    assert!(e.message().starts_with("out:"), "{}", e.message());
    // Shape mismatch.
    let yb = vec![0.0; 2 * (m + 1) * n];
    let bad = MatrixBatch::from_c_order(&yb, 2, m + 1, n).unwrap();
    let mut out2 = vec![7.0; 2 * m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut out2, 2, m, n).unwrap();
    let e = model
        .impute(&so, 0, 0, &bad, &mut ob, MemStack::new(&mut buf))
        .unwrap_err();
    assert!(e.message().starts_with("partial:"), "{}", e.message());
    // Index overflow.
    let e = model
        .impute(&so, 0, u64::MAX, &batch, &mut ob, MemStack::new(&mut buf))
        .unwrap_err();
    assert!(e.message().starts_with("first_index:"), "{}", e.message());
    // An infinite observed value.
    let mut yi = y.clone();
    yi[3] = f64::INFINITY;
    let inf = MatrixBatch::from_c_order(&yi, 2, m, n).unwrap();
    let e = model
        .impute(&so, 0, 0, &inf, &mut ob, MemStack::new(&mut buf))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NonFinite);
    // Too small a workspace.
    let mut small = MemBuffer::new(coreflow::numerics::StackReq::new::<f64>(8));
    let e = model
        .impute(&so, 0, 0, &batch, &mut ob, MemStack::new(&mut small))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Workspace);
    assert!(out2.iter().all(|&v| v == 7.0));
    // A geometry-only model cannot impute.
    let u0 = Mat::from_fn(m, 2, |i, j| (i == j) as u8 as f64);
    let v0 = Mat::from_fn(n, 2, |i, j| (i == j) as u8 as f64);
    let train = generate(40, &u0, &v0, 0.05, 41, |z: &[f64]| z[..4].to_vec());
    let geo = Model::fit(
        &MatrixBatch::from_c_order(&train, 40, m, n).unwrap(),
        &FitOptions {
            rank_rows: 2,
            rank_cols: 2,
            threads: 1,
            ..FitOptions::default().geometry_only()
        },
    )
    .unwrap();
    {
        let mut ob = MatrixBatchMut::from_c_order(&mut out2, 2, m, n).unwrap();
        let e = geo
            .impute(&so, 0, 0, &batch, &mut ob, MemStack::new(&mut buf))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }
}

/// Row and column standard-deviation factors over a factor 20 in variance
/// (not sorted, so that no basis vector lines up with them).
fn planted_profile(len: usize, phase: f64) -> Vec<f64> {
    (0..len)
        .map(|i| (1.5 * (2.3 * i as f64 + phase).sin()).exp())
        .collect()
}

fn fit_geometry(data: &[f64], count: usize, m: usize, n: usize, r: usize, s: usize) -> Model {
    let batch = MatrixBatch::from_c_order(data, count, m, n).unwrap();
    let opts = FitOptions {
        rank_rows: r,
        rank_cols: s,
        threads: 1,
        ..FitOptions::default().geometry_only()
    };
    Model::fit(&batch, &opts).unwrap()
}

#[test]
fn the_noise_profile_is_recovered_from_planted_row_and_column_variances() {
    let (m, n, r, s, count) = (24, 16, 2, 2, 2000);
    let u0 = orthonormal(m, r, 5);
    let v0 = orthonormal(n, s, 6);
    let (rho, gamma) = (planted_profile(m, 0.3), planted_profile(n, 1.1));
    let law = |z: &[f64]| vec![2.0 * z[0], 1.5 * z[1], z[2] + 0.5, 0.7 * z[3]];
    let sd = |a: usize, b: usize| 0.1 * (rho[a] * gamma[b]).sqrt();
    let data = generate_with(count, &u0, &v0, &sd, None, 7, law);
    let model = fit_geometry(&data, count, m, n, r, s);
    let noise = model.noise();
    // Gaussian noise keeps Gaussian tails.
    assert!(noise.is_gaussian(), "{noise:?}");
    assert_eq!(model.info().noise_dof, f64::INFINITY);
    assert_eq!(noise.tail_scale(), 1.0);
    // The residual of a matrix is `E - P E Q` (P, Q the projections on the
    // bases), of variance `rho_a gamma_b (1 - 2 h_a k_b) + ...` with
    // leverages h_a k_b of a few percent here: the planted profile is
    // recovered to about 10 %, well inside its factor-20 range per factor.
    let norm = |p: &[f64]| {
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        p.iter().map(|x| x / mean).collect::<Vec<_>>()
    };
    for (got, planted) in [
        (noise.row_profile(), norm(&rho)),
        (noise.col_profile(), norm(&gamma)),
    ] {
        let mean = got.iter().sum::<f64>() / got.len() as f64;
        assert!((mean - 1.0).abs() < 1e-12, "mean {mean}");
        for (k, (g, p)) in got.iter().zip(&planted).enumerate() {
            assert!((g / p - 1.0).abs() < 0.12, "entry {k}: {g} vs planted {p}");
        }
    }
    let spread = model.info().noise_profile_spread;
    assert!(spread > 100.0, "{spread}");
    // With 30 % of the training entries missing the profile comes from the
    // observed entries' residuals: the same to a few percent.
    let mask: Vec<u8> = {
        let mut pick = rng::stream(71, 0);
        (0..count * m * n)
            .map(|_| (rng::uniform(&mut pick) >= 0.3) as u8)
            .collect()
    };
    let masked = Model::fit(
        &MatrixBatch::from_c_order(&data, count, m, n)
            .unwrap()
            .with_mask(&mask)
            .unwrap(),
        &FitOptions {
            rank_rows: r,
            rank_cols: s,
            threads: 1,
            ..FitOptions::default().geometry_only()
        },
    )
    .unwrap();
    assert!(masked.info().masked && masked.noise().is_gaussian());
    for (a, b) in masked
        .noise()
        .row_profile()
        .iter()
        .chain(masked.noise().col_profile())
        .zip(noise.row_profile().iter().chain(noise.col_profile()))
    {
        assert!((a / b - 1.0).abs() < 0.06, "masked {a} vs complete {b}");
    }
    // The level stays the fitted noise variance.
    assert_eq!(model.info().noise_variance, model.core_prior().noise_var);
}

#[test]
fn heavy_tailed_noise_gets_student_t_tails_and_gaussian_noise_does_not() {
    let (m, n, r, s, count) = (20, 15, 2, 2, 1000);
    let u0 = orthonormal(m, r, 8);
    let v0 = orthonormal(n, s, 9);
    let law = |z: &[f64]| vec![2.0 * z[0], 1.5 * z[1], z[2], 0.7 * z[3]];
    for (dof, seed) in [(Some(3.0), 10), (Some(4.0), 11), (None, 12), (None, 13)] {
        let data = generate_with(count, &u0, &v0, &|_, _| 0.1, dof, seed, law);
        let model = fit_geometry(&data, count, m, n, r, s);
        let noise = model.noise();
        match dof {
            Some(nu) => {
                // The grid's neighbours of the planted law at most.
                assert!(
                    noise.dof() == nu || noise.dof() == if nu == 3.0 { 4.0 } else { 3.0 },
                    "planted {nu}: fitted {noise:?}"
                );
                let d = noise.dof();
                assert!((noise.tail_scale() - (d - 2.0) / d).abs() < 1e-15);
                assert_eq!(model.info().noise_dof, d);
            }
            None => {
                assert!(noise.is_gaussian(), "{noise:?}");
                assert_eq!(noise.tail_scale(), 1.0);
            }
        }
        // White noise: a nearly flat profile (less so with t3 tails, whose
        // per-row mean squares converge slowly: infinite fourth moment).
        let spread = model.info().noise_profile_spread;
        assert!(spread < if dof.is_some() { 4.0 } else { 1.5 }, "{spread}");
    }
}

#[test]
fn draws_of_heteroscedastic_heavy_tailed_noise_cover_at_the_nominal_rate() {
    let (m, n, r, s, count) = (20, 15, 2, 2, 1500);
    let u0 = orthonormal(m, r, 14);
    let v0 = orthonormal(n, s, 15);
    let (rho, gamma) = (planted_profile(m, 0.7), planted_profile(n, 2.0));
    let law = |z: &[f64]| vec![2.0 * z[0] + 1.0, 1.5 * z[1], z[2] - z[0], 0.7 * z[3]];
    let sd = |a: usize, b: usize| 0.2 * (rho[a] * gamma[b]).sqrt();
    let data = generate_with(count, &u0, &v0, &sd, Some(4.0), 16, law);
    let model = fit_gaussian(&data, count, m, n, r, s);
    let noise = model.noise();
    assert!(noise.dof().is_finite() && noise.dof() <= 6.0, "{noise:?}");
    let (tests, draws) = (40, 200);
    let held = generate_with(tests, &u0, &v0, &sd, Some(4.0), 17, law);
    // Student-t draws depend only on (seed, index): 100 = 37 + 63 bitwise,
    // and 4 threads give the same draws.
    {
        let y = &held[..m * n];
        let all = impute_repeated(&model, y, None, 3, 0, 100);
        let mut ya = y.to_vec();
        for e in (0..m * n).step_by(3) {
            ya[e] = f64::NAN;
        }
        let all = [all, impute_repeated(&model, &ya, None, 3, 0, 100)].concat();
        let a = impute_repeated(&model, &ya, None, 3, 0, 37);
        let b = impute_repeated(&model, &ya, None, 3, 37, 63);
        assert_eq!(bits(&all[100 * m * n..]), bits(&[a, b].concat()));
        let chunks: Vec<Vec<f64>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let (model, ya) = (&model, &ya);
                    sc.spawn(move || impute_repeated(model, ya, None, 3, t * 25, 25))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(bits(&all[100 * m * n..]), bits(&chunks.concat()));
    }
    let mut pick = rng::stream(18, 0);
    // Coverage of the central 90 % interval of the draws, over the missing
    // entries of rows of low and of high noise variance.
    let median = {
        let mut r2 = rho.clone();
        r2.sort_by(f64::total_cmp);
        r2[m / 2]
    };
    let (mut hit, mut total) = ([0usize; 2], [0usize; 2]);
    for t in 0..tests {
        let y = &held[t * m * n..(t + 1) * m * n];
        let mask: Vec<u8> = (0..m * n)
            .map(|_| (rng::uniform(&mut pick) >= 0.3) as u8)
            .collect();
        let out = impute_repeated(&model, y, Some(&mask), 19, t as u64 * 1000, draws);
        for e in (0..m * n).filter(|&e| mask[e] == 0) {
            let mut v: Vec<f64> = (0..draws).map(|j| out[j * m * n + e]).collect();
            v.sort_by(f64::total_cmp);
            let (lo, hi) = (v[draws / 20], v[draws - 1 - draws / 20]);
            let g = (rho[e / n] >= median) as usize;
            total[g] += 1;
            hit[g] += (y[e] >= lo && y[e] <= hi) as usize;
        }
    }
    let all = (hit[0] + hit[1]) as f64 / (total[0] + total[1]) as f64;
    eprintln!(
        "coverage {all:.3}; low-variance rows {:.3}, high-variance rows {:.3}; nu {}",
        hit[0] as f64 / total[0] as f64,
        hit[1] as f64 / total[1] as f64,
        noise.dof()
    );
    assert!((0.87..=0.93).contains(&all), "coverage {all}");
    for g in 0..2 {
        let c = hit[g] as f64 / total[g] as f64;
        assert!((0.86..=0.94).contains(&c), "group {g}: coverage {c}");
    }
}

/// `count` draws of the single matrix `y` at `level` (stride 0), with the
/// report.
fn impute_at(
    model: &Model,
    level: ImputeLevel,
    y: &[f64],
    mask: Option<&[u8]>,
    seed: u64,
    first: u64,
    count: usize,
) -> (Vec<f64>, ImputeReport) {
    let (m, n) = (model.info().rows, model.info().cols);
    let layout = Layout {
        sample_stride: 0,
        ..Layout::c_order(count, m, n)
    };
    let mut batch = MatrixBatch::new(y, 0, layout).unwrap();
    if let Some(mk) = mask {
        batch = batch.with_mask(mk).unwrap();
    }
    let mut out = vec![0.0; count * m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, count, m, n).unwrap();
    let so = SolverOptions::default();
    let mut buf = MemBuffer::new(model.impute_scratch(count, &so));
    let rep = model
        .impute_with_level(
            &so,
            level,
            seed,
            first,
            &batch,
            &mut ob,
            MemStack::new(&mut buf),
        )
        .unwrap();
    (out, rep)
}

#[test]
fn the_observed_level_recovers_the_noise_level_of_each_matrix() {
    let (m, n, r, s, count) = (20, 15, 2, 2, 1500);
    let u0 = orthonormal(m, r, 24);
    let v0 = orthonormal(n, s, 25);
    let law = |z: &[f64]| vec![2.0 * z[0] + 1.0, 1.5 * z[1], z[2] - z[0], 0.7 * z[3]];
    let sd = 0.2;
    let data = generate(count, &u0, &v0, sd, 26, law);
    let model = fit_gaussian(&data, count, m, n, r, s);
    let sigma = model.info().noise_variance.sqrt();
    let (tests, draws) = (160, 200);
    let mut pick = rng::stream(27, 0);
    // At the model's own level (held-out data of the training law), and at
    // 1.5 times its noise standard deviation (level 2.25).
    for (factor, seed) in [(1.0, 28), (1.5, 29)] {
        let held = generate(tests, &u0, &v0, sd * factor, seed, law);
        let (mut lambdas, mut hit, mut hit_fitted, mut total) = (vec![], 0, 0, 0);
        let mut mean_gap = 0.0;
        for t in 0..tests {
            let y = &held[t * m * n..(t + 1) * m * n];
            let mask: Vec<u8> = (0..m * n)
                .map(|_| (rng::uniform(&mut pick) >= 0.3) as u8)
                .collect();
            let first = t as u64 * 1000;
            let (obs, rep) = impute_at(
                &model,
                ImputeLevel::Observed,
                y,
                Some(&mask),
                30,
                first,
                draws,
            );
            let (fit_d, fit_rep) = impute_at(
                &model,
                ImputeLevel::Fitted,
                y,
                Some(&mask),
                30,
                first,
                draws,
            );
            assert_eq!(fit_rep.min_level, 1.0);
            // Stride 0: one matrix, one multiplier.
            assert!((rep.min_level - rep.mean_level).abs() <= 1e-12 * rep.mean_level);
            lambdas.push(rep.mean_level);
            for e in (0..m * n).filter(|&e| mask[e] == 0) {
                let covers = |out: &[f64]| {
                    let mut v: Vec<f64> = (0..draws).map(|j| out[j * m * n + e]).collect();
                    v.sort_by(f64::total_cmp);
                    let (lo, hi) = (v[draws / 20], v[draws - 1 - draws / 20]);
                    (y[e] >= lo && y[e] <= hi) as usize
                };
                total += 1;
                hit += covers(&obs);
                hit_fitted += covers(&fit_d);
                let mean = |out: &[f64]| {
                    (0..draws).map(|j| out[j * m * n + e]).sum::<f64>() / draws as f64
                };
                mean_gap += (mean(&obs) - mean(&fit_d)).powi(2);
            }
        }
        let lambda = lambdas.iter().sum::<f64>() / tests as f64;
        let (cov, cov_fitted) = (hit as f64 / total as f64, hit_fitted as f64 / total as f64);
        let gap = (mean_gap / total as f64).sqrt() / sigma;
        eprintln!(
            "noise x{factor}: lambda {lambda:.3} (planted {:.3}), coverage observed {cov:.3}, fitted {cov_fitted:.3}, rms gap of the draws' means {gap:.3} sigma",
            (sd * factor).powi(2) / (sigma * sigma)
        );
        // About 200 residual degrees of freedom per matrix: lambda's
        // relative standard error is sqrt(2 / 200) = 0.1 per matrix, 0.008
        // over 160; nu0 = 10 pseudo-observations at 1 pull lambda towards 1
        // by nu0 / (nu0 + 200) of its distance (2.28 -> 2.22).
        let planted = (sd * factor).powi(2) / (sigma * sigma);
        assert!(
            (lambda / planted - 1.0).abs() < 0.06,
            "lambda {lambda}, planted {planted}"
        );
        assert!((0.87..=0.93).contains(&cov), "coverage {cov}");
        if factor == 1.0 {
            assert!((0.87..=0.93).contains(&cov_fitted), "coverage {cov_fitted}");
            // The same draws' mean up to their sampling error (sigma /
            // sqrt(200) = 0.07 sigma per entry).
            assert!(gap < 0.1, "gap {gap}");
        } else {
            assert!(cov_fitted < 0.8, "fitted coverage {cov_fitted}");
        }
    }
}

#[test]
fn observed_level_draws_depend_only_on_seed_and_index() {
    let (model, m, n) = bimodal_model();
    let mut y = vec![0.5; m * n];
    y[0] = f64::NAN;
    y[n + 1] = f64::NAN;
    y[7] = f64::NAN;
    let lv = ImputeLevel::Observed;
    let (all, rep) = impute_at(&model, lv, &y, None, 9, 0, 100);
    assert!(rep.mean_level.is_finite() && rep.mean_level > 0.0);
    let (a, _) = impute_at(&model, lv, &y, None, 9, 0, 37);
    let (b, _) = impute_at(&model, lv, &y, None, 9, 37, 63);
    assert_eq!(bits(&all), bits(&[a, b].concat()));
    let chunks: Vec<Vec<f64>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let (model, y) = (&model, &y);
                sc.spawn(move || impute_at(model, lv, y, None, 9, t * 25, 25).0)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(bits(&all), bits(&chunks.concat()));
    // One copy per draw: the multiplier computed per copy, the same bits.
    let copies = y.repeat(100);
    let batch = MatrixBatch::from_c_order(&copies, 100, m, n).unwrap();
    let mut out = vec![0.0; 100 * m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, 100, m, n).unwrap();
    let so = SolverOptions::default();
    let mut buf = MemBuffer::new(model.impute_scratch(100, &so));
    let rep2 = model
        .impute_with_level(&so, lv, 9, 0, &batch, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    assert_eq!(bits(&all), bits(&out));
    assert_eq!(rep2.mean_level.to_bits(), rep.mean_level.to_bits());
    // The fitted level is Model::impute, bitwise.
    let (fitted, rep) = impute_at(&model, ImputeLevel::Fitted, &y, None, 9, 0, 100);
    assert_eq!(
        bits(&fitted),
        bits(&impute_repeated(&model, &y, None, 9, 0, 100))
    );
    assert_eq!((rep.min_level, rep.mean_level), (1.0, 1.0));
}

#[test]
fn draws_stay_within_the_noise_bound_and_the_training_range() {
    let (m, n, r, s, count) = (12, 10, 2, 2, 400);
    let u0 = orthonormal(m, r, 30);
    let v0 = orthonormal(n, s, 31);
    let law = |z: &[f64]| vec![2.0 * z[0], 1.5 * z[1], z[2], 0.7 * z[3]];
    let data = generate_with(count, &u0, &v0, &|_, _| 0.1, Some(3.0), 32, law);
    let model = fit_gaussian(&data, count, m, n, r, s);
    let info = model.info();
    let noise = model.noise();
    assert!(noise.dof() <= 4.0, "{noise:?}");
    // The range is the training data's, exactly.
    let (lo, hi) = data
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        });
    assert_eq!([info.data_min, info.data_max], [lo, hi]);
    assert_eq!(noise.range(), [lo, hi]);
    // The bound is the largest standardised residual of 48,000: far in the
    // tail of a unit-variance t3 (a few percent of it beyond 3), finite.
    let bound = info.noise_bound;
    assert!(bound.is_finite() && bound > 8.0, "{bound}");
    assert_eq!(bound, noise.bound());
    // One matrix with all entries but one observed: its core is pinned, so
    // the missing entry's draws are its prediction plus the noise. 20,000
    // unbounded t3 draws would pass the bound about 20,000 x 6e-5 = 1.2
    // times at bound 10 (more at smaller bounds); none does here.
    let held = generate_with(1, &u0, &v0, &|_, _| 0.1, None, 33, law);
    let mut y = held.clone();
    let e = 3 + 4 * n;
    y[e] = f64::NAN;
    let draws = 20_000;
    let out = impute_repeated(&model, &y, None, 34, 0, draws);
    let mut v: Vec<f64> = (0..draws).map(|j| out[j * m * n + e]).collect();
    v.sort_by(f64::total_cmp);
    let median = v[draws / 2];
    let sd =
        (model.core_prior().noise_var * noise.row_profile()[e / n] * noise.col_profile()[e % n])
            .sqrt();
    let widest = v
        .iter()
        .map(|x| (x - median).abs() / sd)
        .fold(0.0, f64::max);
    // The core's posterior adds a spread of a few percent of the noise's.
    assert!(widest <= 1.05 * bound, "widest {widest} vs bound {bound}");
    assert!(widest > 0.5 * bound.min(6.0), "widest {widest}");
    // A matrix far outside the training data: its prediction is beyond the
    // range, and the draws of its missing entries are censored to it.
    let mut far: Vec<f64> = held.iter().map(|x| 50.0 * x).collect();
    for k in (0..m * n).step_by(4) {
        far[k] = f64::NAN;
    }
    let out = impute_repeated(&model, &far, None, 35, 0, 200);
    let mut at_end = 0;
    for j in 0..200 {
        for k in 0..m * n {
            let x = out[j * m * n + k];
            if far[k].is_nan() {
                assert!((lo..=hi).contains(&x), "draw {j} entry {k}: {x}");
                at_end += (x == lo || x == hi) as usize;
            } else {
                assert_eq!(x.to_bits(), far[k].to_bits());
            }
        }
    }
    assert!(at_end > 0);
}
