//! The seam between the core model and the model of its leading block.
//!
//! Every kind shares the frame of the module docs of [`super`]: the mean,
//! the principal directions `Q`, and a Gaussian on the components after the
//! leading block. What differs is the law of the standardised scores
//! `y = a_{1..k} / sigma` of the `k` leading components: none (the
//! Gaussian kind, `k = 0`), a flow ([`super::flow`]) or a Gaussian mixture
//! ([`super::mixture`]). [`BlockDensity`] is all the frame needs of it.

use super::flow::FlowBlock;
use super::mixture::MixtureBlock;
use crate::error::Result;
use crate::flow::ode::SolverOptions;
use faer::dyn_stack::{MemStack, StackReq};
use faer::{MatMut, MatRef};

/// A law of the standardised leading scores `y` (`k` of them).
///
/// Contracts shared by every kind: `sample` writes row `i` from the sample
/// index `first + i` of stream `seed` alone (so results do not depend on
/// the count or chunking of a call) and uses at most the first `k` normals
/// of [`crate::rng::stream`]`(seed, index)` from the sample's own
/// stream (the Gaussian part takes the `d` after them); neither function
/// allocates; both run on the calling thread.
pub(super) trait BlockDensity {
    /// Block size `k`.
    fn dim(&self) -> usize;
    /// Standardisation scales `sigma_j` of the component scores (`k`).
    fn scale(&self) -> &[f64];
    /// Workspace of [`sample`](Self::sample) for `rows` rows.
    fn sample_scratch(&self, rows: usize, solver: &SolverOptions) -> StackReq;
    /// Draws the standardised scores of samples `first .. first + rows` of
    /// stream `seed` into `y` (`rows x k`).
    fn sample(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first: u64,
        y: MatMut<'_, f64>,
        stack: &mut MemStack,
    ) -> Result<()>;
    /// Largest number of rows [`log_prob`](Self::log_prob) should get at
    /// once (its workspace grows with them).
    fn log_prob_rows(&self, solver: &SolverOptions) -> usize;
    /// Workspace of [`log_prob`](Self::log_prob) for `rows` rows.
    fn log_prob_scratch(&self, rows: usize, solver: &SolverOptions) -> StackReq;
    /// `out[i] <- log p(y_i)`, the log-density of the standardised scores
    /// (without the `- sum_j log sigma_j` of the standardisation). `first`
    /// is the index of row 0 (for stochastic divergence estimates). A
    /// non-finite value is left for the caller to report.
    fn log_prob(
        &self,
        solver: &SolverOptions,
        first: u64,
        y: MatRef<'_, f64>,
        out: &mut [f64],
        stack: &mut MemStack,
    ) -> Result<()>;
}

/// The leading block of a fitted model, one variant per kind.
#[derive(Clone, Debug)]
pub(super) enum LeadingBlock {
    Flow(Box<FlowBlock>),
    Mixture(MixtureBlock),
}

macro_rules! with_block {
    ($block:expr, $b:ident => $body:expr) => {
        match $block {
            LeadingBlock::Flow($b) => $body,
            LeadingBlock::Mixture($b) => $body,
        }
    };
}

impl BlockDensity for LeadingBlock {
    fn dim(&self) -> usize {
        with_block!(self, b => b.dim())
    }
    fn scale(&self) -> &[f64] {
        with_block!(self, b => b.scale())
    }
    fn sample_scratch(&self, rows: usize, solver: &SolverOptions) -> StackReq {
        with_block!(self, b => b.sample_scratch(rows, solver))
    }
    fn sample(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first: u64,
        y: MatMut<'_, f64>,
        stack: &mut MemStack,
    ) -> Result<()> {
        with_block!(self, b => b.sample(solver, seed, first, y, stack))
    }
    fn log_prob_rows(&self, solver: &SolverOptions) -> usize {
        with_block!(self, b => b.log_prob_rows(solver))
    }
    fn log_prob_scratch(&self, rows: usize, solver: &SolverOptions) -> StackReq {
        with_block!(self, b => b.log_prob_scratch(rows, solver))
    }
    fn log_prob(
        &self,
        solver: &SolverOptions,
        first: u64,
        y: MatRef<'_, f64>,
        out: &mut [f64],
        stack: &mut MemStack,
    ) -> Result<()> {
        with_block!(self, b => b.log_prob(solver, first, y, out, stack))
    }
}
