//! Quality metrics for generated sets of matrices (DESIGN.md section 6).
//!
//! A real set `A = {A_1..A_NA}` and a generated set `B = {B_1..B_NB}` of
//! `m x n` matrices are compared through:
//!
//! - **Spectrum error** `SVE = ||mean_B sv(X) - mean_A sv(X)||_2 / ||mean_A sv(X)||_2`,
//!   `sv(X)` all `q = min(m, n)` singular values in descending order.
//! - **Top-k spectrum distance**: the mean over `k = 1..min(10, q)` of
//!   `W1(sv_k(A), sv_k(B)) / mean_A sv_k`, where `W1` is the 1-Wasserstein
//!   distance between the empirical distributions of the k-th singular value
//!   in the two sets. For sets of sizes `NA`, `NB` it is the integral over
//!   `t in [0, 1]` of the gap between the two quantile functions, which are
//!   step functions with breakpoints `i / NA` and `j / NB` ([`wasserstein1`]).
//!   Indices whose real mean is below `1e-9` times the first are skipped
//!   (rank-deficient data), so sets of any scale compare.
//! - **MMD²** (unbiased) with the Gaussian kernel `k_h(x, y) = exp(-||x - y||² / (2 h²))`
//!   on `vec(X)`,
//!   `MMD² = S_AA / (NA (NA-1)) + S_BB / (NB (NB-1)) - 2 S_AB / (NA NB)`
//!   with `S_AA = sum_{i != j} k(a_i, a_j)`, `S_BB` likewise and
//!   `S_AB = sum_{i, j} k(a_i, b_j)`, averaged over `h in {h0/2, h0, 2 h0}`,
//!   `h0` the median of the `||z_p - z_q||`, `p < q`, over the pooled set
//!   (the mean of the two middle values for an even number of pairs). The
//!   squared distances come from Gram matrices, `||x - y||² = <x,x> + <y,y> - 2<x,y>`
//!   (clamped at 0 against cancellation), so the cost is one
//!   `(NA + NB)² (mn) / 2` product instead of a loop over pairs. When `h0 = 0`
//!   the kernel is its limit, 1 for equal matrices and 0 otherwise.
//! - **1-NN two-sample accuracy** ([`nn_accuracy`]): every matrix `z` of the
//!   pooled set `A u B` is classified by its nearest other matrix
//!   (leave-one-out, Frobenius distance `||z - z'||`, the same Gram-matrix
//!   distances as the MMD², clamped at 0). With `c(z)` the share of the
//!   matrices at the smallest distance that come from `z`'s own set (1 or 0
//!   without ties; ties count as a uniformly random vote), the score is the
//!   *balanced* accuracy
//!   `NNA = (1/2) (mean_{a in A} c(a) + mean_{b in B} c(b))`,
//!   so unequal set sizes do not bias it: for two samples of one
//!   distribution it is `(NA + NB - 2) / (2 (NA + NB - 1))`, about 0.5, in
//!   expectation; 1 means every matrix's nearest neighbour is in its own set
//!   (fully separable); below 0.5 means the generated matrices sit on the
//!   real ones (0 when every matrix has a copy in the other set).
//! - **Distance-to-closest-record ratio** ([`dcr_ratio`]): with a third set,
//!   the training set `T` of the generator,
//!   `DCR = median_{b in B} min_{t in T} ||b - t|| / median_{a in A} min_{t in T} ||a - t||`
//!   (medians of an even count average the two middle values). Fresh data
//!   give about 1; below 1 the generated matrices are closer to the
//!   training matrices than held-out data are, which points at copying;
//!   copies of training matrices give 0. Undefined (an error) when the
//!   held-out median is 0. The distances come from blocks of the cross Gram
//!   matrix against `T` (`NEAREST_BLOCK` queries at a time).
//! - **Mean error** `||mean_B X - mean_A X|| / rms_A`, `rms_A = sqrt(mean_i ||A_i||²)`
//!   (dividing by `||mean_A X||` would be meaningless for zero-mean data).
//! - **Row and column covariance errors**: with `Xbar` the set mean,
//!   `R = (1/N) sum (X - Xbar)(X - Xbar)^T` (`m x m`) and
//!   `K = (1/N) sum (X - Xbar)^T (X - Xbar)` (`n x n`);
//!   errors `||R_B - R_A|| / ||R_A||` and `||K_B - K_A|| / ||K_A||`.
//!
//! and, for fitted geometries and completions:
//!
//! - **Subspace distance** `||U U^T - U* U*^T|| / sqrt(r + r*)` ([`subspace_distance`]),
//!   which is the usual `/ sqrt(2r)` when the ranks agree;
//! - **Containment** `||(I - U U^T) U*|| / sqrt(r*)` ([`containment`]);
//! - **Completion error** `||P^perp(Zhat - X)|| / ||P^perp(X)||` on the
//!   entries that were not observed ([`completion_error`]).
//!
//! Norms of matrices are Frobenius norms. [`evaluate`] computes every
//! set-versus-set metric at once and shares the singular values between the
//! two spectral metrics and the Gram matrices between the MMD² and the 1-NN
//! accuracy; [`evaluate_with_train`] adds the closest-record ratio. Metrics are not a hot path and allocate freely; the
//! work over samples runs on up to `threads` threads in fixed chunks, so the
//! results do not depend on the thread count.
//!
//! # Files
//!
//! One file per job: argument and result checks (`check.rs`), the chunked
//! work over samples (`chunks.rs`), singular spectra (`spectrum.rs`), the
//! 1-Wasserstein distance (`wasserstein.rs`), `vec(X)` views and Gram
//! matrices (`grams.rs`), the MMD² (`mmd.rs`), the 1-NN accuracy and the
//! closest-record ratio (`nearest.rs`), the mean and covariance errors
//! (`moments.rs`), the subspace distance and containment (`subspace.rs`)
//! and the completion error (`completion.rs`); this file holds the options,
//! the results and [`evaluate`] with [`Reference`].
//!
//! [`wasserstein1`]: crate::metrics::wasserstein1
//! [`nn_accuracy`]: crate::metrics::nn_accuracy
//! [`dcr_ratio`]: crate::metrics::dcr_ratio
//! [`subspace_distance`]: crate::metrics::subspace_distance
//! [`containment`]: crate::metrics::containment
//! [`completion_error`]: crate::metrics::completion_error
//! [`evaluate`]: crate::metrics::evaluate
//! [`evaluate_with_train`]: crate::metrics::evaluate_with_train
//! [`Reference`]: crate::metrics::Reference

