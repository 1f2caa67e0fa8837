//! The core model of DESIGN.md section 5: a law of the leading principal
//! components of the cores (a flow or a Gaussian mixture) and a Gaussian on
//! the rest, or a Gaussian alone.
//!
//! Layout: [`options`](crate::core_model::FlowOptions) and the kinds; [`flow_block`] (the
//! energy and noise-floor rule); `leading` (the seam every leading-block
//! law implements: sample, log-density, their workspaces); `flow` and
//! `mixture` (the two laws and their fits); `fit` (principal components,
//! split, candidates, choice, refit); `select` (held-out evidence);
//! `sample` and `log_prob` (the frame around the leading block).
//!
//! Input: the training cores `c_i = vec(C_i)` as the rows of an `N x d`
//! matrix.
//!
//! Split and refit. A seeded `holdout_fraction` of the rows is held out;
//! the candidate kinds are fitted on the other `N_t` rows and scored on the
//! held-out ones, and the chosen kind is then fitted again on every row (so
//! a forced flow with a hold-out trains twice; `holdout_fraction = 0` fits
//! once and reports no scores).
//!
//! Principal components. The mean `mu`, the principal directions `Q`
//! (`d x q`, orthonormal columns) and variances `lambda_1 >= ... >=
//! lambda_q >= 0` of the training cores, from [`crate::pca`]: `q = d` when
//! `d <= N_t`, else `q = N_t` (the covariance has rank at most `N_t - 1`),
//! so nothing of size `d x d` is formed when `N_t < d`. Every core is
//! `c = mu + Q a + w`, `a = Q^T (c - mu)` its PC scores and `w` its part
//! outside the span of `Q` (zero for the training cores). The flow block is
//! the smallest leading set of components holding `flow_energy` of the total
//! variance `trace(Cov)`, ended earlier at a noise floor (the first gap of
//! `flow_noise_gap` between consecutive variances with at most 5 % of the
//! variance below it; [`flow_block`]), `k` components, at least 1, at most
//! `flow_max_dim` when that is nonzero. The canonical bases spread a few
//! directions of variation over many core coordinates; the components gather them again
//! (measured on the synthetic sets: 8 instead of 39 on blobs, 12 instead of
//! 32-35 on waves).
//!
//! Choice. `GAUSSIAN`, `MIXTURE` or `FLOW` as forced. `AUTO`: the
//! candidates, from the simplest, are the Gaussian kind (the representation
//! below with `k = 0`), the mixture kind when BIC prefers a mixture to the
//! Gaussian on the split (its block size `k_m <= k` and number of
//! components chosen by BIC, `mixture` module docs), and the flow when
//! `N_t >= 3 k`. Each is fitted on the split and scored on the held-out
//! cores (`select::heldout_scores`); a candidate replaces the current
//! choice when its held-out log-likelihood per core exceeds the current
//! one's by more than two standard errors of the paired difference and by
//! at least [`FLOW_GAIN_PER_DIM`]` x` its block size in nats. Without a
//! hold-out, `AUTO` is the flow when `N >= 3 k`, else the mixture when BIC
//! prefers one, else the Gaussian. The mixture kind is the frame below with
//! the mixture's law of the standardised leading scores in place of the
//! flow's (`mixture` module docs). The flow kind:
//! - flow block: the standardised scores `x1_j = a_j / sigma_j`,
//!   `sigma_j = sqrt(lambda_j)` (floored at `1e-12 sigma_1`), `j <= k`; a
//!   flow-matching network trained on the rows of `x1`, then moment
//!   matching: draw `max(moment_samples, 4 k)` flow samples `z` (fixed
//!   stream of the seed), drop those with `||z||^2 > 10 x` the median, let
//!   `m`, `S` be the mean and covariance of the rest and `R` the covariance
//!   of `x1`, and store `A = R^(1/2) S^(-1/2)` (symmetric square roots by
//!   eigendecomposition, eigenvalues floored at `1e-12 x` the largest). A
//!   flow sample `z` gives the scores `a_flow = sigma * A (z - m)`;
//! - Gaussian block (the other `d - k` directions): the remaining
//!   components, independent `N(0, lambda_j + delta)` (their sample
//!   covariance is diagonal and they are uncorrelated with the flow block),
//!   and isotropic `N(0, delta)` in the `d - q` directions the components do
//!   not span; below a noise floor the `lambda_j` are capped at the noise
//!   variance per entry when the caller knows it
//!   ([`CoreModel::fit_with_reducer`]). `delta = 1e-6 x` the block's mean
//!   variance,
//!   `(trace - sum_{j <= k} lambda_j) / (d - k)`, and at least
//!   `1e-12 x trace / d`. With `k = 0` this is `N(mu, Cov + delta I)`, the
//!   full-covariance Gaussian with the ridge of section 5, stored as
//!   `d x q` numbers.
//!
//! Log-density (flow kind), for `y = a_flow / sigma`, `z = A^-1 y + m`; `Q`
//! is orthogonal, so the rotation has Jacobian 1:
//! `log p(c) = log p_flow(z) - log|det A| - sum_{j <= k} log sigma_j
//!             + sum_{j > k} log N(a_j; 0, lambda_j + delta)
//!             - (d - q) log(2 pi delta) / 2 - ||w||^2 / (2 delta)`,
//! with `log p_flow` from [`likelihood`] (the Gaussian kind has only the
//! last two lines, with `k = 0`).
//!
//! Scores (with a hold-out): the held-out mean log-likelihood of each
//! candidate, a flow's per-core value floored at the Gaussian's minus
//! [`HELDOUT_FLOOR_NATS`] (`select::heldout_scores`), and for `AUTO` the MMD^2
//! of each one's draws to the held-out cores in the leading block
//! (`select::block_mmd`, a sample-based check reported beside the choice).
//! Reported in [`CoreModelInfo`].
//!
//! Gaussian parts. With fewer than [`SHRINK_BELOW_SAMPLES_PER_DIM`] cores per
//! dimension of a Gaussian part (all `d` for the Gaussian kind, the `d - k`
//! after the flow block), its covariance is shrunk toward its mean variance
//! by the Ledoit–Wolf intensity ([`crate::pca::shrinkage_intensity`]).
//!
//! Sampling: sample `j` of a call is number `first_index + j` of stream
//! `seed`; its normals (`k` for the flow, then `d` for the Gaussian block
//! when `k < d`) come from [`rng::stream`]`(seed, first_index + j)`. The
//! Gaussian block takes `e ~ N(0, I_d)`, `b = Q^T e`, and
//! `c = mu + sqrt(delta) e + Q g` with `g_j = a_flow,j - sqrt(delta) b_j`
//! (`j <= k`) and `g_j = (sqrt(lambda_j + delta) - sqrt(delta)) b_j`
//! (`j > k`): the complement part `sqrt(delta) (e - Q b)` is independent of
//! `b`. Every product is row-wise, so the result depends only on
//! `(seed, index)` and the model, not on the count or chunking of the call.
//! Support. A flow draw whose standardised scores `y = A (z - m)` lie
//! outside the ball of radius `support_radius` ([`support_radius()`], about
//! 1.25-1.5x the largest training norm) is drawn again from
//! [`rng::redraw_stream`]`(seed, index, attempt)`, attempts 1, 2, ... up to
//! [`FLOW_DRAWS`] draws in all, after which sampling fails with
//! `ErrorKind::Numerical`; a draw whose solve fails numerically counts as
//! outside. The rule depends only on `(seed, index)`, so sampling stays
//! deterministic and independent of the batch split. Log-densities are
//! those of the untruncated flow (the truncated mass is below 1e-3 on every
//! model measured).
//! Sampling and log-densities run on the calling thread and never allocate;
//! their workspaces are `O(rows x (d + q))`, with the `d`-vector
//! temporaries processed in row blocks of at most `2^18` values.
//!
//! [`flow_block`]: crate::core_model::flow_block
//! [`FLOW_GAIN_PER_DIM`]: crate::core_model::FLOW_GAIN_PER_DIM
//! [`CoreModel::fit_with_reducer`]: crate::core_model::CoreModel::fit_with_reducer
//! [`likelihood`]: crate::flow::likelihood
//! [`HELDOUT_FLOOR_NATS`]: crate::core_model::HELDOUT_FLOOR_NATS
//! [`CoreModelInfo`]: crate::core_model::CoreModelInfo
//! [`SHRINK_BELOW_SAMPLES_PER_DIM`]: crate::core_model::SHRINK_BELOW_SAMPLES_PER_DIM
//! [`support_radius()`]: crate::core_model::support_radius()
//! [`FLOW_DRAWS`]: crate::core_model::FLOW_DRAWS

