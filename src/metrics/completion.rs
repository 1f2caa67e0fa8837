//! The completion error on the held-out entries of a masked set.

use super::check::finite;
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};

/// Completion error `||P^perp(Zhat - X)|| / ||P^perp(X)||` over the entries
/// that were held out. `truth` holds the complete matrices `X` and carries the
/// observation mask (nonzero = observed; the error is measured on the
/// others); `completed` holds `Zhat`, with the same count and shape.
pub fn completion_error(completed: &MatrixBatch<'_>, truth: &MatrixBatch<'_>) -> Result<f64> {
    if !truth.has_mask() {
        return Err(Error::invalid(
            "truth: needs the observation mask (nonzero = observed); the error is measured on the other entries",
        ));
    }
    if truth.count() == 0 {
        return Err(Error::invalid("truth: the set is empty"));
    }
    let shape = |b: &MatrixBatch<'_>| (b.count(), b.rows(), b.cols());
    if shape(completed) != shape(truth) {
        return Err(Error::shape(format!(
            "completed: {} matrices of {} x {}, but truth has {} of {} x {}",
            completed.count(),
            completed.rows(),
            completed.cols(),
            truth.count(),
            truth.rows(),
            truth.cols()
        )));
    }
    completed.without_mask().check_finite("completed")?;
    truth.without_mask().check_finite("truth")?;
    let (mut num, mut den, mut held_out) = (0.0, 0.0, 0usize);
    for i in 0..truth.count() {
        let (z, x) = (completed.sample(i), truth.sample(i));
        let mask = truth.mask(i).expect("mask checked above");
        for c in 0..truth.cols() {
            for r in 0..truth.rows() {
                if !mask.observed(r, c) {
                    let e = z[(r, c)] - x[(r, c)];
                    num += e * e;
                    den += x[(r, c)] * x[(r, c)];
                    held_out += 1;
                }
            }
        }
    }
    if held_out == 0 {
        return Err(Error::invalid(
            "truth: the mask marks every entry observed, so nothing was held out",
        ));
    }
    if den == 0.0 {
        return Err(Error::invalid(
            "truth: every held-out entry is zero, so the relative completion error is undefined",
        ));
    }
    finite((num / den).sqrt(), "the completion error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::metrics::testing::batch;

    #[test]
    fn completion_error_on_held_out_entries() {
        let (count, m, n) = (2, 3, 3);
        let x: Vec<f64> = (0..count * m * n).map(|k| k as f64 + 1.0).collect();
        let mut mask = vec![1u8; x.len()];
        let mut z = x.clone();
        // Held out: entries 4 (value 5) and 13 (value 14); errors 3 and 4.
        mask[4] = 0;
        mask[13] = 0;
        z[4] += 3.0;
        z[13] -= 4.0;
        z[0] += 100.0; // observed entries do not count
        let truth = batch(&x, count, m, n).with_mask(&mask).unwrap();
        let got = completion_error(&batch(&z, count, m, n), &truth).unwrap();
        let want = 5.0 / (25.0f64 + 196.0).sqrt();
        assert!((got - want).abs() < 1e-15);
        let err = completion_error(&batch(&z, count, m, n), &batch(&x, count, m, n)).unwrap_err();
        assert!(err.message().starts_with("truth:"));
        let full = vec![1u8; x.len()];
        let truth = batch(&x, count, m, n).with_mask(&full).unwrap();
        assert!(completion_error(&batch(&z, count, m, n), &truth).is_err());
        let truth = batch(&x, count, m, n).with_mask(&mask).unwrap();
        let err = completion_error(&batch(&z[..9], 1, m, n), &truth).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shape);
        assert!(err.message().starts_with("completed:"));
    }
}
