//! The entrywise mean `M = (1/N) sum_i X_i`, the sum and the count completed
//! by the reducer.

use super::sums::{add_into, sum_parts, workers};
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{
    parallel_parts, temp_slice, temp_slice_scratch, MemStack, Par, SharedBuf, StackReq,
};
use crate::reduce::{sum_scalar, Reducer};
use faer::prelude::ReborrowMut;
use faer::MatMut;

/// Workspace for [`sample_mean`].
pub fn sample_mean_scratch(rows: usize, cols: usize, par: Par) -> StackReq {
    temp_slice_scratch::<f64>(rows * cols * par.degree().max(1))
}

/// The entrywise mean `M = (1/N) sum_i X_i` into `mean` (m x n); the sum and
/// the count N go through `reducer`.
pub fn sample_mean(
    data: &MatrixBatch,
    mut mean: MatMut<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
    stack: &mut MemStack,
) -> Result<()> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    if mean.nrows() != m || mean.ncols() != n {
        return Err(Error::shape(format!(
            "mean: {} x {}, expected {m} x {n}",
            mean.nrows(),
            mean.ncols()
        )));
    }
    let t = workers(par, count);
    let len = m * n;
    let (acc, _) = temp_slice(len * t, 0.0f64, stack);
    {
        let shared = SharedBuf::new(acc);
        parallel_parts(count, t, &|k, range| {
            // SAFETY: worker k owns accumulator k.
            let mut a = unsafe { shared.block(k * len, m, n) };
            for i in range {
                add_into(a.rb_mut(), data.sample(i));
            }
        });
    }
    let sum = sum_parts(acc, len, t);
    reducer.sum_in_place(sum)?;
    let total_count = sum_scalar(reducer, count as f64)?;
    if total_count <= 0.0 {
        return Err(Error::invalid(
            "train: the batch holds no matrix (count is 0)",
        ));
    }
    let scale = 1.0 / total_count;
    for j in 0..n {
        for i in 0..m {
            mean[(i, j)] = scale * sum[i + j * m];
        }
    }
    Ok(())
}
