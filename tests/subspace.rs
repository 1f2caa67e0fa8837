//! Property tests of the subspace fit on seeded planted problems, golden
//! values, and one test per invalid option or input. Public API only.

use coreflow::numerics::{self, MemBuffer, MemStack, Par};
use coreflow::reduce::LocalReducer;
use coreflow::subspace::{self, fit, SubspaceFit, SubspaceMethod, SubspaceOptions};
use coreflow::{ErrorKind, Layout, MatrixBatch};
use faer::Mat;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Seeded uniform and Gaussian (Box–Muller) draws.
struct Rng(Xoshiro256PlusPlus, Option<f64>);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(Xoshiro256PlusPlus::seed_from_u64(seed), None)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.0.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f64 {
        if let Some(z) = self.1.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let rad = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.1 = Some(rad * s);
        rad * c
    }
    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }
}

/// Q factor of a Gaussian matrix: a random orthonormal basis.
fn orthonormal(rows: usize, cols: usize, rng: &mut Rng) -> Mat<f64> {
    let mut q = Mat::from_fn(rows, cols, |_, _| rng.gauss());
    let mut buf = MemBuffer::new(numerics::retract_qr_scratch(rows, cols, Par::Seq));
    numerics::retract_qr(q.as_mut(), Par::Seq, MemStack::new(&mut buf));
    q
}

#[derive(Copy, Clone, Debug)]
enum Core {
    /// Gaussian entries with scales decaying along both axes (distinct
    /// eigenvalues of the core Gram matrices).
    Gaussian,
    /// Uniform entries in [-1, 1] times the same scales.
    Uniform,
    /// Each entry nonzero with probability 0.3 (Gaussian), same scales.
    Sparse,
}

/// A planted problem in C order: `X_i = U* C_i V*^T + noise E_i`.
struct Planted {
    data: Vec<f64>,
    count: usize,
    rows: usize,
    cols: usize,
    u: Mat<f64>,
    v: Mat<f64>,
}

impl Planted {
    #[allow(clippy::too_many_arguments)]
    fn new(
        count: usize,
        rows: usize,
        cols: usize,
        r: usize,
        s: usize,
        noise: f64,
        core: Core,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let u = orthonormal(rows, r, &mut rng);
        let v = orthonormal(cols, s, &mut rng);
        let mut data = vec![0.0; count * rows * cols];
        let mut c = Mat::<f64>::zeros(r, s);
        for i in 0..count {
            for k in 0..s {
                for j in 0..r {
                    let scale = 1.0 / ((1.0 + j as f64) * (1.0 + 0.7 * k as f64));
                    c[(j, k)] = scale
                        * match core {
                            Core::Gaussian => rng.gauss(),
                            Core::Uniform => 2.0 * rng.uniform() - 1.0,
                            Core::Sparse => {
                                if rng.uniform() < 0.3 {
                                    rng.gauss()
                                } else {
                                    0.0
                                }
                            }
                        };
                }
            }
            let x = &u * &c * v.transpose();
            for a in 0..rows {
                for b in 0..cols {
                    data[(i * rows + a) * cols + b] = x[(a, b)] + noise * rng.gauss();
                }
            }
        }
        Self {
            data,
            count,
            rows,
            cols,
            u,
            v,
        }
    }

    fn batch(&self) -> MatrixBatch<'_> {
        MatrixBatch::from_c_order(&self.data, self.count, self.rows, self.cols).unwrap()
    }
}

/// The same samples in column-major `(rows, cols, count)` order.
fn to_col_major(data: &[f64], count: usize, rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; data.len()];
    for i in 0..count {
        for a in 0..rows {
            for b in 0..cols {
                out[a + rows * (b + cols * i)] = data[(i * rows + a) * cols + b];
            }
        }
    }
    out
}

/// `||Q Q^T - P P^T|| / sqrt(2 r)` for orthonormal Q, P of equal width
/// (formed explicitly: through `||Q^T P||` it would lose half the digits).
fn subspace_distance(q: &Mat<f64>, p: &Mat<f64>) -> f64 {
    let r = q.ncols() as f64;
    (q * q.transpose() - p * p.transpose()).norm_l2() / (2.0 * r).sqrt()
}

fn opts(r: usize, s: usize) -> SubspaceOptions {
    SubspaceOptions {
        rank_rows: r,
        rank_cols: s,
        threads: 1,
        ..Default::default()
    }
}

fn riemannian(r: usize, s: usize) -> SubspaceOptions {
    SubspaceOptions {
        method: SubspaceMethod::Riemannian,
        max_iter: 5000,
        ..opts(r, s)
    }
}

fn run(batch: &MatrixBatch, o: &SubspaceOptions) -> SubspaceFit {
    fit(batch, o, &LocalReducer, &mut |_, _, _| true).unwrap()
}

fn max_abs_diff(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (a - b).norm_max()
}

