//! The tool's error type and its exit codes.
//!
//! Every failure ends the process with one line on stderr that says what to
//! fix. Exit codes: 2 for anything the user can correct (arguments, input
//! files, model files, shapes), 130 for a cancelled fit (the shell's code for
//! SIGINT), 1 for failures inside the computation.

use coreflow::ErrorKind;

/// Exit code for bad input.
pub const EXIT_INPUT: i32 = 2;
/// Exit code for a fit cancelled with Ctrl-C.
pub const EXIT_CANCELLED: i32 = 130;
/// Exit code for a failure inside the computation.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    /// An error the user fixes by changing the input or the arguments.
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_INPUT,
            message: message.into(),
        }
    }
    /// A broken invariant of the tool itself.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_FAILURE,
            message: message.into(),
        }
    }
    pub fn cancelled() -> Self {
        Self {
            code: EXIT_CANCELLED,
            message: "cancelled".into(),
        }
    }
    /// A library error, with `context` saying what the tool was doing
    /// (e.g. `"fit"`, or a file name when the error is about that file).
    pub fn library(context: &str, e: coreflow::Error) -> Self {
        let code = match e.kind() {
            ErrorKind::Cancelled => return Self::cancelled(),
            ErrorKind::InvalidArgument
            | ErrorKind::Shape
            | ErrorKind::NonFinite
            | ErrorKind::Io
            | ErrorKind::Format
            | ErrorKind::Version
            | ErrorKind::Unsupported
            | ErrorKind::OutOfMemory => EXIT_INPUT,
            _ => EXIT_FAILURE,
        };
        Self {
            code,
            message: format!("{context}: {}: {}", e.kind().as_str(), e.message()),
        }
    }
}

/// Shorthand: `result.ctx("fit")?` maps a library error with its context.
pub trait Context<T> {
    fn ctx(self, context: &str) -> Result<T, CliError>;
}

impl<T> Context<T> for coreflow::Result<T> {
    fn ctx(self, context: &str) -> Result<T, CliError> {
        self.map_err(|e| CliError::library(context, e))
    }
}
