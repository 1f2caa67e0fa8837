//! The metrics of DESIGN.md section 6 through the C ABI: one call scores a
//! generated set against a real one (SVE, top-k W1, MMD^2, mean and
//! covariance errors, 1-NN accuracy, and with the training set
//! (`coreflow_metrics_with_train`) the closest-record ratio), as
//! [`crate::metrics::evaluate_with_train`] does in Rust.

use super::options::{init_sized, read_versioned};
use super::status::{boundary, boundary_void, coreflow_status};
use super::views::{batch_from_c, coreflow_matrices, null};
use crate::batch::MatrixBatch;
use crate::error::{Error, Result};
use crate::metrics::{self, EvalOptions};
use std::mem::{offset_of, size_of};

/// Options of `coreflow_metrics`. Fill with `coreflow_metrics_options_init`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct coreflow_metrics_options {
    /// `sizeof(coreflow_metrics_options)`; set by `coreflow_metrics_options_init`.
    pub struct_size: usize,
    /// Worker threads; 0 = all cores (the default). The results do not
    /// depend on it.
    pub threads: u32,
    /// Leading singular values in the top-k spectrum distance, at least 1;
    /// default 10 (capped at min(rows, cols)).
    pub top_k: u32,
}

/// Smallest `struct_size` accepted for `coreflow_metrics_options` (ABI v1).
pub(crate) const METRICS_OPTIONS_V1_SIZE: usize =
    offset_of!(coreflow_metrics_options, top_k) + size_of::<u32>();

fn metrics_options_default() -> coreflow_metrics_options {
    let d = EvalOptions::default();
    coreflow_metrics_options {
        struct_size: size_of::<coreflow_metrics_options>(),
        threads: d.threads as u32,
        top_k: d.top_k as u32,
    }
}

/// The scores of a generated set against a real one, filled by
/// `coreflow_metrics`. Set `struct_size = sizeof(coreflow_metrics_result)`
/// before the call.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct coreflow_metrics_result {
    /// `sizeof(coreflow_metrics_result)`, set by the caller.
    pub struct_size: usize,
    /// Spectrum error `||mean_B sv - mean_A sv|| / ||mean_A sv||`.
    pub sve: f64,
    /// Mean over the leading `top_k` singular values of the 1-Wasserstein
    /// distance between their distributions, relative to the real mean.
    pub topk_w1: f64,
    /// Unbiased MMD^2 of the Gaussian kernels at `h0 / 2`, `h0`, `2 h0`
    /// (`h0` the median pairwise distance of the pooled set), averaged.
    pub mmd2: f64,
    /// `||mean_B X - mean_A X|| / rms_A`.
    pub mean_error: f64,
    /// Relative Frobenius error of the row covariance (rows x rows).
    pub rowcov_error: f64,
    /// Relative Frobenius error of the column covariance (cols x cols).
    pub colcov_error: f64,
    /// Balanced leave-one-out 1-nearest-neighbour accuracy of telling the
    /// generated matrices from the real ones in the pooled set (Frobenius
    /// distance; ties count as a random vote): 0.5 is ideal, 1 means fully
    /// separable, below 0.5 the generated matrices sit on the real ones.
    pub nn_accuracy: f64,
    /// Distance-to-closest-record ratio: the median distance of the
    /// generated matrices to their closest training matrix, over the same
    /// median of the real (held-out) matrices; about 1 for fresh data, below
    /// 1 points at copying the training set, 0 for copies. NaN without a
    /// training set (`coreflow_metrics`, or `coreflow_metrics_with_train`
    /// with `train` NULL).
    pub dcr_ratio: f64,
}

/// Smallest `struct_size` accepted for `coreflow_metrics_result` (ABI v1).
pub(crate) const METRICS_RESULT_V1_SIZE: usize =
    offset_of!(coreflow_metrics_result, colcov_error) + size_of::<f64>();

/// ---- Metrics ---------------------------------------------------------------
///
/// Fills `o` with the defaults (all cores, top_k 10) and sets `o->struct_size`.
///
/// NULL is ignored. The header's `coreflow_metrics_options_init` macro
/// calls `coreflow_metrics_options_init_sized` with the host's `sizeof *o`.
///
/// Returns: nothing.
/// Ownership: the caller owns `o`.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_metrics_options_init(o: *mut coreflow_metrics_options) {
    boundary_void(|| {
        if !o.is_null() {
            o.write(metrics_options_default());
        }
    })
}

/// Writes the defaults into a host's `coreflow_metrics_options` of `size` bytes.
///
/// The sized counterpart of `coreflow_metrics_options_init` (see
/// `coreflow_fit_options_init_sized`).
///
/// Returns: nothing.
/// Ownership: the caller owns `o`.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_metrics_options_init_sized(
    o: *mut coreflow_metrics_options,
    size: usize,
) {
    boundary_void(|| init_sized(o, size, metrics_options_default()))
}

