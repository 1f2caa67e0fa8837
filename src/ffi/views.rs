//! Strided data views of the C ABI and their conversion to batch views.

use crate::batch::{CheckedLayout, Layout, MatrixBatch, MatrixBatchMut};
use crate::error::{Error, ErrorKind, Result};

/// A read-only batch of `count` matrices of `rows x cols` doubles: element
/// `(i, r, c)` is `data[i * sample_stride + r * row_stride + c * col_stride]`
/// (strides in elements, may be negative). A NumPy C-order `(N, m, n)` array
/// has strides `(m*n, n, 1)`; a Julia `(m, n, N)` array has `(m*n, 1, m)`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct coreflow_matrices {
    /// Element (0, 0, 0).
    pub data: *const f64,
    /// NULL = every entry observed; otherwise nonzero = observed, addressed
    /// with the same strides as `data`.
    pub mask: *const u8,
    /// Number of matrices.
    pub count: usize,
    /// Rows of each matrix.
    pub rows: usize,
    /// Columns of each matrix.
    pub cols: usize,
    /// Distance in elements between consecutive matrices.
    pub sample_stride: isize,
    /// Distance in elements between consecutive rows.
    pub row_stride: isize,
    /// Distance in elements between consecutive columns.
    pub col_stride: isize,
}

/// A writable batch of matrices, addressed like [`coreflow_matrices`].
/// Distinct elements must not share memory (checked).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct coreflow_matrices_mut {
    /// Element (0, 0, 0).
    pub data: *mut f64,
    /// Number of matrices.
    pub count: usize,
    /// Rows of each matrix.
    pub rows: usize,
    /// Columns of each matrix.
    pub cols: usize,
    /// Distance in elements between consecutive matrices.
    pub sample_stride: isize,
    /// Distance in elements between consecutive rows.
    pub row_stride: isize,
    /// Distance in elements between consecutive columns.
    pub col_stride: isize,
}

pub(crate) fn null(what: &str) -> Error {
    Error::new(ErrorKind::Null, format!("{what}: must not be NULL"))
}

/// The slice extent `(start offset, length, base)` that covers every element.
/// The sizes go through [`CheckedLayout`], so a `count * rows * cols` that
/// overflows is refused here (`COREFLOW_ERR_INVALID_ARGUMENT` naming the
/// view) instead of wrapping to an empty view.
fn extent(layout: &Layout, what: &str) -> Result<(isize, usize, usize)> {
    let checked = CheckedLayout::new(*layout, what)?;
    match checked.layout().offset_range() {
        None => Ok((0, 0, 0)),
        Some((lo, hi)) => {
            // CheckedLayout bounds hi - lo; lo itself is at least -(hi - lo).
            let len = hi - lo + 1;
            Ok((lo as isize, len as usize, (-lo) as usize))
        }
    }
}

fn layout_of(count: usize, rows: usize, cols: usize, ss: isize, rs: isize, cs: isize) -> Layout {
    Layout {
        count,
        rows,
        cols,
        sample_stride: ss,
        row_stride: rs,
        col_stride: cs,
    }
}

/// Borrows a C view as a [`MatrixBatch`].
///
/// # Safety
/// `m` must point to a valid `coreflow_matrices` whose `data` (and `mask`,
/// when non-NULL) are readable at every addressed element for `'a`.
pub(crate) unsafe fn batch_from_c<'a>(
    m: *const coreflow_matrices,
    what: &str,
) -> Result<MatrixBatch<'a>> {
    let m = m.as_ref().ok_or_else(|| null(what))?;
    let layout = layout_of(
        m.count,
        m.rows,
        m.cols,
        m.sample_stride,
        m.row_stride,
        m.col_stride,
    );
    let (lo, len, base) = extent(&layout, what)?;
    if len == 0 {
        return MatrixBatch::new_named(&[], 0, layout, what);
    }
    if m.data.is_null() {
        return Err(null(&format!("{what}->data")));
    }
    let data = std::slice::from_raw_parts(m.data.offset(lo), len);
    let batch = MatrixBatch::new_named(data, base, layout, what)?;
    if m.mask.is_null() {
        Ok(batch)
    } else {
        let mask = std::slice::from_raw_parts(m.mask.offset(lo), len);
        batch.with_mask(mask)
    }
}

/// Borrows a C view as a [`MatrixBatchMut`] (checked not to alias).
///
/// # Safety
/// `m` must point to a valid `coreflow_matrices_mut` whose `data` is writable
/// at every addressed element for `'a` and not accessed otherwise meanwhile.
pub(crate) unsafe fn batch_mut_from_c<'a>(
    m: *mut coreflow_matrices_mut,
    what: &str,
) -> Result<MatrixBatchMut<'a>> {
    let m = m.as_ref().ok_or_else(|| null(what))?;
    let layout = layout_of(
        m.count,
        m.rows,
        m.cols,
        m.sample_stride,
        m.row_stride,
        m.col_stride,
    );
    let (lo, len, base) = extent(&layout, what)?;
    if len == 0 {
        return MatrixBatchMut::new_named(&mut [], 0, layout, what);
    }
    if m.data.is_null() {
        return Err(null(&format!("{what}->data")));
    }
    let data = std::slice::from_raw_parts_mut(m.data.offset(lo), len);
    MatrixBatchMut::new_named(data, base, layout, what)
}

/// The byte range `[lo, hi)` a view spans, or `None` when it is empty.
fn span(data: usize, layout: &Layout) -> Option<(usize, usize)> {
    let (lo, hi) = layout.offset_range()?;
    let lo = data as i128 + 8 * lo;
    let hi = data as i128 + 8 * (hi + 1);
    Some((lo.max(0) as usize, hi.max(0) as usize))
}

/// True when the memory spans of an input and an output view intersect.
///
/// # Safety
/// Both pointers must be valid (they were checked by the conversions).
pub(crate) unsafe fn views_overlap(
    a: *const coreflow_matrices,
    b: *const coreflow_matrices_mut,
) -> bool {
    let (a, b) = (&*a, &*b);
    let la = layout_of(
        a.count,
        a.rows,
        a.cols,
        a.sample_stride,
        a.row_stride,
        a.col_stride,
    );
    let lb = layout_of(
        b.count,
        b.rows,
        b.cols,
        b.sample_stride,
        b.row_stride,
        b.col_stride,
    );
    match (span(a.data as usize, &la), span(b.data as usize, &lb)) {
        (Some((a0, a1)), Some((b0, b1))) => a0 < b1 && b0 < a1,
        _ => false,
    }
}
