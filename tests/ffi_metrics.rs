//! `coreflow_metrics` and `coreflow_metrics_with_train` through their
//! extern "C" entry points: the same scores as `metrics::evaluate_with_train`,
//! versioned structs, and the error paths.

use coreflow::datasets::{Dataset, DatasetSpec};
use coreflow::ffi::*;
use coreflow::metrics::{evaluate, evaluate_with_train, EvalOptions};
use std::ffi::CStr;
use std::mem::size_of;
use std::ptr;

fn view(data: &[f64], count: usize, rows: usize, cols: usize) -> coreflow_matrices {
    coreflow_matrices {
        data: data.as_ptr(),
        mask: ptr::null(),
        count,
        rows,
        cols,
        sample_stride: (rows * cols) as isize,
        row_stride: cols as isize,
        col_stride: 1,
    }
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(coreflow_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn empty_result() -> coreflow_metrics_result {
    coreflow_metrics_result {
        struct_size: size_of::<coreflow_metrics_result>(),
        sve: -1.0,
        topk_w1: -1.0,
        mmd2: -1.0,
        mean_error: -1.0,
        rowcov_error: -1.0,
        colcov_error: -1.0,
        nn_accuracy: -1.0,
        dcr_ratio: -1.0,
    }
}

#[test]
fn c_metrics_match_evaluate() {
    let (m, n) = (16, 12);
    let real = Dataset::Blobs
        .generate(&DatasetSpec::new(20, m, n, 3))
        .unwrap();
    let gen = Dataset::Blobs
        .generate(&DatasetSpec::new(15, m, n, 4))
        .unwrap();
    let want = evaluate(
        &real.batch(),
        &gen.batch(),
        &EvalOptions {
            threads: 1,
            top_k: 4,
            mmd: true,
        },
    )
    .unwrap();
    let mut o = unsafe { std::mem::zeroed::<coreflow_metrics_options>() };
    unsafe { coreflow_metrics_options_init(&mut o) };
    assert_eq!(o.struct_size, size_of::<coreflow_metrics_options>());
    assert_eq!((o.threads, o.top_k), (0, 10));
    o.threads = 2;
    o.top_k = 4;
    let mut out = empty_result();
    let (a, b) = (view(&real.data, 20, m, n), view(&gen.data, 15, m, n));
    let st = unsafe { coreflow_metrics(&a, &b, &o, &mut out) };
    assert_eq!(st, COREFLOW_OK, "{}", last_error());
    // Sums run in fixed chunks: the thread count does not change the result.
    assert_eq!(out.sve, want.sve);
    assert_eq!(out.topk_w1, want.topk_w1);
    assert_eq!(out.mmd2, want.mmd.unwrap().mmd2);
    assert_eq!(out.mean_error, want.mean_error);
    assert_eq!(out.rowcov_error, want.rowcov_rel_error);
    assert_eq!(out.colcov_error, want.colcov_rel_error);
    assert_eq!(out.nn_accuracy, want.nn_accuracy.unwrap());
    assert!(out.dcr_ratio.is_nan(), "no training set: {}", out.dcr_ratio);

    // NULL options are the defaults (top_k 10).
    let mut d = empty_result();
    assert_eq!(
        unsafe { coreflow_metrics(&a, &b, ptr::null(), &mut d) },
        COREFLOW_OK
    );
    let want10 = evaluate(&real.batch(), &gen.batch(), &EvalOptions::default()).unwrap();
    assert_eq!(d.topk_w1, want10.topk_w1);
    assert_eq!(d.sve, want.sve);
}

#[test]
fn c_metrics_errors_name_the_argument_and_leave_out_untouched() {
    let (m, n) = (8, 6);
    let real = Dataset::Waves
        .generate(&DatasetSpec::new(6, m, n, 1))
        .unwrap();
    let a = view(&real.data, 6, m, n);
    let mut out = empty_result();
    let cases: Vec<(coreflow_status, coreflow_status, &str)> = unsafe {
        let mut o = std::mem::zeroed::<coreflow_metrics_options>();
        coreflow_metrics_options_init(&mut o);
        o.top_k = 0;
        let mut old = o;
        old.struct_size = 4;
        let mut small = empty_result();
        small.struct_size = 8;
        let one = view(&real.data, 1, m, n);
        let other = view(&real.data, 3, m, n - 1);
        vec![
            (
                coreflow_metrics(ptr::null(), &a, ptr::null(), &mut out),
                COREFLOW_ERR_NULL,
                "real",
            ),
            (
                coreflow_metrics(&a, ptr::null(), ptr::null(), &mut out),
                COREFLOW_ERR_NULL,
                "generated",
            ),
            (
                coreflow_metrics(&a, &a, ptr::null(), ptr::null_mut()),
                COREFLOW_ERR_NULL,
                "out",
            ),
            (
                coreflow_metrics(&a, &a, &o, &mut out),
                COREFLOW_ERR_INVALID_ARGUMENT,
                "o->top_k",
            ),
            (
                coreflow_metrics(&a, &a, &old, &mut out),
                COREFLOW_ERR_INVALID_ARGUMENT,
                "o->struct_size",
            ),
            (
                coreflow_metrics(&a, &a, ptr::null(), &mut small),
                COREFLOW_ERR_INVALID_ARGUMENT,
                "out->struct_size",
            ),
            (
                coreflow_metrics(&one, &a, ptr::null(), &mut out),
                COREFLOW_ERR_INVALID_ARGUMENT,
                "real",
            ),
            (
                coreflow_metrics(&a, &other, ptr::null(), &mut out),
                COREFLOW_ERR_SHAPE,
                "generated",
            ),
        ]
    };
    // Each message was current right after its call; re-run to read it.
    for (i, (got, want, arg)) in cases.iter().enumerate() {
        assert_eq!(got, want, "case {i} ({arg})");
    }
    let st = unsafe { coreflow_metrics(&a, &a, ptr::null(), ptr::null_mut()) };
    assert_eq!(st, COREFLOW_ERR_NULL);
    assert!(last_error().starts_with("out:"), "{}", last_error());
    let mut o = unsafe { std::mem::zeroed::<coreflow_metrics_options>() };
    unsafe { coreflow_metrics_options_init(&mut o) };
    o.top_k = 0;
    let st = unsafe { coreflow_metrics(&a, &a, &o, &mut out) };
    assert_eq!(st, COREFLOW_ERR_INVALID_ARGUMENT);
    assert!(last_error().starts_with("o->top_k"), "{}", last_error());
    assert_eq!(out.sve, -1.0, "out written on failure");
    unsafe { coreflow_metrics_options_init(ptr::null_mut()) };
}

#[test]
fn c_metrics_fill_an_older_result_struct_up_to_its_size() {
    let (m, n) = (8, 6);
    let real = Dataset::Crosshatch
        .generate(&DatasetSpec::new(6, m, n, 2))
        .unwrap();
    let a = view(&real.data, 6, m, n);
    // A host that knows the struct up to mmd2 only: later fields untouched.
    let mut out = empty_result();
    out.struct_size = std::mem::offset_of!(coreflow_metrics_result, mean_error);
    let st = unsafe { coreflow_metrics(&a, &a, ptr::null(), &mut out) };
    // The first published version already has every field.
    assert_eq!(st, COREFLOW_ERR_INVALID_ARGUMENT);
    out.struct_size = size_of::<coreflow_metrics_result>();
    assert_eq!(
        unsafe { coreflow_metrics(&a, &a, ptr::null(), &mut out) },
        COREFLOW_OK
    );
    assert_eq!((out.sve, out.mean_error), (0.0, 0.0));
}

#[test]
fn c_metrics_with_train_add_the_closest_record_ratio() {
    let (m, n) = (10, 7);
    let train = Dataset::Blobs
        .generate(&DatasetSpec::new(30, m, n, 5))
        .unwrap();
    let real = Dataset::Blobs
        .generate(&DatasetSpec::new(12, m, n, 6))
        .unwrap();
    let gen = Dataset::Blobs
        .generate(&DatasetSpec::new(14, m, n, 7))
        .unwrap();
    let opts = EvalOptions::default();
    let want =
        evaluate_with_train(&real.batch(), &gen.batch(), Some(&train.batch()), &opts).unwrap();
    let (a, b, t) = (
        view(&real.data, 12, m, n),
        view(&gen.data, 14, m, n),
        view(&train.data, 30, m, n),
    );
    let mut out = empty_result();
    let st = unsafe { coreflow_metrics_with_train(&a, &b, &t, ptr::null(), &mut out) };
    assert_eq!(st, COREFLOW_OK, "{}", last_error());
    assert_eq!(out.dcr_ratio, want.dcr_ratio.unwrap());
    assert_eq!(out.nn_accuracy, want.nn_accuracy.unwrap());
    assert_eq!(out.sve, want.sve);
    assert!(out.dcr_ratio > 0.0 && out.dcr_ratio.is_finite());
    // Generated = the first 14 training matrices: the ratio is 0 to rounding.
    let copies = view(&train.data, 14, m, n);
    let st = unsafe { coreflow_metrics_with_train(&a, &copies, &t, ptr::null(), &mut out) };
    assert_eq!(st, COREFLOW_OK, "{}", last_error());
    assert!(out.dcr_ratio < 1e-6, "{}", out.dcr_ratio);
    // NULL train is coreflow_metrics: the ratio is NaN.
    let st = unsafe { coreflow_metrics_with_train(&a, &b, ptr::null(), ptr::null(), &mut out) };
    assert_eq!(st, COREFLOW_OK, "{}", last_error());
    assert!(out.dcr_ratio.is_nan());

    // A host that knows the struct up to colcov_error: the new fields stay.
    let mut old = empty_result();
    old.struct_size = std::mem::offset_of!(coreflow_metrics_result, nn_accuracy);
    let st = unsafe { coreflow_metrics_with_train(&a, &b, &t, ptr::null(), &mut old) };
    assert_eq!(st, COREFLOW_OK, "{}", last_error());
    assert_eq!(
        old.struct_size,
        std::mem::offset_of!(coreflow_metrics_result, nn_accuracy)
    );
    assert_eq!((old.nn_accuracy, old.dcr_ratio), (-1.0, -1.0));
    assert_eq!(old.sve, want.sve);

    // The training set is named `train` in every error; out is untouched.
    let mut keep = empty_result();
    let narrow = view(&train.data, 30, m, n - 1);
    let st = unsafe { coreflow_metrics_with_train(&a, &b, &narrow, ptr::null(), &mut keep) };
    assert_eq!(st, COREFLOW_ERR_SHAPE);
    assert!(last_error().starts_with("train:"), "{}", last_error());
    let mut bad = train.data.clone();
    bad[3] = f64::NAN;
    let tb = view(&bad, 30, m, n);
    let st = unsafe { coreflow_metrics_with_train(&a, &b, &tb, ptr::null(), &mut keep) };
    assert_eq!(st, COREFLOW_ERR_NON_FINITE);
    assert!(last_error().starts_with("train:"), "{}", last_error());
    let mut no_data = t;
    no_data.data = ptr::null();
    let st = unsafe { coreflow_metrics_with_train(&a, &b, &no_data, ptr::null(), &mut keep) };
    assert_eq!(st, COREFLOW_ERR_NULL);
    assert!(last_error().starts_with("train->data"), "{}", last_error());
    // The held-out matrices are training matrices: no denominator.
    let st = unsafe { coreflow_metrics_with_train(&t, &b, &t, ptr::null(), &mut keep) };
    assert_eq!(st, COREFLOW_ERR_INVALID_ARGUMENT);
    assert!(last_error().starts_with("train:"), "{}", last_error());
    assert_eq!(keep.sve, -1.0, "out written on failure");
}
