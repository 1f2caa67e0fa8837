//! Parallel sums: per-worker accumulators added part by part, and local
//! sums completed by the [`Reducer`](crate::reduce::Reducer).

use crate::error::{Error, Result};
use crate::numerics::Par;
use crate::reduce::Reducer;
use faer::{MatMut, MatRef};

/// Number of workers for `par` on `count` items.
pub(super) fn workers(par: Par, count: usize) -> usize {
    par.degree().clamp(1, count.max(1))
}

/// A contiguous column-major matrix as one slice, or `None`.
pub(super) fn as_slice_mut<'a>(m: &'a mut MatMut<'_, f64>) -> Option<&'a mut [f64]> {
    if m.row_stride() == 1 && (m.ncols() <= 1 || m.col_stride() == m.nrows() as isize) {
        // SAFETY: the view is contiguous column-major (checked above) and the
        // returned slice borrows it mutably.
        Some(unsafe { std::slice::from_raw_parts_mut(m.as_ptr_mut(), m.nrows() * m.ncols()) })
    } else {
        None
    }
}

/// Completes a local sum held in a contiguous temporary across participants.
pub(super) fn reduce_mat(reducer: &dyn Reducer, mut m: MatMut<'_, f64>) -> Result<()> {
    let buf = as_slice_mut(&mut m)
        .ok_or_else(|| Error::internal("reduction buffer is not contiguous"))?;
    reducer.sum_in_place(buf)
}

/// `dst += src` on the lower triangles of two square matrices.
pub(super) fn add_lower(mut dst: MatMut<'_, f64>, src: MatRef<'_, f64>) {
    for j in 0..dst.ncols() {
        for i in j..dst.nrows() {
            dst[(i, j)] += src[(i, j)];
        }
    }
}

/// `dst += src`, visiting `src` in its storage order.
pub(super) fn add_into(mut dst: MatMut<'_, f64>, src: MatRef<'_, f64>) {
    if src.col_stride().unsigned_abs() < src.row_stride().unsigned_abs() {
        for i in 0..src.nrows() {
            for j in 0..src.ncols() {
                dst[(i, j)] += src[(i, j)];
            }
        }
    } else {
        for j in 0..src.ncols() {
            for i in 0..src.nrows() {
                dst[(i, j)] += src[(i, j)];
            }
        }
    }
}

/// Adds parts `1..t` of `buf` (each `len` long) onto part 0 and returns it.
pub(super) fn sum_parts(buf: &mut [f64], len: usize, t: usize) -> &mut [f64] {
    let (first, rest) = buf.split_at_mut(len);
    for k in 1..t {
        for (a, b) in first.iter_mut().zip(&rest[(k - 1) * len..k * len]) {
            *a += *b;
        }
    }
    first
}

/// Squared Frobenius norm of a contiguous column-major temporary.
pub(super) fn sum_sq(m: MatRef<'_, f64>) -> f64 {
    m.squared_norm_l2()
}
