//! Tests across the metrics: `evaluate`, `evaluate_with_train` and
//! `Reference` against the single metrics, argument errors by name, and
//! independence of the thread count and the memory layout.

use super::moments::mean_impl;
use super::testing::{batch, gaussian};
use super::*;
use crate::error::ErrorKind;
use faer::Par;

fn all(real: &MatrixBatch<'_>, gen: &MatrixBatch<'_>) -> Metrics {
    evaluate(real, gen, &EvalOptions::default()).unwrap()
}

#[test]
fn identical_sets_score_zero() {
    let a = gaussian(9, 5, 7, 1);
    let b = batch(&a, 9, 5, 7);
    let got = all(&b, &b);
    assert_eq!(got.sve, 0.0);
    assert_eq!(got.topk_w1, 0.0);
    assert_eq!(got.mean_error, 0.0);
    assert_eq!(got.rowcov_rel_error, 0.0);
    assert_eq!(got.colcov_rel_error, 0.0);
    // The unbiased estimate of a set against itself is -2/N + O(1/N^2)
    // times a kernel mean: small and negative, not 0.
    let mmd = got.mmd.unwrap();
    assert!(mmd.mmd2 < 0.0 && mmd.mmd2 > -2.0 / 9.0);
}

#[test]
fn doubling_a_set_gives_known_errors() {
    let a = gaussian(11, 4, 6, 2);
    let b: Vec<f64> = a.iter().map(|x| 2.0 * x).collect();
    let got = all(&batch(&a, 11, 4, 6), &batch(&b, 11, 4, 6));
    let tol = 1e-14;
    // Singular values double: ||2s - s|| / ||s|| = 1, and every
    // W1(s_k, 2 s_k) is mean(s_k) (the quantile gap is s_k itself).
    assert!((got.sve - 1.0).abs() < tol);
    assert!((got.topk_w1 - 1.0).abs() < tol);
    // Covariances scale by 4.
    assert!((got.rowcov_rel_error - 3.0).abs() < tol);
    assert!((got.colcov_rel_error - 3.0).abs() < tol);
    // ||2 mean - mean|| / rms.
    let (mean, msq) = mean_impl(&batch(&a, 11, 4, 6), 1).unwrap();
    assert!((got.mean_error - mean.norm_l2() / msq.sqrt()).abs() < tol);
}

