//! `coreflow eval`: every metric of `metrics::evaluate_with_train` for a
//! generated set against a real one (and, with `--train`, the training set
//! of the generator), as a table or one JSON object.

use crate::error::{CliError, Context};
use crate::input::{read_input, Missing};
use crate::ThreadArgs;
use clap::Args;
use coreflow::metrics::{evaluate_with_train, EvalOptions, Metrics};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The reference set, .npy of shape (N, m, n).
    #[arg(long, value_name = "A.npy")]
    pub real: PathBuf,
    /// The set to judge, .npy of shape (N', m, n).
    #[arg(long, value_name = "B.npy")]
    pub generated: PathBuf,
    /// The generator's training set, .npy of shape (N'', m, n): adds the
    /// distance-to-closest-record ratio (median distance of generated to
    /// their closest training matrix over that of the real matrices; below 1
    /// points at copying).
    #[arg(long, value_name = "T.npy")]
    pub train: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Number of leading singular values in the top-k spectrum distance.
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub top_k: usize,
    /// Skip the pairwise metrics, MMD^2 and 1-NN accuracy (the expensive
    /// ones).
    #[arg(long)]
    pub no_mmd: bool,
    #[command(flatten)]
    pub threads: ThreadArgs,
}

/// The metrics as (JSON key, table label, value); MMD^2 and the 1-NN
/// accuracy only when computed, the closest-record ratio only with a
/// training set.
pub fn metric_rows(m: &Metrics) -> Vec<(&'static str, &'static str, f64)> {
    let mut rows = vec![
        ("sve", "spectrum error (SVE)", m.sve),
        ("topk_w1", "top-k spectrum W1", m.topk_w1),
    ];
    if let Some(mmd) = &m.mmd {
        rows.push(("mmd2", "MMD^2", mmd.mmd2));
        rows.push(("mmd_bandwidth", "MMD bandwidth h0", mmd.h0));
    }
    if let Some(nna) = m.nn_accuracy {
        rows.push(("nn_accuracy", "1-NN accuracy (0.5 ideal)", nna));
    }
    if let Some(dcr) = m.dcr_ratio {
        rows.push(("dcr_ratio", "closest-record ratio", dcr));
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
    let train = match &a.train {
        Some(p) => {
            let t = read_input(p, None, Missing::Forbidden)?;
            if (t.data.rows, t.data.cols) != (r.rows, r.cols) {
                return Err(CliError::input(format!(
                    "{}: matrices are {} x {}, but {} has {} x {}",
                    p.display(),
                    t.data.rows,
                    t.data.cols,
                    a.real.display(),
                    r.rows,
                    r.cols
                )));
            }
            Some(t)
        }
        None => None,
    };
    let mmd = !a.no_mmd;
    if mmd {
        for (s, p) in [(r, &a.real), (g, &a.generated)] {
            if s.count < 2 {
                return Err(CliError::input(format!(
                    "{}: holds 1 matrix; the MMD^2 and the 1-NN accuracy need at least 2 per set (or pass --no-mmd)",
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
    let train_batch = match &train {
        Some(t) => Some(t.batch()?),
        None => None,
    };
    let m = evaluate_with_train(&real.batch()?, &gen.batch()?, train_batch.as_ref(), &opts)
        .ctx("eval")?;
    if a.json {
        let mut obj = serde_json::Map::new();
        obj.insert("real_count".into(), r.count.into());
        obj.insert("generated_count".into(), g.count.into());
        if let Some(t) = &train {
            obj.insert("train_count".into(), t.data.count.into());
        }
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
        if let Some(t) = &train {
            out!("{} training matrices", t.data.count);
        }
        for (_, label, v) in metric_rows(&m) {
            out!("  {label:<26} {v:>12.6e}");
        }
    }
    Ok(())
}
