//! Strided views of batches of matrices.
//!
//! A batch is `count` matrices of `rows x cols` `f64` values; element
//! `(i, r, c)` lives at `base + i * sample_stride + r * row_stride + c * col_stride`
//! (strides in elements, possibly negative). NumPy C-order `(N, m, n)` arrays
//! and Julia/Fortran column-major `(m, n, N)` arrays are both batches without a
//! copy. Constructors check once that every element lies inside the slice, so
//! the accessors need no further bounds checks.
//!
//! Sizes come from hosts and may be anything: `count * rows * cols` and the
//! offset span `sum_k |stride_k| (n_k - 1)` are computed exactly (in `i128`)
//! and a batch exists only for a [`CheckedLayout`], whose element count and
//! byte span fit in `isize` (the bound Rust and C put on one object), so no
//! product wraps around to a small number later.

use crate::error::{Error, Result};
use faer::{MatMut, MatRef};

/// Layout of a strided batch: sizes, strides and the offset of element (0, 0, 0).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of matrices.
    pub count: usize,
    /// Rows of each matrix.
    pub rows: usize,
    /// Columns of each matrix.
    pub cols: usize,
    /// Distance in elements between matrix `i` and `i + 1`.
    pub sample_stride: isize,
    /// Distance in elements between row `r` and `r + 1`.
    pub row_stride: isize,
    /// Distance in elements between column `c` and `c + 1`.
    pub col_stride: isize,
}

impl Layout {
    /// NumPy C-order `(count, rows, cols)`. Strides that do not fit in
    /// `isize` saturate (and the layout is then refused by [`CheckedLayout`]).
    pub fn c_order(count: usize, rows: usize, cols: usize) -> Self {
        Self {
            count,
            rows,
            cols,
            sample_stride: saturating_isize(rows.saturating_mul(cols)),
            row_stride: saturating_isize(cols),
            col_stride: 1,
        }
    }
    /// Column-major `(rows, cols, count)` (Julia, Fortran, NumPy `order='F'`).
    pub fn col_major(rows: usize, cols: usize, count: usize) -> Self {
        Self {
            count,
            rows,
            cols,
            sample_stride: saturating_isize(rows.saturating_mul(cols)),
            row_stride: 1,
            col_stride: saturating_isize(rows),
        }
    }
    /// Total number of elements `count * rows * cols`, or `None` when the
    /// product overflows `usize`.
    pub fn checked_len(&self) -> Option<usize> {
        self.count.checked_mul(self.rows)?.checked_mul(self.cols)
    }
    /// Total number of elements (`count * rows * cols`), saturating at
    /// `usize::MAX` (a layout that large is never a valid batch).
    pub fn len(&self) -> usize {
        self.checked_len().unwrap_or(usize::MAX)
    }
    /// True when the batch holds no element (some size is 0).
    pub fn is_empty(&self) -> bool {
        self.count == 0 || self.rows == 0 || self.cols == 0
    }

    fn axes(&self) -> [(usize, isize); 3] {
        [
            (self.count, self.sample_stride),
            (self.rows, self.row_stride),
            (self.cols, self.col_stride),
        ]
    }

    /// The smallest and largest element offsets relative to element (0, 0, 0),
    /// or `None` for an empty batch.
    pub fn offset_range(&self) -> Option<(i128, i128)> {
        if self.is_empty() {
            return None;
        }
        // Saturating: a stride of 2^63 over 2^64 elements on three axes
        // exceeds i128; a saturated range is refused like any huge one.
        let (mut lo, mut hi) = (0i128, 0i128);
        for (n, s) in self.axes() {
            let span = (s as i128).saturating_mul(n as i128 - 1);
            if span < 0 {
                lo = lo.saturating_add(span);
            } else {
                hi = hi.saturating_add(span);
            }
        }
        Some((lo, hi))
    }