mod block;
mod fit;
mod flow;
mod leading;
mod log_prob;
mod mixture;
mod options;
mod parts;
mod posterior;
mod sample;
mod select;
#[cfg(test)]
mod tests;

pub use block::{flow_block, BlockChoice, NOISE_TAIL_MAX};
pub use fit::SHRINK_BELOW_SAMPLES_PER_DIM;
pub use flow::{support_radius, FLOW_DRAWS, SUPPORT_MARGIN};
pub use mixture::{MixtureParts, MAX_COMPONENTS};
pub use options::{CoreModelChoice, CoreModelKind, FlowOptions, Precision};
pub use parts::{CoreModelInfo, CoreModelParts, FlowParts, NetParams};
pub use posterior::IMPUTE_PROPOSALS;
pub use select::{FLOW_GAIN_PER_DIM, HELDOUT_FLOOR_NATS, SELECTION_SAMPLES};

use crate::error::{Error, ErrorKind, Result};
use crate::flow::network::NetConfig;
use faer::{Mat, MatMut, MatRef};
use flow::FlowBlock;
use leading::{BlockDensity, LeadingBlock};
use mixture::MixtureBlock;

/// A fitted core model. Immutable; share it between threads freely (each
/// thread with its own workspace).
#[derive(Clone, Debug)]
pub struct CoreModel {
    dim: usize,
    info: CoreModelInfo,
    mean: Vec<f64>,
    /// `Q`, `d x q`.
    basis: Mat<f64>,
    /// `Q^T`, `q x d` (for row-wise products with `Q^T`).
    basis_t: Mat<f64>,
    variances: Vec<f64>,
    ridge: f64,
    /// The leading block's law (flow or mixture kind).
    block: Option<LeadingBlock>,
    /// `sum_j log sigma_j` of the leading block (its standardisation).
    log_scale: f64,
    /// `sqrt(delta)`.
    sqrt_ridge: f64,
    /// `sqrt(lambda_j + delta) - sqrt(delta)` for `j >= k` (0 below `k`).
    gain: Vec<f64>,
    /// `1 / (lambda_j + delta)` for `j >= k` (0 below `k`).
    precision: Vec<f64>,
    /// `-((d - k) log(2 pi) + sum_{j >= k} log(lambda_j + delta)
    /// + (d - q) log delta) / 2`, the log normaliser of the Gaussian block.
    gauss_const: f64,
}

