//! Exact minimum-cost assignment (the linear assignment problem).
//!
//! Given an `n x n` cost matrix `C`, find the permutation `pi` minimising
//! `sum_a C[a, pi(a)]`. The solver is the shortest-augmenting-path form of the
//! Hungarian method (Kuhn–Munkres with Jonker–Volgenant style dual updates):
//! rows are inserted one at a time; each insertion grows a Dijkstra-like
//! alternating tree over the columns using reduced costs
//! `C[i, j] - u_i - v_j >= 0`, updates the duals by the smallest slack and
//! augments along the path found. `O(n^3)` time, `O(n)` workspace, exact for
//! any finite costs.
//!
//! Used by the minibatch optimal-transport coupling: within a batch, pair
//! noise `x0_a` with data `x1_pi(a)` minimising `sum_a ||x0_a - x1_pi(a)||^2`.

use crate::error::{Error, Result};
use crate::numerics::{temp_slice, temp_slice_scratch};
use faer::dyn_stack::{MemStack, StackReq};

/// Workspace for [`min_cost_assignment`] of size `n`.
pub fn min_cost_assignment_scratch(n: usize) -> StackReq {
    StackReq::all_of(&[
        temp_slice_scratch::<f64>(n + 1),
        temp_slice_scratch::<f64>(n + 1),
        temp_slice_scratch::<f64>(n + 1),
        temp_slice_scratch::<usize>(n + 1),
        temp_slice_scratch::<usize>(n + 1),
        temp_slice_scratch::<u8>(n + 1),
    ])
}

/// Solves the assignment problem for the row-major `n x n` matrix `cost`
/// (`cost[a * n + b]`): writes `perm[a]` = the column assigned to row `a`
/// and returns the total cost. Fails with `ErrorKind::Numerical` on
/// non-finite costs.
pub fn min_cost_assignment(
    n: usize,
    cost: &[f64],
    perm: &mut [usize],
    stack: &mut MemStack,
) -> Result<f64> {
    assert!(cost.len() >= n * n && perm.len() >= n);
    if cost[..n * n].iter().any(|c| !c.is_finite()) {
        return Err(Error::numerical(
            "assignment: cost matrix has a non-finite entry",
        ));
    }
    // 1-based arrays: index 0 is the virtual column of the tree root.
    let (u, stack) = temp_slice(n + 1, 0.0f64, stack);
    let (v, stack) = temp_slice(n + 1, 0.0f64, stack);
    let (minv, stack) = temp_slice(n + 1, 0.0f64, stack);
    let (p, stack) = temp_slice(n + 1, 0usize, stack); // p[j] = row matched to column j
    let (way, stack) = temp_slice(n + 1, 0usize, stack);
    let (used, _) = temp_slice(n + 1, 0u8, stack);
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        minv.fill(f64::INFINITY);
        used.fill(0);
        loop {
            used[j0] = 1;
            let i0 = p[j0];
            let row = &cost[(i0 - 1) * n..i0 * n];
            let ui0 = u[i0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=n {
                if used[j] == 0 {
                    let cur = row[j - 1] - ui0 - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            if j1 == 0 {
                // Only possible with overflowing costs.
                return Err(Error::numerical(
                    "assignment: no augmenting path (cost overflow)",
                ));
            }
            for j in 0..=n {
                if used[j] != 0 {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        // Augment along the alternating path back to the root.
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut total = 0.0;
    for j in 1..=n {
        perm[p[j] - 1] = j - 1;
    }
    for (a, &b) in perm[..n].iter().enumerate() {
        total += cost[a * n + b];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;
    use faer::dyn_stack::MemBuffer;

    fn brute_force(n: usize, cost: &[f64]) -> f64 {
        let mut perm: Vec<usize> = (0..n).collect();
        let mut best = f64::INFINITY;
        // Heap's algorithm over all permutations.
        fn rec(k: usize, perm: &mut Vec<usize>, cost: &[f64], n: usize, best: &mut f64) {
            if k == 1 {
                let c: f64 = (0..n).map(|a| cost[a * n + perm[a]]).sum();
                *best = best.min(c);
                return;
            }
            for i in 0..k {
                rec(k - 1, perm, cost, n, best);
                if k % 2 == 0 {
                    perm.swap(i, k - 1);
                } else {
                    perm.swap(0, k - 1);
                }
            }
        }
        rec(n, &mut perm, cost, n, &mut best);
        best
    }

    #[test]
    fn matches_brute_force_on_small_problems() {
        let mut r = rng::stream(5, 0);
        let mut mem = MemBuffer::new(min_cost_assignment_scratch(8));
        for n in 1..=7 {
            for trial in 0..20 {
                let cost: Vec<f64> = (0..n * n)
                    .map(|_| {
                        let u = rng::uniform(&mut r);
                        // Some problems with many ties.
                        if trial % 3 == 0 {
                            (u * 4.0).floor()
                        } else {
                            u * 10.0 - 3.0
                        }
                    })
                    .collect();
                let mut perm = vec![0; n];
                let total =
                    min_cost_assignment(n, &cost, &mut perm, MemStack::new(&mut mem)).unwrap();
                let mut seen = vec![false; n];
                for &b in &perm {
                    assert!(!seen[b]);
                    seen[b] = true;
                }
                let best = brute_force(n, &cost);
                assert!((total - best).abs() < 1e-9, "n={n}: {total} vs {best}");
            }
        }
    }

    #[test]
    fn rejects_non_finite_costs() {
        let mut mem = MemBuffer::new(min_cost_assignment_scratch(2));
        let mut perm = [0; 2];
        let err = min_cost_assignment(
            2,
            &[0.0, f64::NAN, 1.0, 2.0],
            &mut perm,
            MemStack::new(&mut mem),
        )
        .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Numerical);
    }
}
