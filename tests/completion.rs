//! Incomplete training data and completion of new matrices, through the
//! public Rust API.

use coreflow::datasets::{block_mask, mcar_mask, planted_low_rank, Planted, PlantedSpec};
use coreflow::metrics::subspace_distance;
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{ErrorKind, FitOptions, MatrixBatch, MatrixBatchMut, Model, Stage, SubspaceMethod};
use faer::linalg::solvers::SolveLstsq;
use faer::Mat;

fn planted(count: usize, m: usize, n: usize, r: usize, s: usize, noise: f64, seed: u64) -> Planted {
    let mut spec = PlantedSpec::new(count, m, n, r, s, seed);
    spec.noise = noise;
    planted_low_rank(&spec).unwrap()
}

fn opts(r: usize, s: usize) -> FitOptions {
    FitOptions {
        rank_rows: r,
        rank_cols: s,
        threads: 1,
        ..FitOptions::default().geometry_only()
    }
}

/// Completes sample `i` with the true bases: least-squares core on the
/// observed entries (the oracle of the acceptance criterion).
fn oracle_completion(p: &Planted, mask: &[u8], i: usize) -> Mat<f64> {
    let (m, n) = (p.data.rows, p.data.cols);
    let (r, s) = (p.u.ncols(), p.v.ncols());
    let x = p.data.sample(i);
    let obs: Vec<(usize, usize)> = (0..m)
        .flat_map(|a| (0..n).map(move |b| (a, b)))
        .filter(|&(a, b)| mask[i * m * n + a * n + b] != 0)
        .collect();
    let design = Mat::from_fn(obs.len(), r * s, |k, j| {
        let (a, b) = obs[k];
        p.u[(a, j % r)] * p.v[(b, j / r)]
    });
    let rhs = Mat::from_fn(obs.len(), 1, |k, _| x[obs[k]]);
    let c = design.qr().solve_lstsq(&rhs);
    let cm = Mat::from_fn(r, s, |a, b| c[(a + b * r, 0)]);
    &p.u * cm * p.v.transpose()
}

/// ||P^perp(Zhat - X)|| / ||P^perp(X)|| over all samples, with `pred(i)` the
/// completed sample i.
fn held_out_error(p: &Planted, mask: &[u8], pred: impl Fn(usize) -> Mat<f64>) -> f64 {
    let (m, n) = (p.data.rows, p.data.cols);
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..p.data.count {
        let z = pred(i);
        let x = p.data.sample(i);
        for a in 0..m {
            for b in 0..n {
                if mask[i * m * n + a * n + b] == 0 {
                    num += (z[(a, b)] - x[(a, b)]).powi(2);
                    den += x[(a, b)].powi(2);
                }
            }
        }
    }
    (num / den).sqrt()
}

/// Completes the training matrices themselves through `Model::complete`.
fn complete_all(
    model: &Model,
    data: &[f64],
    mask: &[u8],
    count: usize,
    m: usize,
    n: usize,
) -> Vec<f64> {
    let batch = MatrixBatch::from_c_order(data, count, m, n)
        .unwrap()
        .with_mask(mask)
        .unwrap();
    let mut out = vec![0.0; data.len()];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, count, m, n).unwrap();
    let mut buf = MemBuffer::new(model.complete_scratch(count));
    model
        .complete(&batch, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    out
}

#[test]
fn recovers_subspaces_and_completes_near_the_oracle_at_40_percent_missing() {
    let (count, m, n, r, s) = (200, 40, 30, 4, 3);
    let p = planted(count, m, n, r, s, 1e-2, 31);
    let mask = mcar_mask(count, m, n, 0.4, 32).unwrap();
    let batch = p.data.batch_with_mask(&mask).unwrap();
    let model = Model::fit(&batch, &opts(r, s)).unwrap();
    let info = model.info();
    assert!(info.masked && info.completion_converged, "{info:?}");
    let du = subspace_distance(model.u(), p.u.as_ref()).unwrap();
    let dv = subspace_distance(model.v(), p.v.as_ref()).unwrap();
    assert!(du < 0.01 && dv < 0.01, "subspace distances {du} {dv}");
    let ours = complete_all(&model, &p.data.data, &mask, count, m, n);
    let ours_err = held_out_error(&p, &mask, |i| {
        Mat::from_fn(m, n, |a, b| ours[i * m * n + a * n + b])
    });
    let oracle_err = held_out_error(&p, &mask, |i| oracle_completion(&p, &mask, i));
    println!("held-out completion error: ours {ours_err:.4e}, true bases {oracle_err:.4e}");
    assert!(
        ours_err < 1.5 * oracle_err,
        "ours {ours_err} vs oracle {oracle_err}"
    );
    // Observed entries come back bitwise.
    for (k, &o) in mask.iter().enumerate() {
        if o != 0 {
            assert_eq!(ours[k].to_bits(), p.data.data[k].to_bits());
        }
    }
}