fn assert_monotone(history: &[f64]) {
    for w in history.windows(2) {
        assert!(
            w[1] >= w[0] - 1e-13 * w[0].abs(),
            "objective decreased: {} -> {}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn noiseless_planted_subspaces_are_recovered() {
    for (k, core) in [Core::Gaussian, Core::Uniform, Core::Sparse]
        .into_iter()
        .enumerate()
    {
        let p = Planted::new(40, 30, 25, 4, 3, 0.0, core, 10 + k as u64);
        for o in [opts(4, 3), riemannian(4, 3)] {
            let f = run(&p.batch(), &o);
            let (du, dv) = (subspace_distance(&f.u, &p.u), subspace_distance(&f.v, &p.v));
            assert!(
                du < 1e-8 && dv < 1e-8,
                "{core:?} {:?}: {du:e} {dv:e}",
                o.method
            );
            // Noiseless: the subspaces hold all the energy.
            assert!((f.objective - f.total_energy).abs() < 1e-10 * f.total_energy);
            assert!(f.converged);
        }
    }
}

#[test]
fn noiseless_recovery_at_200_by_200() {
    let p = Planted::new(30, 200, 200, 6, 5, 0.0, Core::Gaussian, 7);
    let f = run(&p.batch(), &opts(6, 5));
    assert!(subspace_distance(&f.u, &p.u) < 1e-8);
    assert!(subspace_distance(&f.v, &p.v) < 1e-8);
}

#[test]
fn noisy_distance_shrinks_as_samples_grow() {
    // The estimation error of the bases falls as 1/sqrt(N): each fourfold
    // increase of N should halve the distance. The band allows for the
    // sampling fluctuation of single problems and still fails for no decay
    // (ratio 1) or a 1/N decay (ratio 0.25).
    let mut dists: Vec<f64> = vec![];
    for count in [20, 80, 320] {
        let p = Planted::new(count, 30, 30, 3, 3, 1e-2, Core::Gaussian, 3);
        let f = run(&p.batch(), &opts(3, 3));
        let d = subspace_distance(&f.u, &p.u).max(subspace_distance(&f.v, &p.v));
        dists.push(d);
    }
    println!("noisy distances for N = 20, 80, 320: {dists:?}");
    for w in dists.windows(2) {
        let ratio = w[1] / w[0];
        assert!(
            (0.35..0.65).contains(&ratio),
            "ratio {ratio}, distances {dists:?}"
        );
    }
}

#[test]
fn hooi_and_riemannian_agree() {
    // Clear gap at the rank cut: planted rank = fitted rank, noise 1e-2.
    let p = Planted::new(60, 40, 30, 4, 3, 1e-2, Core::Gaussian, 5);
    let b = p.batch();
    let h = run(&b, &opts(4, 3));
    let g = run(&b, &riemannian(4, 3));
    println!(
        "iterations: HOOI {} (converged {}), Riemannian CG {} (converged {})",
        h.iterations, h.converged, g.iterations, g.converged
    );
    println!(
        "Riemannian history tail: {:?}",
        &g.history[g.history.len().saturating_sub(6)..]
    );
    assert!(h.converged && g.converged);
    assert!((h.objective - g.objective).abs() < 1e-8 * h.objective);
    let proj = |q: &Mat<f64>| q * q.transpose();
    assert!(max_abs_diff(&proj(&h.u), &proj(&g.u)) < 1e-6);
    assert!(max_abs_diff(&proj(&h.v), &proj(&g.v)) < 1e-6);
    assert_monotone(&h.history);
    assert_monotone(&g.history);

    // Fitted ranks above the signal rank: the objectives still agree.
    let h = run(&b, &opts(6, 5));
    let g = run(&b, &riemannian(6, 5));
    println!(
        "ranks above the signal: HOOI {} iterations, Riemannian CG {} iterations, objectives {} {}",
        h.iterations, g.iterations, h.objective, g.objective
    );
    // Above the signal rank the noise directions have small gaps and both
    // methods may stop at different stationary points; both converge and
    // neither ends below the other's start.
    assert!(h.converged && g.converged);
    assert!(h.objective >= g.history[0] && g.objective >= h.history[0]);
}

#[test]
fn objective_never_decreases() {
    for core in [Core::Uniform, Core::Sparse] {
        let p = Planted::new(50, 35, 28, 5, 4, 1e-1, core, 21);
        for o in [opts(3, 3), riemannian(3, 3), opts(7, 6)] {
            let f = run(&p.batch(), &o);
            assert_monotone(&f.history);
            assert_eq!(f.history.len(), f.steps + 1);
            assert!((f.history.last().unwrap() - f.objective).abs() < 1e-10 * f.objective);
        }
    }
}

#[test]
fn canonical_basis_is_independent_of_threads_and_sample_order() {
    let p = Planted::new(50, 36, 30, 4, 3, 1e-2, Core::Gaussian, 8);
    let reference = run(&p.batch(), &opts(4, 3));
    for threads in [2, 3] {
        let f = run(
            &p.batch(),
            &SubspaceOptions {
                threads,
                ..opts(4, 3)
            },
        );
        assert!(
            max_abs_diff(&f.u, &reference.u) < 1e-10,
            "threads {threads}"
        );
        assert!(
            max_abs_diff(&f.v, &reference.v) < 1e-10,
            "threads {threads}"
        );
    }
    // Shuffled sample order (Fisher–Yates).
    let mut order: Vec<usize> = (0..p.count).collect();
    let mut rng = Rng::new(99);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let block = p.rows * p.cols;
    let mut shuffled = vec![0.0; p.data.len()];
    for (dst, &src) in order.iter().enumerate() {
        shuffled[dst * block..(dst + 1) * block]
            .copy_from_slice(&p.data[src * block..(src + 1) * block]);
    }
    let b = MatrixBatch::from_c_order(&shuffled, p.count, p.rows, p.cols).unwrap();
    for threads in [1, 2] {
        let f = run(
            &b,
            &SubspaceOptions {
                threads,
                ..opts(4, 3)
            },
        );
        assert!(max_abs_diff(&f.u, &reference.u) < 1e-10);
        assert!(max_abs_diff(&f.v, &reference.v) < 1e-10);
        let g = run(
            &b,
            &SubspaceOptions {
                threads,
                ..riemannian(4, 3)
            },
        );
        assert!(max_abs_diff(&g.u, &reference.u) < 1e-6);
    }
}

#[test]
fn layouts_give_the_same_fit() {
    let p = Planted::new(30, 24, 20, 3, 3, 1e-2, Core::Uniform, 4);
    let c = p.batch();
    let f_data = to_col_major(&p.data, p.count, p.rows, p.cols);
    let f = MatrixBatch::from_col_major(&f_data, p.rows, p.cols, p.count).unwrap();
    // A padded layout that stacks neither way: per-sample products only.
    let pad = p.rows * p.cols + 7;
    let mut g_data = vec![0.0; p.count * pad];
    for i in 0..p.count {
        g_data[i * pad..i * pad + p.rows * p.cols]
            .copy_from_slice(&p.data[i * p.rows * p.cols..(i + 1) * p.rows * p.cols]);
    }
    let layout = Layout {
        sample_stride: pad as isize,
        ..Layout::c_order(p.count, p.rows, p.cols)
    };
    let g = MatrixBatch::new(&g_data, 0, layout).unwrap();
    for base in [
        opts(3, 3),
        SubspaceOptions {
            center: true,
            ..opts(3, 3)
        },
        riemannian(3, 3),
    ] {
        let reference = run(&c, &base);
        for (name, b) in [("column-major", &f), ("padded", &g)] {
            for threads in [1, 2] {
                let fit = run(
                    b,
                    &SubspaceOptions {
                        threads,
                        ..base.clone()
                    },
                );
                let tol = if base.method == SubspaceMethod::Hooi {
                    1e-10
                } else {
                    1e-6
                };
                assert!(max_abs_diff(&fit.u, &reference.u) < tol, "{name} {threads}");
                assert!(max_abs_diff(&fit.v, &reference.v) < tol, "{name} {threads}");
                assert!((fit.objective - reference.objective).abs() < 1e-12 * reference.objective);
            }
        }
    }
}

#[test]
fn energy_selects_the_planted_ranks() {
    let p = Planted::new(40, 30, 25, 3, 2, 0.0, Core::Gaussian, 12);
    for energy in [0.999, 1.0] {
        let o = SubspaceOptions {
            energy,
            ..opts(0, 0)
        };
        let f = run(&p.batch(), &o);
        assert_eq!((f.u.ncols(), f.v.ncols()), (3, 2), "energy {energy}");
        assert!(subspace_distance(&f.u, &p.u) < 1e-8);
    }
    // One rank given, the other chosen.
    let f = run(
        &p.batch(),
        &SubspaceOptions {
            energy: 1.0,
            ..opts(2, 0)
        },
    );
    assert_eq!((f.u.ncols(), f.v.ncols()), (2, 2));
    assert_eq!(subspace::rank_by_energy(&[4.0, 3.0, 2.0, 1.0], 0.71), 3);
    assert_eq!(subspace::rank_by_energy(&[4.0, 3.0, 2.0, 1.0], 0.7), 2);
    assert_eq!(subspace::rank_by_energy(&[4.0, 3.0, 2.0, 1.0], 0.4), 1);
    assert_eq!(subspace::rank_by_energy(&[0.0, 0.0], 0.5), 1);
}

#[test]
fn centering_matches_explicitly_centered_data() {
    let p = Planted::new(60, 30, 24, 3, 3, 1e-2, Core::Gaussian, 31);
    // A large common mean: a smooth pattern around 5.
    let offset = |a: usize, b: usize| 5.0 + (a as f64 * 0.3).sin() + 0.1 * b as f64;
    let mut shifted = p.data.clone();
    for i in 0..p.count {
        for a in 0..p.rows {
            for b in 0..p.cols {
                shifted[(i * p.rows + a) * p.cols + b] += offset(a, b);
            }
        }
    }
    let b = MatrixBatch::from_c_order(&shifted, p.count, p.rows, p.cols).unwrap();
    // The sample mean and the explicitly centered data.
    let mut mean = Mat::<f64>::zeros(p.rows, p.cols);
    for i in 0..p.count {
        mean += b.sample(i);
    }
    mean *= faer::Scale(1.0 / p.count as f64);
    let mut centered = shifted.clone();
    for i in 0..p.count {
        for a in 0..p.rows {
            for c in 0..p.cols {
                centered[(i * p.rows + a) * p.cols + c] -= mean[(a, c)];
            }
        }
    }
    let bc = MatrixBatch::from_c_order(&centered, p.count, p.rows, p.cols).unwrap();
    for base in [opts(3, 3), riemannian(3, 3)] {
        let f = run(
            &b,
            &SubspaceOptions {
                center: true,
                ..base.clone()
            },
        );
        let g = run(&bc, &base);
        let fm = f.mean.as_ref().expect("mean when centered");
        assert!(max_abs_diff(fm, &mean) < 1e-13 * 10.0);
        assert!(g.mean.is_none());
        assert!(
            max_abs_diff(&f.u, &g.u) < 1e-7,
            "{:e}",
            max_abs_diff(&f.u, &g.u)
        );
        assert!(max_abs_diff(&f.v, &g.v) < 1e-7);
        assert!((f.objective - g.objective).abs() < 1e-9 * g.objective);
        assert!((f.total_energy - g.total_energy).abs() < 1e-9 * g.total_energy);
    }
}

#[test]
fn kernels_agree_with_the_fit() {
    let p = Planted::new(25, 20, 18, 3, 2, 1e-1, Core::Gaussian, 41);
    let b = p.batch();
    let f = run(&b, &opts(3, 2));
    let par = Par::Seq;
    let (count, m, n, r, s) = (p.count, p.rows, p.cols, 3, 2);
    let mut buf = MemBuffer::new(subspace::objective_scratch(m, n, r, s, par));
    let obj = subspace::objective(
        &b,
        None,
        f.u.as_ref(),
        f.v.as_ref(),
        &LocalReducer,
        par,
        MemStack::new(&mut buf),
    )
    .unwrap();
    assert!((obj - f.objective).abs() < 1e-12 * obj);
    let mut cores = vec![0.0; count * r * s];
    let mut buf = MemBuffer::new(subspace::project_cores_scratch(m, n, r, s, par));
    subspace::project_cores(
        &b,
        None,
        f.u.as_ref(),
        f.v.as_ref(),
        &mut cores,
        par,
        MemStack::new(&mut buf),
    )
    .unwrap();
    let from_cores: f64 = cores.iter().map(|c| c * c).sum();
    assert!((from_cores - obj).abs() < 1e-12 * obj);
    // At the optimum the Riemannian gradient vanishes (relative to G).
    let (mut gu, mut gv) = (Mat::<f64>::zeros(m, r), Mat::<f64>::zeros(n, s));
    let mut buf = MemBuffer::new(subspace::riemannian_gradient_scratch(
        count, m, n, r, s, par,
    ));
    let fg = subspace::riemannian_gradient(
        &b,
        None,
        f.u.as_ref(),
        f.v.as_ref(),
        gu.as_mut(),
        gv.as_mut(),
        &LocalReducer,
        par,
        MemStack::new(&mut buf),
    )
    .unwrap();
    assert!((fg - obj).abs() < 1e-12 * obj);
    assert!(gu.norm_l2() + gv.norm_l2() < 1e-7 * obj);
    // A HOOI sweep from the optimum stays there.
    let (mut u, mut v) = (f.u.clone(), f.v.clone());
    let mut buf = MemBuffer::new(subspace::hooi_sweep_scratch(count, m, n, r, s, par));
    let fs = subspace::hooi_sweep(
        &b,
        None,
        u.as_mut(),
        v.as_mut(),
        &LocalReducer,
        par,
        MemStack::new(&mut buf),
    )
    .unwrap();
    assert!((fs - obj).abs() < 1e-12 * obj);
    assert!(max_abs_diff(&(&u * u.transpose()), &(&f.u * f.u.transpose())) < 1e-9);
}

#[test]
fn riemannian_gradient_matches_finite_differences() {
    let p = Planted::new(12, 9, 8, 2, 2, 0.3, Core::Gaussian, 51);
    let b = p.batch();
    let (count, m, n, r, s) = (p.count, p.rows, p.cols, 2, 2);
    let mut rng = Rng::new(52);
    let u = orthonormal(m, r, &mut rng);
    let v = orthonormal(n, s, &mut rng);
    let par = Par::Seq;
    let (mut gu, mut gv) = (Mat::<f64>::zeros(m, r), Mat::<f64>::zeros(n, s));
    let mut buf = MemBuffer::new(subspace::riemannian_gradient_scratch(
        count, m, n, r, s, par,
    ));
    let f0 = subspace::riemannian_gradient(
        &b,
        None,
        u.as_ref(),
        v.as_ref(),
        gu.as_mut(),
        gv.as_mut(),
        &LocalReducer,
        par,
        MemStack::new(&mut buf),
    )
    .unwrap();
    // Tangent direction: project a random matrix; the curve qf(U + t D).
    let proj = |q: &Mat<f64>, z: Mat<f64>| {
        let qtz = q.transpose() * &z;
        let sym = (&qtz + qtz.transpose()) * faer::Scale(0.5);
        z - q * sym
    };
    let du = proj(&u, Mat::from_fn(m, r, |_, _| rng.gauss()));
    let dv = proj(&v, Mat::from_fn(n, s, |_, _| rng.gauss()));
    let h = 1e-6;
    let at = |t: f64| {
        let mut ut = &u + &du * faer::Scale(t);
        let mut vt = &v + &dv * faer::Scale(t);
        let mut qb = MemBuffer::new(numerics::retract_qr_scratch(m.max(n), r, Par::Seq));
        numerics::retract_qr(ut.as_mut(), Par::Seq, MemStack::new(&mut qb));
        numerics::retract_qr(vt.as_mut(), Par::Seq, MemStack::new(&mut qb));
        let mut ob = MemBuffer::new(subspace::objective_scratch(m, n, r, s, par));
        subspace::objective(
            &b,
            None,
            ut.as_ref(),
            vt.as_ref(),
            &LocalReducer,
            par,
            MemStack::new(&mut ob),
        )
        .unwrap()
    };
    let fd = (at(h) - at(-h)) / (2.0 * h);
    let exact: f64 = (0..r)
        .flat_map(|j| (0..m).map(move |i| (i, j)))
        .map(|(i, j)| gu[(i, j)] * du[(i, j)])
        .sum::<f64>()
        + (0..s)
            .flat_map(|j| (0..n).map(move |i| (i, j)))
            .map(|(i, j)| gv[(i, j)] * dv[(i, j)])
            .sum::<f64>();
    assert!(
        (fd - exact).abs() < 1e-6 * exact.abs().max(f0),
        "fd {fd} exact {exact}"
    );
}

#[test]
fn max_iter_and_cancellation_are_reported() {
    let p = Planted::new(30, 20, 20, 3, 3, 0.5, Core::Gaussian, 61);
    let o = SubspaceOptions {
        max_iter: 2,
        ..riemannian(3, 3)
    };
    let f = run(&p.batch(), &o);
    assert_eq!(f.iterations, 2);
    assert!(!f.converged);
    let mut calls = vec![];
    let err = fit(
        &p.batch(),
        &opts(3, 3),
        &LocalReducer,
        &mut |it, max, obj| {
            calls.push((it, max, obj));
            it < 2
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].0, calls[0].1), (1, 100));
}

// ---------------------------------------------------------------------------
// Invalid options and inputs: one error each, naming the argument.

fn expect_err(batch: &MatrixBatch, o: &SubspaceOptions, kind: ErrorKind, prefix: &str) {
    let err = fit(batch, o, &LocalReducer, &mut |_, _, _| true).unwrap_err();
    assert_eq!(err.kind(), kind, "{}", err.message());
    assert!(err.message().starts_with(prefix), "{}", err.message());
}

fn small() -> Planted {
    Planted::new(5, 6, 4, 2, 2, 0.1, Core::Gaussian, 71)
}

#[test]
fn rejects_empty_batch() {
    let data = vec![0.0; 0];
    let b = MatrixBatch::from_c_order(&data, 0, 6, 4).unwrap();
    expect_err(&b, &opts(2, 2), ErrorKind::InvalidArgument, "train:");
}

#[test]
fn rejects_rank_rows_above_rows() {
    let p = small();
    let err = fit(&p.batch(), &opts(7, 2), &LocalReducer, &mut |_, _, _| true).unwrap_err();
    assert_eq!(err.message(), "opts.rank_rows: 7 exceeds rows (6)");
}

#[test]
fn rejects_rank_cols_above_cols() {
    expect_err(
        &small().batch(),
        &opts(2, 5),
        ErrorKind::InvalidArgument,
        "opts.rank_cols: 5 exceeds cols (4)",
    );
}

#[test]
fn rejects_energy_outside_unit_interval() {
    let p = small();
    for energy in [0.0, -0.5, 1.5, f64::NAN] {
        expect_err(
            &p.batch(),
            &SubspaceOptions {
                energy,
                ..opts(0, 0)
            },
            ErrorKind::InvalidArgument,
            "opts.energy:",
        );
    }
}

#[test]
fn rejects_bad_tol() {
    let p = small();
    for tol in [-1e-3, f64::NAN] {
        expect_err(
            &p.batch(),
            &SubspaceOptions { tol, ..opts(2, 2) },
            ErrorKind::InvalidArgument,
            "opts.tol:",
        );
    }
}

#[test]
fn rejects_bad_gtol() {
    let p = small();
    for gtol in [-1.0, f64::NAN] {
        expect_err(
            &p.batch(),
            &SubspaceOptions { gtol, ..opts(2, 2) },
            ErrorKind::InvalidArgument,
            "opts.gtol:",
        );
    }
}

#[test]
fn rejects_zero_max_iter() {
    expect_err(
        &small().batch(),
        &SubspaceOptions {
            max_iter: 0,
            ..opts(2, 2)
        },
        ErrorKind::InvalidArgument,
        "opts.max_iter:",
    );
}

#[test]
fn rejects_nan_and_infinite_data() {
    for (value, center) in [
        (f64::NAN, false),
        (f64::INFINITY, false),
        (f64::NEG_INFINITY, true),
    ] {
        let mut p = small();
        p.data[3 * 24 + 4 * 4 + 1] = value;
        let err = fit(
            &p.batch(),
            &SubspaceOptions {
                center,
                ..opts(2, 2)
            },
            &LocalReducer,
            &mut |_, _, _| true,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NonFinite);
        assert!(
            err.message().starts_with("train: matrix 3 "),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("row 4, column 1"),
            "{}",
            err.message()
        );
    }
}

#[test]
fn rejects_masked_batch() {
    let p = small();
    let mask = vec![1u8; p.data.len()];
    let b = p.batch().with_mask(&mask).unwrap();
    expect_err(&b, &opts(2, 2), ErrorKind::Unsupported, "train:");
}

// ---------------------------------------------------------------------------
// Golden values.

/// A minimal JSON value and reader (numbers, strings, arrays, objects).
#[derive(Debug)]
enum Json {
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
    Other,
}

impl Json {
    fn parse(text: &str) -> Json {
        let bytes = text.as_bytes();
        let mut pos = 0;
        Self::value(bytes, &mut pos)
    }
    fn skip_ws(b: &[u8], p: &mut usize) {
        while *p < b.len() && b[*p].is_ascii_whitespace() {
            *p += 1;
        }
    }
    fn value(b: &[u8], p: &mut usize) -> Json {
        Self::skip_ws(b, p);
        match b[*p] {
            b'{' => {
                *p += 1;
                let mut fields = vec![];
                loop {
                    Self::skip_ws(b, p);
                    if b[*p] == b'}' {
                        *p += 1;
                        return Json::Obj(fields);
                    }
                    let Json::Str(key) = Self::value(b, p) else {
                        panic!("key")
                    };
                    Self::skip_ws(b, p);
                    assert_eq!(b[*p], b':');
                    *p += 1;
                    fields.push((key, Self::value(b, p)));
                    Self::skip_ws(b, p);
                    if b[*p] == b',' {
                        *p += 1;
                    }
                }
            }
            b'[' => {
                *p += 1;
                let mut items = vec![];
                loop {
                    Self::skip_ws(b, p);
                    if b[*p] == b']' {
                        *p += 1;
                        return Json::Arr(items);
                    }
                    items.push(Self::value(b, p));
                    Self::skip_ws(b, p);
                    if b[*p] == b',' {
                        *p += 1;
                    }
                }
            }
            b'"' => {
                *p += 1;
                let start = *p;
                while b[*p] != b'"' {
                    if b[*p] == b'\\' {
                        *p += 1;
                    }
                    *p += 1;
                }
                let s = String::from_utf8_lossy(&b[start..*p]).into_owned();
                *p += 1;
                Json::Str(s)
            }
            b't' | b'f' | b'n' => {
                while *p < b.len() && b[*p].is_ascii_alphabetic() {
                    *p += 1;
                }
                Json::Other
            }
            _ => {
                let start = *p;
                while *p < b.len()
                    && matches!(b[*p], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    *p += 1;
                }
                Json::Num(std::str::from_utf8(&b[start..*p]).unwrap().parse().unwrap())
            }
        }
    }
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(fields) => {
                &fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .unwrap_or_else(|| panic!("no {key}"))
                    .1
            }
            _ => panic!("not an object"),
        }
    }
    fn num(&self) -> f64 {
        match self {
            Json::Num(x) => *x,
            _ => panic!("not a number"),
        }
    }
    fn nums(&self) -> Vec<f64> {
        match self {
            Json::Arr(items) => items.iter().map(Json::num).collect(),
            _ => panic!("not an array"),
        }
    }
    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            _ => panic!("not a string"),
        }
    }
}

