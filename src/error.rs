//! The error type shared by every layer.
//!
//! An [`Error`] is a kind (which maps one-to-one onto a C status code, see
//! `ffi`) and a message that names the offending argument and says what was
//! wrong with it, e.g. `"opts.rank_rows: 300 exceeds rows (200)"`.

use std::fmt;

/// What went wrong, in the categories of the C ABI status codes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A required pointer was null (C ABI only).
    Null,
    /// An argument is outside its documented domain.
    InvalidArgument,
    /// Dimensions or strides are inconsistent.
    Shape,
    /// NaN or infinity where finite values are required.
    NonFinite,
    /// A caller-provided workspace is too small.
    Workspace,
    /// Reading or writing a file failed.
    Io,
    /// A serialized model is corrupt or truncated.
    Format,
    /// A serialized model has an unsupported format version.
    Version,
    /// The progress callback asked to stop.
    Cancelled,
    /// A computation produced a non-finite value or failed to converge.
    Numerical,
    /// The model cannot perform the requested operation.
    Unsupported,
    /// The host's allreduce callback reported a failure.
    Communication,
    /// A bug: a broken internal invariant or a caught panic.
    Internal,
    /// Memory for the request could not be obtained (the sizes or options
    /// ask for more than the machine has).
    OutOfMemory,
}

impl ErrorKind {
    /// A short static name, e.g. `"invalid argument"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Null => "null pointer",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Shape => "shape mismatch",
            ErrorKind::NonFinite => "non-finite value",
            ErrorKind::Workspace => "workspace too small",
            ErrorKind::Io => "i/o error",
            ErrorKind::Format => "corrupt model data",
            ErrorKind::Version => "unsupported version",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Numerical => "numerical failure",
            ErrorKind::Unsupported => "unsupported operation",
            ErrorKind::Communication => "communication failure",
            ErrorKind::Internal => "internal error",
            ErrorKind::OutOfMemory => "out of memory",
        }
    }
}

/// An error with its kind and a message naming the argument and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// Builds an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    /// The category of the error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The human-readable message (names the argument and the reason).
    pub fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub(crate) fn shape(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Shape, message)
    }
    pub(crate) fn non_finite(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NonFinite, message)
    }
    pub(crate) fn numerical(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Numerical, message)
    }
    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub(crate) fn workspace(needed: usize, given: usize) -> Self {
        Self::new(
            ErrorKind::Workspace,
            format!(
                "ws_bytes: workspace of {given} bytes is too small, {needed} bytes are required"
            ),
        )
    }
    pub(crate) fn cancelled(stage: &str) -> Self {
        Self::new(
            ErrorKind::Cancelled,
            format!("progress callback cancelled the fit during the {stage} stage"),
        )
    }
    pub(crate) fn out_of_memory(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfMemory, message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
