//! HOSVD initialisation: the eigenvectors of `A = sum (X_i - M)(X_i - M)^T`
//! and `B = sum (X_i - M)^T (X_i - M)` (see the parent module).

use super::check::{check_len, check_mean, check_square};
use super::sums::{add_lower, workers};
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{
    self, as_slice_mut, parallel_parts, syrk_lower, temp_mat_scratch, temp_mat_zeroed, temp_slice,
    temp_slice_scratch, MemStack, Par, SharedBuf, StackReq,
};
use crate::reduce::{sum_scalar, sum_symmetric, Reducer};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef};

/// The error for a non-finite Gram diagonal: the precise location when a
/// local value is NaN or infinite, otherwise an overflow.
fn non_finite_data(data: &MatrixBatch) -> Error {
    match data.check_finite("train") {
        Err(e) => e,
        Ok(()) => Error::non_finite(
            "train: sums of squares are not finite (values too large, or non-finite values of another participant)",
        ),
    }
}

// ---------------------------------------------------------------------------
// Gram matrices and the HOSVD.

/// Local lower triangles of `A = sum X_i X_i^T` and `B = sum X_i^T X_i`:
/// one syrk on the stacked samples for the Gram matrix the layout allows,
/// per-sample accumulation (worker 0 into `a`/`b`, the others into `acc`)
/// for the rest.
fn local_grams(
    data: &MatrixBatch,
    mut a: MatMut<'_, f64>,
    mut b: MatMut<'_, f64>,
    acc: &mut [f64],
    par: Par,
) {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    let vertical = data.vertical_stack();
    let horizontal = if vertical.is_none() {
        data.horizontal_stack()
    } else {
        None
    };
    if let Some(s) = vertical {
        // B = S^T S with S the (N m) x n vertical stack.
        syrk_lower(b.rb_mut(), Accum::Replace, s.transpose(), 1.0, par);
    }
    if let Some(h) = horizontal {
        // A = H H^T with H the m x (N n) horizontal stack.
        syrk_lower(a.rb_mut(), Accum::Replace, h, 1.0, par);
    }
    let need_a = horizontal.is_none();
    let need_b = vertical.is_none();
    if !(need_a || need_b) {
        return;
    }
    if need_a {
        a.fill(0.0);
    }
    if need_b {
        b.fill(0.0);
    }
    let t = workers(par, count);
    let part_len = m * m + n * n;
    // Temporaries carved by `hosvd_init` are contiguous.
    let shared_a = SharedBuf::new(as_slice_mut(&mut a).expect("contiguous Gram temporary"));
    let shared_b = SharedBuf::new(as_slice_mut(&mut b).expect("contiguous Gram temporary"));
    let shared_acc = SharedBuf::new(acc);
    parallel_parts(count, t, &|k, range| {
        // SAFETY: worker 0 owns `a` and `b`, worker k > 0 owns part k - 1 of `acc`.
        let (mut ak, mut bk) = unsafe {
            if k == 0 {
                (shared_a.block(0, m, m), shared_b.block(0, n, n))
            } else {
                let off = (k - 1) * part_len;
                (
                    shared_acc.block(off, m, m),
                    shared_acc.block(off + m * m, n, n),
                )
            }
        };
        if k > 0 {
            ak.fill(0.0);
            bk.fill(0.0);
        }
        for i in range {
            let x = data.sample(i);
            if need_a {
                syrk_lower(ak.rb_mut(), Accum::Add, x, 1.0, Par::Seq);
            }
            if need_b {
                syrk_lower(bk.rb_mut(), Accum::Add, x.transpose(), 1.0, Par::Seq);
            }
        }
    });
    for k in 1..t {
        let off = (k - 1) * part_len;
        // SAFETY: the workers have joined; these views do not overlap `a`, `b`.
        let (ak, bk) = unsafe {
            (
                shared_acc.block(off, m, m),
                shared_acc.block(off + m * m, n, n),
            )
        };
        if need_a {
            add_lower(a.rb_mut(), ak.rb());
        }
        if need_b {
            add_lower(b.rb_mut(), bk.rb());
        }
    }
}

/// Workspace for [`hosvd_init`].
pub fn hosvd_init_scratch(rows: usize, cols: usize, par: Par) -> StackReq {
    let (m, n) = (rows, cols);
    let t = par.degree().max(1);
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(m, m),
        temp_mat_scratch::<f64>(n, n),
        temp_slice_scratch::<f64>((t - 1) * (m * m + n * n)),
        StackReq::any_of(&[
            numerics::eigh_descending_scratch(m, par),
            numerics::eigh_descending_scratch(n, par),
        ]),
    ])
}

/// HOSVD: all eigenvectors and eigenvalues (descending) of
/// `A = sum (X_i - M)(X_i - M)^T` into `row_vecs` (m x m), `row_vals` (m) and
/// of `B = sum (X_i - M)^T (X_i - M)` into `col_vecs` (n x n), `col_vals`
/// (n). U0 and V0 are the leading columns. `mean` is M when centering.
#[allow(clippy::too_many_arguments)]
pub fn hosvd_init(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    row_vecs: MatMut<'_, f64>,
    row_vals: &mut [f64],
    col_vecs: MatMut<'_, f64>,
    col_vals: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    check_square("row_vecs", row_vecs.rb(), m)?;
    check_square("col_vecs", col_vecs.rb(), n)?;
    check_len("row_vals", row_vals.len(), m)?;
    check_len("col_vals", col_vals.len(), n)?;
    check_mean(mean, m, n)?;
    let t = par.degree().max(1);
    let (mut a, stack) = temp_mat_zeroed::<f64>(m, m, stack);
    let (mut b, stack) = temp_mat_zeroed::<f64>(n, n, stack);
    let (acc, stack) = temp_slice((t - 1) * (m * m + n * n), 0.0f64, stack);
    local_grams(data, a.rb_mut(), b.rb_mut(), acc, par);
    sum_symmetric(reducer, a.rb_mut())?;
    sum_symmetric(reducer, b.rb_mut())?;
    // A NaN or infinity anywhere in the data reaches the diagonal of A.
    if (0..m).any(|i| !a[(i, i)].is_finite()) || (0..n).any(|j| !b[(j, j)].is_finite()) {
        return Err(non_finite_data(data));
    }
    if let Some(mean) = mean {
        let total = sum_scalar(reducer, count as f64)?;
        syrk_lower(a.rb_mut(), Accum::Add, mean, -total, par);
        syrk_lower(b.rb_mut(), Accum::Add, mean.transpose(), -total, par);
    }
    numerics::eigh_descending(a.rb(), row_vecs, row_vals, par, stack)?;
    numerics::eigh_descending(b.rb(), col_vecs, col_vals, par, stack)?;
    Ok(())
}
