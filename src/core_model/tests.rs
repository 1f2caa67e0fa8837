use super::select::{heldout_scores, row_log_probs};
use super::*;
use crate::flow::ode::{Divergence, Solver, SolverOptions};
use crate::moments::{column_moments, covariance};
use crate::reduce::LocalReducer;
use crate::rng;
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::{Mat, MatRef, Par};

#[test]
fn a_core_without_finite_density_costs_at_most_the_floor() {
    let x = normals(200, 3, 5);
    let opts = FlowOptions {
        core_model: CoreModelChoice::Gaussian,
        holdout_fraction: 0.0,
        ..FlowOptions::default()
    };
    let model = CoreModel::fit(x.as_ref(), &opts, &mut |_, _, _| true).unwrap();
    let solver = SolverOptions::default();
    let far = Mat::<f64>::from_fn(2, 3, |i, _| if i == 0 { 1e200 } else { 0.5 });
    // Row by row: the far core has no finite density, the near one has.
    let rows = row_log_probs(&model, &solver, far.as_ref()).unwrap();
    assert_eq!(rows[0], f64::NEG_INFINITY);
    assert!(rows[1].is_finite());
    let near = far.get(1..2, ..).to_owned();
    let h = heldout_scores(&[&model], &solver, near.as_ref(), &LocalReducer).unwrap();
    assert_eq!(h.mean, [rows[1]]);
}

#[test]
fn the_floor_bounds_what_one_held_out_core_costs() {
    // Two Gaussian models of the same cores, one with a far smaller
    // spread: on cores it cannot explain it loses at most the floor per
    // core.
    let x = normals(300, 3, 8);
    let opts = FlowOptions {
        core_model: CoreModelChoice::Gaussian,
        holdout_fraction: 0.0,
        ..FlowOptions::default()
    };
    let wide = CoreModel::fit(x.as_ref(), &opts, &mut |_, _, _| true).unwrap();
    let narrow_x = Mat::<f64>::from_fn(300, 3, |i, j| 1e-4 * x[(i, j)]);
    let narrow = CoreModel::fit(narrow_x.as_ref(), &opts, &mut |_, _, _| true).unwrap();
    let held = normals(50, 3, 9);
    let solver = SolverOptions::default();
    let h = heldout_scores(&[&wide, &narrow], &solver, held.as_ref(), &LocalReducer).unwrap();
    let (g, f) = (h.mean[0], h.mean[1]);
    assert!((f - (g - HELDOUT_FLOOR_NATS)).abs() < 1e-9, "{f} vs {g}");
    // Every core costs exactly the floor: the paired difference has no
    // spread.
    let (gain, se) = h.gain[1][0];
    assert!(
        (gain + HELDOUT_FLOOR_NATS).abs() < 1e-9 && se < 1e-9,
        "{gain} {se}"
    );
    assert!(!h.clearly_better(1, 0, 1));
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

/// A noisy ring of radius 2 (ellipse 2 x 1.5) in the first two of 8
/// core coordinates, small independent noise in the other six.
fn ring8(n: usize, seed: u64) -> Mat<f64> {
    let noise = normals(n, 8, seed ^ 1);
    let mut r = rng::stream(seed, 1 << 40);
    let mut x = Mat::<f64>::zeros(n, 8);
    for i in 0..n {
        let a = core::f64::consts::TAU * rng::uniform(&mut r);
        let rad = 1.0 + 0.05 * noise[(i, 0)];
        x[(i, 0)] = 1.0 + 2.0 * rad * a.cos();
        x[(i, 1)] = -1.0 + 1.5 * rad * a.sin();
        for j in 2..8 {
            x[(i, j)] = 0.005 * (j as f64) * noise[(i, j)];
        }
    }
    x
}

/// Unbiased MMD^2 with the Gaussian kernel averaged over the bandwidths
/// h0 / 2, h0, 2 h0 (h0 = median pairwise distance of the pooled set).
fn mmd2(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let (n, m) = (a.nrows(), b.nrows());
    let pooled: Vec<Vec<f64>> = (0..n)
        .map(|i| a.row(i).iter().copied().collect())
        .chain((0..m).map(|i| b.row(i).iter().copied().collect()))
        .collect();
    let t = n + m;
    let mut d2 = vec![0.0; t * t];
    let mut dists = Vec::with_capacity(t * (t - 1) / 2);
    for i in 0..t {
        for j in 0..i {
            let s: f64 = pooled[i]
                .iter()
                .zip(&pooled[j])
                .map(|(x, y)| (x - y).powi(2))
                .sum();
            d2[i * t + j] = s;
            d2[j * t + i] = s;
            dists.push(s.sqrt());
        }
    }
    dists.sort_by(f64::total_cmp);
    let h0 = dists[dists.len() / 2];
    let mut total = 0.0;
    for h in [0.5 * h0, h0, 2.0 * h0] {
        let kern = |i: usize, j: usize| (-d2[i * t + j] / (2.0 * h * h)).exp();
        let (mut aa, mut bb, mut ab) = (0.0, 0.0, 0.0);
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    aa += kern(i, j);
                }
            }
            for j in 0..m {
                ab += kern(i, n + j);
            }
        }
        for i in 0..m {
            for j in 0..m {
                if i != j {
                    bb += kern(n + i, n + j);
                }
            }
        }
        total += aa / (n * (n - 1)) as f64 + bb / (m * (m - 1)) as f64 - 2.0 * ab / (n * m) as f64;
    }
    total / 3.0
}

fn small_opts() -> FlowOptions {
    FlowOptions {
        hidden: 64,
        layers: 2,
        time_freqs: 8,
        steps: 1500,
        batch_size: 128,
        learning_rate: 5e-3,
        holdout_fraction: 0.0,
        threads: 1,
        seed: 11,
        ..Default::default()
    }
}

fn draw(model: &CoreModel, solver: &SolverOptions, seed: u64, first: u64, n: usize) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(n, model.dim());
    let mut mem = MemBuffer::new(model.sample_scratch(n, solver));
    model
        .sample(solver, seed, first, out.as_mut(), MemStack::new(&mut mem))
        .unwrap();
    out
}

