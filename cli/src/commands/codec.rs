//! `coreflow encode` / `coreflow decode`: matrices to cores and back.
//!
//! The library stores each r x s core column-major; the files hold them as
//! C-order (N, r, s) arrays like every other output, so the values are
//! transposed on the way in and out.

use crate::error::CliError;
use crate::input::{
    check_model_shape, load_model, read_input, with_workspace, write_stack, Missing,
};
use crate::npy;
use clap::Args;
use coreflow::MatrixBatchMut;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// Fitted model file.
    #[arg(long, value_name = "model.cfm")]
    pub model: PathBuf,
    /// Complete matrices, .npy of shape (N, m, n).
    #[arg(long, value_name = "X.npy")]
    pub data: PathBuf,
    /// Where to write the cores, float64 (N, r, s).
    #[arg(long, value_name = "cores.npy")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: crate::output::ForceArg,
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// Fitted model file.
    #[arg(long, value_name = "model.cfm")]
    pub model: PathBuf,
    /// Cores, .npy of shape (N, r, s).
    #[arg(long, value_name = "cores.npy")]
    pub cores: PathBuf,
    /// Where to write the matrices, float64 (N, m, n).
    #[arg(long, value_name = "X.npy")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: crate::output::ForceArg,
}

pub fn encode(a: EncodeArgs) -> Result<(), CliError> {
    let model = load_model(&a.model)?;
    let input = read_input(&a.data, None, Missing::Forbidden)?;
    crate::output::check_output(
        &a.out,
        "--out",
        &[("--model", &a.model), ("--data", &a.data)],
        a.force,
    )?;
    check_model_shape(&model, &a.data, &input.data)?;
    let count = input.data.count;
    let (r, s) = (model.info().rank_rows, model.info().rank_cols);
    let mut cores = vec![0.0; count * r * s];
    let batch = input.batch()?;
    with_workspace(
        model.encode_scratch(count),
        |st| model.encode(&batch, &mut cores, st),
        "encode",
    )?;
    // Column-major r x s per core -> C-order (N, r, s).
    let mut out = vec![0.0; cores.len()];
    for (j, core) in cores.chunks_exact(r * s).enumerate() {
        for a in 0..r {
            for b in 0..s {
                out[j * r * s + a * s + b] = core[a + b * r];
            }
        }
    }
    write_stack(&a.out, &out, count, r, s)?;
    out!(
        "encoded {count} matrices to {r} x {s} cores; written to {}",
        a.out.display()
    );
    Ok(())
}

pub fn decode(a: DecodeArgs) -> Result<(), CliError> {
    let model = load_model(&a.model)?;
    let c = npy::read_data(&a.cores)?;
    let info = model.info();
    let (r, s) = (info.rank_rows, info.rank_cols);
    if (c.rows, c.cols) != (r, s) {
        return Err(CliError::input(format!(
            "{}: cores are {} x {}, but the model's are {r} x {s}",
            a.cores.display(),
            c.rows,
            c.cols
        )));
    }
    let mut cores = vec![0.0; c.data.len()];
    for j in 0..c.count {
        for x in 0..r {
            for y in 0..s {
                let v = c.data[c.index(j, x, y)];
                if !v.is_finite() {
                    return Err(CliError::input(format!(
                        "{}: core {j} has {v} at ({x}, {y}); cores must be finite",
                        a.cores.display()
                    )));
                }
                cores[j * r * s + x + y * r] = v;
            }
        }
    }
    crate::output::check_output(
        &a.out,
        "--out",
        &[("--model", &a.model), ("--cores", &a.cores)],
        a.force,
    )?;
    let (count, m, n) = (c.count, info.rows, info.cols);
    let mut data = vec![0.0; count * m * n];
    let mut out = MatrixBatchMut::from_c_order(&mut data, count, m, n)
        .map_err(|e| CliError::internal(e.message().to_string()))?;
    with_workspace(
        model.decode_scratch(count),
        |st| model.decode(&cores, &mut out, st),
        "decode",
    )?;
    write_stack(&a.out, &data, count, m, n)?;
    out!(
        "decoded {count} cores to {m} x {n} matrices; written to {}",
        a.out.display()
    );
    Ok(())
}
