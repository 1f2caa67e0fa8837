//! Nearest neighbours: the 1-NN two-sample accuracy and the
//! distance-to-closest-record ratio (module docs).

use super::check::{check_pair, check_train, finite};
use super::chunks::map_chunks;
use super::grams::{flat_pair, gram_d2, median_distance, Grams};
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::numerics::gemm;
use faer::{Accum, Mat, MatRef, Par};

/// The nearest neighbours of one point among candidates of two labels: the
/// smallest squared distance and how many candidates at exactly that
/// distance carry the point's own label and the other one.
#[derive(Copy, Clone)]
struct Nearest {
    d2: f64,
    same: u32,
    other: u32,
}

impl Nearest {
    const NONE: Nearest = Nearest {
        d2: f64::INFINITY,
        same: 0,
        other: 0,
    };

    #[inline]
    fn offer(&mut self, d2: f64, same: bool) {
        if d2 < self.d2 {
            *self = Nearest {
                d2,
                same: u32::from(same),
                other: u32::from(!same),
            };
        } else if d2 == self.d2 {
            if same {
                self.same += 1;
            } else {
                self.other += 1;
            }
        }
    }

    /// The expected correctness of the 1-NN vote with ties broken uniformly
    /// at random: the share of the nearest candidates with the own label.
    fn correct(&self) -> f64 {
        f64::from(self.same) / f64::from(self.same + self.other)
    }
}

/// Balanced leave-one-out 1-NN accuracy from the Gram matrices of the
/// pooled set (module docs). The scan over points runs on up to `threads`
/// threads in fixed chunks, without allocating per point.
pub(super) fn nn_from_grams(g: &Grams, threads: usize) -> Result<f64> {
    let (gaa, gbb, gab) = (&g.aa, &g.bb, &g.ab);
    let (na, nb) = (gaa.nrows(), gbb.nrows());
    // Squared norms that overflow would make every distance meaningless.
    for (m, n) in [(gaa, na), (gbb, nb)] {
        for i in 0..n {
            finite(m[(i, i)], "a squared norm in the 1-NN accuracy")?;
        }
    }
    // Entry (i, j) of a symmetric Gram matrix stored as its lower triangle.
    let sym = |m: &Mat<f64>, i: usize, j: usize| {
        if i >= j {
            m[(i, j)]
        } else {
            m[(j, i)]
        }
    };
    let parts = map_chunks(na + nb, threads, |range| {
        let (mut sum_a, mut sum_b) = (0.0, 0.0);
        for p in range {
            let mut best = Nearest::NONE;
            if p < na {
                let i = p;
                let gii = gaa[(i, i)];
                for k in (0..na).filter(|&k| k != i) {
                    best.offer(gram_d2(gii, gaa[(k, k)], sym(gaa, i, k)), true);
                }
                for j in 0..nb {
                    best.offer(gram_d2(gii, gbb[(j, j)], gab[(i, j)]), false);
                }
                sum_a += best.correct();
            } else {
                let j = p - na;
                let gjj = gbb[(j, j)];
                for i in 0..na {
                    best.offer(gram_d2(gaa[(i, i)], gjj, gab[(i, j)]), false);
                }
                for k in (0..nb).filter(|&k| k != j) {
                    best.offer(gram_d2(gjj, gbb[(k, k)], sym(gbb, j, k)), true);
                }
                sum_b += best.correct();
            }
        }
        Ok((sum_a, sum_b))
    })?;
    let sum_a: f64 = parts.iter().map(|p| p.0).sum();
    let sum_b: f64 = parts.iter().map(|p| p.1).sum();
    Ok(0.5 * (sum_a / na as f64 + sum_b / nb as f64))
}

/// Balanced leave-one-out 1-nearest-neighbour two-sample accuracy between
/// the sets (module docs): 0.5 when the generated set cannot be told from
/// the real one by its nearest neighbours, 1 when every matrix's nearest
/// other matrix comes from its own set. Needs at least 2 matrices in each
/// set. The Gram matrices run on `par`, the scan on `par.degree()` threads.
pub fn nn_accuracy(real: &MatrixBatch<'_>, generated: &MatrixBatch<'_>, par: Par) -> Result<f64> {
    check_pair(real, generated, 2)?;
    nn_from_grams(&Grams::new(real, generated, par), par.degree())
}

/// Rows of queries per product in [`nearest_sq`].
const NEAREST_BLOCK: usize = 256;

