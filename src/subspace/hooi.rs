//! Higher-order orthogonal iteration: `U <-` top-r eigenvectors of
//! `sum Y_i Y_i^T`, then `V <-` top-s eigenvectors of `sum W_i W_i^T`; each
//! block update maximises f exactly over one factor.

use super::check::{check_bases, check_mean};
use super::products::{
    big_len, block_gram, block_gram_scratch, block_products, block_products_scratch,
};
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{
    self, gemm, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch, MemStack, Par,
    StackReq,
};
use crate::reduce::{sum_symmetric, Reducer};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef};

/// Workspace of the HOOI loop without its block buffer.
pub(super) fn hooi_small_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let (m, n) = (rows, cols);
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(m, m),
        temp_mat_scratch::<f64>(n, n),
        temp_slice_scratch::<f64>(m),
        temp_slice_scratch::<f64>(n),
        temp_mat_scratch::<f64>(m, rank_rows),
        StackReq::any_of(&[
            block_products_scratch(m, rank_cols),
            block_products_scratch(n, rank_rows),
            block_gram_scratch(m, par),
            block_gram_scratch(n, par),
            numerics::top_eigenvectors_scratch(m, par),
            numerics::top_eigenvectors_scratch(n, par),
        ]),
    ])
}

/// Workspace for [`hooi_sweep`].
pub fn hooi_sweep_scratch(
    count: usize,
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(big_len(count, rows, cols, rank_rows, rank_cols)),
        hooi_small_scratch(rows, cols, rank_rows, rank_cols, par),
    ])
}

/// One HOOI sweep: `U <- top-r eigenvectors of sum Y_i Y_i^T` (`Y_i = (X_i -
/// M) V`), then `V <- top-s eigenvectors of sum W_i W_i^T` (`W_i = (X_i -
/// M)^T U`, new U). Returns the objective at the new (U, V), the sum of the
/// top-s eigenvalues of the second Gram matrix.
#[allow(clippy::too_many_arguments)]
pub fn hooi_sweep(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (r, s) = check_bases(data, u.rb(), v.rb())?;
    check_mean(mean, data.rows(), data.cols())?;
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    let (big, stack) = temp_slice(big_len(count, m, n, r, s), 0.0f64, stack);
    block_products(data, false, mean, v.rb(), big, par, stack);
    hooi_sweep_blocks(data, mean, u, v, big, reducer, par, stack)
}

/// Length of the block buffer of [`hooi_sweep_from_rows`]: room for the row
/// blocks `Y_i` (`N m s` values) and the column blocks `W_i` (`N n r`).
pub fn hooi_blocks_len(
    count: usize,
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
) -> usize {
    big_len(count, rows, cols, rank_rows, rank_cols)
}

/// Workspace for [`hooi_sweep_from_rows`] (the block buffer not included).
pub fn hooi_sweep_from_rows_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    hooi_small_scratch(rows, cols, rank_rows, rank_cols, par)
}

/// One HOOI sweep whose first products are already done: on entry `blocks`
/// (at least [`hooi_blocks_len`] long) holds the row blocks
/// `Y_i = (X_i - M) V`, block i the row-major m x s matrix at offset
/// `i m s`. Updates U from their Gram matrix, then V from the blocks
/// `W_i = (X_i - M)^T U` (new U), which are left in `blocks`: block i the
/// row-major n x r matrix at offset `i n r` (the cores at the new (U, V)
/// are `C_i = W_i^T V`, see
/// [`project_cores_from_left`](super::project_cores_from_left)). Returns the
/// objective at the new (U, V). One pass over the data instead of two.
#[allow(clippy::too_many_arguments)]
pub fn hooi_sweep_from_rows(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    blocks: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (r, s) = check_bases(data, u.rb(), v.rb())?;
    check_mean(mean, data.rows(), data.cols())?;
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    if blocks.len() < big_len(count, m, n, r, s) {
        return Err(Error::shape(format!(
            "blocks: {} values, at least {} needed",
            blocks.len(),
            big_len(count, m, n, r, s)
        )));
    }
    hooi_sweep_blocks(data, mean, u, v, blocks, reducer, par, stack)
}

