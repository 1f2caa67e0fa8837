//! Progress bars for the fit stages and Ctrl-C cancellation.
//!
//! The library reports progress through a callback that may return `false`
//! to cancel; the fit then unwinds and fails with `ErrorKind::Cancelled`.
//! The Ctrl-C handler therefore only sets a flag that the callback reads, so
//! a cancelled fit stops at its next report and releases everything
//! normally. A second Ctrl-C exits at once, for a stage that reports rarely.

use coreflow::{Progress, Stage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Installs the Ctrl-C handler (once per process) and returns the flag it
/// sets. Commands call it before loading their input, so an early Ctrl-C
/// also ends in a clean cancellation at the first progress report.
pub fn install_ctrlc() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // Failing to install only loses clean cancellation; the default
        // SIGINT behaviour still stops the process.
        let _ = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                std::process::exit(crate::error::EXIT_CANCELLED);
            }
        });
        flag
    })
    .clone()
}

/// Fails with "cancelled" when Ctrl-C was pressed: for commands that run
/// several phases, checked between them.
pub fn check_cancelled() -> Result<(), crate::error::CliError> {
    if install_ctrlc().load(Ordering::SeqCst) {
        Err(crate::error::CliError::cancelled())
    } else {
        Ok(())
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Subspace => "subspace",
        Stage::Completion => "completion",
        Stage::Flow => "flow",
    }
}

/// One bar per stage, replaced when the next stage starts.
pub struct StageBars {
    current: Option<(Stage, ProgressBar)>,
    quiet: bool,
    cancel: Arc<AtomicBool>,
}

impl StageBars {
    pub fn new(quiet: bool, cancel: Arc<AtomicBool>) -> Self {
        Self {
            current: None,
            quiet,
            cancel,
        }
    }

    /// The progress callback: updates the bar, returns `false` to cancel.
    pub fn report(&mut self, p: &Progress) -> bool {
        if self.cancel.load(Ordering::SeqCst) {
            return false;
        }
        if self.current.as_ref().map(|c| c.0) != Some(p.stage) {
            self.finish();
            let bar = if self.quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::with_draw_target(Some(p.total), ProgressDrawTarget::stderr())
            };
            bar.set_style(
                ProgressStyle::with_template(
                    // A wide bar takes the width the text leaves, so the
                    // line never wraps in a narrow terminal.
                    "{prefix:>10} [{wide_bar}] {pos}/{len} {msg} {elapsed}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(stage_name(p.stage));
            self.current = Some((p.stage, bar));
        }
        let bar = &self.current.as_ref().expect("set above").1;
        bar.set_length(p.total.max(p.iteration));
        bar.set_position(p.iteration);
        let what = if p.stage == Stage::Flow {
            "loss"
        } else {
            "objective"
        };
        bar.set_message(format!("{what} {:.4e}", p.loss));
        true
    }

    /// Closes the current bar. Iterative stages usually stop well before
    /// their iteration limit; the bar then ends at the iterations done.
    pub fn finish(&mut self) {
        if let Some((_, bar)) = self.current.take() {
            bar.set_length(bar.position());
            bar.finish();
            // The finished bar stays on screen with the cursor at its end:
            // end the line so the next bar or message starts on its own.
            if !bar.is_hidden() {
                eprintln!();
            }
        }
    }
}

impl Drop for StageBars {
    fn drop(&mut self) {
        self.finish();
    }
}
