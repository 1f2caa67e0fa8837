//! `coreflow impute`: multiple imputation, draws of the missing entries from
//! the model's law given the observed ones.
//!
//! Draw k of matrix i is draw number `first_index + i * K + k` of stream
//! `seed` (K = --draws), which depends only on those numbers (the library's
//! guarantee), so the matrices are split over threads, each with its own
//! workspace, and the file is the same for any thread count.

use crate::commands::sample::{check_has_core_model, SolverArgs};
use crate::error::{CliError, Context};
use crate::input::{check_model_shape, load_model, read_input, Missing};
use crate::ThreadArgs;
use clap::Args;
use coreflow::numerics::{resolve_threads, MemBuffer, MemStack};
use coreflow::{ImputeLevel, Layout, MatrixBatch, MatrixBatchMut};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ImputeArgs {
    /// Fitted model file.
    #[arg(long, value_name = "model.cfm")]
    pub model: PathBuf,
    /// Partially observed matrices, .npy of shape (N, m, n); without --mask
    /// the NaN entries are the missing ones.
    #[arg(long, value_name = "Y.npy")]
    pub data: PathBuf,
    /// Observation mask of the data's shape, uint8 or bool (nonzero = observed).
    #[arg(long, value_name = "M.npy")]
    pub mask: Option<PathBuf>,
    /// Draws per matrix.
    #[arg(long, value_name = "K")]
    pub draws: usize,
    /// Seed of the draw stream: draw k of matrix i depends only on (seed,
    /// first_index + i * K + k).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of the first draw of the stream (to continue an earlier run).
    #[arg(long, value_name = "J", default_value_t = 0)]
    pub first_index: u64,
    /// Noise level of the draws: `fitted` (the model's sigma^2; the exact
    /// posterior under the model) or `observed` (sigma^2 times a multiplier
    /// re-estimated on each matrix's observed entries).
    #[arg(long, value_enum, default_value_t = LevelArg::Fitted)]
    pub level: LevelArg,
    #[command(flatten)]
    pub solver: SolverArgs,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// Where to write the draws, float64 (K, N, m, n).
    #[arg(long, value_name = "draws.npy")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: crate::output::ForceArg,
}

/// `--level`.
#[derive(clap::ValueEnum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum LevelArg {
    /// The fitted level sigma^2.
    Fitted,
    /// sigma^2 re-estimated on the observed entries of each matrix.
    Observed,
}

