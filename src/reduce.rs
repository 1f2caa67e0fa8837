//! The one code path for sums over samples.
//!
//! Every quantity that sums over the training samples (Gram matrices,
//! gradients, objectives, counts, means, core statistics) is first summed
//! over the local samples and then handed to a [`Reducer`], which completes
//! the sum over every participant. In a single process the local sum is the
//! whole sum; a distributed host plugs an allreduce in here.

use crate::error::Result;

/// Completes a sum over samples across participants, element-wise and in place.
pub trait Reducer: Sync {
    /// Replaces every element of `buf` by its sum over all participants.
    fn sum_in_place(&self, buf: &mut [f64]) -> Result<()>;
}

/// The reducer of a single process: the local sum is already complete.
#[derive(Copy, Clone, Debug, Default)]
pub struct LocalReducer;

impl Reducer for LocalReducer {
    fn sum_in_place(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// Sums a scalar through `reducer`.
pub fn sum_scalar(reducer: &dyn Reducer, x: f64) -> Result<f64> {
    let mut b = [x];
    reducer.sum_in_place(&mut b)?;
    Ok(b[0])
}