fn log_probs(model: &CoreModel, solver: &SolverOptions, x: MatRef<'_, f64>) -> Vec<f64> {
    let mut out = vec![0.0; x.nrows()];
    let mut mem = MemBuffer::new(model.log_prob_scratch(x.nrows(), solver));
    model
        .log_prob(solver, x, &mut out, MemStack::new(&mut mem))
        .unwrap();
    out
}

#[test]
fn learns_a_ring_better_than_a_gaussian() {
    let train = ring8(2000, 1);
    let fresh = ring8(600, 2);
    let opts = FlowOptions {
        flow_energy: 0.99,
        ..small_opts()
    };
    let model = CoreModel::fit(train.as_ref(), &opts, &mut |_, _, _| true).unwrap();
    assert_eq!(model.kind(), CoreModelKind::Flow);
    assert_eq!(model.flow_dim(), 2, "{:?}", model.info());
    let gauss = CoreModel::fit(
        train.as_ref(),
        &FlowOptions {
            core_model: CoreModelChoice::Gaussian,
            ..opts
        },
        &mut |_, _, _| true,
    )
    .unwrap();
    let solver = SolverOptions::default();
    let gen = draw(&model, &solver, 5, 0, 600);
    let gen_g = draw(&gauss, &solver, 5, 0, 600);
    let floor = mmd2(ring8(600, 3).as_ref(), fresh.as_ref());
    let m_flow = mmd2(gen.as_ref(), fresh.as_ref());
    let m_gauss = mmd2(gen_g.as_ref(), fresh.as_ref());
    eprintln!("MMD^2: flow {m_flow:.5}, gaussian {m_gauss:.5}, data floor {floor:.5}");
    assert!(
        m_flow < 0.25 * m_gauss,
        "flow {m_flow} vs gaussian {m_gauss}"
    );
}

#[test]
fn auto_chooses_the_right_kind_where_it_is_known_and_refits_on_all() {
    // Correlated Gaussian cores: the Gaussian; a ring: a non-Gaussian kind
    // (a mixture of a few components on the 2-d ring predicts it as well
    // as the flow or better). Every choice is made on a 20 % hold-out and
    // refitted on all cores.
    let opts = FlowOptions {
        holdout_fraction: 0.2,
        steps: 600,
        flow_energy: 0.99,
        ..small_opts()
    };
    for seed in 1..=8 {
        let z = normals(500, 4, 40 + seed);
        let gauss = Mat::from_fn(500, 4, |i, j| z[(i, j)] + 0.5 * z[(i, 0)] * (j as f64));
        let o = FlowOptions { seed, ..opts };
        let m = CoreModel::fit(gauss.as_ref(), &o, &mut |_, _, _| true).unwrap();
        let info = m.info();
        assert_eq!(m.kind(), CoreModelKind::Gaussian, "seed {seed}: {info:?}");
        assert_eq!((info.train_count, info.holdout_count), (500, 100));
        assert!(info.heldout_mmd_gaussian.is_finite() && info.heldout_mmd_flow.is_finite());

        let ring = ring8(500, 50 + seed);
        let m = CoreModel::fit(ring.as_ref(), &o, &mut |_, _, _| true).unwrap();
        let info = m.info();
        assert_ne!(m.kind(), CoreModelKind::Gaussian, "seed {seed}: {info:?}");
        let chosen = match m.kind() {
            CoreModelKind::Flow => (info.heldout_loglik_flow, info.heldout_mmd_flow),
            _ => (info.heldout_loglik_mixture, info.heldout_mmd_mixture),
        };
        assert!(
            chosen.0 > info.heldout_loglik_gaussian + 0.1,
            "seed {seed}: {info:?}"
        );
        assert!(
            chosen.1 < info.heldout_mmd_gaussian,
            "seed {seed}: {info:?}"
        );
        assert!(info.heldout_mmd_flow.is_finite() && info.heldout_mmd_mixture.is_finite());
        assert_eq!(info.train_count, 500);
    }
}

