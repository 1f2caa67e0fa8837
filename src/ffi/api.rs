//! The exported functions.

use super::options::*;
use super::reducer::CallbackReducer;
use super::status::{boundary, boundary_void, coreflow_status};
use super::views::*;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::numerics::{MemStack, StackReq};
use crate::reduce::LocalReducer;
use std::ffi::{c_char, c_void};
use std::mem::MaybeUninit;

/// ABI version of this header; compare with `coreflow_abi_version()`.
pub const COREFLOW_ABI_VERSION: u32 = 1;

/// Tag of a live model handle: a cheap check that a pointer is a model.
const MODEL_MAGIC: u64 = 0x434f_5245_464c_4f57; // "COREFLOW"

/// A fitted model (opaque). Immutable after fitting: any number of threads
/// may use one model at the same time, each with its own workspace.
pub struct coreflow_model {
    magic: u64,
    model: Model,
}

/// Type-checked view of a handle.
unsafe fn model_ref<'a>(m: *const coreflow_model) -> Result<&'a Model> {
    if m.is_null() {
        return Err(null("m"));
    }
    if (m as usize) % std::mem::align_of::<coreflow_model>() != 0 || (*m).magic != MODEL_MAGIC {
        return Err(Error::invalid(
            "m: not a live coreflow_model (freed, or not a model handle)",
        ));
    }
    Ok(&(*m).model)
}

fn into_handle(model: Model) -> *mut coreflow_model {
    Box::into_raw(Box::new(coreflow_model {
        magic: MODEL_MAGIC,
        model,
    }))
}

/// Runs `call` on a workspace view over the caller's buffer (any alignment).
/// `ws_bytes` below `need` (what `coreflow_workspace_size` reports for the
/// call) is `COREFLOW_ERR_WORKSPACE` whatever the buffer's alignment, as
/// documented; the call still checks its other arguments first (it gets an
/// empty workspace), so errors come in the same order for any workspace.
unsafe fn with_workspace(
    ws: *mut c_void,
    ws_bytes: usize,
    need: StackReq,
    call: impl FnOnce(&mut MemStack) -> Result<()>,
) -> Result<()> {
    if ws.is_null() && ws_bytes != 0 {
        return Err(null("ws"));
    }
    let needed = need.unaligned_bytes_required();
    let too_small = ws_bytes < needed;
    let buf: &mut [MaybeUninit<u8>] = if too_small || ws.is_null() {
        &mut []
    } else {
        std::slice::from_raw_parts_mut(ws as *mut MaybeUninit<u8>, ws_bytes)
    };
    match call(MemStack::new(buf)) {
        Err(e) if too_small && e.kind() == crate::error::ErrorKind::Workspace => {
            Err(Error::workspace(needed, ws_bytes))
        }
        r => r,
    }
}

/// ---- Version ---------------------------------------------------------------
///
/// The ABI version of the library (`COREFLOW_ABI_VERSION` it was built with).
///
/// Returns: the version number.
/// Ownership: nothing to release.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub extern "C" fn coreflow_abi_version() -> u32 {
    COREFLOW_ABI_VERSION
}

/// The library version, e.g. "0.1.0".
///
/// Returns: a NUL-terminated string.
/// Ownership: a static string, never freed.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub extern "C" fn coreflow_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// ---- Options ---------------------------------------------------------------
///
/// Fills `opts` with the defaults and sets `opts->struct_size`.
///
/// NULL is ignored. The header's `coreflow_fit_options_init` macro calls
/// `coreflow_fit_options_init_sized` with the host's `sizeof *opts`.
///
/// Returns: nothing.
/// Ownership: the caller owns `opts`.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_fit_options_init(opts: *mut coreflow_fit_options) {
    boundary_void(|| {
        if !opts.is_null() {
            opts.write(fit_options_default());
        }
    })
}

