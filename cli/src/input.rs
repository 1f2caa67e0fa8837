//! Loading the inputs every command shares: data stacks with their masks and
//! model files, with messages that name the file and the fix.

use crate::error::{CliError, Context};
use crate::npy::{self, Stack};
use coreflow::Model;
use std::path::Path;

/// What non-finite values mean for a command.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Every value must be finite (encode, score, eval).
    Forbidden,
    /// A mask or `--nan-missing` may mark missing entries (fit, complete).
    Allowed { nan_missing: bool },
}

/// A data stack and its optional mask in the same storage order.
pub struct Input {
    pub data: Stack<f64>,
    pub mask: Option<Stack<u8>>,
}

impl Input {
    pub fn batch(&self) -> Result<coreflow::MatrixBatch<'_>, CliError> {
        let b = self.data.batch()?;
        match &self.mask {
            Some(m) => b
                .with_mask(&m.data)
                .map_err(|e| CliError::internal(format!("mask view: {}", e.message()))),
            None => Ok(b),
        }
    }
}

/// Reads `data` (and `mask`) and checks their values for `missing`.
pub fn read_input(data: &Path, mask: Option<&Path>, missing: Missing) -> Result<Input, CliError> {
    let stack = npy::read_data(data)?;
    let mask = match mask {
        Some(p) => {
            let m = npy::read_mask(p)?;
            if (m.count, m.rows, m.cols) != (stack.count, stack.rows, stack.cols) {
                return Err(CliError::input(format!(
                    "{}: shape {} does not match the data's {} in {}",
                    p.display(),
                    m.shape_str(),
                    stack.shape_str(),
                    data.display()
                )));
            }
            Some(m.in_order_of(&stack))
        }
        None => None,
    };
    check_values(data, &stack, mask.as_ref(), missing)?;
    Ok(Input { data: stack, mask })
}

/// Finds the first value that the command cannot take and says how to fix
/// it: observed entries must be finite; NaN may stand for a missing entry
/// only with `--nan-missing`; infinities are never missing values.
fn check_values(
    path: &Path,
    s: &Stack<f64>,
    mask: Option<&Stack<u8>>,
    missing: Missing,
) -> Result<(), CliError> {
    // Scan in storage order (fast), then report in (matrix, row, column).
    let bad = s.data.iter().enumerate().find(|&(k, v)| {
        if v.is_finite() {
            return false;
        }
        match missing {
            Missing::Forbidden => true,
            Missing::Allowed { nan_missing } => {
                let observed = mask.is_none_or(|m| m.data[k] != 0);
                if !observed {
                    false
                } else {
                    !(v.is_nan() && nan_missing && mask.is_none())
                }
            }
        }
    });
    let Some((k, v)) = bad else { return Ok(()) };
    let (i, r, c) = position(s, k);
    let at = format!(
        "{}: matrix {i} has {v} at row {r}, column {c}",
        path.display()
    );
    let hint = match (missing, mask.is_some(), v.is_nan()) {
        (Missing::Forbidden, _, _) => "; this command needs finite values everywhere".to_string(),
        (Missing::Allowed { .. }, false, true) => {
            "; pass --nan-missing to treat NaN as missing, or --mask M.npy".to_string()
        }
        (Missing::Allowed { .. }, true, _) => {
            "; the mask marks it observed, so it must be finite (or set its mask entry to 0)"
                .to_string()
        }
        _ => "; infinities cannot stand for missing entries: use NaN or a mask".to_string(),
    };
    Err(CliError::input(at + &hint))
}

/// (matrix, row, column) of storage index `k`.
fn position(s: &Stack<f64>, k: usize) -> (usize, usize, usize) {
    if s.fortran_order {
        let i = k % s.count;
        let rc = k / s.count;
        (i, rc % s.rows, rc / s.rows)
    } else {
        let i = k / (s.rows * s.cols);
        let rc = k % (s.rows * s.cols);
        (i, rc / s.cols, rc % s.cols)
    }
}

/// Loads a model file; a missing, corrupt or newer-version file is bad input.
pub fn load_model(path: &Path) -> Result<Model, CliError> {
    if !path.exists() {
        return Err(CliError::input(format!("{}: no such file", path.display())));
    }
    if path.is_dir() {
        return Err(CliError::input(format!(
            "{}: is a directory, not a model file",
            path.display()
        )));
    }
    Model::load(path).map_err(|e| {
        let fix = match e.kind() {
            coreflow::ErrorKind::Format => "; write it again with coreflow fit",
            coreflow::ErrorKind::Version => {
                "; it was written by a newer CoreFlow: upgrade this tool"
            }
            _ => "",
        };
        let mut err = CliError::library(&path.display().to_string(), e);
        err.message.push_str(fix);
        err
    })
}

/// Checks that the data's matrices have the model's shape.
pub fn check_model_shape(model: &Model, path: &Path, s: &Stack<f64>) -> Result<(), CliError> {
    let info = model.info();
    if (s.rows, s.cols) != (info.rows, info.cols) {
        return Err(CliError::input(format!(
            "{}: matrices are {} x {}, but the model was fitted on {} x {}",
            path.display(),
            s.rows,
            s.cols,
            info.rows,
            info.cols
        )));
    }
    Ok(())
}

/// Writes `count` matrices of `rows x cols` (C order) as float64 `(N, m, n)`.
pub fn write_stack(
    path: &Path,
    data: &[f64],
    count: usize,
    rows: usize,
    cols: usize,
) -> Result<(), CliError> {
    npy::write_f64(path, &[count, rows, cols], data)
}

/// Runs `f` with a workspace of `req` bytes.
pub fn with_workspace<T>(
    req: coreflow::numerics::StackReq,
    f: impl FnOnce(&mut coreflow::numerics::MemStack) -> coreflow::Result<T>,
    context: &str,
) -> Result<T, CliError> {
    let mut buf = coreflow::numerics::MemBuffer::new(req);
    f(coreflow::numerics::MemStack::new(&mut buf)).ctx(context)
}