    /// True when no two distinct elements share an offset. The check is the
    /// usual sufficient one (sort axes by |stride|; each stride must exceed
    /// the span of the smaller axes), so exotic interleavings are refused too.
    ///
    /// Never allocates: the C ABI runs it on every output view, inside
    /// calls that promise not to allocate.
    pub fn is_non_aliasing(&self) -> bool {
        // No element, nothing to alias (NumPy gives empty arrays any strides).
        if self.is_empty() {
            return true;
        }
        let mut axes = self.axes().map(|(n, s)| (n, (s as i128).abs()));
        axes.sort_unstable_by_key(|&(_, s)| s);
        let mut span = 0i128;
        // Axes of extent 0 or 1 never step, so their strides do not matter.
        for (n, s) in axes.into_iter().filter(|&(n, _)| n > 1) {
            if s <= span {
                return false;
            }
            span += s * (n as i128 - 1);
        }
        true
    }

    /// Checks the sizes (see [`CheckedLayout::new`]) and that every element
    /// lies inside a slice of `len` elements when element (0, 0, 0) is at
    /// `base`. `what` names the argument in the error message.
    pub fn check_within(&self, base: usize, len: usize, what: &str) -> Result<()> {
        CheckedLayout::new(*self, what)?.check_within(base, len, what)
    }

    #[inline]
    fn offset(&self, base: usize, i: usize) -> usize {
        (base as isize + i as isize * self.sample_stride) as usize
    }
}

fn saturating_isize(x: usize) -> isize {
    isize::try_from(x).unwrap_or(isize::MAX)
}

/// The largest number of `f64` elements one batch may address: the byte
/// size of one object must fit in `isize`.
const MAX_ELEMENTS: i128 = (isize::MAX / 8) as i128;

/// A [`Layout`] whose sizes are known to be addressable: `rows, cols > 0`,
/// `count * rows * cols` elements and the offset span of every stride fit
/// in one object (`isize::MAX` bytes). Only [`CheckedLayout::new`] builds
/// one, so code holding it may multiply its sizes without overflow.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CheckedLayout {
    layout: Layout,
    len: usize,
}

impl CheckedLayout {
    /// Checks `layout`; `what` names the argument in the error message
    /// (`ErrorKind::Shape` for an empty matrix, `ErrorKind::InvalidArgument`
    /// for sizes or strides beyond what memory can hold).
    pub fn new(layout: Layout, what: &str) -> Result<Self> {
        let Layout {
            count, rows, cols, ..
        } = layout;
        if rows == 0 || cols == 0 {
            return Err(Error::shape(format!(
                "{what}: matrices must have at least one row and one column (got {rows} x {cols})"
            )));
        }
        let len = count as i128 * rows as i128 * cols as i128;
        if len > MAX_ELEMENTS {
            return Err(Error::invalid(format!(
                "{what}: count * rows * cols = {count} * {rows} * {cols} doubles exceed the largest possible buffer ({MAX_ELEMENTS} doubles)"
            )));
        }
        if let Some((lo, hi)) = layout.offset_range() {
            if hi - lo >= MAX_ELEMENTS {
                return Err(Error::invalid(format!(
                    "{what}: strides ({}, {}, {}) with {count} x {rows} x {cols} elements span more memory than can exist",
                    layout.sample_stride, layout.row_stride, layout.col_stride
                )));
            }
        }
        Ok(Self {
            layout,
            len: len as usize,
        })
    }
    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Number of elements `count * rows * cols` (exact).
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the batch holds no matrix.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks that every element lies inside a slice of `len` elements when
    /// element (0, 0, 0) is at `base`.
    pub fn check_within(&self, base: usize, len: usize, what: &str) -> Result<()> {
        let l = &self.layout;
        if let Some((lo, hi)) = l.offset_range() {
            let b = base as i128;
            if b + lo < 0 || b + hi >= len as i128 {
                return Err(Error::shape(format!(
                    "{what}: strides ({}, {}, {}) with {} x {} x {} elements reach outside the {} elements of the buffer",
                    l.sample_stride, l.row_stride, l.col_stride,
                    l.count, l.rows, l.cols, len
                )));
            }
        }
        Ok(())
    }
}

/// A read-only batch of matrices with an optional observation mask.
#[derive(Copy, Clone, Debug)]
pub struct MatrixBatch<'a> {
    data: &'a [f64],
    mask: Option<&'a [u8]>,
    base: usize,
    layout: Layout,
}

