//! The stopping rule: the relative increase of the objective at most `tol`
//! for 3 consecutive steps.

/// Relative increase `(new - old) / |old|` (0 when both are 0).
fn relative_increase(old: f64, new: f64) -> f64 {
    if old != 0.0 {
        (new - old) / old.abs()
    } else if new == old {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Counts consecutive iterations whose relative increase is at most `tol`.
pub(super) struct StopRule {
    tol: f64,
    streak: usize,
}

impl StopRule {
    /// Consecutive small increases required.
    pub(super) const STREAK: usize = 3;

    pub(super) fn new(tol: f64) -> Self {
        Self { tol, streak: 0 }
    }

    /// Records one iteration; true once the last `STREAK` were small.
    pub(super) fn update(&mut self, old: f64, new: f64) -> bool {
        if relative_increase(old, new) <= self.tol {
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        self.streak >= Self::STREAK
    }
}
