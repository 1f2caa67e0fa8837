//! `coreflow eval`: every metric of `metrics::evaluate` for a generated set
//! against a real one, as a table or one JSON object.

use crate::error::{CliError, Context};
use crate::input::{read_input, Missing};
use crate::ThreadArgs;
use clap::Args;
use coreflow::metrics::{evaluate, EvalOptions, Metrics};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The reference set, .npy of shape (N, m, n).
    #[arg(long, value_name = "A.npy")]
    pub real: PathBuf,
    /// The set to judge, .npy of shape (N', m, n).
    #[arg(long, value_name = "B.npy")]
    pub generated: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Number of leading singular values in the top-k spectrum distance.
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub top_k: usize,
    /// Skip the MMD^2 (the expensive metric).
    #[arg(long)]
    pub no_mmd: bool,
    #[command(flatten)]
    pub threads: ThreadArgs,
}

/// The metrics as (JSON key, table label, value); MMD^2 only when computed.
pub fn metric_rows(m: &Metrics) -> Vec<(&'static str, &'static str, f64)> {
    let mut rows = vec![
        ("sve", "spectrum error (SVE)", m.sve),
        ("topk_w1", "top-k spectrum W1", m.topk_w1),
    ];
    if let Some(mmd) = &m.mmd {
        rows.push(("mmd2", "MMD^2", mmd.mmd2));
        rows.push(("mmd_bandwidth", "MMD bandwidth h0", mmd.h0));
    }
    rows.extend([
        ("mean_error", "mean error", m.mean_error),
        ("rowcov_error", "row-covariance error", m.rowcov_rel_error),
        (
            "colcov_error",
            "column-covariance error",
            m.colcov_rel_error,
        ),
    ]);
    rows
}

pub fn run(a: EvalArgs) -> Result<(), CliError> {
    if a.top_k == 0 {
        return Err(CliError::input("--top-k: must be at least 1"));
    }
    let real = read_input(&a.real, None, Missing::Forbidden)?;
    let gen = read_input(&a.generated, None, Missing::Forbidden)?;
    let (r, g) = (&real.data, &gen.data);
    if (r.rows, r.cols) != (g.rows, g.cols) {
        return Err(CliError::input(format!(
            "{}: matrices are {} x {}, but {} has {} x {}",
            a.generated.display(),
            g.rows,
            g.cols,
            a.real.display(),
            r.rows,
            r.cols
        )));
    }
    let mmd = !a.no_mmd;
    if mmd {
        for (s, p) in [(r, &a.real), (g, &a.generated)] {
            if s.count < 2 {
                return Err(CliError::input(format!(
                    "{}: holds 1 matrix; the MMD^2 needs at least 2 per set (or pass --no-mmd)",
                    p.display()
                )));
            }
        }
    }
    let opts = EvalOptions {
        threads: a.threads.threads,
        top_k: a.top_k,
        mmd,
    };
    let m = evaluate(&real.batch()?, &gen.batch()?, &opts).ctx("eval")?;
    if a.json {
        let mut obj = serde_json::Map::new();
        obj.insert("real_count".into(), r.count.into());
        obj.insert("generated_count".into(), g.count.into());
        obj.insert("rows".into(), r.rows.into());
        obj.insert("cols".into(), r.cols.into());
        for (key, _, v) in metric_rows(&m) {
            obj.insert(key.into(), serde_json::Value::from(v));
        }
        out!("{}", serde_json::Value::Object(obj));
    } else {
        out!(
            "{} generated vs {} real matrices of {} x {}",
            g.count,
            r.count,
            r.rows,
            r.cols
        );
        for (_, label, v) in metric_rows(&m) {
            out!("  {label:<26} {v:>12.6e}");
        }
    }
    Ok(())
}
