//! Parallel sums: per-worker accumulators added part by part (the sums
//! across participants are [`crate::reduce`]'s).

use crate::numerics::Par;
use faer::{MatMut, MatRef};

/// Number of workers for `par` on `count` items.
pub(super) fn workers(par: Par, count: usize) -> usize {
    par.degree().clamp(1, count.max(1))
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
