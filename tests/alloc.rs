//! Proves with a counting global allocator that the hot paths never
//! allocate: a subspace iteration, encode and decode.

mod common;

use common::planted;
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{FitOptions, MatrixBatch, MatrixBatchMut, Model, Stage};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

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

/// Allocations between consecutive progress reports of the subspace stage,
/// i.e. inside each iteration after the first.
fn allocations_per_iteration(
    method: coreflow::subspace::SubspaceMethod,
    threads: usize,
) -> Vec<usize> {
    let p = planted(60, 40, 30, 5, 4, 1e-2, 21);
    let batch = MatrixBatch::from_c_order(&p.data, p.count, p.rows, p.cols).unwrap();
    let opts = FitOptions {
        rank_rows: 7,
        rank_cols: 6,
        subspace_method: method,
        subspace_tol: 0.0, // run to max_iter
        subspace_max_iter: 8,
        threads,
        ..Default::default()
    };
    let mut marks: [usize; 64] = [0; 64];
    let mut n = 0usize;
    Model::fit_with_progress(&batch, &opts, &mut |pr| {
        if pr.stage == Stage::Subspace && n < marks.len() {
            marks[n] = allocs();
            n += 1;
        }
        true
    })
    .unwrap();
    assert!(n >= 4, "only {n} progress reports");
    // The first iteration may warm up per-thread caches of the matrix
    // product kernels; every later one must not allocate.
    (2..n).map(|k| marks[k] - marks[k - 1]).collect()
}

#[test]
fn hooi_iterations_do_not_allocate() {
    let d = allocations_per_iteration(coreflow::subspace::SubspaceMethod::Hooi, 1);
    assert!(
        d.iter().all(|&x| x == 0),
        "allocations per iteration: {d:?}"
    );
}

#[test]
fn riemannian_iterations_do_not_allocate() {
    let d = allocations_per_iteration(coreflow::subspace::SubspaceMethod::Riemannian, 1);
    assert!(
        d.iter().all(|&x| x == 0),
        "allocations per iteration: {d:?}"
    );
}

#[test]
fn encode_and_decode_do_not_allocate() {
    let p = planted(20, 30, 24, 3, 3, 1e-3, 22);
    let batch = MatrixBatch::from_c_order(&p.data, p.count, p.rows, p.cols).unwrap();
    let opts = FitOptions {
        rank_rows: 3,
        rank_cols: 3,
        threads: 1,
        ..Default::default()
    };
    let model = Model::fit(&batch, &opts).unwrap();
    let mut cores = vec![0.0; p.count * model.core_dim()];
    let mut out = vec![0.0; p.data.len()];
    let mut buf = MemBuffer::new(
        model
            .encode_scratch(p.count)
            .or(model.decode_scratch(p.count)),
    );
    // Warm-up calls: the matrix product kernels size a per-thread cache once.
    model
        .encode(&batch, &mut cores, MemStack::new(&mut buf))
        .unwrap();
    let mut ob = MatrixBatchMut::from_c_order(&mut out, p.count, p.rows, p.cols).unwrap();
    model
        .decode(&cores, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    let before = allocs();
    model
        .encode(&batch, &mut cores, MemStack::new(&mut buf))
        .unwrap();
    let mid = allocs();
    model
        .decode(&cores, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    assert_eq!(
        (mid - before, allocs() - mid),
        (0, 0),
        "allocations in (encode, decode)"
    );
}
