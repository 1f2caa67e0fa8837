//! Every number of a fitted core model, for persistence.

use super::mixture::MixtureParts;
use super::options::{CoreModelChoice, CoreModelKind};

/// What was fitted, with diagnostics.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct CoreModelInfo {
    /// The fitted kind.
    pub kind: CoreModelKind,
    /// The requested choice.
    pub requested: CoreModelChoice,
    /// Core dimension `d`.
    pub dim: usize,
    /// Flow block size `k` (leading principal components) given by the
    /// energy rule (also when the Gaussian was chosen).
    pub flow_block: usize,
    /// Fraction of the training core variance in the flow block.
    pub flow_energy: f64,
    /// Cores the model was fitted on (`N_t`).
    pub train_count: usize,
    /// Cores held out for the diagnostics.
    pub holdout_count: usize,
    /// Mean training loss over the last 100 steps (NaN without a flow).
    pub final_loss: f64,
    /// Held-out mean log-likelihood of the fitted flow model (NaN for the
    /// Gaussian kind or without a hold-out; minus infinity when the flow
    /// gives some held-out core no finite density, i.e. it has concentrated
    /// on a lower-dimensional set).
    pub heldout_loglik_flow: f64,
    /// Held-out mean log-likelihood of the Gaussian kind fitted on the same
    /// training cores (NaN without a hold-out).
    pub heldout_loglik_gaussian: f64,
    /// AUTO's sample-based check for the Gaussian kind: the MMD^2 between
    /// its draws and the held-out cores in the leading block (NaN when AUTO
    /// had no choice to make).
    pub heldout_mmd_gaussian: f64,
    /// The same for the flow kind.
    pub heldout_mmd_flow: f64,
    /// Held-out mean log-likelihood of the mixture kind (NaN when no
    /// mixture was fitted or without a hold-out).
    pub heldout_loglik_mixture: f64,
    /// The MMD^2 check of the mixture kind (see `heldout_mmd_gaussian`).
    pub heldout_mmd_mixture: f64,
    /// Block size `k` of the mixture selected by BIC (0 when none was).
    pub mixture_block: usize,
    /// Number of its components `K` (0 when none was selected).
    pub mixture_components: usize,
    /// Optimiser steps whose weights the flow holds: on the split, the step
    /// of the best held-out flow-matching loss; in the refit on every core,
    /// that many steps (0 without a flow).
    pub flow_train_steps: usize,
}

/// Network parameters in their precision.
#[derive(Clone, Debug, PartialEq)]
pub enum NetParams {
    /// `f32` parameters.
    F32(Vec<f32>),
    /// `f64` parameters.
    F64(Vec<f64>),
}

/// The flow block as plain numbers: a flow on the standardised scores of the
/// first `k = scale.len()` principal components.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowParts {
    /// Standardisation scales `sigma_j` of the component scores (positive).
    pub scale: Vec<f64>,
    /// Network architecture.
    pub hidden: usize,
    /// Network depth.
    pub layers: usize,
    /// Network time frequencies.
    pub time_freqs: usize,
    /// Network parameters (EMA weights), layout of [`NetConfig::layer`](crate::flow::NetConfig::layer).
    pub params: NetParams,
    /// Moment-matching shift `m` (`k`).
    pub mm_shift: Vec<f64>,
    /// Moment-matching matrix `A` (`k x k`, column-major).
    pub mm_matrix: Vec<f64>,
    /// Radius of the region the training data justify, in standardised
    /// scores `y = A (z - m)`: a flow draw with `||y||` above it is drawn
    /// again ([`support_radius`](super::support_radius())).
    pub support_radius: f64,
}

/// Every number of a fitted [`CoreModel`](super::CoreModel), for persistence:
/// `CoreModel::from_parts(model.to_parts())` is the same model bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreModelParts {
    /// Core dimension `d`.
    pub dim: usize,
    /// Fit summary and diagnostics.
    pub info: CoreModelInfo,
    /// Mean `mu` of the training cores (`d`).
    pub mean: Vec<f64>,
    /// Principal directions `Q` (`d x q`, column-major, orthonormal columns,
    /// by descending variance), `q <= d`.
    pub basis: Vec<f64>,
    /// Variances `lambda_j >= 0` of the component scores (`q`).
    pub variances: Vec<f64>,
    /// Ridge `delta > 0` of the Gaussian block.
    pub ridge: f64,
    /// The flow on the first `k` components (flow kind only).
    pub flow: Option<FlowParts>,
    /// The Gaussian mixture on the first `k` components (mixture kind
    /// only).
    pub mixture: Option<MixtureParts>,
}