/// Writes the defaults into a host's `coreflow_fit_options` of `size` bytes.
///
/// Writes the first `size` bytes of the default options (at most the
/// library's `sizeof(coreflow_fit_options)`) into `opts` and sets
/// `opts->struct_size` to the number of bytes written. Unlike
/// `coreflow_fit_options_init`, never writes past a host struct compiled
/// against an older, smaller header; the header's `coreflow_fit_options_init`
/// macro calls it with `sizeof *opts`. NULL, or a `size` smaller than
/// `sizeof(size_t)`, is ignored.
///
/// Returns: nothing.
/// Ownership: the caller owns `opts`.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_fit_options_init_sized(
    opts: *mut coreflow_fit_options,
    size: usize,
) {
    boundary_void(|| init_sized(opts, size, fit_options_default()))
}

/// Fills `o` with the defaults (RK4, 16 steps) and sets `o->struct_size`.
///
/// NULL is ignored. The header's `coreflow_sample_options_init` macro calls
/// `coreflow_sample_options_init_sized` with the host's `sizeof *o`.
///
/// Returns: nothing.
/// Ownership: the caller owns `o`.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_sample_options_init(o: *mut coreflow_sample_options) {
    boundary_void(|| {
        if !o.is_null() {
            o.write(sample_options_default());
        }
    })
}

/// Writes the defaults into a host's `coreflow_sample_options` of `size` bytes.
///
/// The sized counterpart of `coreflow_sample_options_init` (see
/// `coreflow_fit_options_init_sized`).
///
/// Returns: nothing.
/// Ownership: the caller owns `o`.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_sample_options_init_sized(
    o: *mut coreflow_sample_options,
    size: usize,
) {
    boundary_void(|| init_sized(o, size, sample_options_default()))
}

/// ---- Models: fit, inspect, release -----------------------------------------
///
/// Fits a model to `train` and stores a new handle in `*out`.
///
/// Error messages name the fields of `coreflow_fit_options`.
///
/// Returns: `COREFLOW_OK`, or an error status with `*out` untouched:
/// `COREFLOW_ERR_INVALID_ARGUMENT` for an option beyond its cap
/// (`COREFLOW_MAX_*`) or a view larger than memory,
/// `COREFLOW_ERR_OUT_OF_MEMORY` when the fit needs more memory than can be
/// allocated (checked before the fit starts).
/// Ownership: the caller owns `*out` and releases it with
/// `coreflow_model_free`; `train` is only read during the call.
/// Allocates: yes, once, before its loops.
/// Thread safety: thread-safe (calls on different threads are
/// independent). Uses up to `opts->threads` threads, on a pool created for
/// the call and joined before it returns.
#[no_mangle]
pub unsafe extern "C" fn coreflow_fit(
    train: *const coreflow_matrices,
    opts: *const coreflow_fit_options,
    out: *mut *mut coreflow_model,
) -> coreflow_status {
    boundary(|| {
        let batch = batch_from_c(train, "train")?;
        let copts = read_fit_options(opts)?;
        if out.is_null() {
            return Err(null("out"));
        }
        let fopts = to_fit_options(&copts)?;
        crate::limits::check_fit_options(&fopts, crate::limits::Naming::C)?;
        let user = copts.progress_user;
        let mut progress = |p: &crate::model::Progress| match copts.progress {
            None => true,
            Some(cb) => cb(user, &to_c_progress(p)) == 0,
        };
        let model = match copts.allreduce {
            None => Model::fit_with_reducer(&batch, &fopts, &LocalReducer, &mut progress),
            Some(f) => {
                let reducer = CallbackReducer::new(f, copts.allreduce_user);
                Model::fit_with_reducer(&batch, &fopts, &reducer, &mut progress)
            }
        }
        // The Rust checks name the Rust fields; the caller set C ones.
        .map_err(with_c_field_names)?;
        out.write(into_handle(model));
        Ok(())
    })
}

/// Releases a model.
///
/// NULL is ignored.
///
/// Returns: nothing.
/// Ownership: `model` and everything it held are released; the handle is
/// invalid after the call.
/// Allocates: never (it only frees).
/// Thread safety: thread-safe as long as no other thread still uses the model.
#[no_mangle]
pub unsafe extern "C" fn coreflow_model_free(model: *mut coreflow_model) {
    boundary_void(|| {
        if model.is_null() || model_ref(model).is_err() {
            return;
        }
        (*model).magic = 0;
        drop(Box::from_raw(model));
    })
}