#[test]
fn log_prob_of_gaussian_cores_matches_the_analytic_density() {
    // Cores N(mu, C C^T) in 4 dims.
    let d = 4;
    let c = Mat::from_fn(d, d, |i, j| {
        if i >= j {
            0.3 + 0.5 * ((i + 2 * j) % 3) as f64
        } else {
            0.0
        }
    });
    let mu = [1.0, -2.0, 0.5, 3.0];
    let gen = |n: usize, seed: u64| {
        let z = normals(n, d, seed);
        let mut x = &z * c.transpose();
        for i in 0..n {
            for j in 0..d {
                x[(i, j)] += mu[j];
            }
        }
        x
    };
    let train = gen(3000, 21);
    let test = gen(300, 22);
    let sigma = &c * c.transpose();
    let truth = log_normal(test.as_ref(), &mu, sigma.as_ref());
    let opts = FlowOptions {
        core_model: CoreModelChoice::Flow,
        // Every direction in the flow, however small.
        flow_energy: 1.0,
        flow_noise_gap: 0.0,
        ..small_opts()
    };
    let model = CoreModel::fit(train.as_ref(), &opts, &mut |_, _, _| true).unwrap();
    assert_eq!(model.flow_dim(), d);
    for solver in [
        SolverOptions::default(),
        SolverOptions {
            solver: Solver::Dopri5,
            rtol: 1e-6,
            atol: 1e-6,
            ..Default::default()
        },
    ] {
        let lp = log_probs(&model, &solver, test.as_ref());
        let mae = lp
            .iter()
            .zip(&truth)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / (lp.len() * d) as f64;
        eprintln!(
            "{:?}: log_prob mean abs error per dimension {mae:.4}",
            solver.solver
        );
        assert!(mae < 0.05, "{mae}");
    }
    // Hutchinson agrees with the exact trace on average.
    let exact = log_probs(&model, &SolverOptions::default(), test.as_ref());
    let hutch = log_probs(
        &model,
        &SolverOptions {
            divergence: Divergence::Hutchinson { seed: 3 },
            ..Default::default()
        },
        test.as_ref(),
    );
    let bias = exact.iter().zip(&hutch).map(|(a, b)| a - b).sum::<f64>() / exact.len() as f64;
    let sd = (exact
        .iter()
        .zip(&hutch)
        .map(|(a, b)| (a - b - bias).powi(2))
        .sum::<f64>()
        / exact.len() as f64)
        .sqrt();
    assert!(
        bias.abs() < 4.0 * sd / (exact.len() as f64).sqrt() + 1e-3,
        "bias {bias}, sd {sd}"
    );
    // The Gaussian kind: its log-density is the direct formula with its
    // own mean and covariance `Q diag(lambda) Q^T + delta I` (to
    // rounding), and close to the truth (the shrinkage is small here).
    let g = CoreModel::fit(
        train.as_ref(),
        &FlowOptions {
            core_model: CoreModelChoice::Gaussian,
            ..opts
        },
        &mut |_, _, _| true,
    )
    .unwrap();
    let lg = log_probs(&g, &SolverOptions::default(), test.as_ref());
    let p = g.to_parts();
    let q = p.variances.len();
    let basis = MatRef::from_column_major_slice(&p.basis, d, q);
    let cov = Mat::from_fn(d, d, |i, j| {
        (0..q)
            .map(|c| basis[(i, c)] * p.variances[c] * basis[(j, c)])
            .sum::<f64>()
            + if i == j { p.ridge } else { 0.0 }
    });
    let direct = log_normal(test.as_ref(), &p.mean, cov.as_ref());
    for (a, b) in lg.iter().zip(&direct) {
        assert!((a - b).abs() <= 1e-10 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let mae = lg
        .iter()
        .zip(&truth)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / (lg.len() * d) as f64;
    assert!(mae < 0.02, "{mae}");
}

/// `log N(x_i; mu, sigma)` of the rows of `x`, by Cholesky.
fn log_normal(x: MatRef<'_, f64>, mu: &[f64], sigma: MatRef<'_, f64>) -> Vec<f64> {
    let d = mu.len();
    let llt = sigma.llt(faer::Side::Lower).unwrap();
    let l = llt.L();
    let log_det: f64 = (0..d).map(|j| 2.0 * l[(j, j)].ln()).sum();
    (0..x.nrows())
        .map(|i| {
            let mut y = Mat::from_fn(d, 1, |j, _| x[(i, j)] - mu[j]);
            faer::linalg::triangular_solve::solve_lower_triangular_in_place(
                l,
                y.as_mut(),
                Par::Seq,
            );
            -0.5 * (d as f64 * (2.0 * core::f64::consts::PI).ln() + log_det + y.squared_norm_l2())
        })
        .collect()
}

/// Mean and covariance of the rows of `x` (columns `cols`).
fn moments(x: MatRef<'_, f64>) -> (Vec<f64>, Mat<f64>) {
    let (m, _) = column_moments(x, &LocalReducer).unwrap();
    let c = covariance(x, &m, &LocalReducer).unwrap();
    (m, c)
}

#[test]
fn moment_matching_reproduces_the_training_moments() {
    // Mixture of four Gaussians in 3 dims (non-Gaussian block).
    let n = 1000;
    let z = normals(n, 3, 31);
    let centres = [
        [2.0, 0.0, 1.0],
        [-2.0, 0.5, 0.0],
        [0.0, 3.0, -1.0],
        [0.5, -2.5, 2.0],
    ];
    let train = Mat::from_fn(n, 3, |i, j| centres[i % 4][j] + 0.4 * z[(i, j)]);
    let (m_train, c_train) = moments(train.as_ref());
    let solver = SolverOptions::default();
    let mut errs = vec![];
    for mm in [true, false] {
        let opts = FlowOptions {
            core_model: CoreModelChoice::Flow,
            flow_energy: 1.0,
            flow_noise_gap: 0.0,
            // On the standardised principal-component scores 150 steps
            // already train this flow to a covariance error of 0.027
            // without the correction; 60 steps leave it visibly off.
            steps: 60,
            moment_matching: mm,
            ..small_opts()
        };
        let model = CoreModel::fit(train.as_ref(), &opts, &mut |_, _, _| true).unwrap();
        let gen = draw(&model, &solver, 9, 0, 10_000);
        let (m_gen, c_gen) = moments(gen.as_ref());
        let mean_err = (0..3)
            .map(|j| (m_gen[j] - m_train[j]).abs() / c_train[(j, j)].sqrt())
            .fold(0.0, f64::max);
        let cov_err = (&c_gen - &c_train).norm_l2() / c_train.norm_l2();
        eprintln!(
            "moment matching {mm}: mean error {mean_err:.4} sd, covariance error {cov_err:.4}"
        );
        errs.push((mean_err, cov_err));
    }
    // Sampling error of 4000 + 10000 draws is about 0.02 sd in the mean
    // and a few percent in the covariance.
    assert!(errs[0].0 < 0.06 && errs[0].1 < 0.06, "{errs:?}");
    // An under-trained flow without the correction is visibly off.
    assert!(errs[1].1 > 2.0 * errs[0].1, "{errs:?}");
}

#[test]
fn auto_falls_back_to_the_gaussian_below_three_samples_per_flow_dimension() {
    // Five i.i.d. coordinates: the flow block holds all k = 5.
    for (n, want) in [(14, CoreModelKind::Gaussian), (15, CoreModelKind::Flow)] {
        let train = normals(n, 5, 41);
        let opts = FlowOptions {
            steps: 5,
            hidden: 8,
            layers: 1,
            moment_samples: 100,
            ..small_opts()
        };
        let model = CoreModel::fit(train.as_ref(), &opts, &mut |_, _, _| true).unwrap();
        assert_eq!(model.info().flow_block, 5);
        assert_eq!(model.kind(), want, "N = {n}");
        assert_eq!(
            model.flow_dim(),
            if want == CoreModelKind::Flow { 5 } else { 0 }
        );
    }
    // With a hold-out, the rule counts the cores of the split (18 - 3 =
    // 15 = 3 k: the flow is a candidate), the kind with the better
    // held-out log-likelihood wins, and it is refitted on all 18.
    let train = normals(18, 5, 42);
    let opts = FlowOptions {
        steps: 5,
        hidden: 8,
        layers: 1,
        moment_samples: 100,
        holdout_fraction: 0.2,
        ..small_opts()
    };
    let model = CoreModel::fit(train.as_ref(), &opts, &mut |_, _, _| true).unwrap();
    let info = model.info();
    assert_eq!((info.train_count, info.holdout_count), (18, 3));
    assert!(info.heldout_loglik_gaussian.is_finite());
    assert!(!info.heldout_loglik_flow.is_nan());
    let want = if info.heldout_loglik_flow > info.heldout_loglik_gaussian {
        CoreModelKind::Flow
    } else {
        CoreModelKind::Gaussian
    };
    assert_eq!(model.kind(), want);
}

fn assert_bitwise(a: MatRef<'_, f64>, b: MatRef<'_, f64>, what: &str) {
    assert_eq!(a.shape(), b.shape());
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            assert_eq!(
                a[(i, j)].to_bits(),
                b[(i, j)].to_bits(),
                "{what}: ({i}, {j})"
            );
        }
    }
}

