//! The Gaussian-core baseline: a full-covariance Gaussian fitted to the
//! training cores, sampled and decoded through the same geometry as the
//! model. It is what the flow has to beat (DESIGN.md section 5), so the demo
//! reports it beside the model's samples.

use coreflow::datasets::Rng;

/// Stream family of the baseline's draws (any constant distinct from the
/// library's families works; sample k depends only on the seed and k).
const FAMILY: u64 = 0x6761_7573_735f_6373;

pub struct GaussianCores {
    d: usize,
    mean: Vec<f64>,
    /// Lower Cholesky factor of the covariance, row-major d x d.
    chol: Vec<f64>,
}

impl GaussianCores {
    /// Fits mean and covariance to `cores` (`count` rows of `d` values).
    /// The covariance gets `delta I`, `delta = 1e-6 x` the mean variance, as
    /// the library's Gaussian block does: with fewer samples than
    /// dimensions the sample covariance is singular.
    pub fn fit(cores: &[f64], d: usize) -> Self {
        let count = cores.len() / d;
        let mut mean = vec![0.0; d];
        for c in cores.chunks_exact(d) {
            for (m, x) in mean.iter_mut().zip(c) {
                *m += x;
            }
        }
        for m in &mut mean {
            *m /= count as f64;
        }
        let mut cov = vec![0.0; d * d];
        let mut z = vec![0.0; d];
        for c in cores.chunks_exact(d) {
            for ((zi, x), m) in z.iter_mut().zip(c).zip(&mean) {
                *zi = x - m;
            }
            for a in 0..d {
                let za = z[a];
                let row = &mut cov[a * d..a * d + a + 1];
                for (b, v) in row.iter_mut().enumerate() {
                    *v += za * z[b];
                }
            }
        }
        let denom = (count.max(2) - 1) as f64;
        for v in &mut cov {
            *v /= denom;
        }
        let mean_var = (0..d).map(|a| cov[a * d + a]).sum::<f64>() / d as f64;
        let mut delta = 1e-6 * mean_var.max(f64::MIN_POSITIVE);
        // Rounding can leave a semidefinite matrix slightly indefinite:
        // raise the ridge until the factorisation succeeds.
        loop {
            if let Some(chol) = cholesky(&cov, d, delta) {
                return Self { d, mean, chol };
            }
            delta *= 10.0;
        }
    }

    /// Draws `count` cores (`count * d` values), core k from stream k.
    pub fn sample(&self, count: usize, seed: u64) -> Vec<f64> {
        let d = self.d;
        let mut out = vec![0.0; count * d];
        let mut z = vec![0.0; d];
        for (k, c) in out.chunks_exact_mut(d).enumerate() {
            Rng::stream(seed, FAMILY, k as u64).fill_normal(&mut z);
            for (a, ca) in c.iter_mut().enumerate() {
                let row = &self.chol[a * d..a * d + a + 1];
                *ca = self.mean[a] + row.iter().zip(&z).map(|(l, x)| l * x).sum::<f64>();
            }
        }
        out
    }
}

/// Lower Cholesky factor of `a + delta I` (lower triangle of `a` used), or
/// `None` when it is not positive definite.
fn cholesky(a: &[f64], d: usize, delta: f64) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j] + if i == j { delta } else { 0.0 };
            s -= (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 0.0 || s.is_infinite() {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_mean_and_covariance() {
        // Cores c = m + A z with a known A.
        let (d, n) = (3, 20000);
        let a = [[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.0, -1.0, 0.3]];
        let m = [1.0, -2.0, 0.5];
        let mut rng = Rng::seed_from_u64(1);
        let mut cores = vec![0.0; n * d];
        for c in cores.chunks_exact_mut(d) {
            let z: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            for i in 0..d {
                c[i] = m[i] + (0..d).map(|k| a[i][k] * z[k]).sum::<f64>();
            }
        }
        let g = GaussianCores::fit(&cores, d);
        for i in 0..d {
            assert!((g.mean[i] - m[i]).abs() < 0.05);
            for (k, aik) in a[i].iter().enumerate().take(i + 1) {
                assert!((g.chol[i * d + k] - aik).abs() < 0.05, "{i} {k}");
            }
        }
        let s = g.sample(5, 3);
        assert_eq!(s, g.sample(5, 3));
        assert_eq!(&s[..d], &g.sample(1, 3)[..]);
    }

    #[test]
    fn singular_covariance_still_samples() {
        // Two cores in 4 dimensions: rank-1 covariance.
        let cores = [1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0];
        let g = GaussianCores::fit(&cores, 4);
        assert!(g.sample(10, 0).iter().all(|x| x.is_finite()));
    }
}
