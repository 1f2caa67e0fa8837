//! The 1-Wasserstein distance between two empirical distributions on the
//! real line, exact up to rounding.

use crate::error::{Error, Result};

/// The 1-Wasserstein distance between the empirical distributions of the
/// samples `a` and `b` (of any, possibly different, sizes): the integral over
/// `t in [0, 1]` of `|F_a^-1(t) - F_b^-1(t)|`, exact up to rounding.
pub fn wasserstein1(a: &[f64], b: &[f64]) -> Result<f64> {
    for (x, what) in [(a, "a"), (b, "b")] {
        if x.is_empty() {
            return Err(Error::invalid(format!("{what}: no samples")));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::non_finite(format!("{what}: sample {i} is {}", x[i])));
        }
    }
    Ok(wasserstein1_unchecked(&mut a.to_vec(), &mut b.to_vec()))
}

/// [`wasserstein1`] on non-empty finite samples, sorting them in place.
pub(super) fn wasserstein1_unchecked(a: &mut [f64], b: &mut [f64]) -> f64 {
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    let (na, nb) = (a.len() as u128, b.len() as u128);
    // Both quantile functions are constant between consecutive breakpoints
    // of {i / na} U {j / nb}. In units of 1 / (na nb) the breakpoints are the
    // integers (i + 1) nb and (j + 1) na, so the weights are exact.
    let (mut i, mut j) = (0usize, 0usize);
    let (mut t, mut acc) = (0u128, 0.0);
    while i < a.len() && j < b.len() {
        let ta = (i as u128 + 1) * nb;
        let tb = (j as u128 + 1) * na;
        let next = ta.min(tb);
        acc += (next - t) as f64 * (a[i] - b[j]).abs();
        t = next;
        if ta == next {
            i += 1;
        }
        if tb == next {
            j += 1;
        }
    }
    acc / (na * nb) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::metrics::testing::gaussian;

    #[test]
    fn wasserstein_of_known_samples() {
        let w = |a: &[f64], b: &[f64]| wasserstein1(a, b).unwrap();
        assert_eq!(w(&[1.0, 2.0, 3.0], &[3.0, 1.0, 2.0]), 0.0);
        assert_eq!(w(&[0.0, 1.0], &[0.5]), 0.5);
        assert_eq!(w(&[0.0], &[1.0, 3.0]), 2.0);
        // Quantiles 0,1,2,3 against 0,0,3,3 on quarters: gaps 0,1,1,0.
        assert_eq!(w(&[3.0, 0.0, 2.0, 1.0], &[0.0, 3.0]), 0.5);
        // Shifting one sample shifts W1 by the same amount.
        let a = gaussian(1, 1, 37, 4);
        let b: Vec<f64> = a.iter().map(|x| x + 2.5).collect();
        assert!((w(&a, &b) - 2.5).abs() < 1e-14);
        // Sizes 37 and 23 against the CDF form: integral of |F_a - F_b| dx.
        let b = gaussian(1, 1, 23, 5);
        let mut xs: Vec<f64> = a.iter().chain(&b).copied().collect();
        xs.sort_by(f64::total_cmp);
        let cdf = |s: &[f64], x: f64| s.iter().filter(|&&v| v <= x).count() as f64 / s.len() as f64;
        let brute: f64 = xs
            .windows(2)
            .map(|p| (cdf(&a, p[0]) - cdf(&b, p[0])).abs() * (p[1] - p[0]))
            .sum();
        assert!((w(&a, &b) - brute).abs() < 1e-13);
        assert_eq!(
            wasserstein1(&[], &[1.0]).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let err = wasserstein1(&[1.0], &[f64::NAN]).unwrap_err();
        assert!(err.message().starts_with("b:"));
    }
}