/// Writes the model summary into `*out`.
///
/// The caller sets `out->struct_size = sizeof(coreflow_model_info)` first.
///
/// Returns: `COREFLOW_OK` or an error status.
/// Ownership: the caller owns `*out`; the model is only read.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_model_get_info(
    m: *const coreflow_model,
    out: *mut coreflow_model_info,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        write_model_info(out, model.info())
    })
}

/// Copies the bases U and V of the model.
///
/// U (rows x rank_rows) goes into `u` and V (cols x rank_cols) into `v`,
/// both column-major.
///
/// Returns: `COREFLOW_OK` or an error status.
/// Ownership: the caller owns both buffers.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_model_subspaces(
    m: *const coreflow_model,
    u: *mut f64,
    v: *mut f64,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        if u.is_null() {
            return Err(null("u"));
        }
        if v.is_null() {
            return Err(null("v"));
        }
        for (src, dst) in [(model.u(), u), (model.v(), v)] {
            let (rows, cols) = src.shape();
            let out = std::slice::from_raw_parts_mut(dst, rows * cols);
            for j in 0..cols {
                for i in 0..rows {
                    out[i + j * rows] = src[(i, j)];
                }
            }
        }
        Ok(())
    })
}

/// Copies the subtracted mean (rows x cols, column-major) into `mean`.
///
/// Zeros when the model is not centered.
///
/// Returns: `COREFLOW_OK` or an error status.
/// Ownership: the caller owns `mean`.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_model_mean(
    m: *const coreflow_model,
    mean: *mut f64,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        if mean.is_null() {
            return Err(null("mean"));
        }
        let info = model.info();
        let out = std::slice::from_raw_parts_mut(mean, info.rows * info.cols);
        match model.mean() {
            Some(x) => {
                for j in 0..info.cols {
                    for i in 0..info.rows {
                        out[i + j * info.rows] = x[(i, j)];
                    }
                }
            }
            None => out.fill(0.0),
        }
        Ok(())
    })
}

/// Operations that take a workspace (32-bit; values below).
pub type coreflow_op = i32;
/// `coreflow_sample`.
pub const COREFLOW_OP_SAMPLE: coreflow_op = 0;
/// `coreflow_encode`.
pub const COREFLOW_OP_ENCODE: coreflow_op = 1;
/// `coreflow_decode`.
pub const COREFLOW_OP_DECODE: coreflow_op = 2;
/// `coreflow_log_prob`.
pub const COREFLOW_OP_LOG_PROB: coreflow_op = 3;
/// `coreflow_complete`.
pub const COREFLOW_OP_COMPLETE: coreflow_op = 4;
/// `coreflow_impute`.
pub const COREFLOW_OP_IMPUTE: coreflow_op = 5;

fn op_scratch(
    model: &Model,
    op: coreflow_op,
    count: usize,
    o: &coreflow_sample_options,
) -> Result<StackReq> {
    match op {
        COREFLOW_OP_ENCODE => Ok(model.encode_scratch(count)),
        COREFLOW_OP_DECODE => Ok(model.decode_scratch(count)),
        COREFLOW_OP_COMPLETE => Ok(model.complete_scratch(count)),
        COREFLOW_OP_SAMPLE | COREFLOW_OP_LOG_PROB | COREFLOW_OP_IMPUTE => {
            if model.core_model().is_none() {
                return Err(Error::unsupported(
                    "m: the model was fitted without a core model (flow_steps 0): it cannot sample, score or impute",
                ));
            }
            let so = to_solver_options(o)?;
            Ok(match op {
                COREFLOW_OP_SAMPLE => model.sample_scratch(count, &so),
                COREFLOW_OP_LOG_PROB => model.log_prob_scratch(count, &so),
                _ => model.impute_scratch(count, &so),
            })
        }
        _ => Err(Error::invalid(format!(
            "op: {op} is not a COREFLOW_OP_* value"
        ))),
    }
}

