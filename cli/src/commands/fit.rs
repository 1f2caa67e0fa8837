//! `coreflow fit`: fit a model to a stack of matrices and save it.

use crate::error::{CliError, Context};
use crate::input::{read_input, Missing};
use crate::progress::{install_ctrlc, StageBars};
use crate::{parse_rank, Method, ThreadArgs};
use clap::Args;
use clap::ValueEnum;
use coreflow::core_model::{CoreModelChoice, FlowOptions};
use coreflow::flow::Coupling;
use coreflow::{FitOptions, Model};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct FitArgs {
    /// Training matrices, .npy of shape (N, m, n), float64 or float32.
    #[arg(long, value_name = "X.npy")]
    pub data: PathBuf,
    /// Observation mask, .npy uint8 or bool of the data's shape (nonzero = observed).
    #[arg(long, value_name = "M.npy", conflicts_with = "nan_missing")]
    pub mask: Option<PathBuf>,
    /// Treat NaN entries of the data as missing.
    #[arg(long)]
    pub nan_missing: bool,
    /// Ranks of the row and column bases, RxS (or R for both).
    #[arg(long, value_name = "RxS", value_parser = parse_rank, conflicts_with = "energy")]
    pub rank: Option<(usize, usize)>,
    /// Choose the ranks so that the fit keeps this fraction of the energy,
    /// with a core of at most N/2 dimensions for N training matrices (a
    /// warning says when that cap stops them short).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.99)]
    pub energy: f64,
    /// Subtract the entrywise mean before fitting.
    #[arg(long)]
    pub center: bool,
    /// Subspace refinement method.
    #[arg(long, value_enum, default_value_t = Method::Hooi)]
    pub method: Method,
    /// Iteration limit of the subspace refinement (and of the completion rounds).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_iter: usize,
    #[command(flatten)]
    pub flow: FlowArgs,
    /// Seed of every random choice of the fit.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// No progress output (bars on a terminal, one line per stage otherwise).
    #[arg(long, short)]
    pub quiet: bool,
    /// Where to write the model file.
    #[arg(long, value_name = "model.cfm")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: crate::output::ForceArg,
}

/// Which model the cores get.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CoreModelArg {
    /// The Gaussian, or a Gaussian mixture or the flow when it predicts held-out matrices clearly better (then refitted on all).
    Auto,
    /// Always the flow (plus a Gaussian on the low-variance principal
    /// components).
    Flow,
    /// Always a full-covariance Gaussian on the cores.
    Gaussian,
    /// Always a Gaussian mixture on a leading block of principal components
    /// (size and components selected by BIC), Gaussian on the rest.
    Mixture,
}

/// Pairing of noise and data in flow-matching batches.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CouplingArg {
    /// Independent pairs.
    Independent,
    /// Exact optimal-transport assignment within each batch.
    MinibatchOt,
}

/// Options of the core model and its flow; defaults are the library's.
#[derive(Args, Debug, Clone)]
pub struct FlowArgs {
    /// Optimiser steps of the flow (0 = geometry only, no sampling or scoring).
    #[arg(long, value_name = "N", default_value_t = FlowOptions::default().steps)]
    pub flow_steps: usize,
    /// Model of the cores.
    #[arg(long, value_enum, default_value_t = CoreModelArg::Auto)]
    pub core_model: CoreModelArg,
    /// Width of the hidden layers of the velocity network.
    #[arg(long, value_name = "H", default_value_t = FlowOptions::default().hidden)]
    pub hidden: usize,
    /// Hidden layers of the velocity network.
    #[arg(long, value_name = "L", default_value_t = FlowOptions::default().layers)]
    pub layers: usize,
    /// Peak learning rate (warm-up, then cosine decay).
    #[arg(long, value_name = "RATE", default_value_t = FlowOptions::default().learning_rate)]
    pub lr: f64,
    /// Batch size of the flow training.
    #[arg(long, value_name = "B", default_value_t = FlowOptions::default().batch_size)]
    pub batch: usize,
    /// Fraction of the core variance modelled by the flow (the rest is Gaussian).
    #[arg(long, value_name = "FRACTION", default_value_t = FlowOptions::default().flow_energy)]
    pub flow_energy: f64,
    /// Largest flow block (0 = no cap).
    #[arg(long, value_name = "K", default_value_t = FlowOptions::default().flow_max_dim)]
    pub flow_max_dim: usize,
    /// Noise floor of the flow block: a ratio of consecutive component
    /// variances that ends the block (0 = the energy rule alone).
    #[arg(long, value_name = "RATIO", default_value_t = FlowOptions::default().flow_noise_gap)]
    pub flow_noise_gap: f64,
    /// Pairing of noise and data in each batch.
    #[arg(long, value_enum, default_value_t = CouplingArg::Independent)]
    pub coupling: CouplingArg,
    /// Fraction of the cores held out for the likelihood diagnostics.
    #[arg(long, value_name = "FRACTION", default_value_t = FlowOptions::default().holdout_fraction)]
    pub holdout: f64,
}

