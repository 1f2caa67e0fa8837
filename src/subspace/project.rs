//! Cores `C_i = U^T (X_i - M) V` from the data or from the blocks a sweep
//! leaves behind, and the objective `f = sum_i ||C_i||^2`.

use super::check::{check_bases, check_len, check_mean};
use super::products::block;
use super::sums::{sum_sq, workers};
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{
    gemm, parallel_parts, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch,
    MemStack, Par, SharedBuf, StackReq,
};
use crate::reduce::{sum_scalar, Reducer};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatRef};

/// Where the cores `C_i` come from.
#[derive(Copy, Clone)]
pub(super) enum CoreSource<'a> {
    /// `C_i = U^T X_i V - U^T M V` from the data.
    Data,
    /// `C_i = W_i^T V` from the blocks `W_i = X_i^T U - M^T U` in the
    /// layout of `block_products`.
    Left(&'a [f64]),
    /// `C_i = U^T Y_i` from the blocks `Y_i = X_i V - M V` in the layout of
    /// `block_products`.
    Right(&'a [f64]),
}

pub(super) fn for_each_core_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let t = par.degree().max(1);
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(rows, rank_cols),
        temp_mat_scratch::<f64>(rank_rows, rank_cols),
        temp_slice_scratch::<f64>(t * core_part_len(rows, cols, rank_rows, rank_cols)),
    ])
}

/// Per-worker temporaries of `for_each_core`: the half product (`U^T X_i`
/// or `X_i V`, whichever is larger) and `C_i`.
fn core_part_len(m: usize, n: usize, r: usize, s: usize) -> usize {
    (r * n).max(m * s) + r * s
}

/// True when `C_i = (U^T X_i) V` takes no more flops than `U^T (X_i V)`
/// (`U^T X_i` is also the faster product for equal counts).
fn left_first(m: usize, n: usize, r: usize, s: usize) -> bool {
    r * n * (m + s) <= m * s * (n + r)
}

/// Calls `f(k, i, C_i)` for every sample i on worker k (of at most
/// `par.degree()`), with C_i (r x s) in a per-worker temporary.
#[allow(clippy::too_many_arguments)]
pub(super) fn for_each_core(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    source: CoreSource<'_>,
    par: Par,
    stack: &mut MemStack,
    f: &(dyn Fn(usize, usize, MatRef<'_, f64>) + Sync),
) {
    let (count, m, n, r, s) = (data.count(), data.rows(), data.cols(), u.ncols(), v.ncols());
    let t = workers(par, count);
    let (mut mv, stack) = temp_mat_zeroed::<f64>(m, s, stack);
    let (mut umv, stack) = temp_mat_zeroed::<f64>(r, s, stack);
    let centered = matches!(source, CoreSource::Data) && mean.is_some();
    if let (true, Some(mm)) = (centered, mean) {
        gemm(mv.rb_mut(), Accum::Replace, mm, v, 1.0, Par::Seq);
        gemm(
            umv.rb_mut(),
            Accum::Replace,
            u.transpose(),
            mv.rb(),
            1.0,
            Par::Seq,
        );
    }
    let umv = umv.rb();
    let per = core_part_len(m, n, r, s);
    let half = per - r * s;
    let left = left_first(m, n, r, s);
    let (tmp, _) = temp_slice(t * per, 0.0f64, stack);
    let shared = SharedBuf::new(tmp);
    parallel_parts(count, t, &|k, range| {
        // SAFETY: worker k owns part k of `tmp`; the half product is either
        // `U^T X_i` or `X_i V`, never both.
        let mut c = unsafe { shared.block(k * per + half, r, s) };
        let (mut ut_x, mut y) = unsafe {
            if left {
                (Some(shared.block(k * per, r, n)), None)
            } else {
                (None, Some(shared.block(k * per, m, s)))
            }
        };
        for i in range {
            match source {
                CoreSource::Data => {
                    let x = data.sample(i);
                    if let Some(ut_x) = ut_x.as_mut() {
                        gemm(
                            ut_x.rb_mut(),
                            Accum::Replace,
                            u.transpose(),
                            x,
                            1.0,
                            Par::Seq,
                        );
                        gemm(c.rb_mut(), Accum::Replace, ut_x.as_ref(), v, 1.0, Par::Seq);
                    } else if let Some(y) = y.as_mut() {
                        gemm(y.rb_mut(), Accum::Replace, x, v, 1.0, Par::Seq);
                        gemm(
                            c.rb_mut(),
                            Accum::Replace,
                            u.transpose(),
                            y.as_ref(),
                            1.0,
                            Par::Seq,
                        );
                    }
                    if centered {
                        for b in 0..s {
                            for a in 0..r {
                                c[(a, b)] -= umv[(a, b)];
                            }
                        }
                    }
                }
                CoreSource::Left(w) => {
                    let wi = block(w, i, n, r);
                    gemm(c.rb_mut(), Accum::Replace, wi.transpose(), v, 1.0, Par::Seq);
                }
                CoreSource::Right(y) => {
                    let yi = block(y, i, m, s);
                    gemm(c.rb_mut(), Accum::Replace, u.transpose(), yi, 1.0, Par::Seq);
                }
            }
            f(k, i, c.rb());
        }
    });
}

/// Workspace for [`objective`].
pub fn objective_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(par.degree().max(1)),
        for_each_core_scratch(rows, cols, rank_rows, rank_cols, par),
    ])
}