/// For every row of `q` (`nq x d`) the squared Euclidean distance to the
/// nearest row of `t` (`nt x d`, `nt >= 1`), through blocks of the cross Gram matrix
/// (`||x - y||² = <x,x> + <y,y> - 2<x,y>`, clamped at 0). Allocates its
/// buffers once; the products run on `par`. A squared norm that overflows
/// is a numerical error.
fn nearest_sq(q: MatRef<'_, f64>, t: MatRef<'_, f64>, par: Par) -> Result<Vec<f64>> {
    let (nq, nt) = (q.nrows(), t.nrows());
    let tn: Vec<f64> = (0..nt).map(|j| t.row(j).squared_norm_l2()).collect();
    for &x in &tn {
        finite(x, "a squared norm of a training matrix")?;
    }
    let block = NEAREST_BLOCK.min(nq).max(1);
    let mut g = Mat::<f64>::zeros(block, nt);
    let mut out = vec![0.0; nq];
    let mut start = 0;
    while start < nq {
        let b = block.min(nq - start);
        let qb = q.subrows(start, b);
        let mut gb = g.as_mut().subrows_mut(0, b);
        gemm(gb.as_mut(), Accum::Replace, qb, t.transpose(), 1.0, par);
        for (r, o) in out[start..start + b].iter_mut().enumerate() {
            let qn = finite(qb.row(r).squared_norm_l2(), "a squared norm")?;
            let mut best = f64::INFINITY;
            for (j, &tj) in tn.iter().enumerate() {
                best = best.min(gram_d2(qn, tj, gb[(r, j)]));
            }
            *o = best;
        }
        start += b;
    }
    Ok(out)
}

/// The median of the distances from each matrix of `query` to its closest
/// matrix of `train`.
pub(super) fn median_closest(
    query: &MatrixBatch<'_>,
    train: &MatrixBatch<'_>,
    par: Par,
) -> Result<f64> {
    let (mut own_q, mut own_t) = (Mat::<f64>::zeros(0, 0), Mat::<f64>::zeros(0, 0));
    let (zq, zt) = flat_pair(query, train, &mut own_q, &mut own_t);
    let mut d2 = nearest_sq(zq, zt, par)?;
    finite(
        median_distance(&mut d2),
        "the median closest-record distance",
    )
}

/// The held-out denominator of the closest-record ratio, checked.
pub(super) fn dcr_denominator(
    real: &MatrixBatch<'_>,
    train: &MatrixBatch<'_>,
    par: Par,
) -> Result<f64> {
    let den = median_closest(real, train, par)?;
    if den == 0.0 {
        return Err(Error::invalid(
            "train: half or more of the real (held-out) matrices equal a training matrix, so the closest-record ratio is undefined",
        ));
    }
    Ok(den)
}

