//! Shape checks of the kernels' arguments.

use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use faer::MatRef;

pub(super) fn check_square(what: &str, a: MatRef<'_, f64>, n: usize) -> Result<()> {
    if a.nrows() != n || a.ncols() != n {
        return Err(Error::shape(format!(
            "{what}: {} x {}, expected {n} x {n}",
            a.nrows(),
            a.ncols()
        )));
    }
    Ok(())
}

pub(super) fn check_len(what: &str, len: usize, expected: usize) -> Result<()> {
    if len != expected {
        return Err(Error::shape(format!(
            "{what}: {len} values, expected {expected}"
        )));
    }
    Ok(())
}

pub(super) fn check_mean(mean: Option<MatRef<'_, f64>>, m: usize, n: usize) -> Result<()> {
    if let Some(mean) = mean {
        if mean.nrows() != m || mean.ncols() != n {
            return Err(Error::shape(format!(
                "mean: {} x {}, expected {m} x {n}",
                mean.nrows(),
                mean.ncols()
            )));
        }
    }
    Ok(())
}

/// Checks U (m x r) and V (n x s) against the data and returns (r, s).
pub(super) fn check_bases(
    data: &MatrixBatch,
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
) -> Result<(usize, usize)> {
    let (m, n) = (data.rows(), data.cols());
    if u.nrows() != m || u.ncols() == 0 || u.ncols() > m {
        return Err(Error::shape(format!(
            "u: {} x {}, expected {m} rows and 1 to {m} columns",
            u.nrows(),
            u.ncols()
        )));
    }
    if v.nrows() != n || v.ncols() == 0 || v.ncols() > n {
        return Err(Error::shape(format!(
            "v: {} x {}, expected {n} rows and 1 to {n} columns",
            v.nrows(),
            v.ncols()
        )));
    }
    if data.count() == 0 {
        return Err(Error::invalid(
            "train: the batch holds no matrix (count is 0)",
        ));
    }
    Ok((u.ncols(), v.ncols()))
}