mod check;
mod chunks;
mod completion;
mod grams;
mod mmd;
mod moments;
mod nearest;
mod spectrum;
mod subspace;
mod wasserstein;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use completion::completion_error;
pub use mmd::mmd2;
pub use moments::{covariance_errors, covariances, mean_error};
pub use nearest::{dcr_ratio, nn_accuracy};
pub use spectrum::{singular_values, spectrum_error, topk_spectrum_distance};
pub use subspace::{containment, subspace_distance};
pub use wasserstein::wasserstein1;

use crate::batch::MatrixBatch;
use crate::error::Result;
use crate::numerics::{par_for_threads, resolve_threads};
use check::{check_pair, check_set, check_top_k, check_train, finite};
use faer::Mat;
use grams::Grams;
use mmd::mmd_from_grams;
use moments::{covariance_errors_from, mean_error_from, moments_impl, Moments};
use nearest::{dcr_denominator, median_closest, nn_from_grams};
use spectrum::{singular_values_impl, sve_from_spectra, topk_from_spectra};

/// Singular values whose mean in the real set is below this fraction of the
/// first are skipped by the top-k spectrum distance.
pub const TOPK_RELATIVE_CUTOFF: f64 = 1e-9;

/// Options of [`evaluate`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EvalOptions {
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Number of leading singular values in the top-k spectrum distance
    /// (default 10; capped at `min(m, n)`).
    pub top_k: usize,
    /// Compute the pairwise metrics, the MMD² and the 1-NN accuracy
    /// (default true). They are the expensive ones and share one Gram
    /// matrix of the pooled set.
    pub mmd: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            top_k: 10,
            mmd: true,
        }
    }
}

/// The MMD² estimate and its bandwidths.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Mmd {
    /// Unbiased MMD² averaged over the three bandwidths.
    pub mmd2: f64,
    /// The median pairwise distance `h0` of the pooled set.
    pub h0: f64,
    /// Unbiased MMD² at `h0 / 2`, `h0` and `2 h0`.
    pub per_bandwidth: [f64; 3],
}

/// Every set-versus-set metric of a generated set against a real one.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Relative error of the mean singular-value spectrum.
    pub sve: f64,
    /// Mean relative 1-Wasserstein distance of the leading singular values.
    pub topk_w1: f64,
    /// MMD² with the median-heuristic Gaussian kernels (`None` when disabled).
    pub mmd: Option<Mmd>,
    /// `||mean_B - mean_A|| / rms_A`.
    pub mean_error: f64,
    /// Relative Frobenius error of the row covariance (`m x m`).
    pub rowcov_rel_error: f64,
    /// Relative Frobenius error of the column covariance (`n x n`).
    pub colcov_rel_error: f64,
    /// Balanced leave-one-out 1-NN two-sample accuracy, 0.5 ideal (`None`
    /// when the pairwise metrics are disabled).
    pub nn_accuracy: Option<f64>,
    /// Distance-to-closest-record ratio, below 1 for copying (`None`
    /// without a training set: [`evaluate_with_train`]).
    pub dcr_ratio: Option<f64>,
}

