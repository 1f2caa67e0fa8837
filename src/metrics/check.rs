//! Checks of the arguments of the metrics (sets, training sets, `top_k`)
//! and of their results (finite values).

use crate::batch::MatrixBatch;
use crate::error::{Error, Result};

/// Checks one set: at least `min_count` matrices, no mask, finite values.
pub(super) fn check_set(b: &MatrixBatch<'_>, what: &str, min_count: usize) -> Result<()> {
    if b.count() < min_count {
        return Err(Error::invalid(if min_count == 1 {
            format!("{what}: the set is empty")
        } else {
            format!(
                "{what}: {} matrices, but at least {min_count} are needed",
                b.count()
            )
        }));
    }
    if b.has_mask() {
        return Err(Error::invalid(format!(
            "{what}: metrics compare complete matrices; complete the set or drop its mask"
        )));
    }
    Ok(())
}

/// Checks a real/generated pair: sizes, equal shapes, then finiteness (the
/// full scan last, after the cheap checks).
pub(super) fn check_pair(
    real: &MatrixBatch<'_>,
    generated: &MatrixBatch<'_>,
    min_count: usize,
) -> Result<()> {
    check_set(real, "real", min_count)?;
    check_set(generated, "generated", min_count)?;
    if (generated.rows(), generated.cols()) != (real.rows(), real.cols()) {
        return Err(Error::shape(format!(
            "generated: {} x {} matrices, but real has {} x {}",
            generated.rows(),
            generated.cols(),
            real.rows(),
            real.cols()
        )));
    }
    real.check_finite("real")?;
    generated.check_finite("generated")
}

pub(super) fn finite(x: f64, what: &str) -> Result<f64> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Error::numerical(format!(
            "{what} is not finite (the values overflow in double precision)"
        )))
    }
}

/// Checks a training set against the real one: complete, finite, the same
/// matrix size, at least 1 matrix.
pub(super) fn check_train(real: &MatrixBatch<'_>, train: &MatrixBatch<'_>) -> Result<()> {
    check_set(train, "train", 1)?;
    if (train.rows(), train.cols()) != (real.rows(), real.cols()) {
        return Err(Error::shape(format!(
            "train: {} x {} matrices, but real has {} x {}",
            train.rows(),
            train.cols(),
            real.rows(),
            real.cols()
        )));
    }
    train.check_finite("train")
}

pub(super) fn check_top_k(top_k: usize) -> Result<()> {
    if top_k == 0 {
        return Err(Error::invalid("top_k: must be at least 1"));
    }
    Ok(())
}
