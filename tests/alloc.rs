//! Proves with a counting global allocator that the hot paths never
//! allocate: subspace iterations, completion rounds, encode, decode and
//! complete. Allocations are counted per thread (the tests of this file run
//! concurrently, and single-threaded fits run on the test's own thread).

mod common;

use common::planted;
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{FitOptions, MatrixBatch, MatrixBatchMut, Model, Stage};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;
thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn bump() {
    // `try_with`: the allocator may run while the thread-local is torn down.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        bump();
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        bump();
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
        ..FitOptions::default().geometry_only()
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
        ..FitOptions::default().geometry_only()
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

#[test]
fn completion_rounds_and_complete_do_not_allocate() {
    let (count, m, n) = (50, 30, 24);
    let p = planted(count, m, n, 3, 3, 1e-2, 23);
    let mask = coreflow::datasets::mcar_mask(count, m, n, 0.3, 24).unwrap();
    let batch = MatrixBatch::from_c_order(&p.data, count, m, n)
        .unwrap()
        .with_mask(&mask)
        .unwrap();
    for method in [
        coreflow::SubspaceMethod::Hooi,
        coreflow::SubspaceMethod::Riemannian,
    ] {
        let opts = FitOptions {
            rank_rows: 3,
            rank_cols: 3,
            completion_tol: 0.0,
            completion_max_iter: 8,
            subspace_method: method,
            threads: 1,
            ..FitOptions::default().geometry_only()
        };
        let mut marks: [usize; 64] = [0; 64];
        let mut k = 0usize;
        let model = Model::fit_with_progress(&batch, &opts, &mut |pr| {
            if pr.stage == Stage::Completion && k < marks.len() {
                marks[k] = allocs();
                k += 1;
            }
            true
        })
        .unwrap();
        assert!(k >= 6);
        let d: Vec<usize> = (2..k).map(|j| marks[j] - marks[j - 1]).collect();
        assert!(
            d.iter().all(|&x| x == 0),
            "{method:?}: allocations per round {d:?}"
        );

        let mut out = vec![0.0; p.data.len()];
        let mut ob = MatrixBatchMut::from_c_order(&mut out, count, m, n).unwrap();
        let mut buf = MemBuffer::new(model.complete_scratch(count));
        model
            .complete(&batch, &mut ob, MemStack::new(&mut buf))
            .unwrap();
        let before = allocs();
        model
            .complete(&batch, &mut ob, MemStack::new(&mut buf))
            .unwrap();
        assert_eq!(allocs() - before, 0, "allocations in complete");
    }
}

#[test]
fn sample_and_log_prob_do_not_allocate() {
    use coreflow::core_model::FlowOptions;
    use coreflow::flow::ode::SolverOptions;
    let (count, m, n) = (60, 16, 12);
    let p = planted(count, m, n, 2, 2, 1e-3, 25);
    let batch = MatrixBatch::from_c_order(&p.data, count, m, n).unwrap();
    let opts = FitOptions {
        rank_rows: 2,
        rank_cols: 2,
        threads: 1,
        flow: FlowOptions {
            hidden: 16,
            layers: 2,
            time_freqs: 4,
            steps: 50,
            ..FlowOptions::default()
        },
        ..FitOptions::default()
    };
    let model = Model::fit(&batch, &opts).unwrap();
    let so = SolverOptions::default();
    let mut out = vec![0.0; 10 * m * n];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, 10, m, n).unwrap();
    let mut buf = MemBuffer::new(
        model
            .sample_scratch(10, &so)
            .or(model.log_prob_scratch(10, &so)),
    );
    let mut lp = vec![0.0; 10];
    let mut res = vec![0.0; 10];
    let ten = MatrixBatch::from_c_order(&p.data[..10 * m * n], 10, m, n).unwrap();
    // Warm-up of the per-thread matrix-product caches.
    model
        .sample(&so, 1, 0, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    model
        .log_prob(&so, &ten, &mut lp, Some(&mut res), MemStack::new(&mut buf))
        .unwrap();
    let before = allocs();
    model
        .sample(&so, 1, 0, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    let mid = allocs();
    model
        .log_prob(&so, &ten, &mut lp, Some(&mut res), MemStack::new(&mut buf))
        .unwrap();
    assert_eq!(
        (mid - before, allocs() - mid),
        (0, 0),
        "allocations in (sample, log_prob)"
    );
    // One matrix per call: the row kernels of small batches.
    let one = MatrixBatch::from_c_order(&p.data[..m * n], 1, m, n).unwrap();
    let mut ob = MatrixBatchMut::from_c_order(&mut out[..m * n], 1, m, n).unwrap();
    let before = allocs();
    for index in 0..3 {
        model
            .sample(&so, 1, index, &mut ob, MemStack::new(&mut buf))
            .unwrap();
    }
    let mid = allocs();
    model
        .log_prob(&so, &one, &mut lp[..1], None, MemStack::new(&mut buf))
        .unwrap();
    assert_eq!(
        (mid - before, allocs() - mid),
        (0, 0),
        "allocations in (sample, log_prob) of one matrix"
    );
}

#[test]
fn impute_does_not_allocate() {
    use coreflow::core_model::{CoreModelChoice, FlowOptions};
    use coreflow::flow::ode::SolverOptions;
    let (count, m, n) = (120, 16, 12);
    let p = planted(count, m, n, 2, 2, 1e-3, 27);
    // Heavy-tailed noise on every row but the first, so that the fitted
    // noise law has a profile and Student-t tails: the draws' noise takes
    // the chi-square path.
    let mut heavy = p.data.clone();
    let mut t = coreflow::rng::stream(28, 0);
    for (k, x) in heavy.iter_mut().enumerate() {
        if (k / n) % m != 0 {
            *x += 0.05 * coreflow::rng::student_t(&mut t, 3.0);
        }
    }
    let batch = MatrixBatch::from_c_order(&p.data, count, m, n).unwrap();
    let heavy_batch = MatrixBatch::from_c_order(&heavy, count, m, n).unwrap();
    let mut partial = p.data[..4 * m * n].to_vec();
    for (k, v) in partial.iter_mut().enumerate() {
        if k % 4 == 1 {
            *v = f64::NAN;
        }
    }
    let four = MatrixBatch::from_c_order(&partial, 4, m, n).unwrap();
    for (choice, batch) in [
        (CoreModelChoice::Gaussian, &batch),
        (CoreModelChoice::Mixture, &batch),
        (CoreModelChoice::Flow, &batch),
        (CoreModelChoice::Gaussian, &heavy_batch),
    ] {
        let opts = FitOptions {
            rank_rows: 2,
            rank_cols: 2,
            threads: 1,
            flow: FlowOptions {
                core_model: choice,
                hidden: 16,
                layers: 2,
                time_freqs: 4,
                steps: 50,
                ..FlowOptions::default()
            },
            ..FitOptions::default()
        };
        // A forced mixture needs BIC to prefer one; skip the kind otherwise.
        let Ok(model) = Model::fit(batch, &opts) else {
            assert_eq!(choice, CoreModelChoice::Mixture);
            continue;
        };
        if std::ptr::eq(batch, &heavy_batch) {
            let noise = model.noise();
            assert!(noise.dof().is_finite(), "{noise:?}");
            assert!(model.info().noise_profile_spread > 10.0, "{noise:?}");
        }
        let so = SolverOptions::default();
        let mut out = vec![0.0; 4 * m * n];
        let mut ob = MatrixBatchMut::from_c_order(&mut out, 4, m, n).unwrap();
        let mut buf = MemBuffer::new(model.impute_scratch(4, &so));
        // Warm-up of the per-thread matrix-product caches.
        model
            .impute(&so, 1, 0, &four, &mut ob, MemStack::new(&mut buf))
            .unwrap();
        let before = allocs();
        model
            .impute(&so, 1, 0, &four, &mut ob, MemStack::new(&mut buf))
            .unwrap();
        assert_eq!(allocs() - before, 0, "{choice:?}: allocations in impute");
        // The level re-estimated on the observed entries: the same workspace.
        let observed = coreflow::ImputeLevel::Observed;
        model
            .impute_with_level(&so, observed, 1, 0, &four, &mut ob, MemStack::new(&mut buf))
            .unwrap();
        let before = allocs();
        model
            .impute_with_level(&so, observed, 1, 0, &four, &mut ob, MemStack::new(&mut buf))
            .unwrap();
        assert_eq!(
            allocs() - before,
            0,
            "{choice:?}: allocations in impute at the observed level"
        );
    }
}
