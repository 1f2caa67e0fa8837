//! The iterations of the subspace fit do not allocate (one thread): a
//! counting global allocator counts the allocations of the calling thread.

use coreflow::numerics::{self, MemBuffer, MemStack, Par, StackReq};
use coreflow::reduce::LocalReducer;
use coreflow::subspace::{self, SubspaceMethod, SubspaceOptions};
use coreflow::MatrixBatch;
use faer::Mat;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(|c| c.get())
}

/// Deterministic data with some structure (no random generator needed).
fn data(count: usize, m: usize, n: usize) -> Vec<f64> {
    (0..count * m * n)
        .map(|k| {
            let (i, rest) = (k / (m * n), k % (m * n));
            let (a, b) = (rest / n, rest % n);
            ((a * 7 + b * 3 + i * 11) % 17) as f64 * 0.1 + (i as f64 * 0.3 + a as f64 * 0.2).sin()
        })
        .collect()
}

#[test]
fn fit_iterations_do_not_allocate() {
    let (count, m, n) = (30, 24, 20);
    let x = data(count, m, n);
    let b = MatrixBatch::from_c_order(&x, count, m, n).unwrap();
    for (method, center) in [
        (SubspaceMethod::Hooi, false),
        (SubspaceMethod::Hooi, true),
        (SubspaceMethod::Riemannian, true),
    ] {
        let opts = SubspaceOptions {
            rank_rows: 4,
            rank_cols: 3,
            method,
            center,
            max_iter: 20,
            tol: 0.0,
            threads: 1,
            ..Default::default()
        };
        let mut last = None;
        let mut per_iteration = [usize::MAX; 32];
        let mut calls = 0;
        subspace::fit(&b, &opts, &LocalReducer, &mut |it, _, _| {
            let now = allocations();
            if let Some(before) = last {
                per_iteration[it] = now - before;
            }
            last = Some(now);
            calls += 1;
            true
        })
        .unwrap();
        assert!(calls >= 3, "{method:?}: {calls} iterations");
        for (it, &count) in per_iteration.iter().enumerate().take(calls + 1).skip(2) {
            assert_eq!(count, 0, "{method:?}: iteration {it} allocated");
        }
    }
}

#[test]
fn kernels_do_not_allocate() {
    let (count, m, n, r, s) = (25, 18, 15, 3, 2);
    let x = data(count, m, n);
    let b = MatrixBatch::from_col_major(&x, m, n, count).unwrap();
    let par = Par::Seq;
    let mut u = Mat::<f64>::from_fn(m, r, |i, j| if i == j { 1.0 } else { 0.0 });
    let mut v = Mat::<f64>::from_fn(n, s, |i, j| if i == j { 1.0 } else { 0.0 });
    let (mut gu, mut gv) = (Mat::<f64>::zeros(m, r), Mat::<f64>::zeros(n, s));
    let mut cores = vec![0.0; count * r * s];
    let mean = Mat::<f64>::from_fn(m, n, |i, j| (i + j) as f64 * 0.01);
    let req = StackReq::any_of(&[
        subspace::hooi_sweep_scratch(count, m, n, r, s, par),
        subspace::riemannian_gradient_scratch(count, m, n, r, s, par),
        subspace::objective_scratch(m, n, r, s, par),
        subspace::canonicalize_scratch(m, n, r, s, par),
        subspace::project_cores_scratch(m, n, r, s, par),
        numerics::retract_qr_scratch(m, r, par),
    ]);
    let mut buf = MemBuffer::new(req);
    let stack = MemStack::new(&mut buf);
    let mut run = |u: &mut Mat<f64>, v: &mut Mat<f64>, stack: &mut MemStack| {
        let mean = Some(mean.as_ref());
        subspace::hooi_sweep(&b, mean, u.as_mut(), v.as_mut(), &LocalReducer, par, stack).unwrap();
        subspace::riemannian_gradient(
            &b,
            mean,
            u.as_ref(),
            v.as_ref(),
            gu.as_mut(),
            gv.as_mut(),
            &LocalReducer,
            par,
            stack,
        )
        .unwrap();
        subspace::objective(&b, mean, u.as_ref(), v.as_ref(), &LocalReducer, par, stack).unwrap();
        subspace::canonicalize(&b, mean, u.as_mut(), v.as_mut(), &LocalReducer, par, stack)
            .unwrap();
        subspace::project_cores(&b, mean, u.as_ref(), v.as_ref(), &mut cores, par, stack).unwrap();
    };
    // Warm-up: faer's per-thread packing cache is allocated on first use.
    run(&mut u, &mut v, stack);
    let before = allocations();
    run(&mut u, &mut v, stack);
    assert_eq!(allocations() - before, 0);
}
