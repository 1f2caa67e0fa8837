//! The [`Reducer`] of a C host: its `opts->allreduce` callback.

use crate::error::{Error, ErrorKind, Result};
use crate::reduce::Reducer;
use std::ffi::c_void;

/// A host-provided allreduce: `f(user, buf, len)` must replace `buf` by its
/// element-wise sum over all participating processes (MPI_Allreduce with
/// MPI_SUM) and return 0, or return nonzero on failure. Every process must
/// make the same sequence of calls with the same lengths and must return
/// the same value (reduce an error flag together with the data), so that a
/// failure stops every process at the same point instead of leaving some
/// waiting in the next call.
pub(crate) type AllreduceFn =
    unsafe extern "C" fn(user: *mut c_void, buf: *mut f64, len: usize) -> i32;

/// A [`Reducer`] that calls a host's allreduce function.
#[derive(Copy, Clone, Debug)]
pub(crate) struct CallbackReducer {
    f: AllreduceFn,
    user: *mut c_void,
}

// SAFETY: the library calls the callback only from the thread that called
// the fit (never concurrently); the host vouches for `user` on that thread.
unsafe impl Sync for CallbackReducer {}
unsafe impl Send for CallbackReducer {}

impl CallbackReducer {
    /// Wraps a host callback and its user pointer.
    ///
    /// # Safety
    /// `f` must be callable with `user` for the duration of the fit and
    /// honour the contract of [`AllreduceFn`].
    pub(crate) unsafe fn new(f: AllreduceFn, user: *mut c_void) -> Self {
        Self { f, user }
    }
}

impl Reducer for CallbackReducer {
    fn sum_in_place(&self, buf: &mut [f64]) -> Result<()> {
        // SAFETY: the contract of `new`.
        let rc = unsafe { (self.f)(self.user, buf.as_mut_ptr(), buf.len()) };
        if rc != 0 {
            return Err(Error::new(
                ErrorKind::Communication,
                format!(
                    "opts->allreduce: the callback returned {rc} while summing {} values",
                    buf.len()
                ),
            ));
        }
        if buf.iter().any(|x| x.is_nan()) {
            return Err(Error::new(
                ErrorKind::Communication,
                "opts->allreduce: the callback returned NaN sums",
            ));
        }
        Ok(())
    }
}