#[test]
fn golden_small_cases() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/subspace_small.json"
    ))
    .unwrap();
    let golden = Json::parse(&text);
    assert!(golden.get("about").str().contains("canonical basis"));
    let Json::Arr(cases) = golden.get("cases") else {
        panic!("cases")
    };
    assert!(!cases.is_empty());
    for case in cases {
        let name = case.get("name").str();
        assert!(case.get("layout").str().starts_with("C order"));
        let shape: Vec<usize> = case
            .get("shape")
            .nums()
            .iter()
            .map(|&x| x as usize)
            .collect();
        let (count, m, n) = (shape[0], shape[1], shape[2]);
        let (r, s) = (
            case.get("rank_rows").num() as usize,
            case.get("rank_cols").num() as usize,
        );
        let data = case.get("data").nums();
        let b = MatrixBatch::from_c_order(&data, count, m, n).unwrap();
        let expected = case.get("expected");
        let u_ref = faer::MatRef::from_column_major_slice(&expected.get("u_colmajor").nums(), m, r)
            .to_owned();
        let v_ref = faer::MatRef::from_column_major_slice(&expected.get("v_colmajor").nums(), n, s)
            .to_owned();
        let obj_ref = expected.get("objective").num();
        let core_ref = expected.get("cores_first_sample_colmajor").nums();
        for o in [
            opts(r, s),
            riemannian(r, s),
            SubspaceOptions {
                threads: 2,
                ..opts(r, s)
            },
        ] {
            let f = run(&b, &o);
            let tol = if o.method == SubspaceMethod::Hooi {
                1e-9
            } else {
                1e-7
            };
            assert!(
                (f.objective - obj_ref).abs() < 1e-10 * obj_ref,
                "{name}: {} vs {obj_ref}",
                f.objective
            );
            assert!(
                max_abs_diff(&(&f.u * f.u.transpose()), &(&u_ref * u_ref.transpose())) < tol,
                "{name}"
            );
            assert!(
                max_abs_diff(&(&f.v * f.v.transpose()), &(&v_ref * v_ref.transpose())) < tol,
                "{name}"
            );
            // The canonical core spectra are distinct here: columns match too.
            assert!(
                max_abs_diff(&f.u, &u_ref) < tol,
                "{name}: U columns {:e}",
                max_abs_diff(&f.u, &u_ref)
            );
            assert!(max_abs_diff(&f.v, &v_ref) < tol, "{name}: V columns");
            let mut cores = vec![0.0; count * r * s];
            let mut buf = MemBuffer::new(subspace::project_cores_scratch(m, n, r, s, Par::Seq));
            subspace::project_cores(
                &b,
                None,
                f.u.as_ref(),
                f.v.as_ref(),
                &mut cores,
                Par::Seq,
                MemStack::new(&mut buf),
            )
            .unwrap();
            for (a, e) in cores[..r * s].iter().zip(&core_ref) {
                assert!(
                    (a - e).abs() < 1e-7 * (1.0 + e.abs()),
                    "{name}: core {a} vs {e}"
                );
            }
        }
    }
}

