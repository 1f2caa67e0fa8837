//! The fit driver: mean, HOSVD, ranks by energy, HOOI or Riemannian
//! refinement, canonical basis and cores.

use super::hooi::{hooi_small_scratch, Hooi};
use super::hosvd::{hosvd_init, hosvd_init_scratch};
use super::mean::{sample_mean, sample_mean_scratch};
use super::products::{big_len, block_products};
use super::project::CoreSource;
use super::ranks::{
    energy_core_dim_cap, grow_ranks, initial_ranks, ENERGY_SLACK, MAX_ENERGY_REFITS,
};
use super::riemannian::{riemannian_loop, riemannian_small_scratch};
use super::rotate::{canonical_rotation, canonical_scratch};
use super::stop::StopRule;
use super::{SubspaceFit, SubspaceMethod, SubspaceOptions};
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{self, temp_slice, temp_slice_scratch, MemBuffer, MemStack, Par, StackReq};
use crate::reduce::{sum_scalar, Reducer};
use faer::{Mat, MatRef};

/// Which block products a buffer holds.
#[derive(Copy, Clone)]
enum BlockSource {
    /// `W_i = (X_i - M)^T U` (n x r blocks).
    Cols,
    /// `Y_i = (X_i - M) V` (m x s blocks).
    Rows,
}

/// Appends `f_new` to the history, checks it and records the step in the
/// stopping rule; true once the rule is met.
fn record_step(
    history: &mut Vec<f64>,
    stop: &mut StopRule,
    f: &mut f64,
    f_new: f64,
) -> Result<bool> {
    history.push(f_new);
    if !f_new.is_finite() {
        return Err(Error::numerical(
            "subspace: the objective became non-finite",
        ));
    }
    let done = stop.update(*f, f_new);
    *f = f_new;
    Ok(done)
}

/// Fits U and V to the complete samples in `data` (DESIGN.md section 3):
/// optional centering, HOSVD initialisation, ranks by energy where a rank is
/// 0, HOOI or Riemannian refinement, canonical basis.
///
/// `progress(iteration, max_iter, objective)` is called after every
/// iteration (from 1); returning false stops the fit with
/// `ErrorKind::Cancelled`. Every sum over samples goes through `reducer`.
/// Batches with a mask are refused (the completion fit handles them).
pub fn fit(
    data: &MatrixBatch,
    opts: &SubspaceOptions,
    reducer: &dyn Reducer,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
) -> Result<SubspaceFit> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    let checked = opts.check(m, n)?;
    let opts = checked.options();
    if count == 0 {
        return Err(Error::invalid(
            "train: the batch holds no matrix (count is 0)",
        ));
    }
    if data.has_mask() {
        return Err(Error::unsupported(
            "train: has a mask; incomplete data is fitted with masked updates and completion",
        ));
    }
    let par = numerics::par_for_threads(opts.threads);

    // HOSVD stage (its products also warm faer's per-thread packing caches).
    let mut mean = opts.center.then(|| Mat::<f64>::zeros(m, n));
    let mut row_vecs = Mat::<f64>::zeros(m, m);
    let mut col_vecs = Mat::<f64>::zeros(n, n);
    let mut row_eigenvalues = vec![0.0; m];
    let mut col_eigenvalues = vec![0.0; n];
    {
        let mut buf = MemBuffer::new(StackReq::any_of(&[
            sample_mean_scratch(m, n, par),
            hosvd_init_scratch(m, n, par),
        ]));
        let stack = MemStack::new(&mut buf);
        if let Some(mean) = mean.as_mut() {
            sample_mean(data, mean.as_mut(), reducer, par, stack)?;
        }
        hosvd_init(
            data,
            mean.as_ref().map(|x| x.as_ref()),
            row_vecs.as_mut(),
            &mut row_eigenvalues,
            col_vecs.as_mut(),
            &mut col_eigenvalues,
            reducer,
            par,
            stack,
        )?;
    }
    let total_energy: f64 = row_eigenvalues.iter().sum();
    // Ranks chosen by energy: capped for small sets, and raised (then the
    // refinement rerun) while the fit keeps less than the requested energy.
    let ranks_chosen = opts.rank_rows == 0 || opts.rank_cols == 0;
    let cap = if ranks_chosen {
        energy_core_dim_cap(sum_scalar(reducer, count as f64)? as usize)
    } else {
        usize::MAX
    };
    let (mut r, mut s) = initial_ranks(
        &row_eigenvalues,
        &col_eigenvalues,
        opts.rank_rows,
        opts.rank_cols,
        opts.energy,
        cap,
    );
    // A given rank bounds what any fit keeps: sum ||U^T Y_i V||^2 is at most
    // the sum of the leading r eigenvalues of A (and s of B).
    let bound = |vals: &[f64], k: usize| vals.iter().take(k).map(|v| v.max(0.0)).sum::<f64>();
    let mut target = opts.energy * total_energy;
    if opts.rank_rows > 0 {
        target = target.min(bound(&row_eigenvalues, opts.rank_rows));
    }
    if opts.rank_cols > 0 {
        target = target.min(bound(&col_eigenvalues, opts.rank_cols));
    }
    let target = target - ENERGY_SLACK * total_energy;
    let mut refits = 0;
    let mut fit = loop {
        let fit = refine(
            data,
            opts,
            mean.as_ref(),
            row_vecs.as_ref(),
            col_vecs.as_ref(),
            (r, s),
            total_energy,
            reducer,
            progress,
            par,
        )?;
        if !ranks_chosen || refits == MAX_ENERGY_REFITS || fit.objective >= target {
            break fit;
        }
        // Each added row (column) gains at most its eigenvalue: add until
        // those bounds cover what is missing, then measure again.
        let mut missing = target - fit.objective;
        let mut grown = false;
        while missing > 0.0 {
            match grow_ranks(
                &row_eigenvalues,
                &col_eigenvalues,
                (r, s),
                (opts.rank_rows == 0, opts.rank_cols == 0),
                cap,
            ) {
                // A step that cannot gain (rounding-level eigenvalues) ends
                // the growth.
                Some((r2, s2, gain)) if gain > ENERGY_SLACK * total_energy => {
                    (r, s) = (r2, s2);
                    missing -= gain;
                    grown = true;
                }
                _ => break,
            }
        }
        if !grown {
            break fit;
        }
        refits += 1;
    };
    fit.row_eigenvalues = row_eigenvalues;
    fit.col_eigenvalues = col_eigenvalues;
    Ok(fit)
}