/// ---- Per-matrix operations (caller-provided workspace) ---------------------
///
/// Stores in `*bytes` the workspace size of calls of `op`.
///
/// The size serves any call of `op` on model `m` with at most `count`
/// matrices and options `o` (NULL = defaults). Any pointer alignment of the
/// workspace is accepted.
///
/// Returns: `COREFLOW_OK` or an error status.
/// Ownership: the caller owns `*bytes` and, later, the workspace.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_workspace_size(
    m: *const coreflow_model,
    op: coreflow_op,
    count: usize,
    o: *const coreflow_sample_options,
    bytes: *mut usize,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        let so = read_sample_options(o)?;
        if bytes.is_null() {
            return Err(null("bytes"));
        }
        let req = op_scratch(model, op, count, &so)?;
        if req.layout().is_err() {
            return Err(Error::invalid(format!(
                "count: {count} matrices need a workspace larger than can exist"
            )));
        }
        bytes.write(req.unaligned_bytes_required());
        Ok(())
    })
}

/// The number of core values `count * core_dim` of a view named `what`,
/// refused when it overflows or exceeds the largest possible buffer.
fn cores_len(count: usize, core_dim: usize, what: &str) -> Result<usize> {
    count
        .checked_mul(core_dim)
        .filter(|&n| n <= isize::MAX as usize / std::mem::size_of::<f64>())
        .ok_or_else(|| {
            Error::invalid(format!(
                "{what}->count: {count} cores of {core_dim} doubles exceed the largest possible buffer"
            ))
        })
}

/// Writes the cores `C_j = U^T (X_j - Xbar) V` of the matrices of `input` into `cores`.
///
/// `cores` receives `input->count` blocks of `rank_rows * rank_cols`
/// values, each the column-major core. `ws` is a workspace of `ws_bytes`
/// bytes (`coreflow_workspace_size` with `COREFLOW_OP_ENCODE`).
///
/// Returns: `COREFLOW_OK`, or an error status with `cores` untouched
/// (`COREFLOW_ERR_NUMERICAL` when a core would not be finite).
/// Ownership: the caller owns all buffers.
/// Allocates: never.
/// Thread safety: thread-safe; runs on the calling thread only.
#[no_mangle]
pub unsafe extern "C" fn coreflow_encode(
    m: *const coreflow_model,
    input: *const coreflow_matrices,
    cores: *mut f64,
    ws: *mut c_void,
    ws_bytes: usize,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        let batch = batch_from_c(input, "input")?;
        let n = cores_len(batch.count(), model.core_dim(), "input")?;
        if cores.is_null() && n > 0 {
            return Err(null("cores"));
        }
        let out: &mut [f64] = if n == 0 {
            &mut []
        } else {
            std::slice::from_raw_parts_mut(cores, n)
        };
        with_workspace(ws, ws_bytes, model.encode_scratch(batch.count()), |stack| {
            model.encode(&batch, out, stack)
        })
    })
}

/// Writes `X_j = U C_j V^T + Xbar` into the matrices of `out` from `cores`.
///
/// `cores` holds `out->count` column-major cores of `rank_rows * rank_cols`
/// values. `ws` is a workspace of `ws_bytes` bytes (`COREFLOW_OP_DECODE`).
///
/// Returns: `COREFLOW_OK`, or an error status with `out` untouched
/// (`COREFLOW_ERR_NUMERICAL` for a core too large to decode into finite
/// values).
/// Ownership: the caller owns all buffers.
/// Allocates: never.
/// Thread safety: thread-safe; runs on the calling thread only.
#[no_mangle]
pub unsafe extern "C" fn coreflow_decode(
    m: *const coreflow_model,
    cores: *const f64,
    out: *mut coreflow_matrices_mut,
    ws: *mut c_void,
    ws_bytes: usize,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        let mut batch = batch_mut_from_c(out, "out")?;
        let n = cores_len(batch.count(), model.core_dim(), "out")?;
        if cores.is_null() && n > 0 {
            return Err(null("cores"));
        }
        let input: &[f64] = if n == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(cores, n)
        };
        let need = model.decode_scratch(batch.count());
        with_workspace(ws, ws_bytes, need, |stack| {
            model.decode(input, &mut batch, stack)
        })
    })
}