/// Every set-versus-set metric of `generated` against `real`, sharing the
/// singular values between the spectral metrics. Both sets need at least 2
/// matrices when the pairwise metrics are computed (the unbiased MMD² needs
/// pairs), at least 1 otherwise. The closest-record ratio needs the training
/// set and is `None` here: see [`evaluate_with_train`].
pub fn evaluate(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    opts: &EvalOptions,
) -> Result<Metrics> {
    evaluate_with_train(real, generated, None, opts)
}

/// [`evaluate`] with the training set the generator was fitted on, when
/// given: then the metrics include the distance-to-closest-record ratio
/// ([`dcr_ratio`]), otherwise it is `None`. `train` holds complete, finite
/// matrices of the size of `real`, at least 1.
pub fn evaluate_with_train(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    train: Option<&MatrixBatch<'_>>,
    opts: &EvalOptions,
) -> Result<Metrics> {
    check_top_k(opts.top_k)?;
    check_pair(real, generated, if opts.mmd { 2 } else { 1 })?;
    if let Some(t) = train {
        check_train(real, t)?;
    }
    let mut r = Reference::new_checked(real, opts)?;
    if let Some(t) = train {
        r = r.with_train_checked(t, opts)?;
    }
    r.evaluate_checked(generated, opts)
}

/// A real set with its singular values and moments computed once, for
/// scoring many generated sets against it (a benchmark scores every method
/// against one test set): [`Reference::evaluate`] gives exactly what
/// [`evaluate`] gives, without recomputing the real set's share.
pub struct Reference<'a> {
    real: MatrixBatch<'a>,
    spectra: Mat<f64>,
    moments: Moments,
    /// The training set and the held-out median closest-record distance.
    train: Option<(MatrixBatch<'a>, f64)>,
}

impl<'a> Reference<'a> {
    /// Precomputes the statistics of `real` (at least 2 complete, finite
    /// matrices; `opts.threads` workers).
    pub fn new(real: &MatrixBatch<'a>, opts: &EvalOptions) -> Result<Self> {
        check_set(real, "real", 2)?;
        real.check_finite("real")?;
        Self::new_checked(real, opts)
    }

    fn new_checked(real: &MatrixBatch<'a>, opts: &EvalOptions) -> Result<Self> {
        let threads = resolve_threads(opts.threads);
        Ok(Reference {
            real: *real,
            spectra: singular_values_impl(real, threads)?,
            moments: moments_impl(real, threads)?,
            train: None,
        })
    }

    /// Adds the training set of the generators to be scored, so that
    /// [`Reference::evaluate`] includes the closest-record ratio; the
    /// held-out median (real to training set) is computed here, once.
    /// `train` holds complete, finite matrices of the size of the real set.
    pub fn with_train(self, train: &MatrixBatch<'a>, opts: &EvalOptions) -> Result<Self> {
        check_train(&self.real, train)?;
        self.with_train_checked(train, opts)
    }

    fn with_train_checked(mut self, train: &MatrixBatch<'a>, opts: &EvalOptions) -> Result<Self> {
        let par = par_for_threads(resolve_threads(opts.threads));
        let den = dcr_denominator(&self.real, train, par)?;
        self.train = Some((*train, den));
        Ok(self)
    }

    /// Every metric of `generated` against the real set, as [`evaluate`].
    pub fn evaluate(&self, generated: &MatrixBatch<'_>, opts: &EvalOptions) -> Result<Metrics> {
        check_top_k(opts.top_k)?;
        check_pair(&self.real, generated, if opts.mmd { 2 } else { 1 })?;
        self.evaluate_checked(generated, opts)
    }

    fn evaluate_checked(&self, generated: &MatrixBatch<'_>, opts: &EvalOptions) -> Result<Metrics> {
        let threads = resolve_threads(opts.threads);
        let sa = self.spectra.as_ref();
        let sb = singular_values_impl(generated, threads)?;
        let sve = sve_from_spectra(sa, sb.as_ref())?;
        let topk_w1 = topk_from_spectra(sa, sb.as_ref(), opts.top_k)?;
        let a = &self.moments;
        let b = moments_impl(generated, threads)?;
        let mean_error = mean_error_from(a, b.mean.as_ref())?;
        let (rowcov_rel_error, colcov_rel_error) = covariance_errors_from(a, &b)?;
        let par = par_for_threads(threads);
        let (mmd, nn_accuracy) = if opts.mmd {
            let g = Grams::new(&self.real, generated, par);
            (Some(mmd_from_grams(&g)?), Some(nn_from_grams(&g, threads)?))
        } else {
            (None, None)
        };
        let dcr_ratio = match &self.train {
            Some((train, den)) => Some(finite(
                median_closest(generated, train, par)? / den,
                "the closest-record ratio",
            )?),
            None => None,
        };
        Ok(Metrics {
            sve,
            topk_w1,
            mmd,
            mean_error,
            rowcov_rel_error,
            colcov_rel_error,
            nn_accuracy,
            dcr_ratio,
        })
    }
}
