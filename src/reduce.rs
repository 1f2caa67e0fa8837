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
//!   reduction of `d + 1` values;
//! - [`max_in_place`]: the exact largest value of a few slots over every
//!   participant, through sums only (module docs below).
//!
//! # Maxima through sums
//!
//! A host's reducer only sums, yet a fit needs a few exact maxima (the range
//! of the training data, the largest residual). Each `f64` maps to a `u64`
//! key of the same order (`bits | 2^63` for a non-negative value, `!bits`
//! for a negative one); the largest key is found one byte at a time, most
//! significant first: in round `t` every participant adds 1 to bucket `d` of
//! a slot when its key agrees with the bytes already fixed and its byte `t`
//! is `d`, and the largest bucket with a nonzero sum is byte `t` of the
//! maximum. Eight reductions of `256` values per slot; the result is exactly
//! the largest local value, the same on every participant.
//!
//! [`max_in_place`]: crate::reduce::max_in_place
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

/// The order-preserving key of a non-NaN `f64` (module docs).
fn order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 0 {
        bits | 1 << 63
    } else {
        !bits
    }
}

/// The `f64` of an [`order_key`].
fn from_order_key(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 {
        key & !(1 << 63)
    } else {
        !key
    })
}

/// Replaces every value of `slots` (each participant's local maximum of that
/// slot, `f64::NEG_INFINITY` for none) by its largest value over all
/// participants, exactly (module docs, "Maxima through sums"). Eight
/// reductions of `256 slots.len()` values; allocates that buffer. NaN is
/// refused.
pub fn max_in_place(reducer: &dyn Reducer, slots: &mut [f64]) -> Result<()> {
    if slots.iter().any(|x| x.is_nan()) {
        return Err(Error::internal("maximum reduction of a NaN"));
    }
    let keys: Vec<u64> = slots.iter().map(|&x| order_key(x)).collect();
    let mut best = vec![0u64; slots.len()];
    let mut counts = vec![0.0; 256 * slots.len()];
    for round in 0..8 {
        let shift = 56 - 8 * round;
        // The bytes above `shift` fixed so far (all of them for the key).
        let high = if round == 0 {
            0
        } else {
            u64::MAX << (shift + 8)
        };
        counts.fill(0.0);
        for (k, &key) in keys.iter().enumerate() {
            if key & high == best[k] {
                counts[256 * k + ((key >> shift) & 0xff) as usize] = 1.0;
            }
        }
        reducer.sum_in_place(&mut counts)?;
        for (k, b) in best.iter_mut().enumerate() {
            let byte = (0..256)
                .rev()
                .find(|&d| counts[256 * k + d] > 0.0)
                .ok_or_else(|| Error::internal("maximum reduction lost every participant"))?;
            *b |= (byte as u64) << shift;
        }
    }
    for (x, &b) in slots.iter_mut().zip(&best) {
        *x = from_order_key(b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// One participant's view of an allreduce among `parts` threads.
    struct Shared {
        acc: Mutex<Vec<f64>>,
        barrier: std::sync::Barrier,
    }

    impl Reducer for Shared {
        fn sum_in_place(&self, buf: &mut [f64]) -> Result<()> {
            {
                let mut acc = self.acc.lock().unwrap();
                acc.resize(buf.len(), 0.0);
                acc.iter_mut().zip(buf.iter()).for_each(|(a, b)| *a += b);
            }
            self.barrier.wait();
            buf.copy_from_slice(&self.acc.lock().unwrap());
            if self.barrier.wait().is_leader() {
                self.acc.lock().unwrap().clear();
            }
            self.barrier.wait();
            Ok(())
        }
    }

    #[test]
    fn maxima_through_sums_are_exact_across_participants() {
        let locals: [[f64; 4]; 3] = [
            [-3.5, 1e-300, f64::NEG_INFINITY, -0.0],
            [-2.25, 7.0, f64::NEG_INFINITY, 0.0],
            [-1e9, 7.000000000000001, 5.0, -1.0],
        ];
        let shared = Shared {
            acc: Mutex::new(Vec::new()),
            barrier: std::sync::Barrier::new(3),
        };
        let results: Vec<[f64; 4]> = std::thread::scope(|sc| {
            let hs: Vec<_> = locals
                .iter()
                .map(|l| {
                    let shared = &shared;
                    sc.spawn(move || {
                        let mut v = *l;
                        max_in_place(shared, &mut v).unwrap();
                        v
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert_eq!(r[0], -2.25);
            assert_eq!(r[1], 7.000000000000001);
            assert_eq!(r[2], 5.0);
            assert_eq!(r[3].to_bits(), 0.0f64.to_bits());
        }
        let mut one = [f64::NEG_INFINITY, -7.5, f64::INFINITY];
        max_in_place(&LocalReducer, &mut one).unwrap();
        assert_eq!(one, [f64::NEG_INFINITY, -7.5, f64::INFINITY]);
        assert!(max_in_place(&LocalReducer, &mut [f64::NAN]).is_err());
        for x in [-1e300, -1.0, -0.0, 0.0, 1e-310, 2.0, f64::MAX] {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
    }

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
