//! Ranks chosen by energy: the smallest ranks whose leading eigenvalues of
//! A and B hold the requested fraction of the traces, within the
//! core-dimension cap, and the step that raises them when a fit keeps less.

/// The smallest k whose leading `k` eigenvalues (descending; negative
/// rounding values count as 0) hold at least `energy` of their sum, with a
/// rounding allowance of `len * eps` of the sum so that `energy = 1` selects
/// the numerical rank. At least 1.
pub fn rank_by_energy(eigenvalues: &[f64], energy: f64) -> usize {
    let total: f64 = eigenvalues.iter().map(|v| v.max(0.0)).sum();
    if total.is_nan() || total <= 0.0 {
        return 1;
    }
    let target = energy * total - eigenvalues.len() as f64 * f64::EPSILON * total;
    let mut cum = 0.0;
    for (k, v) in eigenvalues.iter().enumerate() {
        cum += v.max(0.0);
        if cum >= target {
            return k + 1;
        }
    }
    eigenvalues.len().max(1)
}

/// The largest core dimension `r s` that ranks chosen by energy may reach
/// for `count` training matrices: half the count (at least 1). A core model
/// of `d` dimensions estimates a `d x d` covariance (and the flow holds out
/// part of the cores), so a core with about as many dimensions as there are
/// samples is poorly determined; explicit ranks are not capped.
pub fn energy_core_dim_cap(count: usize) -> usize {
    (count / 2).max(1)
}

/// Fractions of the total held by the leading 0, 1, 2, ... eigenvalues
/// (negative rounding values count as 0).
fn cumulative_fractions(eigenvalues: &[f64]) -> Vec<f64> {
    let total: f64 = eigenvalues.iter().map(|v| v.max(0.0)).sum();
    let mut out = Vec::with_capacity(eigenvalues.len() + 1);
    let mut cum = 0.0;
    out.push(0.0);
    for v in eigenvalues {
        cum += v.max(0.0);
        out.push(if total > 0.0 { cum / total } else { 1.0 });
    }
    out
}

/// The ranks a fit starts from: the given ranks, and where a rank is 0 the
/// smallest one holding `energy` of its Gram trace ([`rank_by_energy`]).
/// When `r s` exceeds `cap`, the ranks chosen by energy are lowered to the
/// pair within the cap that keeps the most energy by the separable
/// estimate `e_rows(r) e_cols(s)` (the fractions of the two Gram traces
/// held by the leading r and s eigenvalues), never below 1.
pub fn initial_ranks(
    row_eigenvalues: &[f64],
    col_eigenvalues: &[f64],
    rank_rows: usize,
    rank_cols: usize,
    energy: f64,
    cap: usize,
) -> (usize, usize) {
    let r = if rank_rows > 0 {
        rank_rows
    } else {
        rank_by_energy(row_eigenvalues, energy)
    };
    let s = if rank_cols > 0 {
        rank_cols
    } else {
        rank_by_energy(col_eigenvalues, energy)
    };
    if r * s <= cap || (rank_rows > 0 && rank_cols > 0) {
        return (r, s);
    }
    let rows = cumulative_fractions(row_eigenvalues);
    let cols = cumulative_fractions(col_eigenvalues);
    let frac = |f: &[f64], k: usize| f.get(k).copied().unwrap_or(1.0);
    let row_choices = if rank_rows > 0 { r..=r } else { 1..=r };
    let col_choices = if rank_cols > 0 { s..=s } else { 1..=s };
    let mut best: Option<(usize, usize, f64)> = None;
    for a in row_choices {
        for b in col_choices.clone() {
            if a * b > cap {
                continue;
            }
            let kept = frac(&rows, a) * frac(&cols, b);
            if best.is_none_or(|(ba, bb, bk)| kept > bk || (kept == bk && a * b < ba * bb)) {
                best = Some((a, b, kept));
            }
        }
    }
    match best {
        Some((a, b, _)) => (a, b),
        // A given rank alone exceeds the cap: the other one is 1.
        None => (
            if rank_rows > 0 { r } else { 1 },
            if rank_cols > 0 { s } else { 1 },
        ),
    }
}

/// One step up from `(r, s)` for ranks chosen by energy (`grow_rows`,
/// `grow_cols`) within `rows x cols` and the core-dimension `cap`: the rank
/// whose next eigenvalue, weighted by the fraction the other rank holds,
/// gains most per added core dimension. Returns the new ranks and that
/// weighted eigenvalue, or None when no rank can grow.
pub(super) fn grow_ranks(
    row_eigenvalues: &[f64],
    col_eigenvalues: &[f64],
    (r, s): (usize, usize),
    (grow_rows, grow_cols): (bool, bool),
    cap: usize,
) -> Option<(usize, usize, f64)> {
    let value = |vals: &[f64], k: usize| vals.get(k).copied().unwrap_or(0.0).max(0.0);
    let rows = cumulative_fractions(row_eigenvalues);
    let cols = cumulative_fractions(col_eigenvalues);
    let row = (grow_rows && r < row_eigenvalues.len() && (r + 1) * s <= cap)
        .then(|| value(row_eigenvalues, r) * cols[s.min(cols.len() - 1)]);
    let col = (grow_cols && s < col_eigenvalues.len() && r * (s + 1) <= cap)
        .then(|| value(col_eigenvalues, s) * rows[r.min(rows.len() - 1)]);
    match (row, col) {
        (Some(a), Some(b)) if a / s as f64 >= b / r as f64 => Some((r + 1, s, a)),
        (Some(_), Some(b)) => Some((r, s + 1, b)),
        (Some(a), None) => Some((r + 1, s, a)),
        (None, Some(b)) => Some((r, s + 1, b)),
        (None, None) => None,
    }
}

/// Refits after raising ranks chosen by energy whose fit kept less than the
/// requested energy, at most this many times.
pub(super) const MAX_ENERGY_REFITS: usize = 8;

/// Why a fit whose ranks were chosen by energy keeps less than the
/// requested `energy` (`explained` is the fraction it keeps), or None when
/// it keeps enough (up to rounding) or both ranks were given. `count` is
/// the number of training matrices; `rows_chosen`, `cols_chosen` say which
/// ranks were chosen by energy.
pub fn energy_shortfall(
    explained: f64,
    energy: f64,
    (r, s): (usize, usize),
    (rows, cols): (usize, usize),
    count: usize,
    (rows_chosen, cols_chosen): (bool, bool),
) -> Option<String> {
    let short = explained < energy - ENERGY_SLACK;
    if !(rows_chosen || cols_chosen) || !short {
        return None;
    }
    let cap = energy_core_dim_cap(count);
    let why = if r == rows && s == cols {
        "the ranks are full".to_string()
    } else if !rows_chosen {
        format!("the given row rank {r} bounds it")
    } else if !cols_chosen {
        format!("the given column rank {s} bounds it")
    } else if (r + 1) * s > cap && r * (s + 1) > cap {
        format!(
            "ranks chosen by energy keep the core at most {cap} dimensions (half the {count} \
             training matrices), and {r} x {s} is the largest within that; set the ranks \
             explicitly to go beyond"
        )
    } else {
        format!(
            "the ranks were raised {MAX_ENERGY_REFITS} times without reaching it; set the ranks \
             explicitly"
        )
    };
    Some(format!(
        "explained energy {explained:.4} is below the requested {energy}: {why}"
    ))
}

/// Rounding allowance of the energy a fit must keep (relative to the total).
pub(super) const ENERGY_SLACK: f64 = 1e-9;
