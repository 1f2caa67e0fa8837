//! Checks that a loaded model is one the maths can use.
//!
//! The file reader (`persist.rs`) guarantees a well-formed file: the
//! checksum matches, every length fits, every number is finite. A file with
//! a correct checksum may still hold numbers no fit produces, and the
//! inference calls rely on more than finiteness:
//!
//! - U (m x r) and V (n x s) have orthonormal columns, `||B^T B - I||_max
//!   <= 1e-6`. Then every entry of `U C V^T` is at most `sum |C_ab|` in
//!   magnitude, the bound that lets decode and sample prove their outputs
//!   finite before writing them.
//! - The principal directions of both Gaussians (the completion prior and
//!   the core model) are orthonormal to the same tolerance.
//! - Every stored mean, shift and matrix entry is at most [`VALUE_BOUND`] in
//!   magnitude, every variance, ridge and noise variance at most
//!   `VALUE_BOUND^2` (so standard deviations are at most `VALUE_BOUND`),
//!   every network weight at most [`WEIGHT_BOUND`]: sums of a few thousand
//!   such terms stay far from overflow.
//! - Sizes agree with each other and the network lies within the caps of
//!   [`crate::limits`].
//!
//! A model that fails is refused with `ErrorKind::Format`, naming the part.

use super::Model;
use crate::core_model::NetParams;
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::numerics::{self, Par};
use faer::{Accum, Mat, MatRef};

/// Tolerance of `||B^T B - I||_max` for the stored orthonormal bases.
pub const ORTHONORMAL_TOL: f64 = 1e-6;
/// Largest magnitude of a stored mean, shift or matrix entry.
pub const VALUE_BOUND: f64 = 1e150;
/// Largest magnitude of a network weight.
pub const WEIGHT_BOUND: f64 = 1e8;

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Format, format!("model data: {}", msg.into()))
}

/// Checks `model` (see the module documentation).
pub(crate) fn validate(model: &Model) -> Result<()> {
    let info = model.info();
    let (m, n, r, s) = (info.rows, info.cols, info.rank_rows, info.rank_cols);
    if model.u().shape() != (m, r) || model.v().shape() != (n, s) || info.core_dim != r * s {
        return Err(invalid("the bases do not match the sizes in META"));
    }
    orthonormal(model.u(), "BASU (U)")?;
    orthonormal(model.v(), "BASV (V)")?;
    if let Some(mean) = model.mean() {
        if mean.shape() != (m, n) {
            return Err(invalid("MEAN does not match the sizes in META"));
        }
        bounded_mat(mean, VALUE_BOUND, "MEAN")?;
    }
    let d = info.core_dim;
    let prior = model.core_prior();
    if prior.mean.len() != d
        || prior.basis.nrows() != d
        || prior.variances.len() != prior.basis.ncols()
    {
        return Err(invalid("PRIO sizes do not match the core dimension"));
    }
    bounded(&prior.mean, VALUE_BOUND, "PRIO mean")?;
    orthonormal(prior.basis.as_ref(), "PRIO directions")?;
    variances(&prior.variances, "PRIO variances")?;
    variances(
        &[prior.ridge, prior.noise_var],
        "PRIO ridge and noise variance",
    )?;
    if !(prior.ridge > 0.0 && prior.noise_var > 0.0) {
        return Err(invalid("PRIO ridge and noise variance must be positive"));
    }
    if let Some(core) = model.core_model() {
        let parts = core.to_parts();
        if parts.dim != d {
            return Err(invalid("CORE dimension differs from the core dimension"));
        }
        bounded(&parts.mean, VALUE_BOUND, "CORE mean")?;
        let q = parts.variances.len();
        orthonormal(
            MatRef::from_column_major_slice(&parts.basis, d, q),
            "CORE directions",
        )?;
        variances(&parts.variances, "CORE variances")?;
        variances(&[parts.ridge], "CORE ridge")?;
        if let Some(flow) = &parts.flow {
            let k = flow.scale.len();
            if flow.hidden > limits::MAX_FLOW_HIDDEN
                || flow.layers > limits::MAX_FLOW_LAYERS
                || flow.time_freqs > limits::MAX_FLOW_TIME_FREQS
                || limits::flow_parameters(k, flow.hidden, flow.layers, flow.time_freqs)
                    > limits::MAX_FLOW_PARAMETERS
            {
                return Err(invalid("CORE network is larger than the caps allow"));
            }
            let sd: Vec<f64> = flow.scale.iter().map(|x| x * x).collect();
            variances(&sd, "CORE flow scales")?;
            bounded(&flow.mm_shift, VALUE_BOUND, "CORE moment-matching shift")?;
            bounded(&flow.mm_matrix, VALUE_BOUND, "CORE moment-matching matrix")?;
            let weights_ok = match &flow.params {
                NetParams::F32(w) => w.iter().all(|x| (*x as f64).abs() <= WEIGHT_BOUND),
                NetParams::F64(w) => w.iter().all(|x| x.abs() <= WEIGHT_BOUND),
            };
            if !weights_ok {
                return Err(invalid(format!(
                    "CORE network weights exceed {WEIGHT_BOUND:e} in magnitude"
                )));
            }
        }
    }
    Ok(())
}

/// `||B^T B - I||_max <= ORTHONORMAL_TOL` (sequential: loading starts no
/// threads).
fn orthonormal(b: MatRef<'_, f64>, what: &str) -> Result<()> {
    bounded_mat(b, 1.0 + ORTHONORMAL_TOL, what)?;
    let k = b.ncols();
    let mut gram = Mat::<f64>::zeros(k, k);
    numerics::gemm(
        gram.as_mut(),
        Accum::Replace,
        b.transpose(),
        b,
        1.0,
        Par::Seq,
    );
    for j in 0..k {
        for i in 0..k {
            let target = if i == j { 1.0 } else { 0.0 };
            let ok = (gram[(i, j)] - target).abs() <= ORTHONORMAL_TOL;
            if !ok {
                return Err(invalid(format!(
                    "{what} does not have orthonormal columns (entry ({i}, {j}) of B^T B is {:e})",
                    gram[(i, j)]
                )));
            }
        }
    }
    Ok(())
}

fn bounded(values: &[f64], bound: f64, what: &str) -> Result<()> {
    if values.iter().all(|x| x.abs() <= bound) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} holds a value larger than {bound:e} in magnitude"
        )))
    }
}

fn bounded_mat(b: MatRef<'_, f64>, bound: f64, what: &str) -> Result<()> {
    let ok = b.norm_max() <= bound;
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} holds a value larger than {bound:e} in magnitude"
        )))
    }
}

/// Variances: in `[0, VALUE_BOUND^2]`.
fn variances(values: &[f64], what: &str) -> Result<()> {
    let cap = VALUE_BOUND * VALUE_BOUND;
    if values.iter().all(|v| *v >= 0.0 && *v <= cap) {
        Ok(())
    } else {
        Err(invalid(format!("{what} must lie in [0, {cap:e}]")))
    }
}
