//! Principal components of distributed rows, in memory `d x min(d, N)`.
//!
//! Input: the rows `x_i` (`i = 1..N`, length `d`) of every participant;
//! every sum over rows is completed by a [`Reducer`] (see
//! [`crate::reduce`]), so participants holding different rows get the same
//! result. Output: the mean `mu`, the principal directions `Q` (`d x q`,
//! orthonormal columns, by descending variance), their sample variances
//! `lambda_j` (eigenvalues of the covariance `S / (N - 1)`,
//! `S = sum_i (x_i - mu)(x_i - mu)^T`), and the total variance
//! `trace(S) / (N - 1)`.
//!
//! - `d <= N`: the `d x d` scatter `S` is summed through the reducer and
//!   decomposed; `q = d` (a complete basis).
//! - `d > N`: `S` has rank at most `N - 1`, and it is never formed. A
//!   one-pass range finder with `q = N` columns: `Y = S Omega`, summed as
//!   `sum_i (x_i - mu) ((x_i - mu)^T Omega)` with a seeded Gaussian `Omega`
//!   (`d x q`, the same on every participant), `Q0 = orth(Y)` (thin QR), the
//!   projected scatter `B = sum_i (Q0^T (x_i - mu)) (Q0^T (x_i - mu))^T`
//!   (`q x q`) summed through the reducer, `B = E diag(l) E^T`, and
//!   `Q = Q0 E`, `lambda = l / (N - 1)`. Since `q >= rank(S) + 1`, `Q0`
//!   spans the range of `S` (with probability one), so this is the exact
//!   eigendecomposition up to rounding; the surplus directions get
//!   `lambda ~ 0`. Memory: a few `d x q` and `N_local x max(d, q)` matrices.
//!
//! Signs: every direction is flipped so that its entry of largest magnitude
//! is positive (ties by the lowest index), as for the canonical bases.
//!
//! [`Reducer`]: crate::reduce::Reducer

use crate::error::{Error, Result};
use crate::numerics::{self, gemm, MemBuffer, MemStack, Par};
use crate::reduce::{column_mean, sum_symmetric, Reducer};
use crate::rng;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef};

/// Seed of the range finder's test matrix (any fixed value: the result does
/// not depend on it beyond rounding).
const RANGE_SEED: u64 = 0x7063_615f_7261_6e67;

/// The principal components of a set of rows (see the module docs).
#[derive(Clone, Debug)]
pub struct PrincipalComponents {
    /// Mean `mu` of the rows (length `d`).
    pub mean: Vec<f64>,
    /// Principal directions `Q`, `d x q`, orthonormal columns, by
    /// descending variance.
    pub basis: Mat<f64>,
    /// Sample variances `lambda_j >= 0` along the directions (length `q`,
    /// descending).
    pub variances: Vec<f64>,
    /// `trace(S) / (N - 1)`: the sum of the coordinate variances.
    pub total_variance: f64,
    /// Number of rows over all participants.
    pub count: usize,
}

/// Eigenpairs of the symmetric `a` (descending).
fn eig(a: MatRef<'_, f64>) -> Result<(Mat<f64>, Vec<f64>)> {
    let n = a.nrows();
    let mut vecs = Mat::<f64>::zeros(n, n);
    let mut vals = vec![0.0; n];
    let mut mem = MemBuffer::new(numerics::eigh_descending_scratch(n, Par::Seq));
    numerics::eigh_descending(
        a,
        vecs.as_mut(),
        &mut vals,
        Par::Seq,
        MemStack::new(&mut mem),
    )?;
    Ok((vecs, vals))
}