/// The objective `f(U, V) = sum_i ||U^T (X_i - M) V||^2` (one pass over the
/// data, reduced).
pub fn objective(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    check_bases(data, u, v)?;
    check_mean(mean, data.rows(), data.cols())?;
    let t = par.degree().max(1);
    let (parts, stack) = temp_slice(t, 0.0f64, stack);
    let shared = SharedBuf::new(parts);
    for_each_core(
        data,
        mean,
        u,
        v,
        CoreSource::Data,
        par,
        stack,
        &|k, _, c| {
            // SAFETY: worker k owns element k.
            let mut fk = unsafe { shared.block(k, 1, 1) };
            fk[(0, 0)] += sum_sq(c);
        },
    );
    let local: f64 = parts.iter().sum();
    sum_scalar(reducer, local)
}

/// Workspace for [`project_cores`].
pub fn project_cores_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    for_each_core_scratch(rows, cols, rank_rows, rank_cols, par)
}

/// The cores `C_i = U^T (X_i - M) V` of all samples into `cores`: `count`
/// blocks of `r * s` values, each the column-major r x s core.
#[allow(clippy::too_many_arguments)]
pub fn project_cores(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    cores: &mut [f64],
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (r, s) = check_bases(data, u, v)?;
    check_mean(mean, data.rows(), data.cols())?;
    check_len("cores", cores.len(), data.count() * r * s)?;
    let shared = SharedBuf::new(cores);
    for_each_core(
        data,
        mean,
        u,
        v,
        CoreSource::Data,
        par,
        stack,
        &|_, i, c| {
            // SAFETY: core i is written by the worker that handles sample i only.
            unsafe { shared.block(i * r * s, r, s) }.copy_from(c);
        },
    );
    Ok(())
}

/// Workspace for [`project_cores_from_left`].
pub fn project_cores_from_left_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    for_each_core_scratch(rows, cols, rank_rows, rank_cols, par)
}

/// The cores `C_i = W_i^T V` from the column blocks `W_i = (X_i - M)^T U`
/// that [`hooi_sweep_from_rows`](super::hooi_sweep_from_rows) leaves in
/// `blocks` (the same values as
/// [`project_cores`] at that (U, V), without a pass over the data: 2 n r s
/// flops per sample). Layout of `cores` as for [`project_cores`].
#[allow(clippy::too_many_arguments)]
pub fn project_cores_from_left(
    data: &MatrixBatch,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    blocks: &[f64],
    cores: &mut [f64],
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (r, s) = check_bases(data, u, v)?;
    let (count, n) = (data.count(), data.cols());
    check_len("cores", cores.len(), count * r * s)?;
    if blocks.len() < count * n * r {
        return Err(Error::shape(format!(
            "blocks: {} values, at least {} needed",
            blocks.len(),
            count * n * r
        )));
    }
    let shared = SharedBuf::new(cores);
    for_each_core(
        data,
        None,
        u,
        v,
        CoreSource::Left(blocks),
        par,
        stack,
        &|_, i, c| {
            // SAFETY: core i is written by the worker that handles sample i only.
            unsafe { shared.block(i * r * s, r, s) }.copy_from(c);
        },
    );
    Ok(())
}
