//! Incomplete data: masked fitting by iterative completion, and completion
//! of new matrices under a fitted model (DESIGN.md section 4).
//!
//! # Masked fit
//!
//! Objective, with P_i keeping the observed entries of sample i:
//!
//! ```text
//! F(U, V, {C_i}) = sum_i ||P_i(X_i - U C_i V^T)||^2 + lambda sum_i ||C_i||^2.
//! ```
//!
//! Missing entries start at the mean of the observed entries of their column
//! (over all samples; the row mean where a column is never observed; the
//! global mean where neither is). Then, an EM / majorise-minimise scheme:
//!
//! 1. E-step: `Z_i = P_i(X_i) + P_i^perp(U C_i V^T)`;
//! 2. M-step on the completed `Z_i`: a HOOI sweep (default) or several
//!    Riemannian conjugate-gradient steps from the current bases;
//! 3. cores `C_i = U^T Z_i V / (1 + lambda)`.
//!
//! With `Z` fixed, `G = sum ||Z_i - U C_i V^T||^2 + lambda ||C_i||^2` equals F
//! at the current iterate (the missing residuals are zero) and majorises F
//! everywhere; minimising C in closed form leaves
//! `G = sum ||Z_i||^2 - sum ||U^T Z_i V||^2 / (1 + lambda)`, which the
//! M-step decreases. So F never increases. Iteration stops when the relative
//! decrease of F is below `tol`, or after `max_iter` rounds.
//!
//! With centering, the mean is taken over the observed entries of each
//! position (the initial fill where a position is never observed), and the
//! scheme runs on `X_i - Xbar`.
//!
//! # One round
//!
//! The E-step and the HOOI M-step share their passes over the completed
//! matrices, so that a round reads `Z` twice, as a complete-data HOOI
//! iteration reads `X` twice:
//!
//! * **Cores** from the previous sweep: its V-update leaves the blocks
//!   `W_i = Z_i^T U` (new U), so `C_i = W_i^T V / (1 + lambda)` costs
//!   `2 n r s` flops per matrix and no pass
//!   ([`subspace::project_cores_from_left`]); before the first round they
//!   come from one projection pass.
//! * **E-step fused with the first products of the sweep** ([`e_step`]):
//!   each `Z_i` is done a panel of rows at a time (about 128 KB) while the
//!   panel is in cache: the prediction `U C_i V^T` (one thin product), the
//!   masked residuals and the update of the missing entries, then the
//!   block `Y_i = Z_i V` of the next U-update. The observed entries of
//!   `Z_i` are the centered observations, bitwise, so the residuals come
//!   from `Z_i` itself and the observation pattern, packed once to one bit
//!   per entry; the update selects by bit masks (the missing entries fall
//!   at random, branches would mispredict), on AVX2 where available.
//! * **Rest of the sweep** ([`subspace::hooi_sweep_from_rows`]): Gram matrix
//!   of the `Y_i`, new U, the blocks `W_i = Z_i^T U` (second pass), their
//!   Gram matrix, new V.
//!
//! Per matrix a round is three thin products (prediction, `Z_i V`,
//! `Z_i^T U`) and two Gram updates where a complete-data iteration has two
//! thin products and the same Gram updates, plus the write of the missing
//! entries: measured about 1.2-1.3x a complete-data HOOI iteration
//! (BENCHMARKS.md, "Incomplete data"). F is summed per sample, then in
//! sample order, so it does not depend on the thread count. With the
//! Riemannian M-step the cores come from a projection pass after the inner
//! steps and the E-step writes no blocks.
//!
//! # Completing a new matrix
//!
//! The MAP core under the Gaussian prior of the training cores,
//! `c ~ N(mu, Sigma)`, and noise variance `sigma^2` estimated from the
//! training residuals, the observed entries weighted by
//! `W_ab = 1 / (rho_a gamma_b)` of the noise law's profile
//! ([`crate::noise`]; `W = 1` without one):
//!
//! ```text
//! min_c ||W^1/2 o P(Y - U C V^T)||^2 / sigma^2 + (c - mu)^T Sigma^-1 (c - mu).
//! ```
//!
//! The prior is held in low rank ([`CorePrior`]): with the principal
//! directions `Q` (`d x q`, `q = min(d, N)`, from [`crate::pca`]) and
//! variances `lambda_j` of the N training cores,
//! `Sigma = Q diag(lambda) Q^T + delta I`, `delta = 1e-6 x` the mean core
//! variance. It is exactly the sample covariance plus the ridge, whose rank
//! is at most `N - 1`, in `d q` numbers instead of `d^2`; inverse and square
//! root are explicit:
//!
//! ```text
//! Sigma^-1  = Q diag(1 / (lambda + delta)) Q^T + (I - Q Q^T) / delta,
//! Sigma^1/2 = Q diag(sqrt(lambda + delta)) Q^T + sqrt(delta) (I - Q Q^T)
//!           = sqrt(delta) I + Q diag(sqrt(lambda + delta) - sqrt(delta)) Q^T.
//! ```
//!
//! With `c = mu + S z`, `S = Sigma^1/2` (symmetric), the problem is the
//! well-conditioned system
//! `(I + S A^T W P A S / sigma^2) z = S A^T W P (Y - A mu) / sigma^2`,
//! `A c = U C V^T`, solved by conjugate gradients: each product costs two
//! small matrix products with U and V and two with `Q` (`O(d q)`). The
//! result is `P(Y) + P^perp(U C V^T)`: observed entries come back bitwise
//! unchanged.
//!
//! [`e_step`]: crate::completion::e_step
//! [`CorePrior`]: crate::completion::CorePrior

use crate::batch::{MaskRef, MatrixBatch};
use crate::error::{Error, Result};
use crate::noise::NoiseModel;
use crate::numerics::{
    self, gemm, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch, MemBuffer,
    MemStack, Par, SharedBuf, StackReq,
};
use crate::reduce::Reducer;
use crate::subspace::{self, SubspaceMethod, SubspaceOptions};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef};

/// Which entries of a matrix are observed.
#[derive(Copy, Clone, Debug)]
pub enum Observed<'a> {
    /// Every entry.
    All,
    /// Nonzero mask entries.
    Mask(MaskRef<'a>),
    /// Every entry that is not NaN.
    NotNan,
}

impl Observed<'_> {
    /// True when entry `(i, j)` of `x` is observed.
    #[inline]
    pub fn at(&self, x: MatRef<'_, f64>, i: usize, j: usize) -> bool {
        match self {
            Observed::All => true,
            Observed::Mask(m) => m.observed(i, j),
            Observed::NotNan => !x[(i, j)].is_nan(),
        }
    }
}

