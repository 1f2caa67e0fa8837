//! Proves with a counting global allocator that the C entry points of the
//! inference calls never allocate: each call builds its views from the C
//! structs and checks them, and that work must not allocate either (the
//! model-level test in alloc.rs builds its views outside the counted region).

mod common;

use common::planted;
use coreflow::ffi::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;

struct Counting;

thread_local! {
    // Allocations of the current thread only: the test harness runs tests
    // on parallel threads, whose allocations must not count against each
    // other. Const-initialised and without a destructor, so reading it never
    // allocates. The measured calls run on the calling thread (threads = 1).
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn counted() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        counted();
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        counted();
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made so far by the calling thread.
fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

#[test]
fn c_encode_and_decode_do_not_allocate() {
    let p = planted(16, 30, 24, 3, 3, 1e-3, 23);
    let (n, m, k) = (p.count, p.rows, p.cols);
    let mn = (m * k) as isize;
    let train = coreflow_matrices {
        data: p.data.as_ptr(),
        mask: ptr::null(),
        count: n,
        rows: m,
        cols: k,
        sample_stride: mn,
        row_stride: k as isize,
        col_stride: 1,
    };
    unsafe {
        let mut opts = std::mem::zeroed::<coreflow_fit_options>();
        coreflow_fit_options_init(&mut opts);
        opts.rank_rows = 3;
        opts.rank_cols = 3;
        opts.center = 1; // decode then also adds the mean
        opts.threads = 1;
        let mut model = ptr::null_mut();
        assert_eq!(coreflow_fit(&train, &opts, &mut model), COREFLOW_OK);

        let (mut enc, mut dec) = (0usize, 0usize);
        assert_eq!(
            coreflow_workspace_size(model, COREFLOW_OP_ENCODE, n, ptr::null(), &mut enc),
            0
        );
        assert_eq!(
            coreflow_workspace_size(model, COREFLOW_OP_DECODE, n, ptr::null(), &mut dec),
            0
        );
        let mut ws = vec![0u8; enc.max(dec)];
        let ws_ptr = ws.as_mut_ptr() as *mut std::ffi::c_void;
        let mut cores = vec![0.0; n * 9];
        let mut back = vec![0.0; p.data.len()];
        // Column-major (m, k, n) output: a layout other than the input's.
        let mut out = coreflow_matrices_mut {
            data: back.as_mut_ptr(),
            count: n,
            rows: m,
            cols: k,
            sample_stride: mn,
            row_stride: 1,
            col_stride: m as isize,
        };

        // Warm-up: the matrix product kernels size a per-thread cache once.
        assert_eq!(
            coreflow_encode(model, &train, cores.as_mut_ptr(), ws_ptr, ws.len()),
            0
        );
        assert_eq!(
            coreflow_decode(model, cores.as_ptr(), &mut out, ws_ptr, ws.len()),
            0
        );

        let before = allocs();
        let enc_status = coreflow_encode(model, &train, cores.as_mut_ptr(), ws_ptr, ws.len());
        let mid = allocs();
        let dec_status = coreflow_decode(model, cores.as_ptr(), &mut out, ws_ptr, ws.len());
        let after = allocs();
        assert_eq!((enc_status, dec_status), (COREFLOW_OK, COREFLOW_OK));
        assert_eq!(
            (mid - before, after - mid),
            (0, 0),
            "allocations in (encode, decode)"
        );

        coreflow_model_free(model);
    }
}

#[test]
fn c_sample_of_one_matrix_does_not_allocate() {
    let p = planted(80, 20, 16, 3, 3, 1e-3, 29);
    let (n, m, k) = (p.count, p.rows, p.cols);
    let mn = (m * k) as isize;
    let train = coreflow_matrices {
        data: p.data.as_ptr(),
        mask: ptr::null(),
        count: n,
        rows: m,
        cols: k,
        sample_stride: mn,
        row_stride: k as isize,
        col_stride: 1,
    };
    unsafe {
        let mut opts = std::mem::zeroed::<coreflow_fit_options>();
        coreflow_fit_options_init(&mut opts);
        opts.rank_rows = 3;
        opts.rank_cols = 3;
        opts.threads = 1;
        opts.flow_hidden = 32;
        opts.flow_layers = 2;
        opts.flow_steps = 50;
        opts.core_model = COREFLOW_CORE_MODEL_FLOW;
        let mut model = ptr::null_mut();
        assert_eq!(coreflow_fit(&train, &opts, &mut model), COREFLOW_OK);

        // One matrix per call, as a simulator's time loop draws them: the
        // row kernels of small batches.
        let mut bytes = 0usize;
        assert_eq!(
            coreflow_workspace_size(model, COREFLOW_OP_SAMPLE, 1, ptr::null(), &mut bytes),
            COREFLOW_OK
        );
        let mut ws = vec![0u8; bytes.max(1)];
        let ws_ptr = ws.as_mut_ptr() as *mut std::ffi::c_void;
        let mut field = vec![0.0; m * k];
        let mut out = coreflow_matrices_mut {
            data: field.as_mut_ptr(),
            count: 1,
            rows: m,
            cols: k,
            sample_stride: mn,
            row_stride: k as isize,
            col_stride: 1,
        };
        assert_eq!(
            coreflow_sample(model, ptr::null(), 5, 0, &mut out, ws_ptr, ws.len()),
            COREFLOW_OK
        );
        let before = allocs();
        let mut status = COREFLOW_OK;
        for index in 1..5 {
            let st = coreflow_sample(model, ptr::null(), 5, index, &mut out, ws_ptr, ws.len());
            if st != COREFLOW_OK {
                status = st;
            }
        }
        let during = allocs() - before;
        assert_eq!(status, COREFLOW_OK);
        assert_eq!(during, 0, "allocations in 4 calls of coreflow_sample");
        assert!(field.iter().all(|v| v.is_finite()));

        coreflow_model_free(model);
    }
}

#[test]
fn c_impute_does_not_allocate() {
    let p = planted(120, 16, 12, 2, 2, 1e-3, 29);
    let (n, m, k) = (p.count, p.rows, p.cols);
    let train = coreflow_matrices {
        data: p.data.as_ptr(),
        mask: ptr::null(),
        count: n,
        rows: m,
        cols: k,
        sample_stride: (m * k) as isize,
        row_stride: k as isize,
        col_stride: 1,
    };
    let mut y = p.data[..m * k].to_vec();
    for v in y.iter_mut().step_by(3) {
        *v = f64::NAN;
    }
    // Many draws of one matrix: sample stride 0.
    let draws = 8;
    let partial = coreflow_matrices {
        data: y.as_ptr(),
        count: draws,
        sample_stride: 0,
        ..train
    };
    unsafe {
        let mut opts = std::mem::zeroed::<coreflow_fit_options>();
        coreflow_fit_options_init(&mut opts);
        opts.rank_rows = 2;
        opts.rank_cols = 2;
        opts.threads = 1;
        opts.core_model = COREFLOW_CORE_MODEL_GAUSSIAN;
        let mut model = ptr::null_mut();
        assert_eq!(coreflow_fit(&train, &opts, &mut model), COREFLOW_OK);
        let mut bytes = 0usize;
        assert_eq!(
            coreflow_workspace_size(model, COREFLOW_OP_IMPUTE, draws, ptr::null(), &mut bytes),
            COREFLOW_OK
        );
        let mut ws = vec![0u8; bytes];
        let ws_ptr = ws.as_mut_ptr() as *mut std::ffi::c_void;
        let mut back = vec![0.0; draws * m * k];
        let mut out = coreflow_matrices_mut {
            data: back.as_mut_ptr(),
            count: draws,
            rows: m,
            cols: k,
            sample_stride: (m * k) as isize,
            row_stride: k as isize,
            col_stride: 1,
        };
        // Warm-up of the per-thread matrix-product caches.
        let call = |out: &mut coreflow_matrices_mut| {
            coreflow_impute(model, ptr::null(), 3, 0, &partial, out, ws_ptr, bytes)
        };
        assert_eq!(call(&mut out), COREFLOW_OK);
        let before = allocs();
        let status = call(&mut out);
        let after = allocs();
        assert_eq!(status, COREFLOW_OK);
        assert_eq!(after - before, 0, "allocations in coreflow_impute");
        coreflow_model_free(model);
    }
}