#[test]
fn degenerate_shapes_and_zero_data() {
    // One sample; a single row; full ranks; all-zero data.
    let one = Planted::new(1, 5, 4, 2, 2, 0.1, Core::Gaussian, 81);
    for o in [opts(2, 2), opts(5, 4), riemannian(2, 2)] {
        let f = run(&one.batch(), &o);
        assert!(f.objective <= f.total_energy * (1.0 + 1e-12));
        assert!(
            ((f.u.transpose() * &f.u) - Mat::<f64>::identity(f.u.ncols(), f.u.ncols())).norm_max()
                < 1e-13
        );
    }
    // Full ranks keep all the energy.
    let f = run(&one.batch(), &opts(5, 4));
    assert!((f.objective - f.total_energy).abs() < 1e-12 * f.total_energy);
    let row: Vec<f64> = (0..18).map(|k| (k as f64 * 0.7).sin()).collect();
    let b = MatrixBatch::from_c_order(&row, 3, 1, 6).unwrap();
    for center in [false, true] {
        let f = run(
            &b,
            &SubspaceOptions {
                center,
                ..opts(1, 2)
            },
        );
        assert_eq!(
            (f.u.nrows(), f.u.ncols(), f.v.nrows(), f.v.ncols()),
            (1, 1, 6, 2)
        );
        assert!(f.converged);
    }
    let zeros = vec![0.0; 4 * 5 * 3];
    let b = MatrixBatch::from_c_order(&zeros, 4, 5, 3).unwrap();
    for o in [opts(2, 2), opts(0, 0), riemannian(2, 2)] {
        let f = run(&b, &o);
        assert_eq!(f.objective, 0.0);
        assert!(f.converged);
    }
}