#[test]
fn samples_depend_only_on_seed_and_index() {
    let train = ring8(400, 4);
    let base = FlowOptions {
        flow_energy: 0.99,
        steps: 50,
        hidden: 48,
        moment_samples: 200,
        ..small_opts()
    };
    let models = [
        CoreModel::fit(train.as_ref(), &base, &mut |_, _, _| true).unwrap(),
        CoreModel::fit(
            train.as_ref(),
            &FlowOptions {
                precision: Precision::F64,
                ..base
            },
            &mut |_, _, _| true,
        )
        .unwrap(),
        CoreModel::fit(
            train.as_ref(),
            &FlowOptions {
                core_model: CoreModelChoice::Gaussian,
                ..base
            },
            &mut |_, _, _| true,
        )
        .unwrap(),
        CoreModel::fit(
            train.as_ref(),
            &FlowOptions {
                core_model: CoreModelChoice::Mixture,
                ..base
            },
            &mut |_, _, _| true,
        )
        .unwrap(),
    ];
    for model in &models {
        for solver in [
            SolverOptions::default(),
            SolverOptions {
                solver: Solver::Euler,
                steps: 7,
                ..Default::default()
            },
            SolverOptions {
                solver: Solver::Dopri5,
                ..Default::default()
            },
        ] {
            let what = format!("{:?} {:?}", model.kind(), solver.solver);
            // One call for 100 samples = calls for 37 and 63.
            let hundred = draw(model, &solver, 77, 0, 100);
            let (p, q) = (
                draw(model, &solver, 77, 0, 37),
                draw(model, &solver, 77, 37, 63),
            );
            assert_bitwise(p.as_ref(), hundred.as_ref().subrows(0, 37), &what);
            assert_bitwise(q.as_ref(), hundred.as_ref().subrows(37, 63), &what);
            // Across sampling chunks (256 rows) and single samples.
            let all = draw(model, &solver, 77, 0, 300);
            let a = draw(model, &solver, 77, 0, 37);
            let b = draw(model, &solver, 77, 37, 263);
            assert_bitwise(a.as_ref(), all.as_ref().subrows(0, 37), &what);
            assert_bitwise(b.as_ref(), all.as_ref().subrows(37, 263), &what);
            for idx in [0u64, 5, 299] {
                let one = draw(model, &solver, 77, idx, 1);
                assert_bitwise(one.as_ref(), all.as_ref().subrows(idx as usize, 1), &what);
            }
            let other = draw(model, &solver, 78, 0, 1);
            assert_ne!(other[(0, 0)], all[(0, 0)]);
        }
        // Exact round trip through the parts.
        let back = CoreModel::from_parts(model.to_parts()).unwrap();
        let s = SolverOptions::default();
        assert_bitwise(
            draw(&back, &s, 3, 10, 20).as_ref(),
            draw(model, &s, 3, 10, 20).as_ref(),
            "parts",
        );
        let x = draw(model, &s, 4, 0, 5);
        assert_eq!(
            log_probs(&back, &s, x.as_ref()),
            log_probs(model, &s, x.as_ref())
        );
    }
    // Fits are deterministic for a seed.
    let again = CoreModel::fit(train.as_ref(), &base, &mut |_, _, _| true).unwrap();
    let (p, q) = (again.to_parts(), models[0].to_parts());
    let (fp, fq) = (p.flow.as_ref().unwrap(), q.flow.as_ref().unwrap());
    assert!(
        fp.params == fq.params,
        "network parameters differ between fits"
    );
    assert_eq!(fp.mm_shift, fq.mm_shift);
    assert_eq!(fp.mm_matrix, fq.mm_matrix);
    // (Debug strings: the NaN diagnostics compare equal there.)
    assert_eq!(
        format!("{p:?}"),
        format!("{q:?}"),
        "parts differ between fits"
    );
}