/// The observation pattern of sample `i` of a batch.
pub fn observed_of<'a>(data: &MatrixBatch<'a>, i: usize, nan_is_missing: bool) -> Observed<'a> {
    match data.mask(i) {
        Some(m) => Observed::Mask(m),
        None if nan_is_missing => Observed::NotNan,
        None => Observed::All,
    }
}

/// Checks that observed values are finite (NaN allowed only where missing).
pub fn check_observed_finite(data: &MatrixBatch, nan_is_missing: bool, what: &str) -> Result<()> {
    for i in 0..data.count() {
        let x = data.sample(i);
        let obs = observed_of(data, i, nan_is_missing);
        for c in 0..data.cols() {
            for r in 0..data.rows() {
                let v = x[(r, c)];
                let ok = if obs.at(x, r, c) {
                    v.is_finite()
                } else {
                    !v.is_infinite() || matches!(obs, Observed::Mask(_))
                };
                if !ok {
                    let hint = if v.is_nan() && !nan_is_missing {
                        " (set nan_is_missing to treat NaN as missing)"
                    } else {
                        ""
                    };
                    return Err(Error::non_finite(format!(
                        "{what}: matrix {i} has the non-finite value {v} at row {r}, column {c}{hint}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Options of the masked fit.
#[derive(Clone, Debug)]
pub struct CompletionOptions {
    /// Round limit of the iterative completion, at least 1. Default 100.
    pub max_iter: usize,
    /// Relative decrease of F counted as converged, non-negative. Default 1e-8.
    pub tol: f64,
    /// Ridge lambda on the cores (dimensionless), non-negative. Default 1e-8.
    pub ridge: f64,
    /// NaN entries stand for missing ones (when no mask is given).
    pub nan_is_missing: bool,
    /// Riemannian inner steps per round when the M-step is Riemannian.
    /// Default 10 (one step per round converges about 10x slower).
    pub inner_steps: usize,
}

impl Default for CompletionOptions {
    fn default() -> Self {
        Self {
            max_iter: 100,
            tol: 1e-8,
            ridge: 1e-8,
            nan_is_missing: false,
            inner_steps: 10,
        }
    }
}

impl CompletionOptions {
    /// Checks every option; the message names the field.
    pub fn check(&self) -> Result<()> {
        if self.max_iter == 0 {
            return Err(Error::invalid(
                "opts.completion_max_iter: must be at least 1",
            ));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(Error::invalid(format!(
                "opts.completion_tol: {} must be finite and non-negative",
                self.tol
            )));
        }
        if !(self.ridge.is_finite() && self.ridge >= 0.0) {
            return Err(Error::invalid(format!(
                "opts.ridge: {} must be finite and non-negative",
                self.ridge
            )));
        }
        if self.inner_steps == 0 {
            return Err(Error::invalid("opts.inner_steps: must be at least 1"));
        }
        Ok(())
    }
}

/// The result of a masked fit.
#[derive(Clone, Debug)]
pub struct CompletionFit {
    /// Row basis (canonical).
    pub u: Mat<f64>,
    /// Column basis (canonical).
    pub v: Mat<f64>,
    /// The subtracted mean, when centering.
    pub mean: Option<Mat<f64>>,
    /// Completed training matrices minus the mean, C-order (N, m, n).
    pub completed: Vec<f64>,
    /// Cores of the completed matrices at the returned U, V: N blocks of
    /// `r * s` values, each the column-major r x s core.
    pub cores: Vec<f64>,
    /// F after every round (the masked objective never increases).
    pub history: Vec<f64>,
    /// Rounds performed.
    pub iterations: usize,
    /// Whether the relative decrease fell below `tol`.
    pub converged: bool,
    /// Number of observed entries over all samples.
    pub observed_count: f64,
    /// Sum of squared residuals on the observed entries at the end.
    pub residual_ss: f64,
    /// HOSVD spectra of the initially filled data.
    pub row_eigenvalues: Vec<f64>,
    /// HOSVD spectra of the initially filled data.
    pub col_eigenvalues: Vec<f64>,
}

/// Bytes per row of a packed observation pattern.
fn packed_row_bytes(cols: usize) -> usize {
    cols.div_ceil(8)
}

/// Length in bytes of the packed observation pattern of `count` matrices
/// `rows x cols`: one bit per entry (1 = observed), row by row, each row
/// starting on a byte, entry `b` of a row in bit `b % 8` of its byte `b / 8`.
pub fn packed_observed_len(count: usize, rows: usize, cols: usize) -> usize {
    count * rows * packed_row_bytes(cols)
}

/// Fills the owned buffer `z` (C-order) with the observed values and the
/// initial fill of section 4, and `observed` with the packed observation
/// pattern; returns (mean or None, observed count).
fn initial_fill(
    data: &MatrixBatch,
    nan_is_missing: bool,
    center: bool,
    z: &mut [f64],
    observed: &mut [u8],
    reducer: &dyn Reducer,
) -> Result<(Option<Mat<f64>>, f64)> {
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    // Per-position sums and counts of observed values, completed across
    // participants in one reduction: [pos sums (m n) | pos counts (m n)].
    let mut stats = vec![0.0; 2 * m * n];
    for i in 0..count {
        let x = data.sample(i);
        let obs = observed_of(data, i, nan_is_missing);
        for b in 0..n {
            for a in 0..m {
                if obs.at(x, a, b) {
                    stats[a + b * m] += x[(a, b)];
                    stats[m * n + a + b * m] += 1.0;
                }
            }
        }
    }
    reducer.sum_in_place(&mut stats)?;
    let (sums, counts) = stats.split_at(m * n);
    let total_obs: f64 = counts.iter().sum();
    if total_obs == 0.0 {
        return Err(Error::invalid("train: no entry of any matrix is observed"));
    }
    let global = sums.iter().sum::<f64>() / total_obs;
    let col_mean: Vec<Option<f64>> = (0..n)
        .map(|b| {
            let (s, c) = (0..m).fold((0.0, 0.0), |(s, c), a| {
                (s + sums[a + b * m], c + counts[a + b * m])
            });
            (c > 0.0).then(|| s / c)
        })
        .collect();
    let row_mean: Vec<Option<f64>> = (0..m)
        .map(|a| {
            let (s, c) = (0..n).fold((0.0, 0.0), |(s, c), b| {
                (s + sums[a + b * m], c + counts[a + b * m])
            });
            (c > 0.0).then(|| s / c)
        })
        .collect();
    let fill = |a: usize, b: usize| col_mean[b].or(row_mean[a]).unwrap_or(global);
    let mean = center.then(|| {
        Mat::from_fn(m, n, |a, b| {
            let c = counts[a + b * m];
            if c > 0.0 {
                sums[a + b * m] / c
            } else {
                fill(a, b)
            }
        })
    });
    let row_bytes = packed_row_bytes(n);
    observed.fill(0);
    for i in 0..count {
        let x = data.sample(i);
        let obs = observed_of(data, i, nan_is_missing);
        let zi = &mut z[i * m * n..(i + 1) * m * n];
        for a in 0..m {
            let bits = &mut observed[(i * m + a) * row_bytes..(i * m + a + 1) * row_bytes];
            for b in 0..n {
                let v = if obs.at(x, a, b) {
                    bits[b / 8] |= 1 << (b % 8);
                    x[(a, b)]
                } else {
                    fill(a, b)
                };
                zi[a * n + b] = v - mean.as_ref().map_or(0.0, |mm| mm[(a, b)]);
            }
        }
    }
    Ok((mean, total_obs))
}

fn c_order_batch(z: &[f64], count: usize, m: usize, n: usize) -> MatrixBatch<'_> {
    MatrixBatch::from_c_order(z, count, m, n).expect("internal: owned C-order buffer")
}

/// Entries of one panel of `Z_i` (and of its prediction) in the E-step:
/// about 128 KB each, so that a panel stays in the core's cache from the
/// prediction through the update to the product with V.
const PANEL_ENTRIES: usize = 16 * 1024;

/// Rows per panel of the E-step for `rows x cols` matrices.
fn panel_rows(rows: usize, cols: usize) -> usize {
    (PANEL_ENTRIES / cols.max(1)).clamp(8.min(rows.max(1)), rows.max(1))
}

/// Workspace for [`e_step`] on `count` samples with `par` workers (the row
/// rank does not enter).
pub fn e_step_scratch(
    count: usize,
    rows: usize,
    cols: usize,
    rank_cols: usize,
    par: Par,
) -> StackReq {
    let t = par.degree().max(1);
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(2 * count),
        StackReq::new_aligned::<u8>(
            e_step_worker_bytes(rows, cols, rank_cols) * t,
            numerics::ALIGN,
        ),
    ])
}

/// Scratch bytes of one E-step worker (any alignment): `U C_i` and one
/// panel of the prediction.
fn e_step_worker_bytes(rows: usize, cols: usize, rank_cols: usize) -> usize {
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(rows, rank_cols),
        temp_slice_scratch::<f64>(panel_rows(rows, cols) * cols),
    ])
    .unaligned_bytes_required()
}

/// Independent partial sums of the row updates, one per bit of a pattern
/// byte (vectorisable; the order of the additions is fixed, so results do
/// not depend on the thread count or the instruction set).
const LANES: usize = 8;

#[inline(always)]
fn sum_lanes(acc: [f64; LANES], tail: f64) -> f64 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// One entry of the E-step, without branches (the missing entries fall at
/// random): a missing `z` takes the prediction `p` (bitwise), an observed
/// one adds `(z - p)^2` to `acc`.
#[inline(always)]
fn update_entry(z: &mut f64, p: f64, observed: bool, acc: &mut f64) {
    let keep = 0u64.wrapping_sub(observed as u64);
    let d = *z - p;
    *acc += f64::from_bits((d * d).to_bits() & keep);
    *z = f64::from_bits((z.to_bits() & keep) | (p.to_bits() & !keep));
}

/// One row of the E-step: missing entries of `z` (by the packed row pattern
/// `bits`) take the prediction `p`; returns `sum (z - p)^2` over the
/// observed ones. AVX2 where the processor has it, with the same bits.
fn update_row(z: &mut [f64], p: &[f64], bits: &[u8]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        return unsafe { update_row_avx2(z, p, bits) };
    }
    update_row_generic(z, p, bits)
}

/// [`update_row`] in plain Rust.
fn update_row_generic(z: &mut [f64], p: &[f64], bits: &[u8]) -> f64 {
    let mut acc = [0.0; LANES];
    let body = z.len() - z.len() % LANES;
    let (zb, zt) = z.split_at_mut(body);
    for ((zc, pc), &byte) in zb
        .chunks_exact_mut(LANES)
        .zip(p[..body].chunks_exact(LANES))
        .zip(bits)
    {
        for l in 0..LANES {
            update_entry(&mut zc[l], pc[l], (byte >> l) & 1 != 0, &mut acc[l]);
        }
    }
    update_tail(zt, &p[body..], bits.get(body / LANES), acc)
}

/// The last `z.len() < 8` entries of a row (bits from `byte`), then the sum
/// of the lanes.
#[inline(always)]
fn update_tail(z: &mut [f64], p: &[f64], byte: Option<&u8>, acc: [f64; LANES]) -> f64 {
    let mut tail = 0.0;
    if let Some(&byte) = byte {
        for (l, (zv, &pv)) in z.iter_mut().zip(p).enumerate() {
            update_entry(zv, pv, (byte >> l) & 1 != 0, &mut tail);
        }
    }
    sum_lanes(acc, tail)
}

/// [`update_row`] with AVX2: the lanes of [`update_row_generic`] in two
/// 4-wide registers, so the results are the same bits.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_row_avx2(z: &mut [f64], p: &[f64], bits: &[u8]) -> f64 {
    use std::arch::x86_64::*;
    let body = z.len() - z.len() % LANES;
    assert!(p.len() >= z.len() && bits.len() * LANES >= body);
    let sel_lo = _mm256_setr_epi64x(1, 2, 4, 8);
    let sel_hi = _mm256_setr_epi64x(16, 32, 64, 128);
    let mut acc_lo = _mm256_setzero_pd();
    let mut acc_hi = _mm256_setzero_pd();
    let (zp, pp) = (z.as_mut_ptr(), p.as_ptr());
    for (c, &byte) in bits[..body / LANES].iter().enumerate() {
        let bb = _mm256_set1_epi64x(byte as i64);
        for (half, sel, acc) in [(0, sel_lo, &mut acc_lo), (4, sel_hi, &mut acc_hi)] {
            // All ones where observed.
            let mut keep = _mm256_cmpeq_epi64(_mm256_and_si256(bb, sel), sel);
            // Opaque to the optimiser: knowing `keep` is a lane mask, it
            // would fuse the select and the store below into a masked store,
            // which some processors microcode (about 2x slower here).
            std::arch::asm!("/* {0} */", inout(ymm_reg) keep, options(pure, nomem, nostack, preserves_flags));
            let at = c * LANES + half;
            let zv = _mm256_loadu_pd(zp.add(at));
            let pv = _mm256_loadu_pd(pp.add(at));
            let d = _mm256_sub_pd(zv, pv);
            let d2 = _mm256_castpd_si256(_mm256_mul_pd(d, d));
            *acc = _mm256_add_pd(*acc, _mm256_castsi256_pd(_mm256_and_si256(d2, keep)));
            let (zi, pi) = (_mm256_castpd_si256(zv), _mm256_castpd_si256(pv));
            let new = _mm256_or_si256(_mm256_and_si256(keep, zi), _mm256_andnot_si256(keep, pi));
            _mm256_storeu_si256(zp.add(at) as *mut __m256i, new);
        }
    }
    let mut acc = [0.0; LANES];
    _mm256_storeu_pd(acc.as_mut_ptr(), acc_lo);
    _mm256_storeu_pd(acc.as_mut_ptr().add(4), acc_hi);
    update_tail(&mut z[body..], &p[body..], bits.get(body / LANES), acc)
}

/// One E-step over all local samples, fused with the first products of the
/// next HOOI sweep. `z` holds the `count` centered completed matrices
/// (C-order, m x n, m and n the rows of U and V) and `observed` their packed
/// observation pattern (see [`packed_observed_len`]). With the projected
/// cores `P_i = U^T Z_i V` in `cores` (`count` column-major r x s blocks, as
/// [`subspace::project_cores`] and [`subspace::project_cores_from_left`]
/// write them) and `C_i = P_i / (1 + lambda)`: evaluates the masked
/// objective F, replaces the missing entries of `Z_i` by those of
/// `U C_i V^T`, and, when `rows_out` is given, writes `Y_i = Z_i V` (new
/// `Z_i`) into it in the block layout of [`subspace::hooi_sweep_from_rows`].
///
/// Each sample is done panel of rows by panel of rows while the panel is in
/// cache: one pass over `z` and the pattern, no other data. The observed
/// entries of `Z_i` are the centered observations (bitwise), so they give
/// the residuals. Samples are split over `par` workers. Returns the local
/// `(F, observed residual sum of squares)`, summed in sample order.
#[allow(clippy::too_many_arguments)]
pub fn e_step(
    z: &mut [f64],
    observed: &[u8],
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    cores: &[f64],
    ridge: f64,
    rows_out: Option<&mut [f64]>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(f64, f64)> {
    let (m, n, r, s) = (u.nrows(), v.nrows(), u.ncols(), v.ncols());
    if m * n == 0 || z.len() % (m * n) != 0 {
        return Err(Error::shape(format!(
            "e_step: z has {} values, not a whole number of {m} x {n} matrices",
            z.len()
        )));
    }
    let count = z.len() / (m * n);
    let check = |what: &str, len: usize, needed: usize| {
        if len < needed {
            Err(Error::shape(format!(
                "e_step: {what} has {len} values, at least {needed} needed"
            )))
        } else {
            Ok(())
        }
    };
    check("observed", observed.len(), packed_observed_len(count, m, n))?;
    check("cores", cores.len(), count * r * s)?;
    if let Some(out) = rows_out.as_deref() {
        check("rows_out", out.len(), count * m * s)?;
    }
    let t = par.degree().clamp(1, count.max(1));
    let shrink = 1.0 / (1.0 + ridge);
    let panel = panel_rows(m, n);
    let row_bytes = packed_row_bytes(n);
    // Per-sample sums and per-worker scratch, carved once from the workspace.
    let (sums, stack) = temp_slice(2 * count, 0.0f64, stack);
    let worker_bytes = e_step_worker_bytes(m, n, s);
    let (scratch, _) = stack.make_aligned_uninit::<u8>(worker_bytes * t, numerics::ALIGN);
    let shared_z = SharedBuf::new(z);
    let shared_sums = SharedBuf::new(sums);
    let shared_rows = rows_out.map(SharedBuf::new);
    let shared_scratch = SharedBuf::new(scratch);
    numerics::parallel_parts(count, t, &|k, range| {
        // SAFETY: worker k alone uses bytes [k w, (k + 1) w) of the scratch,
        // and the sums, sample blocks of z and row blocks of its range.
        let ws = unsafe { shared_scratch.slice(k * worker_bytes, worker_bytes) };
        let stack = MemStack::new(ws);
        let (mut uc, stack) = temp_mat_zeroed::<f64>(m, s, stack);
        let (pbuf, _) = temp_slice(panel * n, 0.0f64, stack);
        for i in range {
            // SAFETY: sample i belongs to this worker.
            let zi = unsafe { shared_z.slice(i * m * n, m * n) };
            let pi = MatRef::from_column_major_slice(&cores[i * r * s..(i + 1) * r * s], r, s);
            // U C_i with C_i = P_i / (1 + lambda); the ridge term of F.
            gemm(uc.rb_mut(), Accum::Replace, u, pi, shrink, Par::Seq);
            let mut f = ridge * shrink * shrink * pi.squared_norm_l2();
            let mut rss = 0.0;
            let mut a0 = 0;
            while a0 < m {
                let rows = panel.min(m - a0);
                let zp = &mut zi[a0 * n..(a0 + rows) * n];
                let pp = &mut pbuf[..rows * n];
                gemm(
                    MatMut::from_row_major_slice_mut(pp, rows, n),
                    Accum::Replace,
                    uc.rb().subrows(a0, rows),
                    v.transpose(),
                    1.0,
                    Par::Seq,
                );
                let bits = &observed[(i * m + a0) * row_bytes..(i * m + a0 + rows) * row_bytes];
                for ((zrow, prow), brow) in zp
                    .chunks_exact_mut(n)
                    .zip(pp.chunks_exact(n))
                    .zip(bits.chunks_exact(row_bytes))
                {
                    rss += update_row(zrow, prow, brow);
                }
                if let Some(rows_out) = shared_rows {
                    // SAFETY: rows [a0, a0 + rows) of block i belong to sample i.
                    let yp = unsafe { rows_out.slice(i * m * s + a0 * s, rows * s) };
                    gemm(
                        MatMut::from_row_major_slice_mut(yp, rows, s),
                        Accum::Replace,
                        MatRef::from_row_major_slice(zp, rows, n),
                        v,
                        1.0,
                        Par::Seq,
                    );
                }
                a0 += rows;
            }
            f += rss;
            // SAFETY: sums[2i..2i+2] belong to sample i.
            let out = unsafe { shared_sums.slice(2 * i, 2) };
            out[0] = f;
            out[1] = rss;
        }
    });
    let (mut f, mut rss) = (0.0, 0.0);
    for part in sums.chunks_exact(2) {
        f += part[0];
        rss += part[1];
    }
    Ok((f, rss))
}

/// Fits U, V to incomplete data by iterative completion (see the module
/// docs). `sub` gives the ranks, energy, centering, M-step method and
/// threads; `progress(round, max_rounds, F)` returns false to cancel.
pub fn fit_masked(
    data: &MatrixBatch,
    sub: &SubspaceOptions,
    opts: &CompletionOptions,
    reducer: &dyn Reducer,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
) -> Result<CompletionFit> {
    opts.check()?;
    let (count, m, n) = (data.count(), data.rows(), data.cols());
    if count == 0 {
        return Err(Error::invalid(
            "train: the batch holds no matrix (count is 0)",
        ));
    }
    let checked = sub.check(m, n)?;
    let sub = checked.options().clone();
    check_observed_finite(data, opts.nan_is_missing, "train")?;
    let par = numerics::par_for_threads(sub.threads);

    // The allocations of the fit's size: the completed matrices and their
    // packed observation pattern (1/64 of it).
    let mut z = vec![0.0; count * m * n];
    let mut observed = vec![0u8; packed_observed_len(count, m, n)];
    let (mean, observed_count) = initial_fill(
        data,
        opts.nan_is_missing,
        sub.center,
        &mut z,
        &mut observed,
        reducer,
    )?;

    // HOSVD of the filled matrices (already centered: no mean here).
    let mut row_vecs = Mat::<f64>::zeros(m, m);
    let mut col_vecs = Mat::<f64>::zeros(n, n);
    let mut row_vals = vec![0.0; m];
    let mut col_vals = vec![0.0; n];
    {
        let mut buf = MemBuffer::new(subspace::hosvd_init_scratch(m, n, par));
        subspace::hosvd_init(
            &c_order_batch(&z, count, m, n),
            None,
            row_vecs.as_mut(),
            &mut row_vals,
            col_vecs.as_mut(),
            &mut col_vals,
            reducer,
            par,
            MemStack::new(&mut buf),
        )?;
    }
    // Ranks chosen by energy keep the core within the small-data cap.
    let cap = if sub.rank_rows == 0 || sub.rank_cols == 0 {
        subspace::energy_core_dim_cap(crate::reduce::sum_scalar(reducer, count as f64)? as usize)
    } else {
        usize::MAX
    };
    let (r, s) = subspace::initial_ranks(
        &row_vals,
        &col_vals,
        sub.rank_rows,
        sub.rank_cols,
        sub.energy,
        cap,
    );
    let mut u = row_vecs.get(.., ..r).to_owned();
    let mut v = col_vecs.get(.., ..s).to_owned();
    drop((row_vecs, col_vecs));

    // The workspace of the rounds, allocated once: the block buffer of the
    // HOOI sweeps (Y_i from the E-step, then W_i from the V-update), the
    // projected cores P_i = U^T Z_i V, and the scratch of the steps.
    let hooi = sub.method == SubspaceMethod::Hooi;
    let blocks_len = if hooi {
        subspace::hooi_blocks_len(count, m, n, r, s)
    } else {
        0
    };
    let m_step_req = if hooi {
        subspace::hooi_sweep_from_rows_scratch(m, n, r, s, par)
    } else {
        subspace::riemannian_solve_scratch(count, m, n, r, s, par)
    };
    let mut buf = MemBuffer::new(StackReq::all_of(&[
        temp_slice_scratch::<f64>(blocks_len),
        temp_slice_scratch::<f64>(count * r * s),
        StackReq::any_of(&[
            m_step_req,
            e_step_scratch(count, m, n, s, par),
            subspace::project_cores_scratch(m, n, r, s, par),
            subspace::project_cores_from_left_scratch(m, n, r, s, par),
        ]),
    ]));
    let stack = MemStack::new(&mut buf);
    let (blocks, stack) = temp_slice(blocks_len, 0.0f64, stack);
    let (cores, stack) = temp_slice(count * r * s, 0.0f64, stack);
    subspace::project_cores(
        &c_order_batch(&z, count, m, n),
        None,
        u.as_ref(),
        v.as_ref(),
        cores,
        par,
        stack,
    )?;

    // A round: the E-step (fused with the products Y_i = Z_i V of the next
    // HOOI sweep), then the M-step, whose last products give the cores.
    let mut history = Vec::with_capacity(opts.max_iter + 1);
    let mut converged = false;
    let mut iterations = 0;
    let mut rss;
    let mut f_prev = f64::INFINITY;
    loop {
        let (f_local, rss_local) = e_step(
            &mut z,
            &observed,
            u.as_ref(),
            v.as_ref(),
            cores,
            opts.ridge,
            if hooi { Some(&mut *blocks) } else { None },
            par,
            stack,
        )?;
        let mut fr = [f_local, rss_local];
        reducer.sum_in_place(&mut fr)?;
        let f = fr[0];
        rss = fr[1];
        if !f.is_finite() {
            return Err(Error::numerical("masked objective became non-finite"));
        }
        history.push(f);
        if !progress(iterations, opts.max_iter, f) {
            return Err(Error::cancelled("completion"));
        }
        if f_prev.is_finite() && (f_prev - f) <= opts.tol * f_prev.abs().max(f64::MIN_POSITIVE) {
            converged = true;
            break;
        }
        if iterations == opts.max_iter {
            break;
        }
        f_prev = f;
        let zb = c_order_batch(&z, count, m, n);
        if hooi {
            subspace::hooi_sweep_from_rows(
                &zb,
                None,
                u.as_mut(),
                v.as_mut(),
                blocks,
                reducer,
                par,
                stack,
            )?;
            subspace::project_cores_from_left(
                &zb,
                u.as_ref(),
                v.as_ref(),
                blocks,
                cores,
                par,
                stack,
            )?;
        } else {
            subspace::riemannian_solve(
                &zb,
                None,
                u.as_mut(),
                v.as_mut(),
                opts.inner_steps,
                0.0,
                0.0,
                reducer,
                &mut |_, _| true,
                par,
                stack,
            )?;
            subspace::project_cores(&zb, None, u.as_ref(), v.as_ref(), cores, par, stack)?;
        }
        iterations += 1;
    }

    // Canonical basis on the completed data, and the cores there (one pass).
    let mut final_cores = vec![0.0; count * r * s];
    let mut cbuf = MemBuffer::new(subspace::canonicalize_scratch(m, n, r, s, par));
    subspace::canonicalize_with_cores(
        &c_order_batch(&z, count, m, n),
        None,
        u.as_mut(),
        v.as_mut(),
        &mut final_cores,
        reducer,
        par,
        MemStack::new(&mut cbuf),
    )?;
    Ok(CompletionFit {
        u,
        v,
        mean,
        completed: z,
        cores: final_cores,
        history,
        iterations,
        converged,
        observed_count,
        residual_ss: rss,
        row_eigenvalues: row_vals,
        col_eigenvalues: col_vals,
    })
}

/// The Gaussian prior of the cores, `N(mu, Sigma)` with
/// `Sigma = Q diag(lambda) Q^T + delta I` (the sample covariance of the
/// training cores in its principal components, plus the ridge), and the
/// noise level, for completing new matrices. `Q` has `q = min(d, N)`
/// columns, so the prior takes `d x q` numbers, never `d x d`.
#[derive(Clone, Debug)]
pub struct CorePrior {
    /// Mean `mu` of the training cores (column-major vec, length d).
    pub mean: Vec<f64>,
    /// Principal directions `Q` of the training cores (`d x q`,
    /// orthonormal columns).
    pub basis: Mat<f64>,
    /// Variances `lambda_j >= 0` along the directions (length q).
    pub variances: Vec<f64>,
    /// Ridge `delta > 0`: the variance in every direction outside `Q` and
    /// the regulariser added along `Q`.
    pub ridge: f64,
    /// Noise variance per observed entry, from the training residuals.
    pub noise_var: f64,
}

impl CorePrior {
    /// From the training cores (N x d, one core per row; every participant
    /// passes its own and `reducer` completes the sums), the residual sum of
    /// squares on the observed training entries and their count. The
    /// covariance is regularised by `delta = 1e-6 x` its mean variance (and
    /// an absolute floor); the noise variance is floored at `1e-12 x` the
    /// mean core energy per entry. Products use `par`.
    pub fn from_cores(
        cores: MatRef<'_, f64>,
        residual_ss: f64,
        observed: f64,
        entries_per_matrix: usize,
        reducer: &dyn Reducer,
        par: Par,
    ) -> Result<CorePrior> {
        let d = cores.ncols();
        let pcs = crate::pca::principal_components(cores, reducer, par).map_err(|e| {
            if e.kind() == crate::error::ErrorKind::InvalidArgument {
                Error::invalid("train: no matrix to estimate the core prior from")
            } else {
                e
            }
        })?;
        let mean_var = pcs.total_variance / d as f64;
        let ridge = (1e-6 * mean_var).max(1e-300);
        let floor =
            1e-12 * (mean_var * d as f64 / entries_per_matrix as f64).max(f64::MIN_POSITIVE);
        let noise_var = if observed > 0.0 {
            (residual_ss / observed).max(floor)
        } else {
            floor
        };
        Ok(CorePrior {
            mean: pcs.mean,
            basis: pcs.basis,
            variances: pcs.variances,
            ridge,
            noise_var,
        })
    }

    /// The isotropic prior `N(mean, variance I)` (no principal directions).
    pub fn isotropic(mean: Vec<f64>, variance: f64, noise_var: f64) -> CorePrior {
        let d = mean.len();
        CorePrior {
            mean,
            basis: Mat::zeros(d, 0),
            variances: Vec::new(),
            ridge: variance,
            noise_var,
        }
    }

    /// Core dimension d.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Number q of principal directions.
    pub fn components(&self) -> usize {
        self.basis.ncols()
    }

    /// `out <- Sigma^(1/2) x = sqrt(delta) x + Q diag(sqrt(lambda + delta)
    /// - sqrt(delta)) Q^T x` (symmetric); `tmp` has length q.
    fn sqrt_mul(&self, x: &[f64], out: &mut [f64], tmp: &mut [f64]) {
        let (d, q) = (self.dim(), self.components());
        let sd = self.ridge.sqrt();
        let xm = MatRef::from_column_major_slice(x, d, 1);
        {
            let tm = MatMut::from_column_major_slice_mut(tmp, q, 1);
            gemm(
                tm,
                Accum::Replace,
                self.basis.transpose(),
                xm,
                1.0,
                Par::Seq,
            );
        }
        for (t, l) in tmp.iter_mut().zip(&self.variances) {
            *t *= (l + self.ridge).sqrt() - sd;
        }
        for (o, xv) in out.iter_mut().zip(x) {
            *o = sd * xv;
        }
        let om = MatMut::from_column_major_slice_mut(out, d, 1);
        let tm = MatRef::from_column_major_slice(tmp, q, 1);
        gemm(om, Accum::Add, self.basis.as_ref(), tm, 1.0, Par::Seq);
    }
}

/// Workspace for [`map_core`] with a prior of `components` principal
/// directions.
pub fn map_core_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    components: usize,
) -> StackReq {
    let d = rank_rows * rank_cols;
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(5 * d + components),
        temp_mat_scratch::<f64>(rows, rank_cols),
        temp_mat_scratch::<f64>(rows, cols),
    ])
}

