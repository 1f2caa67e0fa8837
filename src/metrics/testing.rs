//! Random and hand-made sets shared by the unit tests of the metrics.

use crate::batch::MatrixBatch;
use crate::datasets::Rng;

pub(super) fn gaussian(count: usize, m: usize, n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::seed_from_u64(seed);
    let mut v = vec![0.0; count * m * n];
    rng.fill_normal(&mut v);
    v
}

pub(super) fn batch(data: &[f64], count: usize, m: usize, n: usize) -> MatrixBatch<'_> {
    MatrixBatch::from_c_order(data, count, m, n).unwrap()
}