pub fn run(a: ImputeArgs) -> Result<(), CliError> {
    if a.draws == 0 {
        return Err(CliError::input("--draws: must be at least 1"));
    }
    let opts = a.solver.options()?;
    let level = match a.level {
        LevelArg::Fitted => ImputeLevel::Fitted,
        LevelArg::Observed => ImputeLevel::Observed,
    };
    let model = load_model(&a.model)?;
    check_has_core_model(&model, &a.model)?;
    let input = read_input(
        &a.data,
        a.mask.as_deref(),
        Missing::Allowed {
            nan_missing: a.mask.is_none(),
        },
    )?;
    let s = &input.data;
    check_model_shape(&model, &a.data, s)?;
    let mut inputs = vec![("--model", a.model.as_path()), ("--data", a.data.as_path())];
    if let Some(mask) = &a.mask {
        inputs.push(("--mask", mask.as_path()));
    }
    crate::output::check_output(&a.out, "--out", &inputs, a.force)?;
    let (count, m, n, k) = (s.count, s.rows, s.cols, a.draws);
    let mn = m * n;
    let total = k
        .checked_mul(count)
        .and_then(|x| x.checked_mul(mn))
        .filter(|l| l.checked_mul(8).is_some())
        .ok_or_else(|| CliError::input(format!("--draws {k}: too many draws for memory")))?;
    if a.first_index.checked_add((k * count) as u64).is_none() {
        return Err(CliError::input(
            "--first-index: first_index + draws x matrices overflows",
        ));
    }
    // Draws in (N, K, m, n) order, so each thread owns whole matrices.
    let mut by_matrix: Vec<f64> = coreflow::limits::try_zeroed(total, "--draws")
        .map_err(|e| CliError::input(e.message().to_string()))?;
    let workers = resolve_threads(a.threads.threads).clamp(1, count.max(1));
    let per = count.div_ceil(workers).max(1);
    let (model, opts, input) = (&model, &opts, &input);
    let results: Vec<coreflow::Result<(f64, f64, f64, f64)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = by_matrix
            .chunks_mut(per * k * mn)
            .enumerate()
            .map(|(w, chunk)| {
                sc.spawn(move || {
                    let mut buf = MemBuffer::new(model.impute_scratch(k, opts));
                    let (mut y, mut mask) = (vec![0.0; mn], vec![0u8; mn]);
                    let (mut ess_min, mut ess_sum, mut ess_n) = (f64::INFINITY, 0.0, 0.0);
                    let (mut lev_min, mut lev_sum) = (f64::INFINITY, 0.0);
                    for (j, block) in chunk.chunks_mut(k * mn).enumerate() {
                        let i = w * per + j;
                        // Matrix i in C order, repeated K times by sample stride 0.
                        for r in 0..m {
                            for c in 0..n {
                                let at = input.data.index(i, r, c);
                                y[r * n + c] = input.data.data[at];
                                if let Some(mk) = &input.mask {
                                    mask[r * n + c] = mk.data[at];
                                }
                            }
                        }
                        let layout = Layout {
                            sample_stride: 0,
                            ..Layout::c_order(k, m, n)
                        };
                        let mut partial = MatrixBatch::new(&y, 0, layout)?;
                        if input.mask.is_some() {
                            partial = partial.with_mask(&mask)?;
                        }
                        let mut out = MatrixBatchMut::from_c_order(block, k, m, n)?;
                        let first = a.first_index + (i * k) as u64;
                        let rep = model
                            .impute_with_level(
                                opts,
                                level,
                                a.seed,
                                first,
                                &partial,
                                &mut out,
                                MemStack::new(&mut buf),
                            )
                            .map_err(|e| {
                                coreflow::Error::new(
                                    e.kind(),
                                    format!("matrix {i}: {}", e.message()),
                                )
                            })?;
                        lev_min = lev_min.min(rep.min_level);
                        lev_sum += rep.mean_level;
                        if rep.min_ess.is_finite() {
                            ess_min = ess_min.min(rep.min_ess);
                            ess_sum += rep.mean_ess;
                            ess_n += 1.0;
                        }
                    }
                    Ok((
                        ess_min,
                        if ess_n > 0.0 {
                            ess_sum / ess_n
                        } else {
                            f64::NAN
                        },
                        lev_min,
                        lev_sum,
                    ))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("imputation thread panicked"))
            .collect()
    });
    let (mut ess_min, mut ess_means) = (f64::INFINITY, Vec::new());
    let (mut level_min, mut level_sum) = (f64::INFINITY, 0.0);
    for r in results {
        let (lo, mean, lev_lo, lev_sum) = r.ctx("impute")?;
        level_min = level_min.min(lev_lo);
        level_sum += lev_sum;
        ess_min = ess_min.min(lo);
        if mean.is_finite() {
            ess_means.push(mean);
        }
    }
    // (N, K, m, n) -> (K, N, m, n).
    let mut draws: Vec<f64> = coreflow::limits::try_zeroed(total, "--draws")
        .map_err(|e| CliError::input(e.message().to_string()))?;
    for i in 0..count {
        for d in 0..k {
            let src = (i * k + d) * mn;
            let dst = (d * count + i) * mn;
            draws[dst..dst + mn].copy_from_slice(&by_matrix[src..src + mn]);
        }
    }
    drop(by_matrix);
    crate::npy::write_f64(&a.out, &[k, count, m, n], &draws)?;
    let missing = match &input.mask {
        Some(mk) => mk.data.iter().filter(|&&v| v == 0).count(),
        None => s.data.iter().filter(|v| v.is_nan()).count(),
    };
    out!(
        "drew {k} completions of {count} matrices of {m} x {n} ({missing} missing entries; seed {}, draws {}..{}); written to {}",
        a.seed,
        a.first_index,
        a.first_index + (k * count) as u64,
        a.out.display()
    );
    if level == ImputeLevel::Observed {
        out!(
            "noise level re-estimated on the observed entries: multiplier of sigma^2 {:.4} on average over the matrices (smallest {:.4})",
            level_sum / count.max(1) as f64,
            level_min
        );
    }
    if !ess_means.is_empty() {
        out!(
            "flow core model: importance resampling with {} proposals per draw, effective sample size {:.1} on average (smallest {:.1})",
            coreflow::core_model::IMPUTE_PROPOSALS,
            ess_means.iter().sum::<f64>() / ess_means.len() as f64,
            ess_min
        );
    }
    Ok(())
}
