//! The metrics reproduce values computed by an independent implementation
//! (`tests/data/metrics_small.json`, C-order `(count, rows, cols)` sets).

use coreflow::metrics::{self, EvalOptions};
use coreflow::numerics::Par;
use coreflow::MatrixBatch;
use serde_json::Value;

const TOL: f64 = 1e-10;

fn load() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/metrics_small.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn shape(v: &Value) -> (usize, usize, usize) {
    let s: Vec<usize> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    (s[0], s[1], s[2])
}

fn check(case: &str, name: &str, got: f64, want: f64) {
    let err = (got - want).abs() / want.abs().max(1e-300);
    assert!(
        err <= TOL,
        "{case}: {name} = {got:.17e}, expected {want:.17e} (relative error {err:.2e})"
    );
}

/// Runs `f` on every case with the real and generated sets as batches.
fn for_each_case(f: impl Fn(&str, &MatrixBatch<'_>, &MatrixBatch<'_>, &Value)) {
    let golden = load();
    let cases = golden["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        assert_eq!(
            case["layout"].as_str().unwrap(),
            "C order, (count, rows, cols)"
        );
        let name = case["name"].as_str().unwrap();
        let (na, m, n) = shape(&case["shape_real"]);
        let (nb, mb, nbc) = shape(&case["shape_generated"]);
        assert_eq!((m, n), (mb, nbc));
        let (ra, gb) = (floats(&case["real"]), floats(&case["generated"]));
        let real = MatrixBatch::from_c_order(&ra, na, m, n).unwrap();
        let generated = MatrixBatch::from_c_order(&gb, nb, m, n).unwrap();
        f(name, &real, &generated, &case["expected"]);
    }
}

fn expected(e: &Value, key: &str) -> f64 {
    e[key]
        .as_f64()
        .unwrap_or_else(|| panic!("golden value {key} missing"))
}

#[test]
fn evaluate_matches_golden_values() {
    for threads in [1, 2] {
        for_each_case(|case, real, generated, e| {
            let opts = EvalOptions {
                threads,
                ..EvalOptions::default()
            };
            let got = metrics::evaluate(real, generated, &opts).unwrap();
            let mmd = got.mmd.unwrap();
            let names = e.as_object().unwrap();
            // Every golden value is compared: an unknown key fails the test.
            for key in names.keys() {
                let value = match key.as_str() {
                    "sve" => got.sve,
                    "topk_w1" => got.topk_w1,
                    "mmd2" => mmd.mmd2,
                    "mmd_h0" => mmd.h0,
                    "mean_error" => got.mean_error,
                    "rowcov_rel_error" => got.rowcov_rel_error,
                    "colcov_rel_error" => got.colcov_rel_error,
                    other => panic!("{case}: golden metric {other} is not compared"),
                };
                check(case, key, value, expected(e, key));
            }
        });
    }
}

#[test]
fn single_metric_functions_match_golden_values() {
    for_each_case(|case, real, generated, e| {
        let par = Par::Seq;
        check(
            case,
            "sve",
            metrics::spectrum_error(real, generated, par).unwrap(),
            expected(e, "sve"),
        );
        check(
            case,
            "topk_w1",
            metrics::topk_spectrum_distance(real, generated, 10, par).unwrap(),
            expected(e, "topk_w1"),
        );
        let mmd = metrics::mmd2(real, generated, par).unwrap();
        check(case, "mmd2", mmd.mmd2, expected(e, "mmd2"));
        check(case, "mmd_h0", mmd.h0, expected(e, "mmd_h0"));
        check(
            case,
            "mean_error",
            metrics::mean_error(real, generated, par).unwrap(),
            expected(e, "mean_error"),
        );
        let (row, col) = metrics::covariance_errors(real, generated, par).unwrap();
        check(
            case,
            "rowcov_rel_error",
            row,
            expected(e, "rowcov_rel_error"),
        );
        check(
            case,
            "colcov_rel_error",
            col,
            expected(e, "colcov_rel_error"),
        );
    });
}

/// The same sets stored column-major `(rows, cols, count)` give the same
/// values (the MMD then reads vec(X) in the other order, or copies).
#[test]
fn column_major_and_mixed_layouts_match_golden_values() {
    for_each_case(|case, real, generated, e| {
        let to_col_major = |b: &MatrixBatch<'_>| {
            let (count, m, n) = (b.count(), b.rows(), b.cols());
            let mut out = vec![0.0; count * m * n];
            for i in 0..count {
                let x = b.sample(i);
                for c in 0..n {
                    for r in 0..m {
                        out[r + m * (c + n * i)] = x[(r, c)];
                    }
                }
            }
            out
        };
        let (fa, fb) = (to_col_major(real), to_col_major(generated));
        let real_f =
            MatrixBatch::from_col_major(&fa, real.rows(), real.cols(), real.count()).unwrap();
        let gen_f =
            MatrixBatch::from_col_major(&fb, real.rows(), real.cols(), generated.count()).unwrap();
        for (a, b) in [(&real_f, &gen_f), (real, &gen_f), (&real_f, generated)] {
            let got = metrics::evaluate(a, b, &EvalOptions::default()).unwrap();
            check(case, "sve", got.sve, expected(e, "sve"));
            check(case, "mmd2", got.mmd.unwrap().mmd2, expected(e, "mmd2"));
            check(case, "mmd_h0", got.mmd.unwrap().h0, expected(e, "mmd_h0"));
            check(
                case,
                "rowcov_rel_error",
                got.rowcov_rel_error,
                expected(e, "rowcov_rel_error"),
            );
        }
    });
}