/// The cores the fit returns are `project_cores` at the returned bases, for
/// every method, with and without centering, whether HOOI stopped after a U
/// update or after a V update.
#[test]
fn fit_cores_equal_projected_cores() {
    let mut stops = [false, false];
    for (k, seed) in (0..12u64).enumerate() {
        let p = Planted::new(
            30,
            24,
            20,
            4,
            3,
            [1e-3, 1e-2, 1e-1][k % 3],
            Core::Uniform,
            300 + seed,
        );
        let b = p.batch();
        let center = k % 2 == 1;
        for mut o in [opts(4, 3), riemannian(4, 3)] {
            o.center = center;
            o.threads = 1 + k % 2;
            let f = run(&b, &o);
            let (count, m, n, r, s) = (p.count, p.rows, p.cols, 4, 3);
            let mut cores = vec![0.0; count * r * s];
            let mut buf = MemBuffer::new(subspace::project_cores_scratch(m, n, r, s, Par::Seq));
            subspace::project_cores(
                &b,
                f.mean.as_ref().map(|x| x.as_ref()),
                f.u.as_ref(),
                f.v.as_ref(),
                &mut cores,
                Par::Seq,
                MemStack::new(&mut buf),
            )
            .unwrap();
            let scale = cores.iter().fold(0.0f64, |a, c| a.max(c.abs()));
            let err = cores
                .iter()
                .zip(&f.cores)
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                err < 1e-12 * scale,
                "{:?} center {center}: {err:e}",
                o.method
            );
            let energy: f64 = f.cores.iter().map(|c| c * c).sum();
            assert!((energy - f.objective).abs() < 1e-12 * f.objective);
            if o.method == SubspaceMethod::Hooi {
                // An even step count means the last update was a V update.
                stops[f.steps % 2] = true;
            }
        }
    }
    assert!(
        stops[0] && stops[1],
        "both stopping positions covered: {stops:?}"
    );
}

