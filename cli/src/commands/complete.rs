//! `coreflow complete`: fill missing entries with the model's MAP estimate.

use crate::error::CliError;
use crate::input::{
    check_model_shape, load_model, read_input, with_workspace, write_stack, Missing,
};
use clap::{ArgGroup, Args};
use coreflow::MatrixBatchMut;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("missing").required(true).args(["mask", "nan_missing"])))]
pub struct CompleteArgs {
    /// Fitted model file.
    #[arg(long, value_name = "model.cfm")]
    pub model: PathBuf,
    /// Partially observed matrices, .npy of shape (N, m, n).
    #[arg(long, value_name = "Y.npy")]
    pub data: PathBuf,
    /// Observation mask of the data's shape, uint8 or bool (nonzero = observed).
    #[arg(long, value_name = "M.npy")]
    pub mask: Option<PathBuf>,
    /// NaN entries of the data are the missing ones.
    #[arg(long)]
    pub nan_missing: bool,
    /// Where to write the completed matrices (float64, C order).
    #[arg(long, value_name = "filled.npy")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: crate::output::ForceArg,
}

pub fn run(a: CompleteArgs) -> Result<(), CliError> {
    let model = load_model(&a.model)?;
    let input = read_input(
        &a.data,
        a.mask.as_deref(),
        Missing::Allowed {
            nan_missing: a.nan_missing,
        },
    )?;
    let s = &input.data;
    check_model_shape(&model, &a.data, s)?;
    let mut inputs = vec![("--model", a.model.as_path()), ("--data", a.data.as_path())];
    if let Some(mask) = &a.mask {
        inputs.push(("--mask", mask.as_path()));
    }
    crate::output::check_output(&a.out, "--out", &inputs, a.force)?;
    let (count, rows, cols) = (s.count, s.rows, s.cols);
    let mut filled = vec![0.0; count * rows * cols];
    let mut out = MatrixBatchMut::from_c_order(&mut filled, count, rows, cols)
        .map_err(|e| CliError::internal(e.message().to_string()))?;
    let batch = input.batch()?;
    with_workspace(
        model.complete_scratch(count),
        |stack| model.complete(&batch, &mut out, stack),
        "complete",
    )?;
    write_stack(&a.out, &filled, count, rows, cols)?;
    let missing = match &input.mask {
        Some(m) => m.data.iter().filter(|&&v| v == 0).count(),
        None => s.data.iter().filter(|v| v.is_nan()).count(),
    };
    out!(
        "completed {missing} missing entries in {count} matrices of {rows} x {cols}; written to {}",
        a.out.display()
    );
    Ok(())
}