/// Completes partially observed matrices.
///
/// `out` receives each matrix of `partial` with its missing entries (mask
/// zero, or NaN when `partial->mask` is NULL) replaced by the model's MAP
/// completion (the observed entries weighted by the inverse of the noise
/// law's variance profile, as in `coreflow_impute`); observed entries are
/// copied bitwise. `out` must not overlap
/// `partial`. `ws` is a workspace of `ws_bytes` bytes
/// (`COREFLOW_OP_COMPLETE`).
///
/// Returns: `COREFLOW_OK`, or an error status with `out` untouched (every
/// matrix is completed and checked before the first is written).
/// Ownership: the caller owns all buffers.
/// Allocates: never.
/// Thread safety: thread-safe; runs on the calling thread only.
#[no_mangle]
pub unsafe extern "C" fn coreflow_complete(
    m: *const coreflow_model,
    partial: *const coreflow_matrices,
    out: *mut coreflow_matrices_mut,
    ws: *mut c_void,
    ws_bytes: usize,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        // Checked before the views exist: Rust may not hold a shared and an
        // exclusive view of the same memory.
        if !partial.is_null() && !out.is_null() && views_overlap(partial, out) {
            return Err(Error::invalid(
                "out: overlaps partial; complete into a separate buffer",
            ));
        }
        let input = batch_from_c(partial, "partial")?;
        let mut batch = batch_mut_from_c(out, "out")?;
        with_workspace(
            ws,
            ws_bytes,
            model.complete_scratch(input.count()),
            |stack| model.complete(&input, &mut batch, stack),
        )
    })
}

/// Draws `out->count` new matrices into `out`.
///
/// Matrix `j` is sample number `first_index + j` of stream `seed`, so a run
/// split into several calls, or spread over threads, gives bitwise the same
/// matrices. `o` selects the ODE solver (NULL = RK4 with 16 steps). `ws` is
/// a workspace of `ws_bytes` bytes (`COREFLOW_OP_SAMPLE`). `out->count = 0`
/// needs no workspace.
///
/// Returns: `COREFLOW_OK`, or an error status with `out` untouched (every
/// sample is checked before `out` is written): `COREFLOW_ERR_UNSUPPORTED`
/// for a model fitted with `flow_steps = 0`, `COREFLOW_ERR_NUMERICAL` for a
/// sample that would not be finite.
/// Ownership: the caller owns all buffers.
/// Allocates: never.
/// Thread safety: thread-safe; runs on the calling thread only.
#[no_mangle]
pub unsafe extern "C" fn coreflow_sample(
    m: *const coreflow_model,
    o: *const coreflow_sample_options,
    seed: u64,
    first_index: u64,
    out: *mut coreflow_matrices_mut,
    ws: *mut c_void,
    ws_bytes: usize,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        let so = to_solver_options(&read_sample_options(o)?)?;
        let mut batch = batch_mut_from_c(out, "out")?;
        let need = model.sample_scratch(batch.count(), &so);
        with_workspace(ws, ws_bytes, need, |stack| {
            model.sample(&so, seed, first_index, &mut batch, stack)
        })
    })
}

/// Writes the log-density of each matrix of `input` into `log_prob`.
///
/// `log_prob[j]` is the log-density of the core of matrix `j` of `input`
/// under the model (a density over matrices in the learned geometry), and
/// `residual[j]` (when `residual` is not NULL) its distance from that
/// geometry, `||Y - U U^T Y V V^T|| / ||Y||` with `Y = X - Xbar` (computed
/// with scaled sums of squares: finite inputs give finite residuals). `o`
/// selects the solver (NULL = RK4, 16 steps, exact divergence). `ws` is a
/// workspace of `ws_bytes` bytes (`COREFLOW_OP_LOG_PROB`).
///
/// Returns: `COREFLOW_OK` with every value finite, or an error status
/// (`COREFLOW_ERR_NUMERICAL` when some value would not be finite) with
/// `log_prob` and `residual` untouched.
/// Ownership: the caller owns all buffers.
/// Allocates: never.
/// Thread safety: thread-safe; runs on the calling thread only.
#[no_mangle]
pub unsafe extern "C" fn coreflow_log_prob(
    m: *const coreflow_model,
    o: *const coreflow_sample_options,
    input: *const coreflow_matrices,
    log_prob: *mut f64,
    residual: *mut f64,
    ws: *mut c_void,
    ws_bytes: usize,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        let so = to_solver_options(&read_sample_options(o)?)?;
        let batch = batch_from_c(input, "input")?;
        let n = batch.count();
        if log_prob.is_null() && n > 0 {
            return Err(null("log_prob"));
        }
        let lp: &mut [f64] = if n == 0 {
            &mut []
        } else {
            std::slice::from_raw_parts_mut(log_prob, n)
        };
        let res = if residual.is_null() || n == 0 {
            None
        } else {
            Some(std::slice::from_raw_parts_mut(residual, n))
        };
        with_workspace(ws, ws_bytes, model.log_prob_scratch(n, &so), |stack| {
            model.log_prob(&so, &batch, lp, res, stack)
        })
    })
}