#[test]
fn errors_name_the_argument() {
    let train = normals(50, 3, 51);
    let opts = FlowOptions {
        steps: 3,
        hidden: 8,
        layers: 1,
        moment_samples: 50,
        ..small_opts()
    };
    let mut bad = train.clone();
    bad[(3, 1)] = f64::NAN;
    let e = CoreModel::fit(bad.as_ref(), &opts, &mut |_, _, _| true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NonFinite);
    assert!(e.message().starts_with("cores:"));
    let e = CoreModel::fit(train.as_ref(), &opts, &mut |s, _, _| s < 2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    let e = CoreModel::fit(Mat::<f64>::zeros(10, 3).as_ref(), &opts, &mut |_, _, _| {
        true
    })
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);

    let model = CoreModel::fit(train.as_ref(), &opts, &mut |_, _, _| true).unwrap();
    let s = SolverOptions::default();
    let mut out = Mat::<f64>::zeros(4, 2);
    let mut mem = MemBuffer::new(model.sample_scratch(4, &s));
    let e = model
        .sample(&s, 0, 0, out.as_mut(), MemStack::new(&mut mem))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    assert!(e.message().starts_with("out:"));
    let mut out = Mat::<f64>::zeros(4, 3);
    let mut small = MemBuffer::new(StackReq::new::<u8>(64));
    let e = model
        .sample(&s, 0, 0, out.as_mut(), MemStack::new(&mut small))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Workspace);
    let bad_solver = SolverOptions { steps: 0, ..s };
    let e = model
        .sample(&bad_solver, 0, 0, out.as_mut(), MemStack::new(&mut mem))
        .unwrap_err();
    assert!(e.message().starts_with("solver.steps:"));
    let mut lp = vec![0.0; 3];
    let mut mem = MemBuffer::new(model.log_prob_scratch(4, &s));
    let e = model
        .log_prob(&s, out.as_ref(), &mut lp, MemStack::new(&mut mem))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    assert!(e.message().starts_with("out:"));
    out[(1, 1)] = f64::INFINITY;
    let mut lp = vec![0.0; 4];
    let e = model
        .log_prob(&s, out.as_ref(), &mut lp, MemStack::new(&mut mem))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NonFinite);
}

#[test]
fn corrupt_parts_are_format_errors() {
    let train = normals(60, 3, 52);
    let opts = FlowOptions {
        steps: 3,
        hidden: 8,
        layers: 1,
        moment_samples: 50,
        ..small_opts()
    };
    let model = CoreModel::fit(train.as_ref(), &opts, &mut |_, _, _| true).unwrap();
    let good = model.to_parts();
    let mut cases: Vec<CoreModelParts> = vec![];
    let mut p = good.clone();
    p.flow.as_mut().unwrap().scale[0] = -1.0;
    cases.push(p);
    let mut p = good.clone();
    p.basis.pop();
    cases.push(p);
    let mut p = good.clone();
    p.basis[0] *= 1.5;
    cases.push(p);
    let mut p = good.clone();
    p.variances[1] = -1.0;
    cases.push(p);
    let mut p = good.clone();
    p.ridge = 0.0;
    cases.push(p);
    let mut p = good.clone();
    p.mean[2] = f64::NAN;
    cases.push(p);
    let mut p = good.clone();
    p.info.kind = CoreModelKind::Gaussian;
    cases.push(p);
    let mut p = good.clone();
    if let NetParams::F32(v) = &mut p.flow.as_mut().unwrap().params {
        v.pop();
    }
    cases.push(p);
    let mut p = good.clone();
    p.flow
        .as_mut()
        .unwrap()
        .mm_matrix
        .iter_mut()
        .for_each(|v| *v = 0.0);
    cases.push(p);
    let mut p = good.clone();
    p.dim = 4;
    cases.push(p);
    for c in cases {
        assert_eq!(
            CoreModel::from_parts(c).unwrap_err().kind(),
            ErrorKind::Format
        );
    }
}

/// Eight signal variances (2.0 .. 0.6) and 392 noise variances decaying
/// smoothly from `top` by 1 % per component.
fn signal_and_noise(top: f64) -> (Vec<f64>, f64) {
    let mut v: Vec<f64> = (0..8).map(|j| 2.0 - 0.2 * j as f64).collect();
    v.extend((0..392).map(|j| top * 0.99f64.powi(j)));
    let total = v.iter().sum();
    (v, total)
}

#[test]
fn the_noise_floor_ends_the_flow_block_at_the_gap() {
    // Noise holding about 2.3 % of the variance: the energy rule takes
    // most of it into the block, the gap rule stops at the signal.
    let (v, total) = signal_and_noise(2e-3);
    let energy_only = flow_block(&v, total, 0.999, 0.0, 0).size;
    assert!(energy_only > 200, "{energy_only}");
    assert_eq!(
        flow_block(&v, total, 0.999, 10.0, 0),
        BlockChoice {
            size: 8,
            noise_from: Some(8)
        }
    );
    assert_eq!(flow_block(&v, total, 0.999, 0.0, 0).noise_from, None);
    // The gap must be at least the ratio asked for: 0.6 / 2e-3 = 300.
    assert_eq!(flow_block(&v, total, 0.999, 299.0, 0).size, 8);
    assert_eq!(flow_block(&v, total, 0.999, 301.0, 0).size, energy_only);
    // The cap still applies, and so does the energy rule when it ends
    // the block first.
    assert_eq!(
        flow_block(&v, total, 0.999, 10.0, 5),
        BlockChoice {
            size: 5,
            noise_from: Some(8)
        }
    );
    assert_eq!(flow_block(&v, total, 0.5, 10.0, 0).size, 3);
}

#[test]
fn the_noise_floor_needs_little_variance_below_the_gap() {
    // One dominant direction 20x above the next, with 10 % of the
    // variance in the rest: a gap between signals, not a noise floor.
    let v = [90.0, 4.5, 3.0, 2.5, 1e-6, 1e-6];
    let total: f64 = v.iter().sum();
    assert_eq!(flow_block(&v, total, 0.999, 10.0, 0).size, 4);
    // With 4 % below it, the same ratio is taken as the floor.
    let v = [96.0, 1.5, 1.5, 1.0, 1e-6, 1e-6];
    let total: f64 = v.iter().sum();
    assert_eq!(flow_block(&v, total, 0.999, 10.0, 0).size, 1);
    // Directions outside the components count in the tail: with a
    // third of the variance there, no gap is a floor and the energy
    // rule takes every component.
    assert_eq!(flow_block(&v, 1.5 * total, 0.999, 10.0, 0).size, 6);
}