/// Workspace for [`complete_one`] with a prior of `components` principal
/// directions.
pub fn complete_one_scratch(
    rows: usize,
    cols: usize,
    rank_rows: usize,
    rank_cols: usize,
    components: usize,
) -> StackReq {
    let d = rank_rows * rank_cols;
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(d),
        map_core_scratch(rows, cols, rank_rows, rank_cols, components),
    ])
}

/// Maximum conjugate-gradient iterations of [`map_core`].
const CG_MAX_ITER: usize = 500;

/// The MAP core of one partially observed matrix under `prior` (module
/// docs): `core` (column-major `r x s`, length `r s`) receives
/// `argmin_c ||W^1/2 o P(Y - Xbar - U C V^T)||^2 / sigma^2 + (c - mu)^T
/// Sigma^-1 (c - mu)`, with the weights `W_ab = 1 / (rho_a gamma_b)` of the
/// noise law `noise` (all 1 when `None`, and for a flat profile: then the
/// result is bitwise the unweighted one). `y` may hold anything at missing
/// entries (NaN included). Never allocates. Returns the number of
/// conjugate-gradient iterations.
#[allow(clippy::too_many_arguments)]
pub fn map_core(
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    mean: Option<MatRef<'_, f64>>,
    prior: &CorePrior,
    noise: Option<&NoiseModel>,
    y: MatRef<'_, f64>,
    obs: Observed<'_>,
    core: &mut [f64],
    stack: &mut MemStack,
) -> Result<usize> {
    let (m, n) = y.shape();
    let (r, s) = (u.ncols(), v.ncols());
    let d = r * s;
    debug_assert_eq!(prior.dim(), d);
    debug_assert_eq!(core.len(), d);
    let c = core;
    let (buf, stack) = temp_slice(5 * d + prior.components(), 0.0f64, stack);
    let (tmp, buf) = buf.split_at_mut(prior.components());
    let (z, rest) = buf.split_at_mut(d);
    let (res, rest) = rest.split_at_mut(d);
    let (p, rest) = rest.split_at_mut(d);
    let (kp, w) = rest.split_at_mut(d);
    let (mut t, stack) = temp_mat_zeroed::<f64>(m, s, stack);
    let (mut full, _) = temp_mat_zeroed::<f64>(m, n, stack);
    let sigma2 = prior.noise_var;
    let weights = noise.map(|nz| (nz.inv_row(), nz.inv_col()));
    let weight = |a: usize, b: usize| weights.map_or(1.0, |(wr, wc)| wr[a] * wc[b]);

    // full <- W P(A c) for a core vector c; then w <- A^T full = vec(U^T full V).
    let apply_ptpa =
        |c: &[f64], w: &mut [f64], t: &mut MatMut<'_, f64>, full: &mut MatMut<'_, f64>| {
            let cm = MatRef::from_column_major_slice(c, r, s);
            gemm(t.rb_mut(), Accum::Replace, u, cm, 1.0, Par::Seq);
            gemm(
                full.rb_mut(),
                Accum::Replace,
                t.as_ref(),
                v.transpose(),
                1.0,
                Par::Seq,
            );
            for b in 0..n {
                for a in 0..m {
                    if obs.at(y, a, b) {
                        full[(a, b)] *= weight(a, b);
                    } else {
                        full[(a, b)] = 0.0;
                    }
                }
            }
            project_to_core(u, v, full.as_ref(), w, t);
        };

    // Right-hand side: S A^T W P (Y - Xbar - A mu) / sigma^2.
    apply_ptpa(&prior.mean, w, &mut t, &mut full);
    for b in 0..n {
        for a in 0..m {
            full[(a, b)] = if obs.at(y, a, b) {
                (y[(a, b)] - mean.map_or(0.0, |mm| mm[(a, b)])) * weight(a, b)
            } else {
                0.0
            };
        }
    }
    project_to_core(u, v, full.rb(), c, &mut t);
    for k in 0..d {
        c[k] = (c[k] - w[k]) / sigma2;
    }
    prior.sqrt_mul(c, res, tmp); // res = b (z starts at 0, so the residual is b)
    p.copy_from_slice(res);
    let b_norm = dot(res, res).sqrt();
    let mut rr = b_norm * b_norm;
    let mut iters = 0;
    if b_norm > 0.0 {
        while iters < CG_MAX_ITER {
            // kp = p + S A^T W P A S p / sigma^2
            prior.sqrt_mul(p, c, tmp);
            apply_ptpa(c, w, &mut t, &mut full);
            prior.sqrt_mul(w, kp, tmp);
            for k in 0..d {
                kp[k] = p[k] + kp[k] / sigma2;
            }
            let alpha = rr / dot(p, kp);
            for k in 0..d {
                z[k] += alpha * p[k];
                res[k] -= alpha * kp[k];
            }
            iters += 1;
            let rr_new = dot(res, res);
            if rr_new.sqrt() <= 1e-12 * b_norm {
                break;
            }
            let beta = rr_new / rr;
            rr = rr_new;
            for k in 0..d {
                p[k] = res[k] + beta * p[k];
            }
        }
    }
    // c = mu + S z.
    prior.sqrt_mul(z, c, tmp);
    for (ck, mk) in c[..d].iter_mut().zip(&prior.mean) {
        *ck += mk;
    }
    if c.iter().any(|x| !x.is_finite()) {
        return Err(Error::numerical("completion produced a non-finite core"));
    }
    Ok(iters)
}

