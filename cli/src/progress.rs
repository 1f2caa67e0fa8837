//! Progress of the fit stages and Ctrl-C cancellation.
//!
//! On a terminal each stage shows a progress bar on stderr. When stderr is
//! not a terminal (redirected to a file or a pipe, as in batch jobs) bars
//! would not show, so each stage prints one line on stderr when it ends:
//! its name, the iterations done of the limit, the last objective or loss
//! and the time it took. `--quiet` silences both.
//!
//! The library reports progress through a callback that may return `false`
//! to cancel; the fit then unwinds and fails with `ErrorKind::Cancelled`.
//! The Ctrl-C handler therefore only sets a flag that the callback reads, so
//! a cancelled fit stops at its next report and releases everything
//! normally. A second Ctrl-C exits at once, for a stage that reports rarely.

use coreflow::{Progress, Stage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

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

/// How progress is shown.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Display {
    /// A bar per stage (stderr is a terminal).
    Bars,
    /// One line per stage when it ends (stderr is not a terminal).
    Lines,
    /// Nothing (`--quiet`).
    Quiet,
}

impl Display {
    /// Bars on a terminal, lines otherwise; nothing when `quiet`.
    pub fn for_stderr(quiet: bool) -> Self {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            Display::Bars
        } else {
            Display::Lines
        }
    }
}

/// The stage running now: its bar (hidden unless bars are shown) and what
/// its summary line needs.
struct Current {
    stage: Stage,
    bar: ProgressBar,
    started: Instant,
    last: Progress,
}

/// One bar per stage, replaced when the next stage starts (or one line
/// per stage, see the module documentation).
pub struct StageBars {
    current: Option<Current>,
    display: Display,
    cancel: Arc<AtomicBool>,
}

impl StageBars {
    pub fn new(quiet: bool, cancel: Arc<AtomicBool>) -> Self {
        Self::with_display(Display::for_stderr(quiet), cancel)
    }

    pub fn with_display(display: Display, cancel: Arc<AtomicBool>) -> Self {
        Self {
            current: None,
            display,
            cancel,
        }
    }

    /// The progress callback: updates the bar, returns `false` to cancel.
    pub fn report(&mut self, p: &Progress) -> bool {
        if self.cancel.load(Ordering::SeqCst) {
            return false;
        }
        if self.current.as_ref().map(|c| c.stage) != Some(p.stage) {
            self.finish();
            let bar = if self.display == Display::Bars {
                ProgressBar::with_draw_target(Some(p.total), ProgressDrawTarget::stderr())
            } else {
                ProgressBar::hidden()
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
            self.current = Some(Current {
                stage: p.stage,
                bar,
                started: Instant::now(),
                last: *p,
            });
        }
        let current = self.current.as_mut().expect("set above");
        current.last = *p;
        let bar = &current.bar;
        bar.set_length(p.total.max(p.iteration));
        bar.set_position(p.iteration);
        bar.set_message(format!("{} {:.4e}", loss_name(p.stage), p.loss));
        true
    }

    /// Closes the current bar (or prints the stage's line). Iterative
    /// stages usually stop well before their iteration limit; the bar then
    /// ends at the iterations done.
    pub fn finish(&mut self) {
        if let Some(c) = self.current.take() {
            c.bar.set_length(c.bar.position());
            c.bar.finish();
            match self.display {
                // The finished bar stays on screen with the cursor at its
                // end: end the line so the next bar or message starts on
                // its own.
                Display::Bars => eprintln!(),
                Display::Lines => {
                    eprintln!("{}", stage_line(&c.last, c.started.elapsed().as_secs_f64()))
                }
                Display::Quiet => {}
            }
        }
    }
}

impl StageBars {
    /// Ends after a failed fit: the bar closes as in [`finish`](Self::finish),
    /// but no stage line is printed (the error is the one line to read).
    pub fn abandon(&mut self) {
        if self.display == Display::Lines {
            self.current = None;
        } else {
            self.finish();
        }
    }
}

fn loss_name(s: Stage) -> &'static str {
    if s == Stage::Flow {
        "loss"
    } else {
        "objective"
    }
}

/// The line a stage prints when it ends without a terminal, e.g.
/// `subspace: 3/100 iterations, objective 1.2345e3, 0.12 s`.
pub fn stage_line(last: &Progress, secs: f64) -> String {
    let unit = if last.stage == Stage::Flow {
        "steps"
    } else {
        "iterations"
    };
    format!(
        "{}: {}/{} {unit}, {} {:.4e}, {secs:.2} s",
        stage_name(last.stage),
        last.iteration,
        last.total,
        loss_name(last.stage),
        last.loss
    )
}

impl Drop for StageBars {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lines_name_the_stage_and_its_progress() {
        let p = Progress {
            stage: Stage::Subspace,
            iteration: 3,
            total: 100,
            loss: 1234.5,
        };
        assert_eq!(
            stage_line(&p, 0.5),
            "subspace: 3/100 iterations, objective 1.2345e3, 0.50 s"
        );
        let f = Progress {
            stage: Stage::Flow,
            loss: 0.5,
            ..p
        };
        assert!(stage_line(&f, 2.0).starts_with("flow: 3/100 steps, loss 5.0000e-1"));
    }

    #[test]
    fn quiet_wins() {
        assert_eq!(Display::for_stderr(true), Display::Quiet);
    }
}