#[test]
fn components_below_the_noise_floor_get_at_most_the_noise_variance() {
    // Four signal directions (variances 4, 3, 2, 1) and, in the other
    // 26 coordinates, estimation error of variance 1e-2: 25x the white
    // noise variance 4e-4 the cores' matrices carry.
    let (n, d) = (400, 30);
    let mut z = vec![0.0; n * d];
    rng::fill_normal(&mut rng::stream(5, 0), &mut z);
    let x = Mat::from_fn(n, d, |i, j| {
        let var = if j < 4 { (4 - j) as f64 } else { 1e-2 };
        var.sqrt() * z[i * d + j]
    });
    let opts = FlowOptions {
        core_model: CoreModelChoice::Gaussian,
        holdout_fraction: 0.0,
        ..FlowOptions::default()
    };
    let fit = |noise| {
        CoreModel::fit_with_reducer(x.as_ref(), &opts, noise, &LocalReducer, &mut |_, _, _| true)
            .unwrap()
            .to_parts()
    };
    let plain = fit(None);
    let capped = fit(Some(4e-4));
    assert_eq!(plain.info.flow_block, 4);
    assert_eq!(capped.info.flow_block, 4);
    assert!(plain.variances[4..].iter().all(|&l| l > 5e-3));
    // The signal keeps its variances bitwise; the rest is capped.
    assert_eq!(plain.variances[..4], capped.variances[..4]);
    assert!(capped.variances[4..].iter().all(|&l| l == 4e-4));
    // Without a floor (the energy rule alone) nothing is capped.
    let energy_only = FlowOptions {
        flow_noise_gap: 0.0,
        ..opts
    };
    let p = CoreModel::fit_with_reducer(
        x.as_ref(),
        &energy_only,
        Some(4e-4),
        &LocalReducer,
        &mut |_, _, _| true,
    )
    .unwrap()
    .to_parts();
    assert_eq!(p.variances, plain.variances);
}

#[test]
fn the_flow_block_has_at_least_one_component() {
    assert_eq!(flow_block(&[1.0, 0.5], 1.5, 1e-9, 10.0, 0).size, 1);
    assert_eq!(flow_block(&[0.0, 0.0], 0.0, 0.999, 10.0, 0).size, 1);
}

macro_rules! invalid_option_tests {
    ($($name:ident: $field:literal => $mutate:expr;)*) => {$(
        #[test]
        fn $name() {
            let mut o = FlowOptions::default();
            #[allow(clippy::redundant_closure_call)]
            ($mutate)(&mut o);
            let e = o.check().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(
                e.message().starts_with(concat!("opts.", $field, ":")),
                "{}",
                e.message()
            );
        }
    )*};
}

invalid_option_tests! {
    rejects_zero_hidden: "hidden" => |o: &mut FlowOptions| o.hidden = 0;
    rejects_zero_layers: "layers" => |o: &mut FlowOptions| o.layers = 0;
    rejects_zero_time_freqs: "time_freqs" => |o: &mut FlowOptions| o.time_freqs = 0;
    rejects_zero_flow_energy: "flow_energy" => |o: &mut FlowOptions| o.flow_energy = 0.0;
    rejects_flow_energy_above_one: "flow_energy" => |o: &mut FlowOptions| o.flow_energy = 1.5;
    rejects_nan_flow_energy: "flow_energy" => |o: &mut FlowOptions| o.flow_energy = f64::NAN;
    rejects_negative_flow_noise_gap: "flow_noise_gap" => |o: &mut FlowOptions| o.flow_noise_gap = -10.0;
    rejects_flow_noise_gap_below_one: "flow_noise_gap" => |o: &mut FlowOptions| o.flow_noise_gap = 0.5;
    rejects_nan_flow_noise_gap: "flow_noise_gap" => |o: &mut FlowOptions| o.flow_noise_gap = f64::NAN;
    rejects_infinite_flow_noise_gap: "flow_noise_gap" => |o: &mut FlowOptions| o.flow_noise_gap = f64::INFINITY;
    rejects_zero_steps: "steps" => |o: &mut FlowOptions| o.steps = 0;
    rejects_zero_batch_size: "batch_size" => |o: &mut FlowOptions| o.batch_size = 0;
    rejects_zero_learning_rate: "learning_rate" => |o: &mut FlowOptions| o.learning_rate = 0.0;
    rejects_infinite_learning_rate: "learning_rate" => |o: &mut FlowOptions| o.learning_rate = f64::INFINITY;
    rejects_negative_weight_decay: "weight_decay" => |o: &mut FlowOptions| o.weight_decay = -1.0;
    rejects_ema_decay_of_one: "ema_decay" => |o: &mut FlowOptions| o.ema_decay = 1.0;
    rejects_negative_clip_norm: "clip_norm" => |o: &mut FlowOptions| o.clip_norm = -0.5;
    rejects_negative_holdout: "holdout_fraction" => |o: &mut FlowOptions| o.holdout_fraction = -0.1;
    rejects_large_holdout: "holdout_fraction" => |o: &mut FlowOptions| o.holdout_fraction = 0.95;
    rejects_tiny_moment_samples: "moment_samples" => |o: &mut FlowOptions| o.moment_samples = 1;
    rejects_zero_solver_steps: "solver.steps" => |o: &mut FlowOptions| o.solver.steps = 0;
    rejects_bad_solver_rtol: "solver.rtol" => |o: &mut FlowOptions| {
        o.solver.solver = Solver::Dopri5;
        o.solver.rtol = -1.0;
    };
}

#[test]
fn zero_steps_are_fine_for_a_forced_gaussian() {
    let o = FlowOptions {
        steps: 0,
        core_model: CoreModelChoice::Gaussian,
        ..Default::default()
    };
    o.check().unwrap();
}