/// Rows per chunk when sampling.
const SAMPLE_CHUNK: usize = 256;
/// Values per row block of the `d`-vector temporaries of the Gaussian
/// block (2 MiB), so that the basis is streamed once per block.
const GAUSS_VALUES: usize = 1 << 18;

fn format_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Format, msg)
}

/// A column-major copy of `m`.
fn flatten(m: MatRef<'_, f64>) -> Vec<f64> {
    (0..m.ncols())
        .flat_map(|j| (0..m.nrows()).map(move |i| m[(i, j)]))
        .collect()
}

impl CoreModel {
    /// Rebuilds a model from its parts (checks every size and value; an
    /// inconsistency is `ErrorKind::Format`).
    pub fn from_parts(parts: CoreModelParts) -> Result<Self> {
        let d = parts.dim;
        if d == 0 {
            return Err(format_err("core model: dimension is 0"));
        }
        let q = parts.variances.len();
        if q > d || parts.mean.len() != d || Some(parts.basis.len()) != d.checked_mul(q) {
            return Err(format_err(
                "core model: mean, basis and variance sizes are inconsistent",
            ));
        }
        if parts
            .mean
            .iter()
            .chain(&parts.basis)
            .chain(&parts.variances)
            .any(|v| !v.is_finite())
        {
            return Err(format_err(
                "core model: a non-finite mean, basis or variance",
            ));
        }
        if parts.variances.iter().any(|v| *v < 0.0) {
            return Err(format_err("core model: a negative component variance"));
        }
        if !(parts.ridge.is_finite() && parts.ridge > 0.0) {
            return Err(format_err(
                "core model: the ridge must be finite and positive",
            ));
        }
        let basis = MatRef::from_column_major_slice(&parts.basis, d, q).to_owned();
        for j in 0..q {
            let norm2 = basis.col(j).squared_norm_l2();
            if (norm2 - 1.0).abs() > 1e-8 {
                return Err(format_err(format!(
                    "core model: basis column {j} does not have unit norm"
                )));
            }
        }
        let block = match (parts.info.kind, parts.flow, parts.mixture) {
            (CoreModelKind::Gaussian, None, None) => None,
            (CoreModelKind::Flow, Some(f), None) => {
                Some(LeadingBlock::Flow(Box::new(FlowBlock::from_parts(f)?)))
            }
            (CoreModelKind::Mixture, None, Some(m)) => {
                Some(LeadingBlock::Mixture(MixtureBlock::from_parts(m)?))
            }
            (kind, _, _) => {
                return Err(format_err(format!(
                    "core model: the leading block does not match the kind {kind:?}"
                )))
            }
        };
        if parts.info.dim != d {
            return Err(format_err(
                "core model: info.dim differs from the dimension",
            ));
        }
        let k = block.as_ref().map_or(0, |f| f.dim());
        if k > q {
            return Err(format_err(
                "core model: the leading block has more components than the basis",
            ));
        }
        let log_scale: f64 = block
            .as_ref()
            .map_or(0.0, |f| f.scale().iter().map(|s| s.ln()).sum());
        let delta = parts.ridge;
        let sqrt_ridge = delta.sqrt();
        let mut gain = vec![0.0; q];
        let mut precision = vec![0.0; q];
        let mut log_det = (d - q) as f64 * delta.ln();
        for j in k..q {
            let v = parts.variances[j] + delta;
            gain[j] = v.sqrt() - sqrt_ridge;
            precision[j] = 1.0 / v;
            log_det += v.ln();
        }
        let gauss_const = -0.5 * ((d - k) as f64 * (2.0 * core::f64::consts::PI).ln() + log_det);
        if !gauss_const.is_finite() {
            return Err(format_err("core model: the Gaussian block is degenerate"));
        }
        Ok(Self {
            dim: d,
            info: parts.info,
            mean: parts.mean,
            basis_t: basis.transpose().to_owned(),
            basis,
            variances: parts.variances,
            ridge: delta,
            block,
            log_scale,
            sqrt_ridge,
            gain,
            precision,
            gauss_const,
        })
    }

