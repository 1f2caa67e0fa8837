//! `coreflow_metrics` through its extern "C" entry point: the same scores as
//! `metrics::evaluate`, versioned structs, and the error paths.

use coreflow::datasets::{Dataset, DatasetSpec};
use coreflow::ffi::*;
use coreflow::metrics::{evaluate, EvalOptions};
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