#[test]
fn masked_objective_never_increases() {
    for method in [SubspaceMethod::Hooi, SubspaceMethod::Riemannian] {
        let p = planted(80, 30, 24, 3, 3, 1e-2, 33);
        let mask = mcar_mask(80, 30, 24, 0.5, 34).unwrap();
        let batch = p.data.batch_with_mask(&mask).unwrap();
        let mut history = Vec::new();
        let o = FitOptions {
            subspace_method: method,
            completion_tol: 0.0,
            completion_max_iter: 30,
            ..opts(3, 3)
        };
        Model::fit_with_progress(&batch, &o, &mut |pr| {
            if pr.stage == Stage::Completion {
                history.push(pr.loss);
            }
            true
        })
        .unwrap();
        assert!(history.len() > 10);
        for w in history.windows(2) {
            assert!(
                w[1] <= w[0] * (1.0 + 1e-12),
                "{method:?}: F rose from {} to {}",
                w[0],
                w[1]
            );
        }
        assert!(
            history.last().unwrap() < &(0.5 * history[0]),
            "{method:?}: {history:?}"
        );
    }
}

#[test]
fn a_mask_of_all_ones_matches_the_complete_data_fit() {
    let p = planted(50, 24, 20, 3, 3, 1e-2, 35);
    let ones = vec![1u8; p.data.data.len()];
    let complete = Model::fit(&p.data.batch(), &opts(3, 3)).unwrap();
    let o = FitOptions {
        completion_tol: 1e-15,
        completion_max_iter: 200,
        ..opts(3, 3)
    };
    let masked = Model::fit(&p.data.batch_with_mask(&ones).unwrap(), &o).unwrap();
    let (a, b) = (
        complete.info().subspace_objective,
        masked.info().subspace_objective,
    );
    assert!(((a - b) / a).abs() < 1e-9, "objectives {a} vs {b}");
    assert!((complete.u() - masked.u()).norm_max() < 1e-6);
}

#[test]
fn both_m_steps_reach_the_same_objective() {
    let p = planted(100, 30, 24, 3, 3, 1e-2, 36);
    let mask = mcar_mask(100, 30, 24, 0.3, 37).unwrap();
    let batch = p.data.batch_with_mask(&mask).unwrap();
    let fit = |method| {
        let o = FitOptions {
            subspace_method: method,
            completion_tol: 1e-12,
            completion_max_iter: 500,
            ..opts(3, 3)
        };
        Model::fit(&batch, &o).unwrap()
    };
    let (h, r) = (fit(SubspaceMethod::Hooi), fit(SubspaceMethod::Riemannian));
    let (fh, fr) = (h.info().completion_objective, r.info().completion_objective);
    println!(
        "masked objective: HOOI {fh:.10e} ({} rounds), Riemannian {fr:.10e} ({} rounds)",
        h.info().completion_iterations,
        r.info().completion_iterations
    );
    assert!(((fh - fr) / fh).abs() < 1e-6, "{fh} vs {fr}");
}

#[test]
fn block_missingness_is_handled() {
    let (count, m, n) = (150, 36, 30);
    let p = planted(count, m, n, 3, 3, 1e-2, 38);
    let mask = block_mask(count, m, n, 0.1, 0.3, 39).unwrap();
    let model = Model::fit(&p.data.batch_with_mask(&mask).unwrap(), &opts(3, 3)).unwrap();
    assert!(subspace_distance(model.u(), p.u.as_ref()).unwrap() < 0.01);
    let ours = complete_all(&model, &p.data.data, &mask, count, m, n);
    let err = held_out_error(&p, &mask, |i| {
        Mat::from_fn(m, n, |a, b| ours[i * m * n + a * n + b])
    });
    let oracle = held_out_error(&p, &mask, |i| oracle_completion(&p, &mask, i));
    assert!(
        err < 1.5 * oracle,
        "block completion {err} vs oracle {oracle}"
    );
}