/// `canonicalize_with_cores` rotates like `canonicalize` and writes the
/// cores `project_cores` gives at the rotated bases; a wrong length is
/// refused with a message naming `cores`.
#[test]
fn canonicalize_with_cores_matches_canonicalize_and_projection() {
    let p = Planted::new(20, 16, 14, 3, 2, 1e-2, Core::Gaussian, 77);
    let b = p.batch();
    let (count, m, n, r, s) = (p.count, p.rows, p.cols, 3, 2);
    let par = Par::Seq;
    let start_u = orthonormal(m, r, &mut Rng::new(5));
    let start_v = orthonormal(n, s, &mut Rng::new(6));
    let mut buf = MemBuffer::new(subspace::canonicalize_scratch(m, n, r, s, par));
    let (mut u1, mut v1) = (start_u.clone(), start_v.clone());
    let f1 = subspace::canonicalize(
        &b,
        None,
        u1.as_mut(),
        v1.as_mut(),
        &LocalReducer,
        par,
        MemStack::new(&mut buf),
    )
    .unwrap();
    let (mut u2, mut v2) = (start_u.clone(), start_v.clone());
    let mut cores = vec![0.0; count * r * s];
    let f2 = subspace::canonicalize_with_cores(
        &b,
        None,
        u2.as_mut(),
        v2.as_mut(),
        &mut cores,
        &LocalReducer,
        par,
        MemStack::new(&mut buf),
    )
    .unwrap();
    assert_eq!(f1, f2);
    assert!(max_abs_diff(&u1, &u2) == 0.0 && max_abs_diff(&v1, &v2) == 0.0);
    let mut direct = vec![0.0; count * r * s];
    let mut pbuf = MemBuffer::new(subspace::project_cores_scratch(m, n, r, s, par));
    subspace::project_cores(
        &b,
        None,
        u2.as_ref(),
        v2.as_ref(),
        &mut direct,
        par,
        MemStack::new(&mut pbuf),
    )
    .unwrap();
    let scale = direct.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    for (x, y) in cores.iter().zip(&direct) {
        assert!((x - y).abs() <= 1e-12 * scale, "{x} vs {y}");
    }
    let mut short = vec![0.0; count * r * s - 1];
    let err = subspace::canonicalize_with_cores(
        &b,
        None,
        u2.as_mut(),
        v2.as_mut(),
        &mut short,
        &LocalReducer,
        par,
        MemStack::new(&mut buf),
    )
    .unwrap_err();
    assert!(err.message().contains("cores"), "{}", err.message());
}

