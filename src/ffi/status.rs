//! Status codes, the thread-local error message and the panic boundary.

use crate::error::{Error, ErrorKind};
use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Result of every fallible function: `COREFLOW_OK` (0) or an error code.
/// Values are fixed and never reused.
pub type coreflow_status = i32;

/// Success.
pub const COREFLOW_OK: coreflow_status = 0;
/// A required pointer argument was NULL.
pub const COREFLOW_ERR_NULL: coreflow_status = 1;
/// An argument is outside its documented domain.
pub const COREFLOW_ERR_INVALID_ARGUMENT: coreflow_status = 2;
/// Dimensions or strides are inconsistent.
pub const COREFLOW_ERR_SHAPE: coreflow_status = 3;
/// NaN or infinity where finite values are required.
pub const COREFLOW_ERR_NON_FINITE: coreflow_status = 4;
/// The workspace is smaller than `coreflow_workspace_size` reported.
pub const COREFLOW_ERR_WORKSPACE: coreflow_status = 5;
/// Reading or writing a file failed.
pub const COREFLOW_ERR_IO: coreflow_status = 6;
/// A serialized model is corrupt or truncated.
pub const COREFLOW_ERR_FORMAT: coreflow_status = 7;
/// A serialized model or a struct has an unsupported version.
pub const COREFLOW_ERR_VERSION: coreflow_status = 8;
/// The progress callback asked to stop.
pub const COREFLOW_ERR_CANCELLED: coreflow_status = 9;
/// A computation produced a non-finite value or failed to converge.
pub const COREFLOW_ERR_NUMERICAL: coreflow_status = 10;
/// The model cannot do this (e.g. sampling from a geometry-only model).
pub const COREFLOW_ERR_UNSUPPORTED: coreflow_status = 11;
/// The host's allreduce callback returned nonzero (distributed fitting).
pub const COREFLOW_ERR_COMMUNICATION: coreflow_status = 12;
/// Memory for the request could not be obtained: the data, the options or
/// a loaded model ask for more than the machine has. Nothing was written.
pub const COREFLOW_ERR_OUT_OF_MEMORY: coreflow_status = 13;
/// A bug in the library (a caught panic or a broken invariant).
pub const COREFLOW_ERR_INTERNAL: coreflow_status = 99;

pub(crate) fn status_of(kind: ErrorKind) -> coreflow_status {
    match kind {
        ErrorKind::Null => COREFLOW_ERR_NULL,
        ErrorKind::InvalidArgument => COREFLOW_ERR_INVALID_ARGUMENT,
        ErrorKind::Shape => COREFLOW_ERR_SHAPE,
        ErrorKind::NonFinite => COREFLOW_ERR_NON_FINITE,
        ErrorKind::Workspace => COREFLOW_ERR_WORKSPACE,
        ErrorKind::Io => COREFLOW_ERR_IO,
        ErrorKind::Format => COREFLOW_ERR_FORMAT,
        ErrorKind::Version => COREFLOW_ERR_VERSION,
        ErrorKind::Cancelled => COREFLOW_ERR_CANCELLED,
        ErrorKind::Numerical => COREFLOW_ERR_NUMERICAL,
        ErrorKind::Unsupported => COREFLOW_ERR_UNSUPPORTED,
        ErrorKind::Communication => COREFLOW_ERR_COMMUNICATION,
        ErrorKind::OutOfMemory => COREFLOW_ERR_OUT_OF_MEMORY,
        _ => COREFLOW_ERR_INTERNAL,
    }
}

thread_local! {
    // NUL-terminated message of the last failed call on this thread; empty
    // (no bytes) when the last call succeeded. Const-initialised so that a
    // successful call never allocates.
    static LAST_ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn set_last_error(msg: &str) {
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        e.clear();
        e.extend(msg.bytes().filter(|&b| b != 0));
        e.push(0);
    });
}

fn clear_last_error() {
    LAST_ERROR.with(|e| e.borrow_mut().clear());
}

/// Runs `f` behind the panic boundary: an `Err` becomes its status code and
/// the thread's last error message, a panic becomes `COREFLOW_ERR_INTERNAL`.
pub(crate) fn boundary(f: impl FnOnce() -> Result<(), Error>) -> coreflow_status {
    clear_last_error();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => COREFLOW_OK,
        Ok(Err(e)) => {
            set_last_error(e.message());
            status_of(e.kind())
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last_error(&format!("internal error (please report): {what}"));
            COREFLOW_ERR_INTERNAL
        }
    }
}

/// Like [`boundary`] for functions that cannot report a status (`_init`,
/// `_free`): a panic is swallowed and recorded as the last error message.
pub(crate) fn boundary_void(f: impl FnOnce()) {
    let _ = boundary(|| {
        f();
        Ok(())
    });
}

/// ---- Errors ----------------------------------------------------------------
///
/// The message of the last failed call on the calling thread.
///
/// It names the bad argument and the reason.
///
/// Returns: the message; "" when the last call succeeded.
/// Ownership: the string belongs to the library; it stays valid until the next
/// CoreFlow call on the same thread.
/// Allocates: never.
/// Thread safety: thread-safe (one message per thread).
#[no_mangle]
pub extern "C" fn coreflow_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| {
        let e = e.borrow();
        if e.is_empty() {
            c"".as_ptr()
        } else {
            e.as_ptr() as *const c_char
        }
    })
}

/// A static name for a status code, e.g. "COREFLOW_ERR_SHAPE".
///
/// Unknown codes give "COREFLOW_UNKNOWN_STATUS".
///
/// Returns: the name.
/// Ownership: a static string, never freed.
/// Allocates: never.
/// Thread safety: thread-safe.
#[no_mangle]
pub extern "C" fn coreflow_status_name(status: coreflow_status) -> *const c_char {
    let s: &'static std::ffi::CStr = match status {
        COREFLOW_OK => c"COREFLOW_OK",
        COREFLOW_ERR_NULL => c"COREFLOW_ERR_NULL",
        COREFLOW_ERR_INVALID_ARGUMENT => c"COREFLOW_ERR_INVALID_ARGUMENT",
        COREFLOW_ERR_SHAPE => c"COREFLOW_ERR_SHAPE",
        COREFLOW_ERR_NON_FINITE => c"COREFLOW_ERR_NON_FINITE",
        COREFLOW_ERR_WORKSPACE => c"COREFLOW_ERR_WORKSPACE",
        COREFLOW_ERR_IO => c"COREFLOW_ERR_IO",
        COREFLOW_ERR_FORMAT => c"COREFLOW_ERR_FORMAT",
        COREFLOW_ERR_VERSION => c"COREFLOW_ERR_VERSION",
        COREFLOW_ERR_CANCELLED => c"COREFLOW_ERR_CANCELLED",
        COREFLOW_ERR_NUMERICAL => c"COREFLOW_ERR_NUMERICAL",
        COREFLOW_ERR_UNSUPPORTED => c"COREFLOW_ERR_UNSUPPORTED",
        COREFLOW_ERR_COMMUNICATION => c"COREFLOW_ERR_COMMUNICATION",
        COREFLOW_ERR_OUT_OF_MEMORY => c"COREFLOW_ERR_OUT_OF_MEMORY",
        COREFLOW_ERR_INTERNAL => c"COREFLOW_ERR_INTERNAL",
        _ => c"COREFLOW_UNKNOWN_STATUS",
    };
    s.as_ptr()
}
