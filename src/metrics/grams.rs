//! Matrices as vectors `vec(X)` (views of the data where the layout allows,
//! copies otherwise), the Gram matrices of a pooled set and the squared
//! distances they give, and the median distance.

use crate::batch::MatrixBatch;
use crate::numerics::{gemm, syrk_lower};
use faer::{Accum, Mat, MatRef, Par};

/// Order in which `vec(X)` lists the entries of a matrix.
#[derive(Copy, Clone, PartialEq, Eq)]
enum VecOrder {
    /// Row by row (C order).
    Rows,
    /// Column by column (Fortran order).
    Cols,
    /// A single row or column: both orders agree.
    Any,
}

impl VecOrder {
    fn agrees(self, other: VecOrder) -> bool {
        self == other || self == VecOrder::Any || other == VecOrder::Any
    }
}

/// The batch as a `count x (rows * cols)` matrix without a copy, when every
/// sample is one contiguous run of memory in row or column order.
fn flat_view<'a>(b: &MatrixBatch<'a>) -> Option<(MatRef<'a, f64>, VecOrder)> {
    let l = b.layout();
    let rows_ok =
        (l.cols == 1 || l.col_stride == 1) && (l.rows == 1 || l.row_stride == l.cols as isize);
    let cols_ok =
        (l.rows == 1 || l.row_stride == 1) && (l.cols == 1 || l.col_stride == l.rows as isize);
    let order = match (rows_ok, cols_ok) {
        (true, true) => VecOrder::Any,
        (true, false) => VecOrder::Rows,
        (false, true) => VecOrder::Cols,
        (false, false) => return None,
    };
    let s0 = b.sample(0);
    // SAFETY: element k of row i is entry k (in `order`) of sample i, at
    // offset i * sample_stride + k from element (0, 0, 0); the batch
    // constructor checked that every entry of every sample is in bounds.
    let z = unsafe {
        MatRef::from_raw_parts(s0.as_ptr(), l.count, l.rows * l.cols, l.sample_stride, 1)
    };
    Some((z, order))
}

/// A copy of the batch as `(rows * cols) x count`, column `i` = `vec(X_i)`
/// in `order` (the transpose is the flat view).
fn flat_copy(b: &MatrixBatch<'_>, order: VecOrder) -> Mat<f64> {
    let (m, n) = (b.rows(), b.cols());
    let mut z = Mat::<f64>::zeros(m * n, b.count());
    for i in 0..b.count() {
        let x = b.sample(i);
        let mut col = z.as_mut().col_mut(i);
        for c in 0..n {
            for r in 0..m {
                let k = if order == VecOrder::Cols {
                    r + m * c
                } else {
                    r * n + c
                };
                col[k] = x[(r, c)];
            }
        }
    }
    z
}

/// The median of non-negative squared distances, as a distance.
pub(super) fn median_distance(d2: &mut [f64]) -> f64 {
    let len = d2.len();
    let mid = len / 2;
    let (lo, hi, _) = d2.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = hi.sqrt();
    if len % 2 == 1 {
        upper
    } else {
        let lower = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lower.sqrt() + upper)
    }
}

/// Row views `count x (rows * cols)` of two batches that list `vec(X)` in the
/// same order: views of the data where the layouts allow, otherwise copies
/// kept in `own_x` / `own_y`.
pub(super) fn flat_pair<'o>(
    x: &MatrixBatch<'o>,
    y: &MatrixBatch<'o>,
    own_x: &'o mut Mat<f64>,
    own_y: &'o mut Mat<f64>,
) -> (MatRef<'o, f64>, MatRef<'o, f64>) {
    let vx = flat_view(x);
    let target = match vx {
        Some((_, VecOrder::Cols)) => VecOrder::Cols,
        _ => VecOrder::Rows,
    };
    let zx = match vx {
        Some((z, o)) if o.agrees(target) => z,
        _ => {
            *own_x = flat_copy(x, target);
            own_x.as_ref().transpose()
        }
    };
    let zy = match flat_view(y) {
        Some((z, o)) if o.agrees(target) => z,
        _ => {
            *own_y = flat_copy(y, target);
            own_y.as_ref().transpose()
        }
    };
    (zx, zy)
}

/// Gram matrices of the pooled set: `aa` and `bb` hold the lower triangles
/// of `<a_i, a_j>` and `<b_i, b_j>`, `ab` all of `<a_i, b_j>`.
pub(super) struct Grams {
    pub(super) aa: Mat<f64>,
    pub(super) bb: Mat<f64>,
    pub(super) ab: Mat<f64>,
}

impl Grams {
    pub(super) fn new(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Grams {
        let (na, nb) = (real.count(), generated.count());
        let (mut own_a, mut own_b) = (Mat::<f64>::zeros(0, 0), Mat::<f64>::zeros(0, 0));
        let (za, zb) = flat_pair(real, generated, &mut own_a, &mut own_b);
        let mut aa = Mat::<f64>::zeros(na, na);
        let mut bb = Mat::<f64>::zeros(nb, nb);
        let mut ab = Mat::<f64>::zeros(na, nb);
        syrk_lower(aa.as_mut(), Accum::Replace, za, 1.0, par);
        syrk_lower(bb.as_mut(), Accum::Replace, zb, 1.0, par);
        gemm(ab.as_mut(), Accum::Replace, za, zb.transpose(), 1.0, par);
        Grams { aa, bb, ab }
    }
}

/// Squared distance from Gram entries, clamped at 0 against cancellation.
#[inline]
pub(super) fn gram_d2(gii: f64, gjj: f64, gij: f64) -> f64 {
    (gii + gjj - 2.0 * gij).max(0.0)
}