/// Reads a NUL-terminated UTF-8 path argument.
unsafe fn path_arg<'a>(path: *const c_char) -> Result<&'a str> {
    if path.is_null() {
        return Err(null("path"));
    }
    std::ffi::CStr::from_ptr(path)
        .to_str()
        .map_err(|_| Error::invalid("path: is not valid UTF-8"))
}

/// ---- Persistence -----------------------------------------------------------
///
/// Writes the model to the file `path` (versioned, checksummed).
///
/// Returns: `COREFLOW_OK` or an error status (`COREFLOW_ERR_IO` when the file
/// cannot be written).
/// Ownership: the caller owns `path`; the model is only read.
/// Allocates: yes, the file image.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_model_save(
    m: *const coreflow_model,
    path: *const c_char,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        model.save(path_arg(path)?)
    })
}

/// Reads a model from the file `path` and stores a new handle in `*out`.
///
/// Returns: `COREFLOW_OK`, or an error status with `*out` untouched:
/// `COREFLOW_ERR_IO` (unreadable file), `COREFLOW_ERR_FORMAT` (corrupt or
/// truncated, or a model the maths cannot use: bases that are not
/// orthonormal, unbounded parameters), `COREFLOW_ERR_VERSION` (newer format).
/// Ownership: the caller owns `*out` (release with `coreflow_model_free`).
/// Allocates: yes, the model; starts no thread.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_model_load(
    path: *const c_char,
    out: *mut *mut coreflow_model,
) -> coreflow_status {
    boundary(|| {
        let p = path_arg(path)?;
        if out.is_null() {
            return Err(null("out"));
        }
        let model = Model::load(p)?;
        out.write(into_handle(model));
        Ok(())
    })
}

/// Serializes the model into `buf` and stores the image length in `*len`.
///
/// `buf` has a capacity of `cap` bytes. With `buf` NULL, only `*len` is
/// written (ask for the length first). A `cap` smaller than the length gives
/// `COREFLOW_ERR_INVALID_ARGUMENT` and writes only `*len`.
///
/// Returns: `COREFLOW_OK` or an error status.
/// Ownership: the caller owns `buf`.
/// Allocates: yes, a temporary image.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_model_to_bytes(
    m: *const coreflow_model,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        if len.is_null() {
            return Err(null("len"));
        }
        let image = model.to_bytes();
        len.write(image.len());
        if buf.is_null() {
            return Ok(());
        }
        if cap < image.len() {
            return Err(Error::invalid(format!(
                "cap: {cap} bytes are too few, the model needs {} (written to *len)",
                image.len()
            )));
        }
        std::ptr::copy_nonoverlapping(image.as_ptr(), buf, image.len());
        Ok(())
    })
}

/// Reads a model from `len` bytes at `buf` and stores a new handle in `*out`.
///
/// Never reads outside `buf[0..len]`.
///
/// Returns: `COREFLOW_OK`, or an error status with `*out` untouched
/// (`COREFLOW_ERR_FORMAT`, also for a model the maths cannot use;
/// `COREFLOW_ERR_VERSION`).
/// Ownership: the caller owns `buf` and `*out` (release with
/// `coreflow_model_free`).
/// Allocates: yes, the model; starts no thread.
/// Thread safety: thread-safe.
#[no_mangle]
pub unsafe extern "C" fn coreflow_model_from_bytes(
    buf: *const u8,
    len: usize,
    out: *mut *mut coreflow_model,
) -> coreflow_status {
    boundary(|| {
        if buf.is_null() && len > 0 {
            return Err(null("buf"));
        }
        if out.is_null() {
            return Err(null("out"));
        }
        let data: &[u8] = if len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(buf, len)
        };
        let model = Model::from_bytes(data)?;
        out.write(into_handle(model));
        Ok(())
    })
}