/// The principal components of the rows of `x` (`N_local x d`, this
/// participant's rows) and of every other participant's (see the module
/// docs). Products use `par`; the result does not depend on how the rows
/// are split between participants beyond rounding.
pub fn principal_components(
    x: MatRef<'_, f64>,
    reducer: &dyn Reducer,
    par: Par,
) -> Result<PrincipalComponents> {
    let (n_local, d) = x.shape();
    if d == 0 {
        return Err(Error::shape("rows: have no columns"));
    }
    let (mean, n) = column_mean(x, reducer)?;
    if n < 1.0 {
        return Err(Error::invalid("rows: there is no row to take moments of"));
    }
    let count = n as usize;
    let centred = Mat::from_fn(n_local, d, |i, j| x[(i, j)] - mean[j]);
    let denom = (n - 1.0).max(1.0);

    let (mut basis, vals, trace) = if d <= count {
        let mut buf = vec![0.0; d * d];
        let mut s = MatMut::from_column_major_slice_mut(&mut buf, d, d);
        numerics::syrk_lower(s.rb_mut(), Accum::Replace, centred.transpose(), 1.0, par);
        sum_symmetric(reducer, s.rb_mut())?;
        let trace = (0..d).map(|j| s[(j, j)]).sum::<f64>();
        let (vecs, vals) = eig(s.rb())?;
        (vecs, vals, trace)
    } else {
        let q = count;
        // The test matrix: column j is normal stream j of the fixed seed.
        let mut omega = Mat::<f64>::zeros(d, q);
        let mut col = vec![0.0; d];
        for j in 0..q {
            rng::fill_normal(&mut rng::stream(RANGE_SEED, j as u64), &mut col);
            for (i, v) in col.iter().enumerate() {
                omega[(i, j)] = *v;
            }
        }
        let mut t = Mat::<f64>::zeros(n_local, q);
        gemm(
            t.as_mut(),
            Accum::Replace,
            centred.as_ref(),
            omega.as_ref(),
            1.0,
            par,
        );
        drop(omega);
        let mut y = Mat::<f64>::zeros(d, q);
        gemm(
            y.as_mut(),
            Accum::Replace,
            centred.transpose(),
            t.as_ref(),
            1.0,
            par,
        );
        // Y and the trace in one reduction.
        let mut flat: Vec<f64> = Vec::with_capacity(d * q + 1);
        for j in 0..q {
            flat.extend((0..d).map(|i| y[(i, j)]));
        }
        flat.push(numerics::norm_sq(centred.as_ref()));
        reducer.sum_in_place(&mut flat)?;
        let trace = flat[d * q];
        for j in 0..q {
            for i in 0..d {
                y[(i, j)] = flat[i + j * d];
            }
        }
        drop(flat);
        let mut mem = MemBuffer::new(numerics::retract_qr_scratch(d, q, Par::Seq));
        numerics::retract_qr(y.as_mut(), Par::Seq, MemStack::new(&mut mem));
        drop(mem);
        // Projected scatter B = P^T P, P = (X - mu) Q0.
        gemm(
            t.as_mut(),
            Accum::Replace,
            centred.as_ref(),
            y.as_ref(),
            1.0,
            par,
        );
        let mut buf = vec![0.0; q * q];
        let mut b = MatMut::from_column_major_slice_mut(&mut buf, q, q);
        numerics::syrk_lower(b.rb_mut(), Accum::Replace, t.transpose(), 1.0, par);
        sum_symmetric(reducer, b.rb_mut())?;
        let (e, vals) = eig(b.rb())?;
        let mut basis = Mat::<f64>::zeros(d, q);
        gemm(
            basis.as_mut(),
            Accum::Replace,
            y.as_ref(),
            e.as_ref(),
            1.0,
            par,
        );
        (basis, vals, trace)
    };
    numerics::fix_column_signs(basis.as_mut());
    let variances: Vec<f64> = vals.iter().map(|v| v.max(0.0) / denom).collect();
    if variances.iter().any(|v| !v.is_finite()) || !trace.is_finite() {
        return Err(Error::numerical(
            "principal components: non-finite variances",
        ));
    }
    Ok(PrincipalComponents {
        mean,
        basis,
        variances,
        total_variance: trace / denom,
        count,
    })
}

