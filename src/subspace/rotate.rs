//! The canonical basis: U rotated to the eigenvectors of `sum C_i C_i^T`,
//! V to those of `sum C_i^T C_i` (descending), with the sign rule.

use super::check::{check_bases, check_len, check_mean};
use super::project::{for_each_core, for_each_core_scratch, CoreSource};
use super::sums::{sum_parts, workers};
use crate::batch::MatrixBatch;
use crate::error::Result;
use crate::numerics::{
    self, gemm, parallel_parts, syrk_lower, temp_mat_scratch, temp_mat_zeroed, temp_slice,
    temp_slice_scratch, MemStack, Par, SharedBuf, StackReq,
};
use crate::reduce::Reducer;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef};

fn rotate_scratch(p: usize, k: usize) -> StackReq {
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(k, k),
        temp_slice_scratch::<f64>(k),
        temp_mat_scratch::<f64>(p, k),
        numerics::eigh_descending_scratch(k, Par::Seq),
    ])
}

/// `basis <- basis Q` with Q the eigenvectors of `gram` (lower triangle,
/// descending), then the sign rule; `rotation` (k x k) receives the whole
/// orthogonal change of basis `old^T new` (Q with the sign flips).
fn rotate_to_eigenbasis(
    mut basis: MatMut<'_, f64>,
    gram: MatRef<'_, f64>,
    rotation: MatMut<'_, f64>,
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (p, k) = basis.shape();
    let (mut q, stack) = temp_mat_zeroed::<f64>(k, k, stack);
    let (vals, stack) = temp_slice(k, 0.0f64, stack);
    let (mut rotated, stack) = temp_mat_zeroed::<f64>(p, k, stack);
    numerics::eigh_descending(gram, q.rb_mut(), vals, Par::Seq, stack)?;
    gemm(
        rotated.rb_mut(),
        Accum::Replace,
        basis.rb(),
        q.rb(),
        1.0,
        par,
    );
    numerics::fix_column_signs(rotated.rb_mut());
    gemm(
        rotation,
        Accum::Replace,
        basis.rb().transpose(),
        rotated.rb(),
        1.0,
        par,
    );
    basis.copy_from(rotated.rb());
    Ok(())
}

pub(super) fn canonical_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let t = par.degree().max(1);
    let (r, s) = (rank_rows, rank_cols);
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(t * (r * r + s * s)),
        temp_mat_scratch::<f64>(r, r),
        temp_mat_scratch::<f64>(s, s),
        StackReq::any_of(&[
            for_each_core_scratch(rows, cols, r, s, par),
            rotate_scratch(rows, r),
            rotate_scratch(cols, s),
            temp_slice_scratch::<f64>(t * r * s),
        ]),
    ])
}

/// Rotates U, V to the canonical basis from the cores of `source`; returns
/// the objective `trace(sum C_i C_i^T)`. With `cores` (count blocks of
/// `r * s`, column-major), also writes the cores in the rotated basis,
/// `R_U^T C_i R_V` with R the changes of basis.
#[allow(clippy::too_many_arguments)]
pub(super) fn canonical_rotation(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    source: CoreSource<'_>,
    cores: Option<&mut [f64]>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (r, s) = (u.ncols(), v.ncols());
    let (rr, ss, rs) = (r * r, s * s, r * s);
    let count = data.count();
    let t = par.degree().max(1);
    let (acc, stack) = temp_slice(t * (rr + ss), 0.0f64, stack);
    let (mut rot_u, stack) = temp_mat_zeroed::<f64>(r, r, stack);
    let (mut rot_v, stack) = temp_mat_zeroed::<f64>(s, s, stack);
    let cores = cores.map(|c| SharedBuf::new(&mut c[..count * rs]));
    {
        let shared = SharedBuf::new(acc);
        for_each_core(
            data,
            mean,
            u.rb(),
            v.rb(),
            source,
            par,
            stack,
            &|k, i, c| {
                // SAFETY: worker k owns part k of `acc`.
                let (cct, ctc) = unsafe {
                    (
                        shared.block(k * (rr + ss), r, r),
                        shared.block(k * (rr + ss) + rr, s, s),
                    )
                };
                syrk_lower(cct, Accum::Add, c, 1.0, Par::Seq);
                syrk_lower(ctc, Accum::Add, c.transpose(), 1.0, Par::Seq);
                if let Some(out) = cores.as_ref() {
                    // SAFETY: core i is written by the worker of sample i only.
                    unsafe { out.block(i * rs, r, s) }.copy_from(c);
                }
            },
        );
    }
    let sums = sum_parts(acc, rr + ss, t);
    reducer.sum_in_place(sums)?;
    let cct = MatRef::from_column_major_slice(&sums[..rr], r, r);
    let ctc = MatRef::from_column_major_slice(&sums[rr..], s, s);
    let objective: f64 = (0..r).map(|a| cct[(a, a)]).sum();
    rotate_to_eigenbasis(u, cct, rot_u.rb_mut(), par, stack)?;
    rotate_to_eigenbasis(v, ctc, rot_v.rb_mut(), par, stack)?;
    if let Some(out) = cores {
        // C_i <- R_U^T C_i R_V, one temporary per worker.
        let (tmp, _) = temp_slice(t * rs, 0.0f64, stack);
        let tmp = SharedBuf::new(tmp);
        let (rot_u, rot_v) = (rot_u.rb(), rot_v.rb());
        parallel_parts(count, workers(par, count), &|k, range| {
            // SAFETY: worker k owns part k of `tmp` and the cores of its range.
            let mut half = unsafe { tmp.block(k * rs, r, s) };
            for i in range {
                let mut c = unsafe { out.block(i * rs, r, s) };
                gemm(
                    half.rb_mut(),
                    Accum::Replace,
                    rot_u.transpose(),
                    c.rb(),
                    1.0,
                    Par::Seq,
                );
                gemm(c.rb_mut(), Accum::Replace, half.rb(), rot_v, 1.0, Par::Seq);
            }
        });
    }
    Ok(objective)
}

/// Workspace for [`canonicalize`].
pub fn canonicalize_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    canonical_scratch(rows, cols, rank_rows, rank_cols, par)
}

/// Rotates U to the eigenvectors of `sum C_i C_i^T` and V to those of
/// `sum C_i^T C_i` (descending, `C_i = U^T (X_i - M) V`), then makes the
/// entry of largest magnitude of every column positive (lowest index on
/// ties). Returns the objective `sum ||C_i||^2`. One pass over the data.
pub fn canonicalize(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    check_bases(data, u.rb(), v.rb())?;
    check_mean(mean, data.rows(), data.cols())?;
    canonical_rotation(
        data,
        mean,
        u,
        v,
        CoreSource::Data,
        None,
        reducer,
        par,
        stack,
    )
}

/// [`canonicalize`] that also writes the cores `C_i = U^T (X_i - M) V` at
/// the rotated U, V into `cores` (`count` blocks of `r * s` values, each the
/// column-major r x s core, as [`project_cores`](super::project_cores)
/// writes them), from the same
/// pass over the data. Workspace: [`canonicalize_scratch`].
#[allow(clippy::too_many_arguments)]
pub fn canonicalize_with_cores(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    cores: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (r, s) = check_bases(data, u.rb(), v.rb())?;
    check_mean(mean, data.rows(), data.cols())?;
    check_len("cores", cores.len(), data.count() * r * s)?;
    canonical_rotation(
        data,
        mean,
        u,
        v,
        CoreSource::Data,
        Some(cores),
        reducer,
        par,
        stack,
    )
}