/// Three Gaussian clusters in the first 3 of `d` coordinates (weights 0.5,
/// 0.3, 0.2, well separated), small isotropic noise in the rest.
fn three_clusters(n: usize, d: usize, seed: u64) -> Mat<f64> {
    let centres = [[0.0, 0.0, 0.0], [6.0, 1.0, -2.0], [-3.0, 5.0, 4.0]];
    let mut r = rng::stream(seed, 1 << 41);
    normals(n, d, seed).tap_rows(|_, row| {
        let u = rng::uniform(&mut r);
        let c = if u < 0.5 {
            0
        } else if u < 0.8 {
            1
        } else {
            2
        };
        for (j, v) in row.iter_mut().enumerate() {
            *v = if j < 3 { centres[c][j] + *v } else { 0.05 * *v };
        }
    })
}

/// Row-wise edits of an owned matrix.
trait TapRows {
    fn tap_rows(self, f: impl FnMut(usize, &mut [f64])) -> Mat<f64>;
}

impl TapRows for Mat<f64> {
    fn tap_rows(mut self, mut f: impl FnMut(usize, &mut [f64])) -> Mat<f64> {
        let d = self.ncols();
        let mut row = vec![0.0; d];
        for i in 0..self.nrows() {
            for j in 0..d {
                row[j] = self[(i, j)];
            }
            f(i, &mut row);
            for j in 0..d {
                self[(i, j)] = row[j];
            }
        }
        self
    }
}

fn mixture_opts(core_model: CoreModelChoice) -> FlowOptions {
    FlowOptions {
        core_model,
        steps: 300,
        ..small_opts()
    }
}

/// The dense `d`-dimensional law of a mixture model: for every component,
/// its weight, mean `mu + Q_k (sigma * m_c)` and covariance
/// `Q_k D S_c D Q_k^T + sum_{j > k} (lambda_j + delta) q_j q_j^T + delta
/// (I - Q Q^T)`, `D = diag(sigma)`.
fn dense_mixture(model: &CoreModel) -> Vec<(f64, Vec<f64>, Mat<f64>)> {
    let p = model.to_parts();
    let d = p.dim;
    let q = p.variances.len();
    let mix = p.mixture.expect("a mixture model");
    let k = mix.scale.len();
    let basis = MatRef::from_column_major_slice(&p.basis, d, q);
    let mut rest = Mat::<f64>::identity(d, d) * p.ridge;
    for j in 0..q {
        let w = if j < k { -p.ridge } else { p.variances[j] };
        rest += (basis.col(j) * basis.col(j).transpose()) * w;
    }
    let qk = basis.subcols(0, k);
    (0..mix.weights.len())
        .map(|c| {
            let l = MatRef::from_column_major_slice(&mix.chols[c * k * k..(c + 1) * k * k], k, k);
            let s = l * l.transpose();
            let ds = Mat::from_fn(k, k, |a, b| mix.scale[a] * s[(a, b)] * mix.scale[b]);
            let cov = qk * &ds * qk.transpose() + &rest;
            let m = Mat::from_fn(k, 1, |a, _| mix.scale[a] * mix.means[c * k + a]);
            let shift = qk * &m;
            let mean = (0..d).map(|i| p.mean[i] + shift[(i, 0)]).collect();
            (mix.weights[c], mean, cov)
        })
        .collect()
}

#[test]
fn em_recovers_a_planted_mixture_and_bic_its_size() {
    let x = three_clusters(1500, 6, 3);
    let model = CoreModel::fit(
        x.as_ref(),
        &mixture_opts(CoreModelChoice::Mixture),
        &mut |_, _, _| true,
    )
    .unwrap();
    let info = model.info();
    assert_eq!(model.kind(), CoreModelKind::Mixture);
    assert_eq!(info.mixture_components, 3, "{info:?}");
    assert!(
        info.mixture_block >= 2 && info.mixture_block <= 3,
        "{info:?}"
    );
    let mut comps = dense_mixture(&model);
    comps.sort_by(|a, b| b.0.total_cmp(&a.0));
    let centres = [[0.0, 0.0, 0.0], [6.0, 1.0, -2.0], [-3.0, 5.0, 4.0]];
    for ((w, mean, _), (tw, tc)) in comps.iter().zip([0.5, 0.3, 0.2].iter().zip(centres)) {
        assert!((w - tw).abs() < 0.04, "weight {w} vs {tw}");
        for j in 0..3 {
            assert!((mean[j] - tc[j]).abs() < 0.2, "mean {mean:?} vs {tc:?}");
        }
    }
}

#[test]
fn log_prob_of_a_mixture_matches_its_dense_density() {
    let x = three_clusters(900, 5, 7);
    let model = CoreModel::fit(
        x.as_ref(),
        &mixture_opts(CoreModelChoice::Mixture),
        &mut |_, _, _| true,
    )
    .unwrap();
    let comps = dense_mixture(&model);
    let probe = three_clusters(50, 5, 8);
    let got = log_probs(&model, &SolverOptions::default(), probe.as_ref());
    let per: Vec<Vec<f64>> = comps
        .iter()
        .map(|(w, m, s)| {
            log_normal(probe.as_ref(), m, s.as_ref())
                .into_iter()
                .map(|v| v + w.ln())
                .collect()
        })
        .collect();
    for i in 0..probe.nrows() {
        let top = per.iter().map(|p| p[i]).fold(f64::NEG_INFINITY, f64::max);
        let want = top + per.iter().map(|p| (p[i] - top).exp()).sum::<f64>().ln();
        assert!(
            (got[i] - want).abs() < 1e-8 * (1.0 + want.abs()),
            "row {i}: {} vs {want}",
            got[i]
        );
    }
}