#[test]
fn energy_ranks_keep_the_core_within_half_the_count() {
    // White noise: every direction holds about the same energy, so no
    // small core keeps 0.99 of it; 28 matrices allow at most 14 dimensions.
    let (count, m, n) = (28, 28, 24);
    let mut rng = Rng::new(3);
    let data: Vec<f64> = (0..count * m * n).map(|_| rng.gauss()).collect();
    let batch = MatrixBatch::from_c_order(&data, count, m, n).unwrap();
    assert_eq!(subspace::energy_core_dim_cap(count), 14);
    let f = run(
        &batch,
        &SubspaceOptions {
            energy: 0.99,
            ..opts(0, 0)
        },
    );
    let (r, s) = (f.u.ncols(), f.v.ncols());
    assert!(r * s <= 14, "{r} x {s}");
    let explained = f.objective / f.total_energy;
    assert!(explained < 0.99);
    let why = subspace::energy_shortfall(explained, 0.99, (r, s), (m, n), count, (true, true))
        .expect("a shortfall");
    assert!(why.contains("below the requested 0.99"), "{why}");
    assert!(why.contains("at most 14 dimensions"), "{why}");
    // Given ranks are not capped, and no shortfall is reported for them.
    let g = run(&batch, &opts(20, 6));
    assert_eq!((g.u.ncols(), g.v.ncols()), (20, 6));
    let e = g.objective / g.total_energy;
    assert!(subspace::energy_shortfall(e, 0.99, (20, 6), (m, n), count, (false, false)).is_none());
}