/// Distance-to-closest-record ratio (module docs): the median over the
/// generated matrices of the distance to the closest training matrix,
/// divided by the same median over the real (held-out) matrices. Below 1
/// the generated matrices sit closer to the training set than fresh data
/// do, which points at copying; near 0 they are copies. Errors when the
/// held-out median is 0. The products run on `par`.
pub fn dcr_ratio(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    train: &MatrixBatch<'_>,
    par: Par,
) -> Result<f64> {
    check_pair(real, generated, 1)?;
    check_train(real, train)?;
    let den = dcr_denominator(real, train, par)?;
    finite(
        median_closest(generated, train, par)? / den,
        "the closest-record ratio",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::metrics::testing::{batch, gaussian};

    #[test]
    fn nn_accuracy_of_a_hand_computed_case() {
        // 1 x 1 matrices. Pooled: 0, 1, 5 (real) and 2, 7, 8 (generated).
        // 0 -> 1 (own), 1 -> 0 and 2 tie (half), 5 -> 7 (other);
        // 2 -> 1 (other), 7 -> 8 (own), 8 -> 7 (own).
        let a = [0.0, 1.0, 5.0];
        let b = [2.0, 7.0, 8.0];
        let got = nn_accuracy(&batch(&a, 3, 1, 1), &batch(&b, 3, 1, 1), Par::Seq).unwrap();
        let want = 0.5 * (1.5 / 3.0 + 2.0 / 3.0);
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        // Unequal sizes: a fourth generated matrix at 0.9 takes 1 (0.1 from
        // it): 0 -> 0.9 (other), 1 -> 0.9 (other), 5 -> 7, 0.9 -> 1 (other).
        let b = [2.0, 7.0, 8.0, 0.9];
        let got = nn_accuracy(&batch(&a, 3, 1, 1), &batch(&b, 4, 1, 1), Par::Seq).unwrap();
        let want = 0.5 * (0.0 / 3.0 + 2.0 / 4.0);
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    }

    #[test]
    fn nn_accuracy_separates_and_matches() {
        let (count, m, n) = (150, 3, 4);
        let a = gaussian(count, m, n, 31);
        let b = gaussian(count + 50, m, n, 32);
        let (ba, bb) = (batch(&a, count, m, n), batch(&b, count + 50, m, n));
        // One distribution, unequal sizes: about 0.5 (balanced accuracy).
        let same = nn_accuracy(&ba, &bb, Par::Seq).unwrap();
        assert!((same - 0.5).abs() < 0.06, "{same}");
        // Far apart: every nearest neighbour is in the own set.
        let far: Vec<f64> = b.iter().map(|x| x + 100.0).collect();
        let sep = nn_accuracy(&ba, &batch(&far, count + 50, m, n), Par::Seq).unwrap();
        assert_eq!(sep, 1.0);
        // Copies of the real set: every nearest neighbour is the twin.
        let copies = nn_accuracy(&ba, &ba, Par::Seq).unwrap();
        assert_eq!(copies, 0.0);
        // Half the spread is told apart well above chance.
        let narrow: Vec<f64> = b.iter().map(|x| 0.3 * x).collect();
        let got = nn_accuracy(&ba, &batch(&narrow, count + 50, m, n), Par::Seq).unwrap();
        assert!(got > 0.7, "{got}");
    }

    #[test]
    fn overflowing_norms_in_nearest_neighbour_metrics_are_a_numerical_error() {
        let a = gaussian(4, 2, 2, 61);
        let b: Vec<f64> = a.iter().map(|x| x * 1e300).collect();
        let (ba, bb) = (batch(&a, 4, 2, 2), batch(&b, 4, 2, 2));
        let err = nn_accuracy(&ba, &bb, Par::Seq).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Numerical);
        let err = dcr_ratio(&ba, &ba, &bb, Par::Seq).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Numerical);
        let c = gaussian(5, 2, 2, 62);
        let err = dcr_ratio(&ba, &bb, &batch(&c, 5, 2, 2), Par::Seq).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Numerical);
    }

    #[test]
    fn dcr_ratio_of_a_hand_computed_case() {
        // Training set {0, 10}. Held-out 1, 4, 8: closest distances 1, 4, 2,
        // median 2. Generated 5, 9.5, 0.5, 3: distances 5, 0.5, 0.5, 3,
        // median (0.5 + 3) / 2 = 1.75. Ratio 0.875.
        let t = [0.0, 10.0];
        let a = [1.0, 4.0, 8.0];
        let b = [5.0, 9.5, 0.5, 3.0];
        let got = dcr_ratio(
            &batch(&a, 3, 1, 1),
            &batch(&b, 4, 1, 1),
            &batch(&t, 2, 1, 1),
            Par::Seq,
        )
        .unwrap();
        assert_eq!(got, 0.875);
    }

    #[test]
    fn dcr_ratio_flags_copies_and_passes_fresh_data() {
        let (m, n) = (3, 3);
        let t = gaussian(300, m, n, 41);
        let a = gaussian(120, m, n, 42);
        let b = gaussian(160, m, n, 43);
        let (bt, ba) = (batch(&t, 300, m, n), batch(&a, 120, m, n));
        let fresh = dcr_ratio(&ba, &batch(&b, 160, m, n), &bt, Par::Seq).unwrap();
        assert!((fresh - 1.0).abs() < 0.15, "{fresh}");
        // Copies of training matrices (the first 160, in another order).
        let mut copies = Vec::new();
        for i in (0..160).rev() {
            copies.extend_from_slice(&t[i * m * n..(i + 1) * m * n]);
        }
        let got = dcr_ratio(&ba, &batch(&copies, 160, m, n), &bt, Par::Seq).unwrap();
        assert!(got < 1e-6, "{got}");
        // Copies plus a little noise: well below 1.
        let noisy: Vec<f64> = copies.iter().zip(&b).map(|(c, e)| c + 0.05 * e).collect();
        let got = dcr_ratio(&ba, &batch(&noisy, 160, m, n), &bt, Par::Seq).unwrap();
        assert!(got > 1e-6 && got < 0.3, "{got}");
    }
}