/// Completes one matrix: `out = P(Y) + P^perp(Xbar + U C V^T)` with the MAP
/// core C of [`map_core`] (observations weighted by the noise law `noise`,
/// unweighted when `None`). `y` may hold anything at missing entries (NaN
/// included); `out` may not alias `y`. Never allocates. Returns the number
/// of conjugate-gradient iterations.
#[allow(clippy::too_many_arguments)]
pub fn complete_one(
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    mean: Option<MatRef<'_, f64>>,
    prior: &CorePrior,
    noise: Option<&NoiseModel>,
    y: MatRef<'_, f64>,
    obs: Observed<'_>,
    mut out: MatMut<'_, f64>,
    stack: &mut MemStack,
) -> Result<usize> {
    let (m, n) = y.shape();
    let (r, s) = (u.ncols(), v.ncols());
    let (c, stack) = temp_slice(r * s, 0.0f64, stack);
    let iters = map_core(u, v, mean, prior, noise, y, obs, c, stack)?;
    // The prediction Xbar + U C V^T, written where the entries are missing.
    let (mut t, stack) = temp_mat_zeroed::<f64>(m, s, stack);
    let (mut full, _) = temp_mat_zeroed::<f64>(m, n, stack);
    let cm = MatRef::from_column_major_slice(c, r, s);
    gemm(t.rb_mut(), Accum::Replace, u, cm, 1.0, Par::Seq);
    gemm(
        full.rb_mut(),
        Accum::Replace,
        t.rb(),
        v.transpose(),
        1.0,
        Par::Seq,
    );
    for b in 0..n {
        for a in 0..m {
            out[(a, b)] = if obs.at(y, a, b) {
                y[(a, b)]
            } else {
                let x = full[(a, b)] + mean.map_or(0.0, |mm| mm[(a, b)]);
                if !x.is_finite() {
                    return Err(Error::numerical("completion produced a non-finite value"));
                }
                x
            };
        }
    }
    Ok(iters)
}