    /// All numbers of the model (see [`CoreModelParts`]).
    pub fn to_parts(&self) -> CoreModelParts {
        CoreModelParts {
            dim: self.dim,
            info: self.info,
            mean: self.mean.clone(),
            basis: flatten(self.basis.as_ref()),
            variances: self.variances.clone(),
            ridge: self.ridge,
            flow: match &self.block {
                Some(LeadingBlock::Flow(f)) => Some(f.parts.clone()),
                _ => None,
            },
            mixture: match &self.block {
                Some(LeadingBlock::Mixture(m)) => Some(m.parts.clone()),
                _ => None,
            },
        }
    }

    /// Core dimension `d`.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number `q` of principal components stored (`min(d, N_t)`).
    pub fn components(&self) -> usize {
        self.basis.ncols()
    }
    /// Number of principal components modelled by the flow (0 for the
    /// other kinds).
    pub fn flow_dim(&self) -> usize {
        match &self.block {
            Some(LeadingBlock::Flow(f)) => f.dim(),
            _ => 0,
        }
    }
    /// Number `k` of leading principal components with a non-Gaussian law
    /// (the flow's or the mixture's block; 0 for the Gaussian kind).
    pub fn block_dim(&self) -> usize {
        self.block.as_ref().map_or(0, |f| f.dim())
    }
    /// The fitted kind.
    pub fn kind(&self) -> CoreModelKind {
        self.info.kind
    }
    /// Fit summary and diagnostics.
    pub fn info(&self) -> CoreModelInfo {
        self.info
    }
    /// The velocity network's architecture (flow kind only).
    pub fn net_config(&self) -> Option<NetConfig> {
        match &self.block {
            Some(LeadingBlock::Flow(f)) => Some(f.config()),
            _ => None,
        }
    }

    /// Whether the Gaussian block is non-empty (`k < d`).
    fn has_gaussian(&self) -> bool {
        self.block_dim() < self.dim
    }

    /// Rows per block of the `d`-vector temporaries for `b` rows.
    fn gauss_rows(&self, b: usize) -> usize {
        (GAUSS_VALUES / self.dim).clamp(1, b.max(1))
    }
}

crate::flow::real::multiversion! {
    /// `out = x M` row by row with a fixed summation order (ascending inner
    /// index, no fused multiply-add), so each output row depends only on the
    /// same row of `x` whatever the number of rows. With `upper`, `M` is
    /// upper triangular and only `j <= c` is summed for column `c`. All
    /// matrices have unit row stride.
    fn rowwise_matmul(out: MatMut<'_, f64>, x: MatRef<'_, f64>, m: MatRef<'_, f64>, upper: bool) {
        use crate::flow::real::{col_mut, col_ref};
        let mut out = out;
        let n = x.ncols();
        for c in 0..m.ncols() {
            let o = col_mut(&mut out, c);
            o.fill(0.0);
            let end = if upper { (c + 1).min(n) } else { n };
            for j in 0..end {
                let w = m[(j, c)];
                let xc = col_ref(&x, j);
                for (ov, xv) in o.iter_mut().zip(xc) {
                    *ov += *xv * w;
                }
            }
        }
    }
}