#[test]
fn mixture_draws_have_the_mixture_moments() {
    let x = three_clusters(900, 5, 11);
    let model = CoreModel::fit(
        x.as_ref(),
        &mixture_opts(CoreModelChoice::Mixture),
        &mut |_, _, _| true,
    )
    .unwrap();
    let comps = dense_mixture(&model);
    let d = 5;
    let mut mean = vec![0.0; d];
    let mut second = Mat::<f64>::zeros(d, d);
    for (w, m, s) in &comps {
        for a in 0..d {
            mean[a] += w * m[a];
            for b in 0..d {
                second[(a, b)] += w * (s[(a, b)] + m[a] * m[b]);
            }
        }
    }
    let cov = Mat::from_fn(d, d, |a, b| second[(a, b)] - mean[a] * mean[b]);
    let n = 40_000;
    let draws = draw(&model, &SolverOptions::default(), 5, 0, n);
    let (dm, dc) = moments(draws.as_ref());
    for a in 0..d {
        let se = (cov[(a, a)] / n as f64).sqrt();
        assert!(
            (dm[a] - mean[a]).abs() < 5.0 * se + 1e-12,
            "mean {a}: {} vs {}",
            dm[a],
            mean[a]
        );
        for b in 0..d {
            let se = ((cov[(a, a)] * cov[(b, b)] + cov[(a, b)].powi(2)) / n as f64).sqrt();
            assert!(
                (dc[(a, b)] - cov[(a, b)]).abs() < 6.0 * se + 1e-9,
                "cov ({a}, {b}): {} vs {}",
                dc[(a, b)],
                cov[(a, b)]
            );
        }
    }
}

#[test]
fn bic_takes_no_mixture_on_gaussian_cores() {
    for seed in 1..=4 {
        let z = normals(400, 4, 70 + seed);
        let x = Mat::from_fn(400, 4, |i, j| z[(i, j)] + 0.5 * z[(i, 0)] * (j as f64));
        let o = FlowOptions {
            holdout_fraction: 0.2,
            seed,
            ..mixture_opts(CoreModelChoice::Auto)
        };
        let m = CoreModel::fit(x.as_ref(), &o, &mut |_, _, _| true).unwrap();
        let info = m.info();
        assert_eq!(m.kind(), CoreModelKind::Gaussian, "seed {seed}: {info:?}");
        // BIC found no mixture worth a hold-out test.
        assert!(
            info.heldout_loglik_mixture.is_nan(),
            "seed {seed}: {info:?}"
        );
        assert_eq!(info.mixture_components, 0);
    }
}

#[test]
fn corrupt_mixture_parts_are_format_errors() {
    let x = three_clusters(600, 4, 13);
    let model = CoreModel::fit(
        x.as_ref(),
        &mixture_opts(CoreModelChoice::Mixture),
        &mut |_, _, _| true,
    )
    .unwrap();
    let good = model.to_parts();
    assert!(CoreModel::from_parts(good.clone()).is_ok());
    let k = good.mixture.as_ref().unwrap().scale.len();
    type Edit = Box<dyn Fn(&mut MixtureParts)>;
    let edits: Vec<Edit> = vec![
        Box::new(|m| m.weights[0] += 0.1),
        Box::new(|m| m.weights[0] = -m.weights[0]),
        Box::new(|m| m.means.pop().map(|_| ()).unwrap()),
        Box::new(|m| m.chols[0] = 0.0),
        Box::new(move |m| {
            if k > 1 {
                m.chols[k] = 1.0; // above the diagonal of L_1
            } else {
                m.chols[0] = f64::INFINITY;
            }
        }),
        Box::new(|m| m.scale[0] = 0.0),
        Box::new(|m| m.means[0] = f64::NAN),
        Box::new(|m| {
            m.weights.clear();
            m.means.clear();
            m.chols.clear();
        }),
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut p = good.clone();
        edit(p.mixture.as_mut().unwrap());
        let e = CoreModel::from_parts(p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Format, "edit {i}: {e}");
    }
    // A mixture block on another kind, or none on the mixture kind.
    let mut p = good.clone();
    p.info.kind = CoreModelKind::Gaussian;
    assert_eq!(
        CoreModel::from_parts(p).unwrap_err().kind(),
        ErrorKind::Format
    );
    let mut p = good;
    p.mixture = None;
    assert_eq!(
        CoreModel::from_parts(p).unwrap_err().kind(),
        ErrorKind::Format
    );
}

#[test]
fn a_flow_on_few_cores_trains_only_as_long_as_held_out_cores_improve() {
    // 60 ring cores (48 for training), a wide network, many steps.
    let x = ring8(60, 21);
    let opts = FlowOptions {
        core_model: CoreModelChoice::Flow,
        holdout_fraction: 0.2,
        hidden: 128,
        layers: 3,
        steps: 6000,
        ..small_opts()
    };
    let mut calls = 0usize;
    let model = CoreModel::fit(x.as_ref(), &opts, &mut |_, _, _| {
        calls += 1;
        true
    })
    .unwrap();
    let info = model.info();
    assert_eq!(model.kind(), CoreModelKind::Flow);
    assert!(
        info.flow_train_steps > 0 && info.flow_train_steps < opts.steps,
        "{info:?}"
    );
    // The split's run stopped early and the refit trained as long as the
    // best held-out step: far fewer than two full runs.
    assert!(calls < 2 * opts.steps, "{calls} steps");
    // Without a hold-out there is nothing to stop on.
    let full = CoreModel::fit(
        x.as_ref(),
        &FlowOptions {
            holdout_fraction: 0.0,
            steps: 300,
            ..opts
        },
        &mut |_, _, _| true,
    )
    .unwrap();
    assert_eq!(full.info().flow_train_steps, 300);
}

#[test]
fn auto_takes_a_non_gaussian_kind_on_well_separated_clusters() {
    for seed in 1..=3 {
        let x = three_clusters(800, 6, 30 + seed);
        let o = FlowOptions {
            holdout_fraction: 0.2,
            seed,
            ..mixture_opts(CoreModelChoice::Auto)
        };
        let m = CoreModel::fit(x.as_ref(), &o, &mut |_, _, _| true).unwrap();
        let info = m.info();
        assert_ne!(m.kind(), CoreModelKind::Gaussian, "seed {seed}: {info:?}");
        assert!(
            info.heldout_loglik_mixture > info.heldout_loglik_gaussian + 0.5,
            "seed {seed}: {info:?}"
        );
        assert_eq!(info.train_count, 800);
    }
}