/// `w <- vec(U^T x V)` (column-major r x s), with `t` an m x s temporary.
fn project_to_core(
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    x: MatRef<'_, f64>,
    w: &mut [f64],
    t: &mut MatMut<'_, f64>,
) {
    let (r, s) = (u.ncols(), v.ncols());
    gemm(t.rb_mut(), Accum::Replace, x, v, 1.0, Par::Seq);
    let wm = MatMut::from_column_major_slice_mut(w, r, s);
    gemm(wm, Accum::Replace, u.transpose(), t.as_ref(), 1.0, Par::Seq);
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{mcar_mask, planted_low_rank, PlantedSpec};
    use crate::reduce::LocalReducer;
    use rand_xoshiro::rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn uniform(rng: &mut Xoshiro256PlusPlus) -> f64 {
        (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    #[test]
    fn row_kernels_agree_bitwise() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        for n in 1..=41 {
            let z0: Vec<f64> = (0..n).map(|_| uniform(&mut rng)).collect();
            let p: Vec<f64> = (0..n).map(|_| uniform(&mut rng)).collect();
            let bits: Vec<u8> = (0..packed_row_bytes(n))
                .map(|_| rng.next_u64() as u8)
                .collect();
            let (mut za, mut zb) = (z0.clone(), z0.clone());
            let fa = update_row(&mut za, &p, &bits);
            let fb = update_row_generic(&mut zb, &p, &bits);
            assert_eq!(fa.to_bits(), fb.to_bits(), "n = {n}");
            let mut expect = 0.0;
            for b in 0..n {
                let observed = bits[b / 8] >> (b % 8) & 1 != 0;
                let want = if observed { z0[b] } else { p[b] };
                assert_eq!(za[b].to_bits(), want.to_bits(), "n = {n}, entry {b}");
                assert_eq!(zb[b].to_bits(), want.to_bits(), "n = {n}, entry {b}");
                if observed {
                    expect += (z0[b] - p[b]).powi(2);
                }
            }
            assert!((fa - expect).abs() <= 1e-15 * expect.max(1.0));
        }
    }

    /// The fused E-step gives the objective, the completed matrices and the
    /// blocks `Z_i V` of a direct evaluation, bitwise the same with 1 and 3
    /// workers; the sweep from its blocks and the cores from the sweep's
    /// blocks match `hooi_sweep` and `project_cores`.
    #[test]
    fn fused_round_matches_a_direct_evaluation() {
        let (count, m, n, r, s) = (7, 19, 13, 3, 2);
        let mut spec = PlantedSpec::new(count, m, n, r, s, 5);
        spec.noise = 0.1;
        let p = planted_low_rank(&spec).unwrap();
        let mask = mcar_mask(count, m, n, 0.4, 6).unwrap();
        let data = MatrixBatch::from_c_order(&p.data.data, count, m, n)
            .unwrap()
            .with_mask(&mask)
            .unwrap();
        let mut z = vec![0.0; count * m * n];
        let mut observed = vec![0u8; packed_observed_len(count, m, n)];
        initial_fill(&data, false, true, &mut z, &mut observed, &LocalReducer).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let u = Mat::from_fn(m, r, |_, _| uniform(&mut rng))
            .qr()
            .compute_thin_Q();
        let v = Mat::from_fn(n, s, |_, _| uniform(&mut rng))
            .qr()
            .compute_thin_Q();
        let ridge = 0.3;
        let par = Par::Seq;
        let mut buf = MemBuffer::new(StackReq::any_of(&[
            e_step_scratch(count, m, n, s, Par::rayon(3)),
            subspace::project_cores_scratch(m, n, r, s, par),
            subspace::hooi_sweep_scratch(count, m, n, r, s, par),
            subspace::project_cores_from_left_scratch(m, n, r, s, par),
        ]));
        let stack = MemStack::new(&mut buf);
        let mut cores = vec![0.0; count * r * s];
        let zb = MatrixBatch::from_c_order(&z, count, m, n).unwrap();
        subspace::project_cores(&zb, None, u.as_ref(), v.as_ref(), &mut cores, par, stack).unwrap();

        // Direct evaluation.
        let mut z_ref = z.clone();
        let mut f_ref = 0.0;
        for i in 0..count {
            let zi = MatRef::from_row_major_slice(&z_ref[i * m * n..(i + 1) * m * n], m, n);
            let c = u.transpose() * zi * &v / (1.0 + ridge);
            f_ref += ridge * c.squared_norm_l2();
            let pred = &u * &c * v.transpose();
            for a in 0..m {
                for b in 0..n {
                    let k = i * m * n + a * n + b;
                    if mask[k] != 0 {
                        f_ref += (z_ref[k] - pred[(a, b)]).powi(2);
                    } else {
                        z_ref[k] = pred[(a, b)];
                    }
                }
            }
        }

        let len = subspace::hooi_blocks_len(count, m, n, r, s);
        let mut results = Vec::new();
        for workers in [Par::Seq, Par::rayon(3)] {
            let mut zf = z.clone();
            let mut blocks = vec![0.0; len];
            let (f, _) = e_step(
                &mut zf,
                &observed,
                u.as_ref(),
                v.as_ref(),
                &cores,
                ridge,
                Some(&mut blocks),
                workers,
                stack,
            )
            .unwrap();
            results.push((f, zf, blocks));
        }
        let (f, zf, blocks) = &results[0];
        assert_eq!(f.to_bits(), results[1].0.to_bits());
        assert!(zf.iter().zip(&results[1].1).all(|(a, b)| a == b));
        assert!(blocks.iter().zip(&results[1].2).all(|(a, b)| a == b));
        assert!((f - f_ref).abs() <= 1e-12 * f_ref, "{f} vs {f_ref}");
        for (k, (a, b)) in zf.iter().zip(&z_ref).enumerate() {
            if mask[k] != 0 {
                assert_eq!(a.to_bits(), b.to_bits());
            } else {
                assert!((a - b).abs() <= 1e-12, "entry {k}: {a} vs {b}");
            }
        }
        for i in 0..count {
            let zi = MatRef::from_row_major_slice(&zf[i * m * n..(i + 1) * m * n], m, n);
            let y = zi * &v;
            let got = MatRef::from_row_major_slice(&blocks[i * m * s..(i + 1) * m * s], m, s);
            assert!((&y - got).norm_max() <= 1e-12 * y.norm_max());
        }

        // The sweep from the fused blocks against a plain sweep.
        let zb = MatrixBatch::from_c_order(zf, count, m, n).unwrap();
        let mut blocks = blocks.clone();
        let (mut u1, mut v1) = (u.clone(), v.clone());
        let (mut u2, mut v2) = (u.clone(), v.clone());
        let f1 = subspace::hooi_sweep_from_rows(
            &zb,
            None,
            u1.as_mut(),
            v1.as_mut(),
            &mut blocks,
            &LocalReducer,
            par,
            stack,
        )
        .unwrap();
        let f2 = subspace::hooi_sweep(
            &zb,
            None,
            u2.as_mut(),
            v2.as_mut(),
            &LocalReducer,
            par,
            stack,
        )
        .unwrap();
        assert!((f1 - f2).abs() <= 1e-12 * f2, "{f1} vs {f2}");
        let proj = |a: &Mat<f64>| a * a.transpose();
        assert!((proj(&u1) - proj(&u2)).norm_max() <= 1e-10);
        assert!((proj(&v1) - proj(&v2)).norm_max() <= 1e-10);
        let mut left = vec![0.0; count * r * s];
        let mut direct = vec![0.0; count * r * s];
        subspace::project_cores_from_left(
            &zb,
            u1.as_ref(),
            v1.as_ref(),
            &blocks,
            &mut left,
            par,
            stack,
        )
        .unwrap();
        subspace::project_cores(&zb, None, u1.as_ref(), v1.as_ref(), &mut direct, par, stack)
            .unwrap();
        let scale = direct.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        for (a, b) in left.iter().zip(&direct) {
            assert!((a - b).abs() <= 1e-12 * scale, "{a} vs {b}");
        }
    }
}