/// The sweep after the row blocks are in `big`.
#[allow(clippy::too_many_arguments)]
fn hooi_sweep_blocks(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    mut u: MatMut<'_, f64>,
    v: MatMut<'_, f64>,
    big: &mut [f64],
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64> {
    let (count, m, n, r) = (data.count(), data.rows(), data.cols(), u.ncols());
    let mut hooi = Hooi::new(m, n, r, stack);
    hooi.rows_gram_from_blocks(big, count, v.ncols(), reducer, par)?;
    hooi.rows_update(u.rb_mut(), par)?;
    hooi.cols_update(data, mean, u.rb(), v, big, reducer, par)
}

/// The temporaries of the HOOI steps, carved once.
pub(super) struct Hooi<'s> {
    gram_rows: MatMut<'s, f64>,
    gram_cols: MatMut<'s, f64>,
    vals_rows: &'s mut [f64],
    vals_cols: &'s mut [f64],
    gu: MatMut<'s, f64>,
    stack: &'s mut MemStack,
}

impl<'s> Hooi<'s> {
    pub(super) fn new(m: usize, n: usize, r: usize, stack: &'s mut MemStack) -> Self {
        let (gram_rows, stack) = temp_mat_zeroed::<f64>(m, m, stack);
        let (gram_cols, stack) = temp_mat_zeroed::<f64>(n, n, stack);
        let (vals_rows, stack) = temp_slice(m, 0.0f64, stack);
        let (vals_cols, stack) = temp_slice(n, 0.0f64, stack);
        let (gu, stack) = temp_mat_zeroed::<f64>(m, r, stack);
        Self {
            gram_rows,
            gram_cols,
            vals_rows,
            vals_cols,
            gu,
            stack,
        }
    }

    /// `sum Y_i Y_i^T` (lower triangle, reduced) with `Y_i = (X_i - M) V`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rows_gram(
        &mut self,
        data: &MatrixBatch,
        mean: Option<MatRef<'_, f64>>,
        v: MatRef<'_, f64>,
        big: &mut [f64],
        reducer: &dyn Reducer,
        par: Par,
    ) -> Result<()> {
        block_products(data, false, mean, v, big, par, self.stack);
        self.rows_gram_from_blocks(big, data.count(), v.ncols(), reducer, par)
    }

    /// `sum Y_i Y_i^T` (lower triangle, reduced) from the `count` blocks
    /// `Y_i` (m x s) already in `big`.
    pub(super) fn rows_gram_from_blocks(
        &mut self,
        big: &[f64],
        count: usize,
        s: usize,
        reducer: &dyn Reducer,
        par: Par,
    ) -> Result<()> {
        block_gram(big, count, s, self.gram_rows.rb_mut(), par, self.stack);
        sum_symmetric(reducer, self.gram_rows.rb_mut())
    }

    /// `f = trace(U^T (sum Y_i Y_i^T) U)` from the Gram matrix of `rows_gram`.
    pub(super) fn objective_from_rows_gram(&mut self, u: MatRef<'_, f64>, par: Par) -> f64 {
        numerics::mirror_lower(self.gram_rows.rb_mut());
        gemm(
            self.gu.rb_mut(),
            Accum::Replace,
            self.gram_rows.rb(),
            u,
            1.0,
            par,
        );
        let mut f = 0.0;
        for j in 0..u.ncols() {
            for i in 0..u.nrows() {
                f += u[(i, j)] * self.gu[(i, j)];
            }
        }
        f
    }

    /// `U <-` top-r eigenvectors of the Gram matrix of `rows_gram`; returns
    /// the objective at the new U (the sum of the top-r eigenvalues).
    pub(super) fn rows_update(&mut self, u: MatMut<'_, f64>, par: Par) -> Result<f64> {
        let r = u.ncols();
        numerics::top_eigenvectors(self.gram_rows.rb(), u, self.vals_rows, par, self.stack)?;
        Ok(self.vals_rows[..r].iter().sum())
    }

    /// `V <-` top-s eigenvectors of `sum W_i W_i^T`, `W_i = (X_i - M)^T U`;
    /// returns the objective (sum of the top-s eigenvalues). Leaves the
    /// blocks W_i in `big`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn cols_update(
        &mut self,
        data: &MatrixBatch,
        mean: Option<MatRef<'_, f64>>,
        u: MatRef<'_, f64>,
        v: MatMut<'_, f64>,
        big: &mut [f64],
        reducer: &dyn Reducer,
        par: Par,
    ) -> Result<f64> {
        let s = v.ncols();
        block_products(data, true, mean, u, big, par, self.stack);
        block_gram(
            big,
            data.count(),
            u.ncols(),
            self.gram_cols.rb_mut(),
            par,
            self.stack,
        );
        sum_symmetric(reducer, self.gram_cols.rb_mut())?;
        numerics::top_eigenvectors(self.gram_cols.rb(), v, self.vals_cols, par, self.stack)?;
        Ok(self.vals_cols[..s].iter().sum())
    }
}
