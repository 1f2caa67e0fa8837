//! `coreflow`: fit, sample, complete, score and evaluate CoreFlow models of
//! stacks of matrices stored as NumPy `.npy` files.
//!
//! Each subcommand lives in `commands/`; `npy` reads and writes the files,
//! `input` loads and checks what the commands share, `plot` draws the
//! demo's pictures. Every failure prints one line on stderr and exits with
//! the code documented in `error`.

/// `println!` for results on stdout that ends the process quietly when the
/// reader has gone (e.g. output piped into `head`), where `println!` would
/// panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))
    };
}

mod baseline;
mod commands;
mod error;
mod input;
mod npy;
mod output;
mod plot;
mod progress;

use clap::{Args, Parser, Subcommand, ValueEnum};
use error::CliError;

#[derive(Parser)]
#[command(
    name = "coreflow",
    version,
    about = "Generative models of stacks of matrices: shared subspaces plus a flow on the cores",
    long_about = "Generative models of stacks of matrices: shared subspaces plus a flow on the cores.\n\n\
        Data are NumPy .npy files of shape (N, m, n), float64 or float32, C or Fortran order; \
        masks are uint8 or bool arrays of the same shape (nonzero = observed). Outputs are \
        float64 C-order .npy files.\n\n\
        Start with `coreflow demo`, which fits a built-in synthetic set and writes pictures."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fit a model to a stack of matrices and save it.
    Fit(commands::fit::FitArgs),
    /// Draw new matrices from a fitted model.
    Sample(commands::sample::SampleArgs),
    /// Fill the missing entries of partially observed matrices.
    Complete(commands::complete::CompleteArgs),
    /// Draw completions of partially observed matrices from the model's law given the observed entries.
    Impute(commands::impute::ImputeArgs),
    /// Log-likelihood of each matrix under a model, and its distance from the model's geometry.
    Score(commands::score::ScoreArgs),
    /// Compare a generated set with a real one (spectra, MMD^2, moments).
    Eval(commands::eval::EvalArgs),
    /// Print a model file's summary.
    Info(commands::info::InfoArgs),
    /// Project matrices to their cores C = U^T (X - Xbar) V, saved as (N, r, s).
    Encode(commands::codec::EncodeArgs),
    /// Map cores (N, r, s) back to matrices X = U C V^T + Xbar.
    Decode(commands::codec::DecodeArgs),
    /// Fit a built-in synthetic set, compare with baselines, draw pictures.
    Demo(commands::demo::DemoArgs),
}

/// Subspace refinement method.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Block-exact alternating eigen-updates (fast, the default).
    Hooi,
    /// Riemannian conjugate gradient on the Stiefel manifolds.
    Riemannian,
}

impl From<Method> for coreflow::SubspaceMethod {
    fn from(m: Method) -> Self {
        match m {
            Method::Hooi => coreflow::SubspaceMethod::Hooi,
            Method::Riemannian => coreflow::SubspaceMethod::Riemannian,
        }
    }
}

/// Options shared by the commands that run numerical work in parallel.
#[derive(Args, Clone, Copy, Debug)]
pub struct ThreadArgs {
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0, value_name = "T")]
    pub threads: usize,
}

/// `RxS` or a single `R` for both ranks.
pub fn parse_rank(s: &str) -> Result<(usize, usize), String> {
    let parse = |t: &str| -> Result<usize, String> {
        match t.trim().parse::<usize>() {
            Ok(0) => {
                Err("ranks must be at least 1 (omit --rank to choose them by --energy)".into())
            }
            Ok(v) => Ok(v),
            Err(_) => Err(format!("{t:?} is not a rank: use e.g. 20x20 or 20")),
        }
    };
    match s.split_once(['x', 'X']) {
        Some((r, c)) => Ok((parse(r)?, parse(c)?)),
        None => {
            let r = parse(s)?;
            Ok((r, r))
        }
    }
}

/// Formats a clap error as one line (the error and any tip), keeping help
/// and version output as clap prints them.
fn clap_failure(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            // clap writes the error, its details and tips, then usage and a
            // pointer to --help, separated by blank lines: keep the first
            // parts, each on one line.
            let text = e.to_string();
            let parts: Vec<String> = text
                .split("\n\n")
                .filter(|p| {
                    let p = p.trim_start();
                    !p.is_empty()
                        && !p.starts_with("Usage:")
                        && !p.starts_with("For more information")
                })
                .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            let line = parts.join("; ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("error: {line} (see --help)");
            std::process::exit(error::EXIT_INPUT);
        }
    }
}

/// Writes one line to stdout; a closed pipe ends the process with success,
/// as for other command-line tools.
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = writeln!(o, "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(error::EXIT_FAILURE);
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Fit(a) => commands::fit::run(a),
        Command::Sample(a) => commands::sample::run(a),
        Command::Complete(a) => commands::complete::run(a),
        Command::Impute(a) => commands::impute::run(a),
        Command::Score(a) => commands::score::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Encode(a) => commands::codec::encode(a),
        Command::Decode(a) => commands::codec::decode(a),
        Command::Demo(a) => commands::demo::run(a),
    }
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| clap_failure(e));
    if let Err(e) = run(cli) {
        if e.code == error::EXIT_CANCELLED {
            eprintln!("cancelled");
        } else {
            // One line, whatever the message's source put into it.
            eprintln!("error: {}", e.message.replace('\n', " "));
        }
        std::process::exit(e.code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_parse() {
        assert_eq!(parse_rank("20x30"), Ok((20, 30)));
        assert_eq!(parse_rank("7"), Ok((7, 7)));
        assert_eq!(parse_rank("4X5"), Ok((4, 5)));
        assert!(parse_rank("0x3").is_err());
        assert!(parse_rank("ax3").is_err());
        assert!(parse_rank("").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
