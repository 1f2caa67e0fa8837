//! The one code path for sums over samples.
//!
//! Every quantity that sums over the training samples (Gram matrices,
//! gradients, objectives, counts, means, core statistics) is first summed
//! over the local samples and then handed to a [`Reducer`], which completes
//! the sum over every participant. In a single process the local sum is the
//! whole sum; a distributed host plugs an allreduce in here (the C ABI's
//! callback reducer is `ffi::reducer`).
//!
//! The sums shared by the maths modules:
//! - [`sum_matrix`]: a contiguous matrix, element by element;
//! - [`sum_symmetric`]: a symmetric matrix `S = sum_p S_p` from the lower
//!   triangles of the local `S_p`, packed column by column into its first
//!   `n (n + 1) / 2` values (half the traffic), then mirrored;
//! - [`column_mean`]: the mean `mu_j = (sum_i x_ij) / N` of the rows of
//!   every participant, the column sums and the row count `N` in one
//!   reduction of `d + 1` values.
//!
//! [`Reducer`]: crate::reduce::Reducer
//! [`sum_matrix`]: crate::reduce::sum_matrix
//! [`sum_symmetric`]: crate::reduce::sum_symmetric
//! [`column_mean`]: crate::reduce::column_mean

use crate::error::{Error, Result};
use crate::numerics::as_slice_mut;
use faer::{MatMut, MatRef};

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

/// Completes a local sum held in a contiguous column-major matrix.
pub fn sum_matrix(reducer: &dyn Reducer, mut m: MatMut<'_, f64>) -> Result<()> {
    let buf = as_slice_mut(&mut m)
        .ok_or_else(|| Error::internal("reduction buffer is not contiguous"))?;
    reducer.sum_in_place(buf)
}

/// Completes a local sum of symmetric matrices held in the lower triangle of
/// the contiguous column-major square `a`: the lower triangle is packed
/// column by column into the first `n (n + 1) / 2` values, reduced, and
/// unpacked into both triangles. The upper triangle is not read. No
/// allocation.
pub fn sum_symmetric(reducer: &dyn Reducer, mut a: MatMut<'_, f64>) -> Result<()> {
    let n = a.nrows();
    if a.ncols() != n {
        return Err(Error::internal(
            "symmetric reduction of a non-square matrix",
        ));
    }
    let buf = as_slice_mut(&mut a)
        .ok_or_else(|| Error::internal("reduction buffer is not contiguous"))?;
    // Packed index of (i, j), i >= j, is at most its index i + j n: packing
    // forward and unpacking backward never overwrite a value still needed.
    let mut k = 0;
    for j in 0..n {
        for i in j..n {
            buf[k] = buf[i + j * n];
            k += 1;
        }
    }
    reducer.sum_in_place(&mut buf[..k])?;
    for j in (0..n).rev() {
        for i in (j..n).rev() {
            k -= 1;
            let v = buf[k];
            buf[i + j * n] = v;
            buf[j + i * n] = v;
        }
    }
    Ok(())
}

/// The column means of the rows of `x` (`N_local x d`, this participant's
/// rows) and of every other participant's, and the total row count `N`
/// (one reduction). The means are `NaN` when `N` is 0.
pub fn column_mean(x: MatRef<'_, f64>, reducer: &dyn Reducer) -> Result<(Vec<f64>, f64)> {
    let (n_local, d) = x.shape();
    let mut sums = vec![0.0; d + 1];
    for j in 0..d {
        sums[j] = (0..n_local).map(|i| x[(i, j)]).sum::<f64>();
    }
    sums[d] = n_local as f64;
    reducer.sum_in_place(&mut sums)?;
    let n = sums[d];
    sums.truncate(d);
    for s in sums.iter_mut() {
        *s /= n;
    }
    Ok((sums, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Two participants in one: doubles every sum and records the lengths.
    struct Twice(Mutex<Vec<usize>>);

    impl Reducer for Twice {
        fn sum_in_place(&self, buf: &mut [f64]) -> Result<()> {
            self.0.lock().unwrap().push(buf.len());
            buf.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        }
    }

    #[test]
    fn symmetric_sums_send_the_lower_triangle_and_mirror_it() {
        let n = 5;
        let mut buf: Vec<f64> = (0..n * n).map(|k| k as f64).collect();
        let lower = |b: &[f64], i: usize, j: usize| b[i.max(j) + i.min(j) * n];
        let before = buf.clone();
        let twice = Twice(Mutex::new(Vec::new()));
        sum_symmetric(&twice, MatMut::from_column_major_slice_mut(&mut buf, n, n)).unwrap();
        assert_eq!(*twice.0.lock().unwrap(), [n * (n + 1) / 2]);
        for j in 0..n {
            for i in 0..n {
                assert_eq!(buf[i + j * n], 2.0 * lower(&before, i, j));
            }
        }
    }

    #[test]
    fn column_means_cover_every_participant() {
        let x = faer::Mat::from_fn(3, 2, |i, j| (i + 10 * j) as f64);
        let twice = Twice(Mutex::new(Vec::new()));
        let (mean, n) = column_mean(x.as_ref(), &twice).unwrap();
        assert_eq!((mean, n), (vec![1.0, 11.0], 6.0));
    }
}
