//! Output files. A command never writes over one of its own inputs, never
//! replaces an existing file unless `--force` is given (both checked before
//! any work), and writes through a temporary file in the target's
//! directory that is renamed over the target only once complete: a failed
//! or interrupted command leaves the target as it was.

use crate::error::CliError;
use clap::Args;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// `--force`, shared by the commands that write a file.
#[derive(Args, Debug, Clone, Copy)]
pub struct ForceArg {
    /// Replace the output file when it already exists.
    #[arg(long)]
    pub force: bool,
}

/// True when `a` and `b` name the same existing file (through links and
/// different spellings too).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}

/// Refuses an output `out` (given with `flag`) that is one of the command's
/// `inputs` (pairs of flag and path), or, without `force`, any existing file.
pub fn check_output(
    out: &Path,
    flag: &str,
    inputs: &[(&str, &Path)],
    force: ForceArg,
) -> Result<(), CliError> {
    for (input_flag, input) in inputs {
        if same_file(out, input) {
            return Err(CliError::input(format!(
                "{flag} {}: is the {input_flag} input of this command; write the output to another file",
                out.display()
            )));
        }
    }
    if !force.force && std::fs::symlink_metadata(out).is_ok() {
        return Err(CliError::input(format!(
            "{flag} {}: exists; give --force to replace it, or choose another path",
            out.display()
        )));
    }
    Ok(())
}

/// The temporary file beside `path`: hidden, named after the target and
/// this process.
fn temporary_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `path` through `write` into a temporary file in the same
/// directory, synced and then renamed over `path` (atomic on one file
/// system); on failure the temporary file is removed and `path` untouched.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let tmp = temporary_for(path);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 16, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::input(format!("{}: cannot write: {e}", path.display()))
    })
}