/// Reads the host's metrics options; NULL means the defaults.
///
/// # Safety
/// `o` must be NULL or readable for `(*o).struct_size` bytes.
unsafe fn read_metrics_options(o: *const coreflow_metrics_options) -> Result<EvalOptions> {
    let c = if o.is_null() {
        metrics_options_default()
    } else {
        read_versioned(o, metrics_options_default(), METRICS_OPTIONS_V1_SIZE, "o")?
    };
    if c.top_k == 0 {
        return Err(Error::invalid("o->top_k: must be at least 1"));
    }
    Ok(EvalOptions {
        threads: c.threads as usize,
        top_k: c.top_k as usize,
        mmd: true,
    })
}

/// Scores the `generated` set against the `real` one and writes the scores into `*out`.
///
/// The metrics of the design (section 6); the caller sets
/// `out->struct_size = sizeof(coreflow_metrics_result)` first. Both sets
/// hold complete (mask NULL), finite matrices of the same size, at least 2
/// each (the unbiased MMD^2 needs pairs); their counts may differ. `o`
/// (NULL = defaults) sets the threads and top_k. `out->dcr_ratio` is NaN:
/// the closest-record ratio needs the training set
/// (`coreflow_metrics_with_train`). A host built against an older header (a
/// smaller `out->struct_size`) gets the fields its struct holds.
///
/// Returns: `COREFLOW_OK` or an error status, `*out` untouched on failure.
/// Ownership: the caller owns all buffers, only read (or written) during the
/// call.
/// Allocates: yes (the metrics are not a hot path).
/// Thread safety: thread-safe. Uses up to `o->threads` threads.
#[no_mangle]
pub unsafe extern "C" fn coreflow_metrics(
    real: *const coreflow_matrices,
    generated: *const coreflow_matrices,
    o: *const coreflow_metrics_options,
    out: *mut coreflow_metrics_result,
) -> coreflow_status {
    boundary(|| metrics_impl(real, generated, None, o, out))
}

/// `coreflow_metrics` with the training set the generator was fitted on.
///
/// Adds the distance-to-closest-record ratio (`out->dcr_ratio`). `train`
/// holds complete (mask NULL), finite matrices of the size of `real`, at
/// least 1; NULL means none (then `out->dcr_ratio` is NaN, as with
/// `coreflow_metrics`). Everything else as `coreflow_metrics`.
///
/// Returns: `COREFLOW_OK` or an error status, `*out` untouched on failure.
/// Ownership: the caller owns all buffers, only read (or written) during the
/// call.
/// Allocates: yes (the metrics are not a hot path).
/// Thread safety: thread-safe. Uses up to `o->threads` threads.
#[no_mangle]
pub unsafe extern "C" fn coreflow_metrics_with_train(
    real: *const coreflow_matrices,
    generated: *const coreflow_matrices,
    train: *const coreflow_matrices,
    o: *const coreflow_metrics_options,
    out: *mut coreflow_metrics_result,
) -> coreflow_status {
    boundary(|| {
        let t = if train.is_null() {
            None
        } else {
            Some(batch_from_c(train, "train")?)
        };
        metrics_impl(real, generated, t, o, out)
    })
}

/// The shared body of `coreflow_metrics` and `coreflow_metrics_with_train`.
///
/// # Safety
/// As for `coreflow_metrics`.
unsafe fn metrics_impl(
    real: *const coreflow_matrices,
    generated: *const coreflow_matrices,
    train: Option<MatrixBatch<'_>>,
    o: *const coreflow_metrics_options,
    out: *mut coreflow_metrics_result,
) -> Result<()> {
    let a = batch_from_c(real, "real")?;
    let b = batch_from_c(generated, "generated")?;
    let opts = read_metrics_options(o)?;
    if out.is_null() {
        return Err(null("out"));
    }
    let size = *(out as *const usize);
    if size < METRICS_RESULT_V1_SIZE {
        return Err(Error::invalid(format!(
            "out->struct_size: {size} is smaller than the smallest supported size {METRICS_RESULT_V1_SIZE}; set it to sizeof(coreflow_metrics_result)"
        )));
    }
    let train_count = train.as_ref().map_or(0, |t| t.count());
    crate::limits::reserve_probe(
        crate::limits::metrics_bytes_estimate(
            a.count(),
            b.count() + train_count,
            a.rows(),
            a.cols(),
        ),
        "generated",
    )?;
    // On a pool of the call's own (see `crate::pool`).
    let m = crate::pool::on_pool(opts.threads, |_, _| {
        metrics::evaluate_with_train(&a, &b, train.as_ref(), &opts)
    })??;
    let full = coreflow_metrics_result {
        struct_size: size.min(size_of::<coreflow_metrics_result>()),
        sve: m.sve,
        topk_w1: m.topk_w1,
        mmd2: m.mmd.map_or(f64::NAN, |x| x.mmd2),
        mean_error: m.mean_error,
        rowcov_error: m.rowcov_rel_error,
        colcov_error: m.colcov_rel_error,
        nn_accuracy: m.nn_accuracy.unwrap_or(f64::NAN),
        dcr_ratio: m.dcr_ratio.unwrap_or(f64::NAN),
    };
    let n = size.min(size_of::<coreflow_metrics_result>());
    std::ptr::copy_nonoverlapping(&full as *const _ as *const u8, out as *mut u8, n);
    Ok(())
}