#[test]
fn energy_ranks_keep_the_requested_energy() {
    // Scales decaying along both axes: the ranks that hold `energy` of each
    // Gram trace keep about energy^2 together; the fit raises them until
    // the fit keeps `energy`.
    let p = Planted::new(400, 20, 16, 8, 8, 0.02, Core::Gaussian, 21);
    let mut raised = 0;
    for energy in [0.8, 0.9, 0.95, 0.99] {
        let f = run(
            &p.batch(),
            &SubspaceOptions {
                energy,
                ..opts(0, 0)
            },
        );
        let (r, s) = (f.u.ncols(), f.v.ncols());
        let explained = f.objective / f.total_energy;
        assert!(r * s <= subspace::energy_core_dim_cap(400));
        let shortfall =
            subspace::energy_shortfall(explained, energy, (r, s), (20, 16), 400, (true, true));
        if energy < 0.99 {
            assert!(
                explained >= energy - 1e-9,
                "energy {energy}: {r} x {s} keep {explained}"
            );
            assert!(shortfall.is_none(), "{shortfall:?}");
        } else if explained < energy {
            // The noise floor needs more than the cap of 200 dimensions.
            let why = shortfall.expect("a reason");
            assert!(why.contains("at most 200 dimensions"), "{why}");
            assert!((r + 1) * s > 200 && r * (s + 1) > 200, "{r} x {s}");
        }
        // The ranks from the two traces alone.
        let r0 = subspace::rank_by_energy(&f.row_eigenvalues, energy);
        let s0 = subspace::rank_by_energy(&f.col_eigenvalues, energy);
        let g = run(&p.batch(), &opts(r0, s0));
        if g.objective < energy * g.total_energy && r0 * s0 <= 200 {
            raised += 1;
            assert!(r * s > r0 * s0, "energy {energy}");
        }
    }
    assert!(
        raised >= 2,
        "the marginal ranks kept enough in {} cases",
        4 - raised
    );
}

#[test]
fn initial_ranks_respect_the_cap() {
    let vals = [4.0, 3.0, 2.0, 1.0];
    // Within the cap: the marginal ranks.
    assert_eq!(subspace::initial_ranks(&vals, &vals, 0, 0, 1.0, 16), (4, 4));
    assert_eq!(subspace::initial_ranks(&vals, &vals, 0, 0, 0.7, 16), (2, 2));
    // Cap 4: the pair keeping most by the separable estimate (0.7 * 0.7).
    assert_eq!(subspace::initial_ranks(&vals, &vals, 0, 0, 1.0, 4), (2, 2));
    // A given rank stays; the chosen one fits the cap (at least 1).
    assert_eq!(subspace::initial_ranks(&vals, &vals, 2, 0, 1.0, 4), (2, 2));
    assert_eq!(subspace::initial_ranks(&vals, &vals, 4, 0, 1.0, 3), (4, 1));
    // Both given: never capped.
    assert_eq!(subspace::initial_ranks(&vals, &vals, 4, 4, 1.0, 1), (4, 4));
}
