//! Singular spectra: the singular values of every matrix of a set, the
//! spectrum error (SVE) and the top-k spectrum distance (module docs).

use super::check::{check_pair, check_set, check_top_k, finite};
use super::chunks::map_chunks;
use super::wasserstein::wasserstein1_unchecked;
use super::TOPK_RELATIVE_CUTOFF;
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::svd::{self, ComputeSvdVectors};
use faer::{Mat, MatRef, Par};

pub(super) fn singular_values_impl(batch: &MatrixBatch<'_>, threads: usize) -> Result<Mat<f64>> {
    let (count, m, n) = (batch.count(), batch.rows(), batch.cols());
    let q = m.min(n);
    let req = svd::svd_scratch::<f64>(
        m,
        n,
        ComputeSvdVectors::No,
        ComputeSvdVectors::No,
        Par::Seq,
        Default::default(),
    );
    let parts = map_chunks(count, threads, |range| {
        let mut buf = MemBuffer::new(req);
        let mut s = Mat::<f64>::zeros(q, 1);
        let mut out = Mat::<f64>::zeros(range.len(), q);
        for (row, i) in range.enumerate() {
            svd::svd(
                batch.sample(i),
                s.as_mut().col_mut(0).as_diagonal_mut(),
                None,
                None,
                Par::Seq,
                MemStack::new(&mut buf),
                Default::default(),
            )
            .map_err(|_| {
                Error::numerical(format!("singular values of matrix {i} did not converge"))
            })?;
            // faer sorts them in non-increasing order already; sorting again
            // costs nothing and makes the order a local guarantee.
            let mut v: Vec<f64> = (0..q).map(|k| s[(k, 0)]).collect();
            v.sort_by(|a, b| b.total_cmp(a));
            for (k, x) in v.into_iter().enumerate() {
                out[(row, k)] = x;
            }
        }
        Ok(out)
    })?;
    let mut all = Mat::<f64>::zeros(count, q);
    let mut row = 0;
    for p in parts {
        all.as_mut()
            .submatrix_mut(row, 0, p.nrows(), q)
            .copy_from(p.as_ref());
        row += p.nrows();
    }
    Ok(all)
}

/// All `min(m, n)` singular values of every matrix of `batch`, in descending
/// order: row `i` of the `count x min(m, n)` result belongs to matrix `i`.
/// Runs on `par.degree()` threads, one matrix per thread at a time.
pub fn singular_values(batch: &MatrixBatch<'_>, par: Par) -> Result<Mat<f64>> {
    check_set(batch, "batch", 1)?;
    batch.check_finite("batch")?;
    singular_values_impl(batch, par.degree())
}

fn column_means(s: MatRef<'_, f64>) -> Vec<f64> {
    let n = s.nrows() as f64;
    (0..s.ncols())
        .map(|k| (0..s.nrows()).map(|i| s[(i, k)]).sum::<f64>() / n)
        .collect()
}

pub(super) fn sve_from_spectra(sa: MatRef<'_, f64>, sb: MatRef<'_, f64>) -> Result<f64> {
    let (ma, mb) = (column_means(sa), column_means(sb));
    let num: f64 = ma.iter().zip(&mb).map(|(a, b)| (b - a) * (b - a)).sum();
    let den: f64 = ma.iter().map(|a| a * a).sum();
    if den == 0.0 {
        return Err(Error::invalid(
            "real: every matrix is zero, so the relative spectrum error is undefined",
        ));
    }
    finite((num / den).sqrt(), "the spectrum error")
}

pub(super) fn topk_from_spectra(
    sa: MatRef<'_, f64>,
    sb: MatRef<'_, f64>,
    top_k: usize,
) -> Result<f64> {
    let ma = column_means(sa);
    if ma[0] == 0.0 {
        return Err(Error::invalid(
            "real: every matrix is zero, so the top-k spectrum distance is undefined",
        ));
    }
    let kmax = top_k.min(ma.len());
    let (mut sum, mut used) = (0.0, 0usize);
    let mut a = vec![0.0; sa.nrows()];
    let mut b = vec![0.0; sb.nrows()];
    for k in 0..kmax {
        if ma[k] < TOPK_RELATIVE_CUTOFF * ma[0] {
            continue;
        }
        for (i, x) in a.iter_mut().enumerate() {
            *x = sa[(i, k)];
        }
        for (i, x) in b.iter_mut().enumerate() {
            *x = sb[(i, k)];
        }
        sum += wasserstein1_unchecked(&mut a, &mut b) / ma[k];
        used += 1;
    }
    finite(sum / used as f64, "the top-k spectrum distance")
}

/// Spectrum error `||mean_B sv - mean_A sv||_2 / ||mean_A sv||_2` (module docs).
pub fn spectrum_error(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    par: Par,
) -> Result<f64> {
    check_pair(real, generated, 1)?;
    let t = par.degree();
    sve_from_spectra(
        singular_values_impl(real, t)?.as_ref(),
        singular_values_impl(generated, t)?.as_ref(),
    )
}

/// Top-k spectrum distance with `k = 1..min(top_k, q)` (module docs; the
/// design value is `top_k = 10`).
pub fn topk_spectrum_distance(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    top_k: usize,
    par: Par,
) -> Result<f64> {
    check_top_k(top_k)?;
    check_pair(real, generated, 1)?;
    let t = par.degree();
    topk_from_spectra(
        singular_values_impl(real, t)?.as_ref(),
        singular_values_impl(generated, t)?.as_ref(),
        top_k,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::Rng;
    use crate::metrics::testing::batch;

    #[test]
    fn singular_values_are_descending_per_sample() {
        // diag(3, 1, 2) and its negative, 3 x 4 with a zero column.
        let mut d = vec![0.0; 2 * 12];
        for (k, v) in [3.0, 1.0, 2.0].into_iter().enumerate() {
            d[k * 4 + k] = v;
            d[12 + k * 4 + k] = -v;
        }
        let s = singular_values(&batch(&d, 2, 3, 4), Par::Seq).unwrap();
        assert_eq!(s.shape(), (2, 3));
        for i in 0..2 {
            for (k, v) in [3.0, 2.0, 1.0].into_iter().enumerate() {
                assert!((s[(i, k)] - v).abs() < 1e-15);
            }
        }
    }

    #[test]
    fn topk_skips_vanishing_singular_values() {
        // Rank-1 real matrices: only the first singular value counts.
        let (count, m, n) = (10, 4, 3);
        let mut rng = Rng::seed_from_u64(12);
        let mut a = vec![0.0; count * m * n];
        for i in 0..count {
            let (u, v): (Vec<f64>, Vec<f64>) = (
                (0..m).map(|_| rng.normal()).collect(),
                (0..n).map(|_| rng.normal()).collect(),
            );
            for r in 0..m {
                for c in 0..n {
                    a[(i * m + r) * n + c] = u[r] * v[c];
                }
            }
        }
        let b: Vec<f64> = a.iter().map(|x| 3.0 * x).collect();
        let d = topk_spectrum_distance(
            &batch(&a, count, m, n),
            &batch(&b, count, m, n),
            10,
            Par::Seq,
        )
        .unwrap();
        assert!((d - 2.0).abs() < 1e-13, "{d}");
    }
}