/// The refinement of [`fit`] at ranks `(r, s)` from the HOSVD bases
/// `row_vecs`, `col_vecs` (leading columns), with the canonical rotation and
/// the cores. The eigenvalues of the result are left empty.
#[allow(clippy::too_many_arguments)]
fn refine(
    data: &MatrixBatch,
    opts: &SubspaceOptions,
    mean: Option<&Mat<f64>>,
    row_vecs: MatRef<'_, f64>,
    col_vecs: MatRef<'_, f64>,
    (r, s): (usize, usize),
    total_energy: f64,
    reducer: &dyn Reducer,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    par: Par,
) -> Result<SubspaceFit> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    let mut u = row_vecs.get(.., ..r).to_owned();
    let mut v = col_vecs.get(.., ..s).to_owned();
    let mean_ref = mean.map(|x| x.as_ref());

    // Refinement: one workspace for the loop and the canonical rotation.
    let len = big_len(count, m, n, r, s);
    let mut buf = MemBuffer::new(StackReq::all_of(&[
        temp_slice_scratch::<f64>(len),
        StackReq::any_of(&[
            hooi_small_scratch(m, n, r, s, par),
            riemannian_small_scratch(count, m, n, r, s, par),
            canonical_scratch(m, n, r, s, par),
        ]),
    ]));
    let stack = MemStack::new(&mut buf);
    let (big, stack) = temp_slice(len, 0.0f64, stack);
    // HOOI records two steps per iteration.
    let mut history = Vec::with_capacity(2 * opts.max_iter + 1);
    let max_iter = opts.max_iter;
    // Which blocks `big` holds when the loop ends: W_i = (X_i - M)^T U for
    // the final U, or (a HOOI fit that stopped after a U update) Y_i =
    // (X_i - M) V for the final V.
    let mut source_blocks = BlockSource::Cols;
    let (iterations, converged) = match opts.method {
        SubspaceMethod::Hooi => {
            let mut hooi = Hooi::new(m, n, r, stack);
            hooi.rows_gram(data, mean_ref, v.as_ref(), big, reducer, par)?;
            let mut f = hooi.objective_from_rows_gram(u.as_ref(), par);
            history.push(f);
            // The stopping rule counts block updates: each is an exact
            // maximisation of f over one factor and yields f for free (the
            // sum of the leading eigenvalues of its Gram matrix).
            let mut stop = StopRule::new(opts.tol);
            let mut outcome = (max_iter, false);
            for it in 1..=max_iter {
                if it > 1 {
                    hooi.rows_gram(data, mean_ref, v.as_ref(), big, reducer, par)?;
                }
                let f_rows = hooi.rows_update(u.as_mut(), par)?;
                let done = record_step(&mut history, &mut stop, &mut f, f_rows)?;
                if done {
                    if !progress(it, max_iter, f_rows) {
                        return Err(Error::cancelled("subspace"));
                    }
                    // `big` holds Y_i = (X_i - M) V for the final V.
                    source_blocks = BlockSource::Rows;
                    outcome = (it, true);
                    break;
                }
                let f_cols =
                    hooi.cols_update(data, mean_ref, u.as_ref(), v.as_mut(), big, reducer, par)?;
                let done = record_step(&mut history, &mut stop, &mut f, f_cols)?;
                if !progress(it, max_iter, f_cols) {
                    return Err(Error::cancelled("subspace"));
                }
                if done {
                    outcome = (it, true);
                    break;
                }
            }
            outcome
        }
        SubspaceMethod::Riemannian => {
            let report = riemannian_loop(
                data,
                mean_ref,
                u.as_mut(),
                v.as_mut(),
                max_iter,
                opts.tol,
                opts.gtol,
                big,
                reducer,
                &mut |k, f| {
                    history.push(f);
                    k == 0 || progress(k, max_iter, f)
                },
                par,
                stack,
            )?;
            block_products(data, true, mean_ref, u.as_ref(), big, par, stack);
            (report.iterations, report.converged)
        }
    };
    let source = match source_blocks {
        BlockSource::Cols => CoreSource::Left(big),
        BlockSource::Rows => CoreSource::Right(big),
    };
    let mut cores = vec![0.0; count * r * s];
    let objective = canonical_rotation(
        data,
        mean_ref,
        u.as_mut(),
        v.as_mut(),
        source,
        Some(&mut cores),
        reducer,
        par,
        stack,
    )?;
    if !objective.is_finite() {
        return Err(Error::numerical("subspace: the objective is not finite"));
    }
    Ok(SubspaceFit {
        u,
        v,
        mean: mean.cloned(),
        objective,
        total_energy,
        iterations,
        steps: history.len() - 1,
        converged,
        history,
        cores,
        row_eigenvalues: Vec::new(),
        col_eigenvalues: Vec::new(),
    })
}