impl FlowArgs {
    /// The library's flow options for these arguments (the library checks
    /// the values; its messages name the field, which matches the flag).
    pub fn options(&self) -> Result<FlowOptions, CliError> {
        let positive = [
            (self.hidden, "--hidden"),
            (self.layers, "--layers"),
            (self.batch, "--batch"),
        ];
        for (v, flag) in positive {
            if v == 0 {
                return Err(CliError::input(format!("{flag}: must be at least 1")));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(CliError::input(format!(
                "--lr {}: must be positive",
                self.lr
            )));
        }
        if !(self.flow_energy > 0.0 && self.flow_energy <= 1.0) {
            return Err(CliError::input(format!(
                "--flow-energy {}: must be in (0, 1]",
                self.flow_energy
            )));
        }
        if !(self.flow_noise_gap == 0.0
            || (self.flow_noise_gap >= 1.0 && self.flow_noise_gap.is_finite()))
        {
            return Err(CliError::input(format!(
                "--flow-noise-gap {}: must be 0 (off) or a ratio >= 1",
                self.flow_noise_gap
            )));
        }
        if !(0.0..=0.9).contains(&self.holdout) {
            return Err(CliError::input(format!(
                "--holdout {}: must be in [0, 0.9]",
                self.holdout
            )));
        }
        Ok(FlowOptions {
            steps: self.flow_steps,
            core_model: match self.core_model {
                CoreModelArg::Auto => CoreModelChoice::Auto,
                CoreModelArg::Flow => CoreModelChoice::Flow,
                CoreModelArg::Gaussian => CoreModelChoice::Gaussian,
                CoreModelArg::Mixture => CoreModelChoice::Mixture,
            },
            hidden: self.hidden,
            layers: self.layers,
            learning_rate: self.lr,
            batch_size: self.batch,
            flow_energy: self.flow_energy,
            flow_max_dim: self.flow_max_dim,
            flow_noise_gap: self.flow_noise_gap,
            coupling: match self.coupling {
                CouplingArg::Independent => Coupling::Independent,
                CouplingArg::MinibatchOt => Coupling::MinibatchOt,
            },
            holdout_fraction: self.holdout,
            ..FlowOptions::default()
        })
    }
}

impl FitArgs {
    /// The library options for these arguments.
    pub fn options(&self) -> Result<FitOptions, CliError> {
        if !(self.energy > 0.0 && self.energy <= 1.0) {
            return Err(CliError::input(format!(
                "--energy {}: must be in (0, 1]",
                self.energy
            )));
        }
        if self.max_iter == 0 {
            return Err(CliError::input("--max-iter: must be at least 1"));
        }
        let (r, s) = self.rank.unwrap_or((0, 0));
        Ok(FitOptions {
            rank_rows: r,
            rank_cols: s,
            energy: self.energy,
            center: self.center,
            subspace_method: self.method.into(),
            subspace_max_iter: self.max_iter,
            completion_max_iter: self.max_iter,
            nan_is_missing: self.nan_missing,
            flow: self.flow.options()?,
            seed: self.seed,
            threads: self.threads.threads,
            ..FitOptions::default()
        })
    }
}

/// Checks the requested ranks against the matrix size, naming the flag.
pub fn check_rank(rank: Option<(usize, usize)>, rows: usize, cols: usize) -> Result<(), CliError> {
    if let Some((r, s)) = rank {
        if r > rows || s > cols {
            return Err(CliError::input(format!(
                "--rank {r}x{s}: exceeds the matrix size {rows} x {cols}; ranks must be at most rows x cols"
            )));
        }
    }
    Ok(())
}

/// Fits with progress (bars, or lines without a terminal) and Ctrl-C
/// cancellation.
pub fn fit_with_bars(
    batch: &coreflow::MatrixBatch,
    opts: &FitOptions,
    quiet: bool,
) -> Result<Model, CliError> {
    let cancel = install_ctrlc();
    let mut bars = StageBars::new(quiet, cancel);
    let model = Model::fit_with_progress(batch, opts, &mut |p| bars.report(p));
    if model.is_ok() {
        bars.finish();
    } else {
        bars.abandon();
    }
    model.ctx("fit")
}

pub fn run(a: FitArgs) -> Result<(), CliError> {
    install_ctrlc();
    let opts = a.options()?;
    let input = read_input(
        &a.data,
        a.mask.as_deref(),
        Missing::Allowed {
            nan_missing: a.nan_missing,
        },
    )?;
    let s = &input.data;
    check_rank(a.rank, s.rows, s.cols)?;
    let mut inputs = vec![("--data", a.data.as_path())];
    if let Some(mask) = &a.mask {
        inputs.push(("--mask", mask.as_path()));
    }
    crate::output::check_output(&a.out, "--out", &inputs, a.force)?;
    let t = Instant::now();
    let model = fit_with_bars(&input.batch()?, &opts, a.quiet)?;
    let secs = t.elapsed().as_secs_f64();
    let image = model.to_bytes();
    crate::output::write_atomically(&a.out, |w| w.write_all(&image))?;
    let i = model.info();
    out!(
        "fitted {} matrices of {} x {} in {secs:.2} s: ranks {} x {}, explained energy {:.6}{}",
        i.train_count,
        i.rows,
        i.cols,
        i.rank_rows,
        i.rank_cols,
        i.explained_energy,
        if i.masked {
            format!(
                ", {} completion rounds (converged: {})",
                i.completion_iterations, i.completion_converged
            )
        } else {
            format!(
                ", {} subspace iterations (converged: {})",
                i.subspace_iterations, i.subspace_converged
            )
        }
    );
    if let Some(kind) = i.core_model {
        out!(
            "core model: {}",
            crate::commands::info::core_model_summary(&model, kind)
        );
    }
    for w in i.warnings(&opts) {
        eprintln!("warning: {w}");
    }
    out!("model written to {}", a.out.display());
    Ok(())
}
