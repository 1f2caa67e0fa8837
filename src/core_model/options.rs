//! Options of the core-model fit ([`FlowOptions`]) and the kinds.

use crate::error::{Error, Result};
use crate::flow::ode::SolverOptions;
use crate::flow::train::{Coupling, TrainOptions};

/// Which core model to fit.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum CoreModelChoice {
    /// The kind with the best held-out log-likelihood, a more complex kind
    /// only by a clear margin (module docs of [`crate::core_model`])
    /// (default).
    #[default]
    Auto,
    /// Always the flow (+ Gaussian rest block).
    Flow,
    /// Always the full-covariance Gaussian.
    Gaussian,
    /// Always the Gaussian mixture on a leading block (+ Gaussian rest
    /// block).
    Mixture,
}

/// The kind of a fitted core model.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CoreModelKind {
    /// Flow on the leading coordinates, Gaussian on the rest.
    Flow,
    /// Full-covariance Gaussian on all coordinates.
    Gaussian,
    /// Gaussian mixture on the leading coordinates, Gaussian on the rest.
    Mixture,
}

/// Precision of the velocity network.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// `f32` (default).
    #[default]
    F32,
    /// `f64`.
    F64,
}

/// Options of [`CoreModel::fit`](super::CoreModel::fit) (defaults from DESIGN.md section 5).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct FlowOptions {
    /// Hidden width `H` (default 256).
    pub hidden: usize,
    /// Hidden layers `L` (default 3).
    pub layers: usize,
    /// Time frequencies (default 16).
    pub time_freqs: usize,
    /// Fraction of the core variance in the flow block, in `(0, 1]`
    /// (default 0.999).
    pub flow_energy: f64,
    /// Maximum flow block size, 0 = no cap (default 0).
    pub flow_max_dim: usize,
    /// Ratio of consecutive component variances taken as the noise floor:
    /// the flow block ends at the first gap `lambda_j >= flow_noise_gap x
    /// lambda_(j+1)` inside the energy block below which at most
    /// [`NOISE_TAIL_MAX`](super::NOISE_TAIL_MAX) of the variance lies; 0 = the energy rule alone;
    /// otherwise at least 1 (default 10).
    pub flow_noise_gap: f64,
    /// Optimiser steps (default 4000; must be > 0 unless the model is forced
    /// Gaussian).
    pub steps: usize,
    /// Batch size (default 128).
    pub batch_size: usize,
    /// Peak learning rate (default 1e-2).
    pub learning_rate: f64,
    /// Linear warm-up steps (default 200, at most half the steps).
    pub warmup_steps: usize,
    /// Decoupled weight decay (default 0).
    pub weight_decay: f64,
    /// Cap of the weight EMA decay, in `[0, 1)` (default 0.999).
    pub ema_decay: f64,
    /// Gradient-norm clipping, 0 = off (default 0).
    pub clip_norm: f64,
    /// Noise-data pairing (default independent).
    pub coupling: Coupling,
    /// Seed of every random choice of the fit.
    pub seed: u64,
    /// Core model selection (default AUTO).
    pub core_model: CoreModelChoice,
    /// Fraction of the cores held out for diagnostics, in `[0, 0.9]`
    /// (default 0.2). The model is fitted on the rest.
    pub holdout_fraction: f64,
    /// Moment matching of the flow block (default on).
    pub moment_matching: bool,
    /// Flow samples drawn for moment matching (default 4000; at least `4 k`
    /// are drawn).
    pub moment_samples: usize,
    /// Network precision (default `f32`).
    pub precision: Precision,
    /// Solver for moment matching and held-out log-likelihoods (default RK4,
    /// 16 steps, exact divergence).
    pub solver: SolverOptions,
    /// Worker threads for training, 0 = all cores (default 0).
    pub threads: usize,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self {
            hidden: 256,
            layers: 3,
            time_freqs: 16,
            flow_energy: 0.999,
            flow_max_dim: 0,
            flow_noise_gap: 10.0,
            steps: 4000,
            batch_size: 128,
            learning_rate: 1e-2,
            warmup_steps: 200,
            weight_decay: 0.0,
            ema_decay: 0.999,
            clip_norm: 0.0,
            coupling: Coupling::Independent,
            seed: 0,
            core_model: CoreModelChoice::Auto,
            holdout_fraction: 0.2,
            moment_matching: true,
            moment_samples: 4000,
            precision: Precision::F32,
            solver: SolverOptions::default(),
            threads: 0,
        }
    }
}

const MAX_SIZE: usize = 1 << 20;

impl FlowOptions {
    /// Checks every field; the error names the first invalid one as
    /// `opts.<field>`.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("time_freqs", self.time_freqs),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("opts.{name}: must be > 0")));
            }
            if v > MAX_SIZE {
                return Err(Error::invalid(format!(
                    "opts.{name}: {v} exceeds the maximum {MAX_SIZE}"
                )));
            }
        }
        if !(self.flow_energy > 0.0 && self.flow_energy <= 1.0) {
            return Err(Error::invalid(format!(
                "opts.flow_energy: must be in (0, 1], got {}",
                self.flow_energy
            )));
        }
        if !(self.flow_noise_gap == 0.0
            || (self.flow_noise_gap >= 1.0 && self.flow_noise_gap.is_finite()))
        {
            return Err(Error::invalid(format!(
                "opts.flow_noise_gap: must be 0 (off) or a finite ratio >= 1, got {}",
                self.flow_noise_gap
            )));
        }
        if self.steps == 0
            && matches!(
                self.core_model,
                CoreModelChoice::Auto | CoreModelChoice::Flow
            )
        {
            return Err(Error::invalid(
                "opts.steps: must be > 0 to train a flow (or set opts.core_model to GAUSSIAN or MIXTURE)",
            ));
        }
        if !(self.holdout_fraction >= 0.0 && self.holdout_fraction <= 0.9) {
            return Err(Error::invalid(format!(
                "opts.holdout_fraction: must be in [0, 0.9], got {}",
                self.holdout_fraction
            )));
        }
        if self.moment_matching && self.moment_samples < 2 {
            return Err(Error::invalid(
                "opts.moment_samples: must be >= 2 when moment matching is on",
            ));
        }
        self.train_options().check()?;
        self.solver.check().map_err(|e| {
            Error::new(e.kind(), e.message().replacen("solver.", "opts.solver.", 1))
        })?;
        Ok(())
    }

    pub(super) fn train_options(&self) -> TrainOptions {
        TrainOptions {
            steps: self.steps.max(1),
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            warmup_steps: self.warmup_steps,
            weight_decay: self.weight_decay,
            ema_decay: self.ema_decay,
            clip_norm: self.clip_norm,
            coupling: self.coupling,
            seed: self.seed,
        }
    }
}