/// Multiple imputation: draws of the missing entries given the observed ones.
///
/// Matrix `j` of `out` is draw number `first_index + j` of stream `seed`
/// from the model's law of matrix `j` of `partial` given its observed
/// entries (mask nonzero, or not NaN when `partial->mask` is NULL): the core
/// from the core model conditioned on the observed entries under the
/// model's noise law (variance `noise_variance * rho_a * gamma_b`, a profile
/// over rows and columns fitted with the model: the observed entries are
/// weighted by `1 / (rho_a gamma_b)`), then `U C V^T + Xbar` plus independent
/// noise of that law on the missing entries: Gaussian, or Student-t with
/// `noise_dof` degrees of freedom (`coreflow_model_info`), truncated at
/// `noise_bound` standard deviations (the largest standardised training
/// residual; a value beyond it is drawn again), and each drawn entry is
/// censored to the training range `[data_min, data_max]`: a draw holds no
/// value the training data do not support (files of format version 5 and
/// older have neither bound). Observed entries are copied bitwise. A `partial` with `sample_stride = 0` repeats one matrix
/// (many draws of the same matrix; it is conditioned once). Exact for the
/// Gaussian and mixture core models; for the flow, importance resampling
/// from the Gaussian fit of the cores (64 proposals per draw). `o` selects
/// the ODE solver as in `coreflow_sample` (NULL = defaults) and, by
/// `o->impute_level`, the noise level: `COREFLOW_IMPUTE_LEVEL_FITTED` (the
/// default) conditions and draws at the fitted sigma^2, the exact posterior
/// under the model; `COREFLOW_IMPUTE_LEVEL_OBSERVED` at `lambda sigma^2`,
/// `lambda` re-estimated on the observed entries of each matrix from their
/// residuals against the posterior mean, shrunk towards 1 by 10
/// pseudo-observations (profile and tails unchanged). Draws depend
/// only on (seed, index): a run split into calls or spread over threads
/// gives bitwise the same matrices. `out` must not overlap `partial`. `ws`
/// is a workspace of `ws_bytes` bytes (`COREFLOW_OP_IMPUTE`).
///
/// Returns: `COREFLOW_OK`, or an error status with `out` untouched (every
/// draw is computed and checked before the first is written):
/// `COREFLOW_ERR_UNSUPPORTED` for a model fitted with `flow_steps = 0`,
/// `COREFLOW_ERR_INVALID_ARGUMENT` for an `o->impute_level` that is not a
/// `COREFLOW_IMPUTE_LEVEL_*` value, `COREFLOW_ERR_NUMERICAL` when a draw
/// would not be finite.
/// Ownership: the caller owns all buffers.
/// Allocates: never.
/// Thread safety: thread-safe; runs on the calling thread only.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn coreflow_impute(
    m: *const coreflow_model,
    o: *const coreflow_sample_options,
    seed: u64,
    first_index: u64,
    partial: *const coreflow_matrices,
    out: *mut coreflow_matrices_mut,
    ws: *mut c_void,
    ws_bytes: usize,
) -> coreflow_status {
    boundary(|| {
        let model = model_ref(m)?;
        let co = read_sample_options(o)?;
        let so = to_solver_options(&co)?;
        let level = to_impute_level(&co)?;
        // Checked before the views exist: Rust may not hold a shared and an
        // exclusive view of the same memory.
        if !partial.is_null() && !out.is_null() && views_overlap(partial, out) {
            return Err(Error::invalid(
                "out: overlaps partial; impute into a separate buffer",
            ));
        }
        let input = batch_from_c(partial, "partial")?;
        let mut batch = batch_mut_from_c(out, "out")?;
        let need = model.impute_scratch(input.count(), &so);
        with_workspace(ws, ws_bytes, need, |stack| {
            model
                .impute_with_level(&so, level, seed, first_index, &input, &mut batch, stack)
                .map(|_| ())
        })
    })
}