/// The Ledoit–Wolf shrinkage intensity `alpha` in `[0, 1]` of the rows `x`
/// (this participant's, `N_local x d`) with principal components `pcs` (of
/// the rows of all participants), restricted to the block of components
/// `from..q` and the `d - q` directions they do not span (`from = 0`: the
/// whole covariance; below, `d`, `S` and `mu` are the block's): the
/// covariance estimate
/// `(1 - alpha) S + alpha mu I`, `mu = trace(S) / d`, minimises the
/// expected squared Frobenius error among such blends (Ledoit and Wolf,
/// 2004). With `S` the covariance with `1 / N`, `s_j` its eigenvalues,
/// `delta^2 = ||S - mu I||_F^2 = sum_j s_j^2 - d mu^2`,
/// `beta^2 = min(delta^2, sum_i ||x_i x_i^T - S||_F^2 / N^2)` and
/// `||x x^T - S||_F^2 = ||x||^4 - 2 x^T S x + ||S||_F^2`, it is
/// `beta^2 / delta^2` (0 when `delta = 0`: `S` is already isotropic).
/// Every `x_i - mean` lies in the span of `Q` (section 5), so the sums run
/// over the principal scores `a_i = Q^T (x_i - mean)`. Its point: with
/// fewer rows than dimensions `S` is singular, and a Gaussian with it (plus
/// a tiny ridge) gives held-out rows log-densities of -1e5 and below.
pub fn shrinkage_intensity(
    x: MatRef<'_, f64>,
    pcs: &PrincipalComponents,
    from: usize,
    reducer: &dyn Reducer,
    par: Par,
) -> Result<f64> {
    let (n_local, d_all) = x.shape();
    let q_all = pcs.variances.len();
    let from = from.min(q_all);
    let (q, d) = (q_all - from, d_all - from);
    if pcs.count < 2 || d == 0 {
        return Ok(1.0);
    }
    let n = pcs.count as f64;
    let to_biased = (n - 1.0) / n;
    let s: Vec<f64> = pcs.variances[from..]
        .iter()
        .map(|l| l * to_biased)
        .collect();
    let kept: f64 = pcs.variances[..from].iter().sum();
    let mu = (pcs.total_variance - kept).max(0.0) * to_biased / d as f64;
    let s_fro2: f64 = s.iter().map(|v| v * v).sum();
    let delta2 = s_fro2 - d as f64 * mu * mu;
    let centred = Mat::from_fn(n_local, d_all, |i, j| x[(i, j)] - pcs.mean[j]);
    let mut scores = Mat::<f64>::zeros(n_local, q);
    gemm(
        scores.as_mut(),
        Accum::Replace,
        centred.as_ref(),
        pcs.basis.as_ref().subcols(from, q),
        1.0,
        par,
    );
    let mut sums = [0.0];
    for i in 0..n_local {
        let (mut norm2, mut quad) = (0.0, 0.0);
        for (j, sj) in s.iter().enumerate() {
            let a2 = scores[(i, j)] * scores[(i, j)];
            norm2 += a2;
            quad += sj * a2;
        }
        sums[0] += norm2 * norm2 - 2.0 * quad + s_fro2;
    }
    reducer.sum_in_place(&mut sums)?;
    if delta2.is_nan() || delta2 <= 0.0 || !sums[0].is_finite() {
        return Ok(if delta2.is_finite() { 0.0 } else { 1.0 });
    }
    let beta2 = (sums[0] / (n * n)).min(delta2);
    Ok((beta2 / delta2).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::LocalReducer;

    /// Rows with a decaying spectrum in `rank` random directions plus a
    /// little isotropic noise.
    fn rows(n: usize, d: usize, rank: usize, seed: u64) -> Mat<f64> {
        let mut z = vec![0.0; rank + d];
        let mut dirs = Mat::<f64>::zeros(d, rank);
        for j in 0..rank {
            rng::fill_normal(&mut rng::stream(seed ^ 0xd1, j as u64), &mut z[..d]);
            for i in 0..d {
                dirs[(i, j)] = z[i];
            }
        }
        let mut x = Mat::<f64>::zeros(n, d);
        for i in 0..n {
            rng::fill_normal(&mut rng::stream(seed, i as u64), &mut z);
            for c in 0..d {
                let mut v = 0.3 + 1e-2 * z[rank + c];
                for j in 0..rank {
                    v += z[j] * dirs[(c, j)] / (1.0 + j as f64);
                }
                x[(i, c)] = v;
            }
        }
        x
    }

    fn dense_covariance(x: &Mat<f64>) -> Mat<f64> {
        let (n, d) = x.shape();
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| x[(i, j)]).sum::<f64>() / n as f64)
            .collect();
        let c = Mat::from_fn(n, d, |i, j| x[(i, j)] - mean[j]);
        c.transpose() * &c * faer::Scale(1.0 / (n as f64 - 1.0))
    }

    #[test]
    fn both_paths_give_the_eigendecomposition_of_the_covariance() {
        // d <= N (scatter) and d > N (range finder).
        for (n, d) in [(60, 12), (15, 40)] {
            let x = rows(n, d, 5, 7);
            let pcs = principal_components(x.as_ref(), &LocalReducer, Par::Seq).unwrap();
            let q = pcs.basis.ncols();
            assert_eq!(q, d.min(n), "n {n}, d {d}");
            assert_eq!(pcs.count, n);
            // Orthonormal, and Q diag(lambda) Q^T is the covariance.
            let qtq = pcs.basis.transpose() * &pcs.basis;
            assert!((&qtq - Mat::<f64>::identity(q, q)).norm_max() < 1e-12);
            let lam = Mat::from_fn(q, q, |i, j| if i == j { pcs.variances[i] } else { 0.0 });
            let rebuilt = &pcs.basis * &lam * pcs.basis.transpose();
            let cov = dense_covariance(&x);
            let err = (&rebuilt - &cov).norm_max() / cov.norm_max();
            assert!(err < 1e-12, "n {n}, d {d}: {err}");
            let trace: f64 = (0..d).map(|j| cov[(j, j)]).sum();
            assert!((pcs.total_variance - trace).abs() < 1e-12 * trace);
            assert!(pcs.variances.windows(2).all(|w| w[0] >= w[1]));
        }
    }

    /// Ledoit–Wolf by its definition on dense matrices: `S` with `1 / N`,
    /// `mu = tr(S) / d`, `delta^2 = ||S - mu I||^2`,
    /// `beta^2 = min(delta^2, sum_i ||x_i x_i^T - S||^2 / N^2)`.
    fn dense_ledoit_wolf(x: &Mat<f64>) -> f64 {
        let (n, d) = x.shape();
        let s = dense_covariance(x) * faer::Scale((n as f64 - 1.0) / n as f64);
        let mu = (0..d).map(|j| s[(j, j)]).sum::<f64>() / d as f64;
        let mut target = s.clone();
        for j in 0..d {
            target[(j, j)] -= mu;
        }
        let delta2 = target.squared_norm_l2();
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| x[(i, j)]).sum::<f64>() / n as f64)
            .collect();
        let mut beta2 = 0.0;
        for i in 0..n {
            let c = Mat::from_fn(d, 1, |j, _| x[(i, j)] - mean[j]);
            beta2 += (&c * c.transpose() - &s).squared_norm_l2();
        }
        (beta2 / (n * n) as f64).min(delta2) / delta2
    }

    #[test]
    fn shrinkage_intensity_is_ledoit_wolf() {
        for (n, d) in [(60, 12), (15, 40), (200, 5)] {
            let x = rows(n, d, 5, 9);
            let pcs = principal_components(x.as_ref(), &LocalReducer, Par::Seq).unwrap();
            let got = shrinkage_intensity(x.as_ref(), &pcs, 0, &LocalReducer, Par::Seq).unwrap();
            let want = dense_ledoit_wolf(&x);
            assert!((0.0..=1.0).contains(&got));
            assert!((got - want).abs() < 1e-9, "n {n}, d {d}: {got} vs {want}");
        }
        // More rows, less shrinkage; the block after `from` components is
        // shrunk toward its own mean variance.
        let few = rows(20, 30, 5, 3);
        let many = rows(2000, 30, 5, 3);
        let a = |x: &Mat<f64>, from| {
            let pcs = principal_components(x.as_ref(), &LocalReducer, Par::Seq).unwrap();
            shrinkage_intensity(x.as_ref(), &pcs, from, &LocalReducer, Par::Seq).unwrap()
        };
        assert!(
            a(&few, 0) > 10.0 * a(&many, 0),
            "{} {}",
            a(&few, 0),
            a(&many, 0)
        );
        // After the 5 signal directions only isotropic noise is left: the
        // intensity is close to 1 (the target is right).
        assert!(a(&many, 5) > 0.5, "{}", a(&many, 5));
    }
}
