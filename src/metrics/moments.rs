//! The mean and the row and column covariances of a set, and the relative
//! errors between them (module docs).

use super::check::{check_pair, check_set, finite};
use super::chunks::{map_chunks, sum_in_order};
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::{mirror_lower, syrk_lower};
use faer::{Accum, Mat, MatRef, Par};

/// Mean and covariances of one set.
pub(super) struct Moments {
    pub(super) mean: Mat<f64>,
    pub(super) mean_sq_norm: f64,
    pub(super) row_cov: Mat<f64>,
    pub(super) col_cov: Mat<f64>,
}

pub(super) fn mean_impl(b: &MatrixBatch<'_>, threads: usize) -> Result<(Mat<f64>, f64)> {
    let (m, n) = (b.rows(), b.cols());
    let parts = map_chunks(b.count(), threads, |range| {
        let mut s = Mat::<f64>::zeros(m, n);
        let mut sq = 0.0;
        for i in range {
            let x = b.sample(i);
            s += x;
            sq += x.squared_norm_l2();
        }
        Ok((s, sq))
    })?;
    let sq: f64 = parts.iter().map(|p| p.1).sum();
    let mut mean = sum_in_order(parts.into_iter().map(|p| p.0).collect());
    let inv = 1.0 / b.count() as f64;
    mean *= faer::Scale(inv);
    Ok((mean, sq * inv))
}

pub(super) fn moments_impl(b: &MatrixBatch<'_>, threads: usize) -> Result<Moments> {
    let (m, n) = (b.rows(), b.cols());
    let (mean, mean_sq_norm) = mean_impl(b, threads)?;
    let parts = map_chunks(b.count(), threads, |range| {
        let mut rows = Mat::<f64>::zeros(m, m);
        let mut cols = Mat::<f64>::zeros(n, n);
        let mut d = Mat::<f64>::zeros(m, n);
        for i in range {
            // Centre first: sum X X^T - N Xbar Xbar^T cancels badly when the
            // mean dominates the spread.
            d.copy_from(b.sample(i));
            d -= &mean;
            syrk_lower(rows.as_mut(), Accum::Add, d.as_ref(), 1.0, Par::Seq);
            syrk_lower(
                cols.as_mut(),
                Accum::Add,
                d.as_ref().transpose(),
                1.0,
                Par::Seq,
            );
        }
        Ok([rows, cols])
    })?;
    let (mut rp, mut cp) = (Vec::new(), Vec::new());
    for [r, c] in parts {
        rp.push(r);
        cp.push(c);
    }
    let inv = faer::Scale(1.0 / b.count() as f64);
    let mut row_cov = sum_in_order(rp);
    let mut col_cov = sum_in_order(cp);
    mirror_lower(row_cov.as_mut());
    mirror_lower(col_cov.as_mut());
    row_cov *= inv;
    col_cov *= inv;
    Ok(Moments {
        mean,
        mean_sq_norm,
        row_cov,
        col_cov,
    })
}

fn relative(num: MatRef<'_, f64>, den: MatRef<'_, f64>, what: &str, why: &str) -> Result<f64> {
    let mut diff = num.to_owned();
    diff -= den;
    let d = den.norm_l2();
    if d == 0.0 {
        return Err(Error::invalid(format!(
            "real: {why}, so the relative {what} is undefined"
        )));
    }
    finite(diff.norm_l2() / d, what)
}

pub(super) fn mean_error_from(a: &Moments, b_mean: MatRef<'_, f64>) -> Result<f64> {
    if a.mean_sq_norm == 0.0 {
        return Err(Error::invalid(
            "real: every matrix is zero, so the relative mean error is undefined",
        ));
    }
    let mut diff = b_mean.to_owned();
    diff -= &a.mean;
    finite(diff.norm_l2() / a.mean_sq_norm.sqrt(), "the mean error")
}

/// Mean error `||mean_B X - mean_A X|| / sqrt(mean_i ||A_i||²)`.
pub fn mean_error(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Result<f64> {
    check_pair(real, generated, 1)?;
    let t = par.degree();
    let (mean, mean_sq_norm) = mean_impl(real, t)?;
    let a = Moments {
        mean,
        mean_sq_norm,
        row_cov: Mat::zeros(0, 0),
        col_cov: Mat::zeros(0, 0),
    };
    mean_error_from(&a, mean_impl(generated, t)?.0.as_ref())
}

/// The row covariance `(1/N) sum (X - Xbar)(X - Xbar)^T` (`m x m`) and the
/// column covariance `(1/N) sum (X - Xbar)^T (X - Xbar)` (`n x n`) of a set.
pub fn covariances(batch: &MatrixBatch<'_>, par: Par) -> Result<(Mat<f64>, Mat<f64>)> {
    check_set(batch, "batch", 1)?;
    batch.check_finite("batch")?;
    let mo = moments_impl(batch, par.degree())?;
    Ok((mo.row_cov, mo.col_cov))
}

/// Relative Frobenius errors of the row and the column covariance:
/// `(||R_B - R_A|| / ||R_A||, ||K_B - K_A|| / ||K_A||)`.
pub fn covariance_errors(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    par: Par,
) -> Result<(f64, f64)> {
    check_pair(real, generated, 1)?;
    let t = par.degree();
    let a = moments_impl(real, t)?;
    let b = moments_impl(generated, t)?;
    covariance_errors_from(&a, &b)
}

pub(super) fn covariance_errors_from(a: &Moments, b: &Moments) -> Result<(f64, f64)> {
    let why = "all matrices are equal (zero covariance)";
    Ok((
        relative(
            b.row_cov.as_ref(),
            a.row_cov.as_ref(),
            "row-covariance error",
            why,
        )?,
        relative(
            b.col_cov.as_ref(),
            a.col_cov.as_ref(),
            "column-covariance error",
            why,
        )?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{batch, gaussian};

    #[test]
    fn covariances_of_a_symmetric_pair() {
        // {X, -X}: the mean is 0 and R = X X^T, K = X^T X.
        let x = gaussian(1, 3, 5, 3);
        let mut d = x.clone();
        d.extend(x.iter().map(|v| -v));
        let (r, k) = covariances(&batch(&d, 2, 3, 5), Par::Seq).unwrap();
        let xm = MatRef::from_row_major_slice(&x, 3, 5);
        assert!((r - xm * xm.transpose()).norm_max() < 1e-14);
        assert!((k - xm.transpose() * xm).norm_max() < 1e-14);
    }
}
