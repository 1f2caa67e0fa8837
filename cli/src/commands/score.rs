//! `coreflow score`: log-likelihood of each matrix under the core model and
//! its distance from the model's geometry.
//!
//! Output `(N, 2)` float64: column 0 the log-density of the matrix's core
//! (a density over matrices in the learned geometry), column 1 the relative
//! residual `||Y - U U^T Y V V^T|| / ||Y||`, `Y = X - Xbar`, which says how
//! far the matrix lies outside that geometry. Both are needed: a matrix can
//! have a likely core and still be far from the subspaces.

use crate::commands::sample::{check_has_core_model, SolverArgs};
use crate::error::{CliError, Context};
use crate::input::{check_model_shape, load_model, read_input, Missing};
use crate::npy;
use crate::ThreadArgs;
use clap::Args;
use coreflow::numerics::{resolve_threads, MemBuffer, MemStack};
use coreflow::{Layout, MatrixBatch};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Fitted model file.
    #[arg(long, value_name = "model.cfm")]
    pub model: PathBuf,
    /// Matrices to score, .npy of shape (N, m, n).
    #[arg(long, value_name = "X.npy")]
    pub data: PathBuf,
    #[command(flatten)]
    pub solver: SolverArgs,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// Where to write the scores, float64 (N, 2): log-likelihood, relative residual.
    #[arg(long, value_name = "scores.npy")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: crate::output::ForceArg,
}

pub fn run(a: ScoreArgs) -> Result<(), CliError> {
    let opts = a.solver.options()?;
    let model = load_model(&a.model)?;
    check_has_core_model(&model, &a.model)?;
    let input = read_input(&a.data, None, Missing::Forbidden)?;
    let s = &input.data;
    check_model_shape(&model, &a.data, s)?;
    crate::output::check_output(
        &a.out,
        "--out",
        &[("--model", &a.model), ("--data", &a.data)],
        a.force,
    )?;
    let count = s.count;
    let layout = s.layout();
    let mut lp = vec![0.0; count];
    let mut res = vec![0.0; count];
    // Contiguous runs of matrices per thread, each a view of the same
    // buffer starting at its first matrix (strides are non-negative).
    let workers = resolve_threads(a.threads.threads).clamp(1, count);
    let per = count.div_ceil(workers);
    let results: Vec<coreflow::Result<()>> = std::thread::scope(|sc| {
        let handles: Vec<_> = lp
            .chunks_mut(per)
            .zip(res.chunks_mut(per))
            .enumerate()
            .map(|(w, (lp, res))| {
                let (model, opts, data) = (&model, &opts, &s.data);
                sc.spawn(move || {
                    let k = lp.len();
                    let base = w * per * layout.sample_stride as usize;
                    let sub = MatrixBatch::new(data, base, Layout { count: k, ..layout })?;
                    let mut buf = MemBuffer::new(model.log_prob_scratch(k, opts));
                    model.log_prob(opts, &sub, lp, Some(res), MemStack::new(&mut buf))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scoring thread panicked"))
            .collect()
    });
    for r in results {
        r.ctx("score")?;
    }
    let out: Vec<f64> = lp.iter().zip(&res).flat_map(|(l, r)| [*l, *r]).collect();
    npy::write_f64(&a.out, &[count, 2], &out)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    out!(
        "scored {count} matrices: mean log-likelihood {:.4}, mean relative residual {:.3e}; written to {} (columns: log-likelihood, residual)",
        mean(&lp),
        mean(&res),
        a.out.display()
    );
    Ok(())
}
