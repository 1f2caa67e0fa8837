//! The unbiased MMD² with median-heuristic Gaussian kernels (module docs).

use super::check::{check_pair, finite};
use super::grams::{gram_d2, median_distance, Grams};
use super::Mmd;
use crate::batch::MatrixBatch;
use crate::error::Result;
use faer::Par;

/// Kernel values `exp(-d2 / (2 h²))` at the three bandwidths `h0 * {1/2, 1, 2}`.
#[inline]
fn kernels(d2: f64, inv: &[f64; 3]) -> [f64; 3] {
    if d2 == 0.0 {
        // Also the h0 = 0 limit, where `inv` is infinite.
        return [1.0; 3];
    }
    [
        (-d2 * inv[0]).exp(),
        (-d2 * inv[1]).exp(),
        (-d2 * inv[2]).exp(),
    ]
}

fn mmd_impl(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Result<Mmd> {
    mmd_from_grams(&Grams::new(real, generated, par))
}

pub(super) fn mmd_from_grams(g: &Grams) -> Result<Mmd> {
    let (gaa, gbb, gab) = (&g.aa, &g.bb, &g.ab);
    let (na, nb) = (gaa.nrows(), gbb.nrows());
    let d2 = gram_d2;
    let pairs = na * (na - 1) / 2 + nb * (nb - 1) / 2 + na * nb;
    let mut all = Vec::with_capacity(pairs);
    for j in 0..na {
        for i in j + 1..na {
            all.push(d2(gaa[(i, i)], gaa[(j, j)], gaa[(i, j)]));
        }
    }
    for j in 0..nb {
        for i in j + 1..nb {
            all.push(d2(gbb[(i, i)], gbb[(j, j)], gbb[(i, j)]));
        }
    }
    for j in 0..nb {
        for i in 0..na {
            all.push(d2(gaa[(i, i)], gbb[(j, j)], gab[(i, j)]));
        }
    }
    let h0 = finite(median_distance(&mut all), "the median pairwise distance")?;
    drop(all);

    let inv = [0.5, 1.0, 2.0].map(|f| {
        let h = f * h0;
        1.0 / (2.0 * h * h)
    });
    let (mut kaa, mut kbb, mut kab) = ([0.0; 3], [0.0; 3], [0.0; 3]);
    let add = |acc: &mut [f64; 3], k: [f64; 3]| {
        for t in 0..3 {
            acc[t] += k[t];
        }
    };
    for j in 0..na {
        for i in j + 1..na {
            add(
                &mut kaa,
                kernels(d2(gaa[(i, i)], gaa[(j, j)], gaa[(i, j)]), &inv),
            );
        }
    }
    for j in 0..nb {
        for i in j + 1..nb {
            add(
                &mut kbb,
                kernels(d2(gbb[(i, i)], gbb[(j, j)], gbb[(i, j)]), &inv),
            );
        }
    }
    for j in 0..nb {
        for i in 0..na {
            add(
                &mut kab,
                kernels(d2(gaa[(i, i)], gbb[(j, j)], gab[(i, j)]), &inv),
            );
        }
    }
    let (fa, fb) = (na as f64, nb as f64);
    // Sums over i < j count each unordered pair once: i != j counts it twice.
    let per_bandwidth: [f64; 3] = std::array::from_fn(|t| {
        2.0 * kaa[t] / (fa * (fa - 1.0)) + 2.0 * kbb[t] / (fb * (fb - 1.0))
            - 2.0 * kab[t] / (fa * fb)
    });
    let mmd2 = per_bandwidth.iter().sum::<f64>() / 3.0;
    Ok(Mmd {
        mmd2: finite(mmd2, "the MMD^2")?,
        h0,
        per_bandwidth,
    })
}

/// Unbiased MMD² between the sets with the median-heuristic Gaussian kernels
/// (module docs). Needs at least 2 matrices in each set. The Gram matrices
/// run on `par`.
pub fn mmd2(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Result<Mmd> {
    check_pair(real, generated, 2)?;
    mmd_impl(real, generated, par)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{batch, gaussian};

    #[test]
    fn mmd_of_a_far_shifted_set_reaches_its_limit() {
        // Within-set distances vanish against the shift, so within-set
        // kernels are 1; more than half of the pairs are cross pairs, so h0
        // is the shift distance D and the cross kernels are exp(-D²/(2h²)) at
        // h = D/2, D, 2D. MMD² -> 2 - 2 mean(e^-2, e^-1/2, e^-1/8).
        let (count, m, n) = (20, 3, 4);
        let a = gaussian(count, m, n, 6);
        let b: Vec<f64> = gaussian(count, m, n, 7).iter().map(|x| x + 1e4).collect();
        let got = mmd2(&batch(&a, count, m, n), &batch(&b, count, m, n), Par::Seq).unwrap();
        let d = 1e4 * ((m * n) as f64).sqrt();
        assert!((got.h0 / d - 1.0).abs() < 1e-3);
        let limit = 2.0 - 2.0 * ((-2.0f64).exp() + (-0.5f64).exp() + (-0.125f64).exp()) / 3.0;
        assert!((got.mmd2 - limit).abs() < 1e-3, "{} vs {limit}", got.mmd2);
        // Each bandwidth separately: 2 - 2 k(D).
        for (t, f) in [0.5f64, 1.0, 2.0].into_iter().enumerate() {
            let k = (-1.0 / (2.0 * f * f)).exp();
            assert!((got.per_bandwidth[t] - (2.0 - 2.0 * k)).abs() < 1e-3);
        }
    }

    #[test]
    fn mmd_is_small_for_the_same_distribution() {
        let (count, m, n) = (60, 4, 4);
        let a = gaussian(count, m, n, 8);
        let b = gaussian(count, m, n, 9);
        let same = mmd2(&batch(&a, count, m, n), &batch(&b, count, m, n), Par::Seq).unwrap();
        let c: Vec<f64> = b.iter().map(|x| 1.5 * x + 0.5).collect();
        let other = mmd2(&batch(&a, count, m, n), &batch(&c, count, m, n), Par::Seq).unwrap();
        assert!(same.mmd2.abs() < 0.02, "{}", same.mmd2);
        assert!(
            other.mmd2 > 10.0 * same.mmd2.abs(),
            "{} vs {}",
            other.mmd2,
            same.mmd2
        );
    }

    #[test]
    fn mmd_of_equal_matrices_uses_the_zero_bandwidth_limit() {
        // Most pairs are equal: h0 = 0, the kernel is 1 for equal matrices
        // and 0 otherwise.
        let a = vec![1.0; 4 * 2 * 2];
        let mut b = a.clone();
        b[0] = 2.0; // B_0 differs from everything else.
        let got = mmd2(&batch(&a, 4, 2, 2), &batch(&b, 4, 2, 2), Par::Seq).unwrap();
        assert_eq!(got.h0, 0.0);
        // kAA = 6 pairs of 1, kBB = 3 equal pairs of 6, kAB = 12 of 16.
        let want = 2.0 * 6.0 / 12.0 + 2.0 * 3.0 / 12.0 - 2.0 * 12.0 / 16.0;
        assert!((got.mmd2 - want).abs() < 1e-15);
    }
}
