//! Distances between fitted and true subspaces: the subspace distance and
//! the containment of the truth in the fit (module docs).

use crate::error::{Error, Result};
use crate::numerics::gemm;
use faer::{Accum, Mat, MatRef, Par};

/// Checks that `u` is a finite `rows x r` matrix with `1 <= r <= rows` and
/// orthonormal columns (to `1e-6`, so that rounding in a fit passes).
fn check_basis(u: MatRef<'_, f64>, what: &str) -> Result<()> {
    let (m, r) = u.shape();
    if r == 0 || r > m {
        return Err(Error::shape(format!(
            "{what}: {m} x {r}, but a basis needs 1 <= columns <= rows"
        )));
    }
    for j in 0..r {
        for i in 0..m {
            if !u[(i, j)].is_finite() {
                return Err(Error::non_finite(format!(
                    "{what}: the non-finite value {} at row {i}, column {j}",
                    u[(i, j)]
                )));
            }
        }
    }
    let mut g = Mat::<f64>::zeros(r, r);
    gemm(g.as_mut(), Accum::Replace, u.transpose(), u, 1.0, Par::Seq);
    for j in 0..r {
        g[(j, j)] -= 1.0;
    }
    let dev = g.norm_max();
    if dev > 1e-6 {
        return Err(Error::invalid(format!(
            "{what}: the columns are not orthonormal (max |U^T U - I| = {dev:.3e})"
        )));
    }
    Ok(())
}

fn check_bases(u: MatRef<'_, f64>, u_star: MatRef<'_, f64>) -> Result<()> {
    check_basis(u, "u")?;
    check_basis(u_star, "u_star")?;
    if u_star.nrows() != u.nrows() {
        return Err(Error::shape(format!(
            "u_star: {} rows, but u has {}",
            u_star.nrows(),
            u.nrows()
        )));
    }
    Ok(())
}

/// `||(I - U U^T) W||²`, computed from the residual itself: through
/// `||W||² - ||U^T W||²` it would lose all digits below `sqrt(eps)` for
/// nearly equal subspaces.
fn residual_sq(u: MatRef<'_, f64>, w: MatRef<'_, f64>) -> f64 {
    let mut c = Mat::<f64>::zeros(u.ncols(), w.ncols());
    gemm(c.as_mut(), Accum::Replace, u.transpose(), w, 1.0, Par::Seq);
    let mut res = w.to_owned();
    gemm(res.as_mut(), Accum::Add, u, c.as_ref(), -1.0, Par::Seq);
    res.squared_norm_l2()
}

/// Subspace distance `||U U^T - U* U*^T|| / sqrt(r + r*)` between the spans
/// of the orthonormal columns of `u` (`m x r`) and `u_star` (`m x r*`).
///
/// It lies in `[0, 1]`: 0 for equal subspaces, 1 for orthogonal ones. With
/// equal ranks it is the design's `||U U^T - U* U*^T|| / sqrt(2 r)`; with
/// different ranks the normaliser `sqrt(r + r*)` keeps orthogonal subspaces
/// at 1, and nested subspaces score `sqrt(|r - r*| / (r + r*))`, not 0 — use
/// [`containment`] to ask whether a larger fitted basis holds the truth. It
/// is computed as `||(I - P) U*||² + ||(I - P*) U||² = ||P - P*||²` so that
/// small distances keep full relative accuracy.
pub fn subspace_distance(u: MatRef<'_, f64>, u_star: MatRef<'_, f64>) -> Result<f64> {
    check_bases(u, u_star)?;
    let d2 = residual_sq(u, u_star) + residual_sq(u_star, u);
    Ok((d2 / (u.ncols() + u_star.ncols()) as f64).sqrt())
}

/// Containment `||(I - U U^T) U*|| / sqrt(r*)` of the true subspace
/// `span(u_star)` in the fitted `span(u)`: 0 when the fit holds the truth
/// (whatever extra directions it has), 1 when they are orthogonal.
pub fn containment(u: MatRef<'_, f64>, u_star: MatRef<'_, f64>) -> Result<f64> {
    check_bases(u, u_star)?;
    Ok((residual_sq(u, u_star) / u_star.ncols() as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn subspace_distance_and_containment() {
        let m = 12;
        let e = |cols: &[usize]| {
            Mat::<f64>::from_fn(m, cols.len(), |i, j| f64::from(u8::from(i == cols[j])))
        };
        let u = e(&[0, 1, 2]);
        // Orthogonal subspaces: distance 1, containment 1.
        let w = e(&[3, 4, 5]);
        assert!((subspace_distance(u.as_ref(), w.as_ref()).unwrap() - 1.0).abs() < 1e-15);
        assert!((containment(u.as_ref(), w.as_ref()).unwrap() - 1.0).abs() < 1e-15);
        // The same subspace in another basis: 0.
        let (c, s) = (0.6, 0.8);
        let rot = Mat::<f64>::from_fn(3, 3, |i, j| match (i, j) {
            (0, 0) | (1, 1) => c,
            (0, 1) => -s,
            (1, 0) => s,
            (2, 2) => 1.0,
            _ => 0.0,
        });
        let ur = &u * &rot;
        assert!(subspace_distance(u.as_ref(), ur.as_ref()).unwrap() < 1e-15);
        // Nested: the fit holds the truth, the distance counts the extra rank.
        let big = e(&[0, 1, 2, 7, 8]);
        assert!(containment(big.as_ref(), u.as_ref()).unwrap() < 1e-15);
        let d = subspace_distance(big.as_ref(), u.as_ref()).unwrap();
        assert!((d - (2.0f64 / 8.0).sqrt()).abs() < 1e-15);
        assert!(
            (containment(u.as_ref(), big.as_ref()).unwrap() - (2.0f64 / 5.0).sqrt()).abs() < 1e-15
        );
        // A tiny rotation keeps full relative accuracy: ||P - P*|| = sqrt(2) sin t.
        let t = 1e-10f64;
        let mut v = u.clone();
        v[(2, 2)] = t.cos();
        v[(9, 2)] = t.sin();
        let d = subspace_distance(u.as_ref(), v.as_ref()).unwrap();
        let want = (2.0f64).sqrt() * t.sin() / (6.0f64).sqrt();
        assert!((d / want - 1.0).abs() < 1e-6, "{d} vs {want}");
    }

    #[test]
    fn subspace_arguments_are_checked() {
        let u = Mat::<f64>::identity(6, 2);
        let bad = Mat::<f64>::from_fn(6, 2, |i, j| if i == j { 2.0 } else { 0.0 });
        let err = subspace_distance(bad.as_ref(), u.as_ref()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().starts_with("u:"), "{}", err.message());
        let short = Mat::<f64>::identity(5, 2);
        let err = containment(u.as_ref(), short.as_ref()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Shape);
        assert!(err.message().starts_with("u_star:"));
        let mut nan = u.clone();
        nan[(3, 1)] = f64::NAN;
        let err = containment(u.as_ref(), nan.as_ref()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NonFinite);
    }
}
