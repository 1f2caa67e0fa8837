//! Column moments and covariances of rows spread over participants (the
//! reduction hook completes every sum), and symmetric matrix powers.

use crate::error::{Error, Result};
use crate::numerics::{eigh_descending, eigh_descending_scratch};
use crate::reduce::{column_mean, Reducer};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// Column means and sample variances (`1 / (N - 1)`) of the rows of all
/// participants (`reducer` completes the sums; two passes for accuracy).
pub fn column_moments(x: MatRef<'_, f64>, reducer: &dyn Reducer) -> Result<(Vec<f64>, Vec<f64>)> {
    let (n, d) = x.shape();
    let (mean, total) = column_mean(x, reducer)?;
    let mut var: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| (x[(i, j)] - mean[j]).powi(2)).sum::<f64>())
        .collect();
    reducer.sum_in_place(&mut var)?;
    for v in var.iter_mut() {
        *v /= (total - 1.0).max(1.0);
    }
    Ok((mean, var))
}

/// Sample covariance (`1 / (N - 1)`) about `mean` of the rows of all
/// participants.
pub fn covariance(x: MatRef<'_, f64>, mean: &[f64], reducer: &dyn Reducer) -> Result<Mat<f64>> {
    let (n, d) = x.shape();
    let c = Mat::from_fn(n, d, |i, j| x[(i, j)] - mean[j]);
    let mut s = Mat::<f64>::zeros(d, d);
    matmul(
        s.as_mut(),
        Accum::Replace,
        c.transpose(),
        c.as_ref(),
        1.0,
        Par::Seq,
    );
    let mut flat: Vec<f64> = (0..d * d).map(|k| s[(k % d, k / d)]).collect();
    flat.push(n as f64);
    reducer.sum_in_place(&mut flat)?;
    let scale = 1.0 / (flat[d * d] - 1.0).max(1.0);
    let mut s = Mat::from_fn(d, d, |i, j| flat[i + j * d] * scale);
    crate::numerics::symmetrize(s.as_mut());
    Ok(s)
}

/// Symmetric `S^p` by eigendecomposition with eigenvalues floored at
/// `1e-12 x` the largest.
pub fn sym_pow(s: MatRef<'_, f64>, p: f64) -> Result<Mat<f64>> {
    let n = s.nrows();
    let mut vecs = Mat::<f64>::zeros(n, n);
    let mut vals = vec![0.0; n];
    let mut mem = MemBuffer::new(eigh_descending_scratch(n, Par::Seq));
    eigh_descending(
        s,
        vecs.as_mut(),
        &mut vals,
        Par::Seq,
        MemStack::new(&mut mem),
    )?;
    let floor = 1e-12 * vals[0].max(0.0);
    let scaled = Mat::from_fn(n, n, |i, j| vecs[(i, j)] * vals[j].max(floor).powf(p));
    let mut out = Mat::<f64>::zeros(n, n);
    matmul(
        out.as_mut(),
        Accum::Replace,
        scaled.as_ref(),
        vecs.transpose(),
        1.0,
        Par::Seq,
    );
    if !out.as_ref().norm_max().is_finite() {
        return Err(Error::numerical(
            "core model: moment matching produced a non-finite matrix (degenerate samples)",
        ));
    }
    Ok(out)
}
