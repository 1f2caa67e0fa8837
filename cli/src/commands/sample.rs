//! `coreflow sample`: draw new matrices from a fitted model.

use crate::error::CliError;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// ODE solver for the flow.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Solver {
    Euler,
    Heun,
    Rk4,
    Dopri5,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Fitted model file.
    #[arg(long, value_name = "model.cfm")]
    pub model: PathBuf,
    /// Number of matrices to draw.
    #[arg(short = 'n', long = "count", value_name = "N")]
    pub count: usize,
    /// Seed of the sample stream: sample k depends only on (seed, k).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// ODE solver.
    #[arg(long, value_enum, default_value_t = Solver::Rk4)]
    pub solver: Solver,
    /// Fixed steps of the solver (ignored by dopri5).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub steps: usize,
    /// Where to write the samples, float64 (N, m, n).
    #[arg(long, value_name = "samples.npy")]
    pub out: PathBuf,
}

pub fn run(a: SampleArgs) -> Result<(), CliError> {
    let _ = a;
    Err(CliError::input(
        "sample: this build of the CoreFlow library has no core model to sample from",
    ))
}