#[test]
fn results_do_not_depend_on_threads_or_layout() {
    let (count, m, n) = (29, 6, 5);
    let a = gaussian(count, m, n, 10);
    let b = gaussian(count + 3, m, n, 11);
    let (ba, bb) = (batch(&a, count, m, n), batch(&b, count + 3, m, n));
    let one = evaluate(
        &ba,
        &bb,
        &EvalOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let three = evaluate(
        &ba,
        &bb,
        &EvalOptions {
            threads: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(one.sve, three.sve);
    assert_eq!(one.topk_w1, three.topk_w1);
    assert_eq!(one.mean_error, three.mean_error);
    assert_eq!(one.rowcov_rel_error, three.rowcov_rel_error);
    assert_eq!(one.colcov_rel_error, three.colcov_rel_error);
    assert_eq!(one.nn_accuracy, three.nn_accuracy);
    let (p, q) = (one.mmd.unwrap(), three.mmd.unwrap());
    assert!((p.mmd2 - q.mmd2).abs() < 1e-14 && (p.h0 - q.h0).abs() < 1e-14 * p.h0);
    // The real set in reverse sample order with transposed strides:
    // no flat view exists, so the MMD copies; values agree to rounding.
    let l = crate::batch::Layout {
        count,
        rows: m,
        cols: n,
        sample_stride: -((m * n) as isize),
        row_stride: 1,
        col_stride: m as isize,
    };
    let mut t = vec![0.0; count * m * n];
    for i in 0..count {
        for r in 0..m {
            for c in 0..n {
                t[(count - 1 - i) * m * n + r + m * c] = a[(i * m + r) * n + c];
            }
        }
    }
    let rev = MatrixBatch::new(&t, (count - 1) * m * n, l).unwrap();
    let other = evaluate(&rev, &bb, &EvalOptions::default()).unwrap();
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs();
    assert!(close(other.sve, one.sve) && close(other.topk_w1, one.topk_w1));
    assert!(close(other.mmd.unwrap().mmd2, p.mmd2));
    assert!(close(other.rowcov_rel_error, one.rowcov_rel_error));
    assert_eq!(other.nn_accuracy, one.nn_accuracy);
    // The closest-record ratio with a strided training set (the reversed
    // real set) against a C-order one: the same up to rounding.
    let t1 = dcr_ratio(&bb, &ba, &rev, Par::Seq);
    let t2 = dcr_ratio(&bb, &rev, &ba, Par::rayon(3));
    // Real matrices as their own training set: the generated side is 0.
    assert!(t1.unwrap() < 1e-6 && t2.unwrap() < 1e-6);
    let c = gaussian(40, m, n, 12);
    let bc = batch(&c, 40, m, n);
    let d1 = dcr_ratio(&bb, &bc, &rev, Par::Seq).unwrap();
    let d2 = dcr_ratio(&bb, &bc, &ba, Par::rayon(3)).unwrap();
    assert!(close(d1, d2), "{d1} vs {d2}");
}

#[test]
fn invalid_sets_are_reported_by_name() {
    let a = gaussian(4, 5, 4, 13);
    let b = gaussian(4, 3, 4, 14);
    let opts = EvalOptions::default();
    let empty = MatrixBatch::from_c_order(&a, 0, 5, 4).unwrap();
    let err = evaluate(&empty, &batch(&a, 4, 5, 4), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().starts_with("real:"), "{}", err.message());
    let err = spectrum_error(&batch(&a, 4, 5, 4), &empty, Par::Seq).unwrap_err();
    assert!(err.message().starts_with("generated:"), "{}", err.message());

    let err = evaluate(&batch(&a, 4, 5, 4), &batch(&b, 4, 3, 4), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Shape);
    assert_eq!(
        err.message(),
        "generated: 3 x 4 matrices, but real has 5 x 4"
    );

    let mut c = a.clone();
    c[17] = f64::NAN;
    let err = evaluate(&batch(&a, 4, 5, 4), &batch(&c, 4, 5, 4), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    assert!(
        err.message().starts_with("generated: matrix 0"),
        "{}",
        err.message()
    );
    let err = mean_error(&batch(&c, 4, 5, 4), &batch(&a, 4, 5, 4), Par::Seq).unwrap_err();
    assert!(err.message().starts_with("real:"));

    // The unbiased MMD² needs pairs; without it one matrix is enough.
    let one = batch(&a[..20], 1, 5, 4);
    let err = evaluate(&batch(&a, 4, 5, 4), &one, &opts).unwrap_err();
    assert!(
        err.message().starts_with("generated: 1 matrices"),
        "{}",
        err.message()
    );
    let no_mmd = EvalOptions { mmd: false, ..opts };
    let got = evaluate(&batch(&a, 4, 5, 4), &one, &no_mmd).unwrap();
    assert!(got.mmd.is_none() && got.sve.is_finite());

    let mask = vec![1u8; a.len()];
    let masked = batch(&a, 4, 5, 4).with_mask(&mask).unwrap();
    let err = evaluate(&masked, &batch(&a, 4, 5, 4), &opts).unwrap_err();
    assert!(err.message().starts_with("real:"));

    let zeros = vec![0.0; a.len()];
    let err = evaluate(&batch(&zeros, 4, 5, 4), &batch(&a, 4, 5, 4), &opts).unwrap_err();
    assert!(err.message().starts_with("real:"));
    let err = evaluate(
        &batch(&a, 4, 5, 4),
        &batch(&a, 4, 5, 4),
        &EvalOptions { top_k: 0, ..opts },
    )
    .unwrap_err();
    assert!(err.message().starts_with("top_k:"));
}

#[test]
fn overflowing_values_are_a_numerical_error() {
    let a = gaussian(4, 2, 2, 15);
    let b: Vec<f64> = a.iter().map(|x| x * 1e300).collect();
    let err = evaluate(
        &batch(&a, 4, 2, 2),
        &batch(&b, 4, 2, 2),
        &EvalOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Numerical);
}

#[test]
fn reference_scores_equal_evaluate() {
    let a = gaussian(12, 6, 5, 21);
    let b = gaussian(9, 6, 5, 22);
    let c = gaussian(7, 6, 5, 23);
    let (ra, gb, gc) = (batch(&a, 12, 6, 5), batch(&b, 9, 6, 5), batch(&c, 7, 6, 5));
    let opts = EvalOptions {
        threads: 2,
        top_k: 3,
        mmd: true,
    };
    let r = Reference::new(&ra, &opts).unwrap();
    for g in [&gb, &gc] {
        assert_eq!(
            r.evaluate(g, &opts).unwrap(),
            evaluate(&ra, g, &opts).unwrap()
        );
    }
    let e = r
        .evaluate(&batch(&c[..7 * 5 * 5], 7, 5, 5), &opts)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    assert!(e.message().starts_with("generated:"), "{}", e.message());
    let e = Reference::new(&batch(&a[..30], 1, 6, 5), &opts)
        .err()
        .unwrap();
    assert!(e.message().starts_with("real:"), "{}", e.message());
}

#[test]
fn evaluate_with_train_adds_the_closest_record_ratio() {
    let (m, n) = (4, 3);
    let t = gaussian(50, m, n, 51);
    let a = gaussian(20, m, n, 52);
    let b = gaussian(25, m, n, 53);
    let (bt, ba, bb) = (
        batch(&t, 50, m, n),
        batch(&a, 20, m, n),
        batch(&b, 25, m, n),
    );
    let opts = EvalOptions::default();
    let plain = evaluate(&ba, &bb, &opts).unwrap();
    assert_eq!(plain.dcr_ratio, None);
    assert_eq!(
        plain.nn_accuracy,
        Some(nn_accuracy(&ba, &bb, Par::Seq).unwrap())
    );
    let with = evaluate_with_train(&ba, &bb, Some(&bt), &opts).unwrap();
    assert_eq!(
        with.dcr_ratio,
        Some(dcr_ratio(&ba, &bb, &bt, Par::Seq).unwrap())
    );
    assert_eq!(
        Metrics {
            dcr_ratio: None,
            ..with
        },
        plain
    );
    let r = Reference::new(&ba, &opts)
        .unwrap()
        .with_train(&bt, &opts)
        .unwrap();
    assert_eq!(r.evaluate(&bb, &opts).unwrap(), with);
    // Without the pairwise metrics there is no 1-NN accuracy.
    let no_mmd = EvalOptions { mmd: false, ..opts };
    let got = evaluate_with_train(&ba, &bb, Some(&bt), &no_mmd).unwrap();
    assert_eq!(got.nn_accuracy, None);
    assert_eq!(got.dcr_ratio, with.dcr_ratio);

    // The training set is checked by name.
    let narrow = batch(&t[..50 * 3 * 3], 50, 3, 3);
    let err = evaluate_with_train(&ba, &bb, Some(&narrow), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Shape);
    assert_eq!(err.message(), "train: 3 x 3 matrices, but real has 4 x 3");
    let empty = MatrixBatch::from_c_order(&t, 0, m, n).unwrap();
    let err = dcr_ratio(&ba, &bb, &empty, Par::Seq).unwrap_err();
    assert!(err.message().starts_with("train:"), "{}", err.message());
    let mut bad = t.clone();
    bad[40] = f64::INFINITY;
    let err = Reference::new(&ba, &opts)
        .unwrap()
        .with_train(&batch(&bad, 50, m, n), &opts)
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NonFinite);
    assert!(err.message().starts_with("train:"), "{}", err.message());
    let mask = vec![1u8; t.len()];
    let masked = bt.with_mask(&mask).unwrap();
    let err = evaluate_with_train(&ba, &bb, Some(&masked), &opts).unwrap_err();
    assert!(err.message().starts_with("train:"), "{}", err.message());
    // Held-out matrices that are training matrices leave no denominator.
    let err = dcr_ratio(&bt, &bb, &bt, Par::Seq).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.message().starts_with("train: half"),
        "{}",
        err.message()
    );
    // The 1-NN accuracy needs two matrices per set.
    let one = batch(&a[..m * n], 1, m, n);
    let err = nn_accuracy(&ba, &one, Par::Seq).unwrap_err();
    assert!(err.message().starts_with("generated:"), "{}", err.message());
}