#[test]
fn nan_entries_can_stand_for_missing_ones() {
    let (count, m, n) = (60, 20, 16);
    let p = planted(count, m, n, 2, 2, 1e-3, 40);
    let mask = mcar_mask(count, m, n, 0.2, 41).unwrap();
    let mut data = p.data.data.clone();
    for (x, &o) in data.iter_mut().zip(&mask) {
        if o == 0 {
            *x = f64::NAN;
        }
    }
    let batch = MatrixBatch::from_c_order(&data, count, m, n).unwrap();
    let err = Model::fit(&batch, &opts(2, 2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    assert!(
        err.message().contains("nan_is_missing"),
        "{}",
        err.message()
    );
    let with_nan = Model::fit(
        &batch,
        &FitOptions {
            nan_is_missing: true,
            ..opts(2, 2)
        },
    )
    .unwrap();
    let with_mask = Model::fit(&p.data.batch_with_mask(&mask).unwrap(), &opts(2, 2)).unwrap();
    assert!((with_nan.u() - with_mask.u()).norm_max() < 1e-12);
    // Completion of NaN-marked matrices: no NaN left, observed unchanged.
    let mut out = vec![0.0; data.len()];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, count, m, n).unwrap();
    let mut buf = MemBuffer::new(with_nan.complete_scratch(count));
    with_nan
        .complete(&batch, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    for (k, (&o, &x)) in out.iter().zip(&data).enumerate() {
        assert!(o.is_finite(), "entry {k}");
        if !x.is_nan() {
            assert_eq!(o.to_bits(), x.to_bits());
        }
    }
}

#[test]
fn edge_cases_give_finite_results_or_clear_errors() {
    let (count, m, n) = (40, 16, 12);
    let p = planted(count, m, n, 2, 2, 1e-2, 42);
    let mut mask = mcar_mask(count, m, n, 0.3, 43).unwrap();
    // Sample 0 has no observed entry; row 3 and column 5 are never observed.
    mask[..m * n].fill(0);
    for i in 0..count {
        for b in 0..n {
            mask[i * m * n + 3 * n + b] = 0;
        }
        for a in 0..m {
            mask[i * m * n + a * n + 5] = 0;
        }
    }
    let batch = p.data.batch_with_mask(&mask).unwrap();
    let model = Model::fit(
        &batch,
        &FitOptions {
            center: true,
            ..opts(2, 2)
        },
    )
    .unwrap();
    assert!(model
        .u()
        .col_iter()
        .all(|c| c.iter().all(|x| x.is_finite())));
    let out = complete_all(&model, &p.data.data, &mask, count, m, n);
    assert!(out.iter().all(|x| x.is_finite()));
    // Nothing observed at all.
    let none = vec![0u8; p.data.data.len()];
    let err = Model::fit(&p.data.batch_with_mask(&none).unwrap(), &opts(2, 2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().starts_with("train"));
    // A mask of the wrong size.
    let err = p.data.batch().with_mask(&mask[1..]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Shape);
    assert!(err.message().starts_with("mask"));
}

#[test]
fn invalid_completion_options_are_refused() {
    let p = planted(20, 10, 8, 2, 2, 1e-2, 44);
    let mask = mcar_mask(20, 10, 8, 0.2, 45).unwrap();
    let batch = p.data.batch_with_mask(&mask).unwrap();
    let cases: [(FitOptions, &str); 4] = [
        (
            FitOptions {
                completion_max_iter: 0,
                ..opts(2, 2)
            },
            "completion_max_iter",
        ),
        (
            FitOptions {
                completion_tol: -1.0,
                ..opts(2, 2)
            },
            "completion_tol",
        ),
        (
            FitOptions {
                ridge: f64::NAN,
                ..opts(2, 2)
            },
            "ridge",
        ),
        (
            FitOptions {
                ridge: -1e-3,
                ..opts(2, 2)
            },
            "ridge",
        ),
    ];
    for (o, field) in cases {
        let err = Model::fit(&batch, &o).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{field}");
        assert!(err.message().contains(field), "{}", err.message());
    }
}
