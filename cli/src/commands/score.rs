//! `coreflow score`: log-likelihood of each matrix and its distance from the
//! model's geometry.

use crate::error::CliError;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Fitted model file.
    #[arg(long, value_name = "model.cfm")]
    pub model: PathBuf,
    /// Matrices to score, .npy of shape (N, m, n).
    #[arg(long, value_name = "X.npy")]
    pub data: PathBuf,
    /// Where to write the scores, float64 (N, 2): log-likelihood, relative residual.
    #[arg(long, value_name = "scores.npy")]
    pub out: PathBuf,
}

pub fn run(a: ScoreArgs) -> Result<(), CliError> {
    let _ = a;
    Err(CliError::input(
        "score: this build of the CoreFlow library has no core model to score with",
    ))
}
