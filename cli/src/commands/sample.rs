//! `coreflow sample`: draw new matrices from a fitted model.
//!
//! Sample k of a stream depends only on the seed and k (the library's
//! guarantee), so the work is split into contiguous runs of sample numbers,
//! one per thread, each with its own workspace: the file is the same for
//! any thread count.

use crate::error::{CliError, Context};
use crate::input::{load_model, write_stack};
use crate::ThreadArgs;
use clap::{Args, ValueEnum};
use coreflow::flow::{Solver, SolverOptions};
use coreflow::numerics::{resolve_threads, MemBuffer, MemStack};
use coreflow::{MatrixBatchMut, Model};
use std::path::PathBuf;

/// ODE solver of the flow.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SolverArg {
    /// Forward Euler, fixed steps.
    Euler,
    /// Heun (explicit trapezoid), fixed steps.
    Heun,
    /// Classic fourth-order Runge-Kutta, fixed steps.
    Rk4,
    /// Adaptive Dormand-Prince 5(4), with --rtol and --atol.
    Dopri5,
}

/// Options of the ODE solve, shared by `sample` and `score`.
#[derive(Args, Debug, Clone, Copy)]
pub struct SolverArgs {
    /// ODE solver of the flow.
    #[arg(long, value_enum, default_value_t = SolverArg::Rk4)]
    pub solver: SolverArg,
    /// Steps of the fixed-step solvers.
    #[arg(long, value_name = "N", default_value_t = SolverOptions::default().steps)]
    pub steps: usize,
    /// Relative tolerance of dopri5.
    #[arg(long, default_value_t = SolverOptions::default().rtol)]
    pub rtol: f64,
    /// Absolute tolerance of dopri5.
    #[arg(long, default_value_t = SolverOptions::default().atol)]
    pub atol: f64,
}

impl SolverArgs {
    pub fn options(&self) -> Result<SolverOptions, CliError> {
        if self.steps == 0 {
            return Err(CliError::input("--steps: must be at least 1"));
        }
        if !(self.rtol > 0.0 && self.rtol.is_finite()) {
            return Err(CliError::input(format!(
                "--rtol {}: must be positive",
                self.rtol
            )));
        }
        if !(self.atol >= 0.0 && self.atol.is_finite()) {
            return Err(CliError::input(format!(
                "--atol {}: must be non-negative",
                self.atol
            )));
        }
        Ok(SolverOptions {
            solver: match self.solver {
                SolverArg::Euler => Solver::Euler,
                SolverArg::Heun => Solver::Heun,
                SolverArg::Rk4 => Solver::Rk4,
                SolverArg::Dopri5 => Solver::Dopri5,
            },
            steps: self.steps,
            rtol: self.rtol,
            atol: self.atol,
            ..SolverOptions::default()
        })
    }
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
    /// Number of the first sample of the stream (to continue an earlier run).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub first_index: u64,
    #[command(flatten)]
    pub solver: SolverArgs,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// Where to write the samples, float64 (N, m, n).
    #[arg(long, value_name = "samples.npy")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: crate::output::ForceArg,
}

/// Refuses a geometry-only model with the fix.
pub fn check_has_core_model(model: &Model, path: &std::path::Path) -> Result<(), CliError> {
    if model.info().core_model.is_none() {
        return Err(CliError::input(format!(
            "{}: the model was fitted without a core model (--flow-steps 0); fit it with --flow-steps > 0 or --core-model gaussian",
            path.display()
        )));
    }
    Ok(())
}

/// Draws samples `first_index .. first_index + count` of stream `seed` into
/// a C-order buffer, on up to `threads` threads.
pub fn draw(
    model: &Model,
    opts: &SolverOptions,
    seed: u64,
    first_index: u64,
    count: usize,
    threads: usize,
) -> Result<Vec<f64>, CliError> {
    let (m, n) = (model.info().rows, model.info().cols);
    let len = count
        .checked_mul(m * n)
        .filter(|l| l.checked_mul(8).is_some())
        .ok_or_else(|| CliError::input(format!("-n {count}: too many matrices for memory")))?;
    let mut data: Vec<f64> = coreflow::limits::try_zeroed(len, &format!("-n {count}"))
        .map_err(|e| CliError::input(e.message().to_string()))?;
    let workers = resolve_threads(threads).clamp(1, count.max(1));
    let per = count.div_ceil(workers).max(1);
    let results: Vec<coreflow::Result<()>> = std::thread::scope(|sc| {
        let handles: Vec<_> = data
            .chunks_mut(per * m * n)
            .enumerate()
            .map(|(w, chunk)| {
                sc.spawn(move || {
                    let k = chunk.len() / (m * n);
                    let mut out = MatrixBatchMut::from_c_order(chunk, k, m, n)?;
                    let mut buf = MemBuffer::new(model.sample_scratch(k, opts));
                    let first = first_index + (w * per) as u64;
                    model.sample(opts, seed, first, &mut out, MemStack::new(&mut buf))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sampling thread panicked"))
            .collect()
    });
    for r in results {
        r.ctx("sample")?;
    }
    Ok(data)
}

pub fn run(a: SampleArgs) -> Result<(), CliError> {
    if a.count == 0 {
        return Err(CliError::input("-n: must be at least 1"));
    }

    let opts = a.solver.options()?;
    let model = load_model(&a.model)?;
    check_has_core_model(&model, &a.model)?;
    crate::output::check_output(&a.out, "--out", &[("--model", &a.model)], a.force)?;
    let data = draw(
        &model,
        &opts,
        a.seed,
        a.first_index,
        a.count,
        a.threads.threads,
    )?;
    let (m, n) = (model.info().rows, model.info().cols);
    write_stack(&a.out, &data, a.count, m, n)?;
    out!(
        "drew {} matrices of {m} x {n} (seed {}, samples {}..{}); written to {}",
        a.count,
        a.seed,
        a.first_index,
        a.first_index + a.count as u64,
        a.out.display()
    );
    Ok(())
}
