//! The Gaussian-core baseline: the library's Gaussian core model (a
//! full-covariance Gaussian, shrunk toward its mean variance when the cores
//! are few for their dimension) fitted to all training cores, sampled and
//! decoded through the same geometry as the model. It is what the flow has
//! to beat (DESIGN.md section 5), so the demo reports it beside the model's
//! samples.

use coreflow::core_model::{CoreModel, CoreModelChoice, FlowOptions};
use coreflow::flow::SolverOptions;
use coreflow::numerics::{MemBuffer, MemStack};
use faer::{Mat, MatRef};

/// Key of the baseline's seed, so that its draws are not those of a model
/// sampled with the same seed (any constant works).
const SEED_KEY: u64 = 0x6761_7573_735f_6373;

/// Fits the Gaussian core model to `cores` (one core of `d` values per
/// row, row-major) and draws `count` cores in the same layout; core k
/// depends only on the seed and k.
pub fn gaussian_cores(
    cores: &[f64],
    d: usize,
    count: usize,
    seed: u64,
    threads: usize,
) -> coreflow::Result<Vec<f64>> {
    let opts = FlowOptions {
        core_model: CoreModelChoice::Gaussian,
        // The baseline uses every training core; nothing is held out.
        holdout_fraction: 0.0,
        seed,
        threads,
        ..FlowOptions::default()
    };
    let train = MatRef::from_row_major_slice(cores, cores.len() / d, d);
    let model = CoreModel::fit(train, &opts, &mut |_, _, _| true)?;
    let solver = SolverOptions::default();
    let mut out = Mat::<f64>::zeros(count, d);
    let mut buf = MemBuffer::new(model.sample_scratch(count, &solver));
    let sample_seed = coreflow::rng::mix64(seed ^ SEED_KEY);
    model.sample(
        &solver,
        sample_seed,
        0,
        out.as_mut(),
        MemStack::new(&mut buf),
    )?;
    Ok((0..count)
        .flat_map(|k| (0..d).map(move |a| (k, a)))
        .map(|(k, a)| out[(k, a)])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coreflow::datasets::Rng;

    #[test]
    fn draws_have_the_mean_and_covariance_of_the_cores() {
        // Cores c = m + A z with a known A, many more than 10 d (no
        // shrinkage to speak of).
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
        let s = gaussian_cores(&cores, d, n, 3, 1).unwrap();
        let mean = |x: &[f64], i: usize| x.chunks_exact(d).map(|c| c[i]).sum::<f64>() / n as f64;
        for i in 0..d {
            assert!((mean(&s, i) - m[i]).abs() < 0.05, "mean {i}");
            for j in 0..=i {
                let cov = s
                    .chunks_exact(d)
                    .map(|c| (c[i] - mean(&s, i)) * (c[j] - mean(&s, j)))
                    .sum::<f64>()
                    / n as f64;
                let truth: f64 = (0..d).map(|k| a[i][k] * a[j][k]).sum();
                assert!((cov - truth).abs() < 0.1, "cov {i} {j}: {cov} vs {truth}");
            }
        }
        // Deterministic by seed and index.
        let t = gaussian_cores(&cores, d, 5, 3, 1).unwrap();
        assert_eq!(t, gaussian_cores(&cores, d, 5, 3, 1).unwrap());
        assert_eq!(&t[..d], &gaussian_cores(&cores, d, 1, 3, 1).unwrap()[..]);
    }

    #[test]
    fn singular_covariance_still_samples() {
        // Two cores in 4 dimensions: rank-1 covariance.
        let cores = [1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0];
        let s = gaussian_cores(&cores, 4, 10, 0, 1).unwrap();
        assert!(s.iter().all(|x| x.is_finite()));
    }
}
