//! `coreflow fit`: fit a model to a stack of matrices and save it.

use crate::error::{CliError, Context};
use crate::input::{read_input, Missing};
use crate::progress::{install_ctrlc, StageBars};
use crate::{parse_rank, Method, ThreadArgs};
use clap::Args;
use coreflow::{FitOptions, Model};
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
    /// Choose each rank as the smallest holding this fraction of the energy.
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
    /// Optimiser steps of the flow on the cores (0 = fit the geometry only).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub flow_steps: usize,
    /// Seed of every random choice of the fit.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Where to write the model file.
    #[arg(long, value_name = "model.cfm")]
    pub out: PathBuf,
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
            flow_steps: self.flow_steps,
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

/// Fits with progress bars and Ctrl-C cancellation.
pub fn fit_with_bars(
    batch: &coreflow::MatrixBatch,
    opts: &FitOptions,
    quiet: bool,
) -> Result<Model, CliError> {
    let cancel = install_ctrlc();
    let mut bars = StageBars::new(quiet, cancel);
    let model = Model::fit_with_progress(batch, opts, &mut |p| bars.report(p));
    bars.finish();
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
    let t = Instant::now();
    let model = fit_with_bars(&input.batch()?, &opts, a.quiet)?;
    let secs = t.elapsed().as_secs_f64();
    model.save(&a.out).map_err(|e| {
        CliError::input(format!(
            "{}: cannot write: {}",
            a.out.display(),
            e.message()
        ))
    })?;
    let i = model.info();
    println!(
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
    println!("model written to {}", a.out.display());
    Ok(())
}