impl<'a> MatrixBatch<'a> {
    /// A view of `data` with element (0, 0, 0) at `data[base]`.
    pub fn new(data: &'a [f64], base: usize, layout: Layout) -> Result<Self> {
        Self::new_named(data, base, layout, "data")
    }
    /// As [`MatrixBatch::new`], with `what` naming the argument in errors.
    pub(crate) fn new_named(
        data: &'a [f64],
        base: usize,
        layout: Layout,
        what: &str,
    ) -> Result<Self> {
        layout.check_within(base, data.len(), what)?;
        Ok(Self {
            data,
            mask: None,
            base,
            layout,
        })
    }
    /// A NumPy C-order `(count, rows, cols)` batch.
    pub fn from_c_order(data: &'a [f64], count: usize, rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, 0, Layout::c_order(count, rows, cols))
    }
    /// A column-major `(rows, cols, count)` batch.
    pub fn from_col_major(data: &'a [f64], rows: usize, cols: usize, count: usize) -> Result<Self> {
        Self::new(data, 0, Layout::col_major(rows, cols, count))
    }
    /// Attaches an observation mask with the same layout as the data (nonzero =
    /// observed). `mask.len()` must equal the data slice's length.
    pub fn with_mask(mut self, mask: &'a [u8]) -> Result<Self> {
        if mask.len() != self.data.len() {
            return Err(Error::shape(format!(
                "mask: {} elements, but the data buffer has {} (the mask shares the data's layout)",
                mask.len(),
                self.data.len()
            )));
        }
        self.mask = Some(mask);
        Ok(self)
    }
    /// The layout (sizes and strides).
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Number of matrices.
    pub fn count(&self) -> usize {
        self.layout.count
    }
    /// Rows of each matrix.
    pub fn rows(&self) -> usize {
        self.layout.rows
    }
    /// Columns of each matrix.
    pub fn cols(&self) -> usize {
        self.layout.cols
    }
    /// True when a mask is attached.
    pub fn has_mask(&self) -> bool {
        self.mask.is_some()
    }
    /// Matrix `i` as a faer view. Panics if `i >= count`.
    pub fn sample(&self, i: usize) -> MatRef<'a, f64> {
        assert!(i < self.layout.count, "sample index out of range");
        let off = self.layout.offset(self.base, i);
        // SAFETY: the constructor checked that every element of every sample
        // lies inside `data`.
        unsafe {
            MatRef::from_raw_parts(
                self.data.as_ptr().add(off),
                self.layout.rows,
                self.layout.cols,
                self.layout.row_stride,
                self.layout.col_stride,
            )
        }
    }
    /// Mask of matrix `i` (nonzero = observed), or `None` without a mask.
    pub fn mask(&self, i: usize) -> Option<MaskRef<'a>> {
        assert!(i < self.layout.count, "sample index out of range");
        self.mask.map(|m| MaskRef {
            data: m,
            base: self.layout.offset(self.base, i),
            row_stride: self.layout.row_stride,
            col_stride: self.layout.col_stride,
            rows: self.layout.rows,
            cols: self.layout.cols,
        })
    }
    /// The same batch without its mask.
    pub fn without_mask(mut self) -> Self {
        self.mask = None;
        self
    }
    /// True when matrix `i` is stored so that all matrices stacked vertically
    /// form one strided `(count * rows) x cols` matrix (NumPy C-order does).
    pub(crate) fn vertical_stack(&self) -> Option<MatRef<'a, f64>> {
        let l = self.layout;
        if l.count == 0 || l.sample_stride != l.rows as isize * l.row_stride {
            return None;
        }
        let s = self.sample(0);
        // SAFETY: with sample_stride == rows * row_stride, row k of the stack is
        // row k % rows of sample k / rows, which the constructor checked.
        Some(unsafe {
            MatRef::from_raw_parts(
                s.as_ptr(),
                l.count * l.rows,
                l.cols,
                l.row_stride,
                l.col_stride,
            )
        })
    }
    /// True when all matrices side by side form one strided
    /// `rows x (count * cols)` matrix (column-major batches do).
    pub(crate) fn horizontal_stack(&self) -> Option<MatRef<'a, f64>> {
        let l = self.layout;
        if l.count == 0 || l.sample_stride != l.cols as isize * l.col_stride {
            return None;
        }
        let s = self.sample(0);
        // SAFETY: as for `vertical_stack`, with the roles of rows and columns swapped.
        Some(unsafe {
            MatRef::from_raw_parts(
                s.as_ptr(),
                l.rows,
                l.count * l.cols,
                l.row_stride,
                l.col_stride,
            )
        })
    }
    /// Checks that every value (observed ones, when a mask is attached) is finite.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        for i in 0..self.count() {
            let x = self.sample(i);
            let m = self.mask(i);
            for c in 0..self.cols() {
                for r in 0..self.rows() {
                    let observed = m.as_ref().is_none_or(|m| m.observed(r, c));
                    if observed && !x[(r, c)].is_finite() {
                        return Err(Error::non_finite(format!(
                            "{what}: matrix {i} has the non-finite value {} at row {r}, column {c}",
                            x[(r, c)]
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The observation mask of one matrix.
#[derive(Copy, Clone, Debug)]
pub struct MaskRef<'a> {
    data: &'a [u8],
    base: usize,
    row_stride: isize,
    col_stride: isize,
    rows: usize,
    cols: usize,
}

impl MaskRef<'_> {
    /// True when entry `(r, c)` is observed.
    #[inline]
    pub fn observed(&self, r: usize, c: usize) -> bool {
        debug_assert!(r < self.rows && c < self.cols);
        let off = self.base as isize + r as isize * self.row_stride + c as isize * self.col_stride;
        self.data[off as usize] != 0
    }
    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// A writable batch of matrices whose elements never alias.
#[derive(Debug)]
pub struct MatrixBatchMut<'a> {
    data: &'a mut [f64],
    base: usize,
    layout: Layout,
}

impl<'a> MatrixBatchMut<'a> {
    /// A writable view of `data` with element (0, 0, 0) at `data[base]`.
    /// Fails when elements would lie outside `data` or alias each other.
    pub fn new(data: &'a mut [f64], base: usize, layout: Layout) -> Result<Self> {
        Self::new_named(data, base, layout, "out")
    }
    /// As [`MatrixBatchMut::new`], with `what` naming the argument in errors.
    pub(crate) fn new_named(
        data: &'a mut [f64],
        base: usize,
        layout: Layout,
        what: &str,
    ) -> Result<Self> {
        layout.check_within(base, data.len(), what)?;
        if !layout.is_non_aliasing() {
            return Err(Error::shape(format!(
                "{what}: strides ({}, {}, {}) make distinct output elements alias",
                layout.sample_stride, layout.row_stride, layout.col_stride
            )));
        }
        Ok(Self { data, base, layout })
    }
    /// A NumPy C-order `(count, rows, cols)` batch.
    pub fn from_c_order(
        data: &'a mut [f64],
        count: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        Self::new(data, 0, Layout::c_order(count, rows, cols))
    }
    /// A column-major `(rows, cols, count)` batch.
    pub fn from_col_major(
        data: &'a mut [f64],
        rows: usize,
        cols: usize,
        count: usize,
    ) -> Result<Self> {
        Self::new(data, 0, Layout::col_major(rows, cols, count))
    }
    /// The layout (sizes and strides).
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Number of matrices.
    pub fn count(&self) -> usize {
        self.layout.count
    }
    /// Rows of each matrix.
    pub fn rows(&self) -> usize {
        self.layout.rows
    }
    /// Columns of each matrix.
    pub fn cols(&self) -> usize {
        self.layout.cols
    }
    /// Matrix `i` as a writable faer view. Panics if `i >= count`.
    pub fn sample_mut(&mut self, i: usize) -> MatMut<'_, f64> {
        assert!(i < self.layout.count, "sample index out of range");
        let off = self.layout.offset(self.base, i);
        // SAFETY: bounds were checked by the constructor; `&mut self` makes the
        // view exclusive and the layout was checked not to alias.
        unsafe {
            MatMut::from_raw_parts_mut(
                self.data.as_mut_ptr().add(off),
                self.layout.rows,
                self.layout.cols,
                self.layout.row_stride,
                self.layout.col_stride,
            )
        }
    }
    /// Matrix `i` as a read-only faer view.
    pub fn sample(&self, i: usize) -> MatRef<'_, f64> {
        assert!(i < self.layout.count, "sample index out of range");
        let off = self.layout.offset(self.base, i);
        // SAFETY: as for `sample_mut`.
        unsafe {
            MatRef::from_raw_parts(
                self.data.as_ptr().add(off),
                self.layout.rows,
                self.layout.cols,
                self.layout.row_stride,
                self.layout.col_stride,
            )
        }
    }
    /// Reborrows the batch for a shorter lifetime.
    pub fn rb_mut(&mut self) -> MatrixBatchMut<'_> {
        MatrixBatchMut {
            data: self.data,
            base: self.base,
            layout: self.layout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_order_and_col_major_address_the_same_element() {
        let (n, m, k) = (3, 4, 5);
        let c: Vec<f64> = (0..n * m * k).map(|x| x as f64).collect();
        let mut f = vec![0.0; n * m * k];
        for i in 0..n {
            for r in 0..m {
                for col in 0..k {
                    f[r + m * (col + k * i)] = c[(i * m + r) * k + col];
                }
            }
        }
        let bc = MatrixBatch::from_c_order(&c, n, m, k).unwrap();
        let bf = MatrixBatch::from_col_major(&f, m, k, n).unwrap();
        for i in 0..n {
            assert_eq!(bc.sample(i), bf.sample(i));
        }
        assert!(bc.vertical_stack().is_some() && bc.horizontal_stack().is_none());
        assert!(bf.horizontal_stack().is_some() && bf.vertical_stack().is_none());
    }

    #[test]
    fn out_of_bounds_layout_is_refused() {
        let data = vec![0.0; 10];
        let err = MatrixBatch::from_c_order(&data, 1, 3, 4).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Shape);
        assert!(err.message().starts_with("data:"));
        let l = Layout {
            count: 2,
            rows: 2,
            cols: 2,
            sample_stride: -4,
            row_stride: 2,
            col_stride: 1,
        };
        assert!(MatrixBatch::new(&data, 0, l).is_err());
        assert!(MatrixBatch::new(&data, 4, l).is_ok());
    }

    #[test]
    fn overflowing_sizes_are_refused() {
        // count * rows * cols wraps to 0 in usize: never an empty view.
        let wraps = Layout::c_order(1 << 32, 1 << 32, 1);
        assert_eq!(wraps.count.wrapping_mul(wraps.rows), 0);
        assert!(!wraps.is_empty() && wraps.checked_len().is_none());
        let err = CheckedLayout::new(wraps, "train").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert!(err.message().starts_with("train:"), "{}", err.message());
        let huge = Layout::c_order(1 << 60, 8, 6);
        let err = MatrixBatch::new(&[], 0, huge).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        // Strides alone can span more than memory.
        let wide = Layout {
            sample_stride: isize::MAX / 2,
            ..Layout::c_order(3, 2, 2)
        };
        assert!(CheckedLayout::new(wide, "x").is_err());
        let ok = CheckedLayout::new(Layout::c_order(3, 2, 2), "x").unwrap();
        assert_eq!(ok.len(), 12);
        assert!(CheckedLayout::new(Layout::c_order(0, 2, 2), "x")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn aliasing_output_is_refused() {
        let mut data = vec![0.0; 100];
        let l = Layout {
            count: 2,
            rows: 3,
            cols: 3,
            sample_stride: 9,
            row_stride: 1,
            col_stride: 2,
        };
        let err = MatrixBatchMut::new(&mut data, 0, l).unwrap_err();
        assert!(err.message().contains("alias"));
        let l = Layout {
            count: 2,
            rows: 3,
            cols: 3,
            sample_stride: 0,
            row_stride: 3,
            col_stride: 1,
        };
        assert!(MatrixBatchMut::new(&mut data, 0, l).is_err());
        let l = Layout {
            count: 1,
            rows: 3,
            cols: 3,
            sample_stride: 0,
            row_stride: 3,
            col_stride: 1,
        };
        assert!(MatrixBatchMut::new(&mut data, 0, l).is_ok());
    }
}
