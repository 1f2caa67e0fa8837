//! Random inputs shared by the unit tests of the subspace kernels.

use super::objective_scratch;
use crate::batch::MatrixBatch;
use crate::numerics::{self, MemBuffer, MemStack, Par};
use crate::reduce::LocalReducer;
use faer::{Mat, MatRef};
use rand_xoshiro::rand_core::RngCore;
use rand_xoshiro::Xoshiro256PlusPlus;

pub(super) fn uniform_mat(m: usize, n: usize, rng: &mut Xoshiro256PlusPlus) -> Mat<f64> {
    Mat::from_fn(m, n, |_, _| {
        (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    })
}

pub(super) fn orthonormal(m: usize, r: usize, rng: &mut Xoshiro256PlusPlus) -> Mat<f64> {
    let mut q = uniform_mat(m, r, rng);
    let mut buf = MemBuffer::new(numerics::retract_qr_scratch(m, r, Par::Seq));
    numerics::retract_qr(q.as_mut(), Par::Seq, MemStack::new(&mut buf));
    q
}

pub(super) fn objective_at(
    data: &MatrixBatch,
    mean: Option<MatRef<'_, f64>>,
    u: &Mat<f64>,
    v: &Mat<f64>,
) -> f64 {
    let (m, n, r, s) = (data.rows(), data.cols(), u.ncols(), v.ncols());
    let mut buf = MemBuffer::new(objective_scratch(m, n, r, s, Par::Seq));
    super::objective(
        data,
        mean,
        u.as_ref(),
        v.as_ref(),
        &LocalReducer,
        Par::Seq,
        MemStack::new(&mut buf),
    )
    .unwrap()
}
