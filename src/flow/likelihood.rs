//! Log-densities of a flow by the instantaneous change of variables.
//!
//! Along a trajectory of `dx/dt = v(x, t)` the density of the pushed-forward
//! distribution obeys `d log p_t(x(t)) / dt = -div v(x(t), t)`. With the
//! base `p_0 = N(0, I_k)`:
//!
//! `log p_1(x1) = log N(x(0); 0, I) - int_0^1 div v(x(t), t) dt`,
//!
//! where `x(t)` solves the ODE backwards from `x(1) = x1`. The solver
//! integrates the augmented state `(x, l)` from `t = 1` to `0` with
//! `dl/dt = div v`, `l(1) = 0`, so `l(0) = -int_0^1 div v dt` and
//! `log p_1(x1) = log N(x(0)) + l(0)`.
//!
//! The divergence is either exact (the Jacobian trace, see
//! [`DivergenceField::eval_div`]) or the Hutchinson estimate `e^T J e` with a
//! Rademacher probe `e` per row, drawn once per trajectory from stream
//! `(seed, first_index + row)` and carried in the state (zero velocity, not
//! in the error norm) so that adaptive solvers may reorder rows.
//! Standardisation and moment-matching terms are the caller's.

use super::network::VelocityNet;
use super::ode::{integrate, integrate_scratch, Divergence, SolverOptions, Times, VelocityField};
use super::real::Real;
use crate::error::{Error, Result};
use crate::numerics::{temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch};
use crate::rng;
use faer::dyn_stack::{MemStack, StackReq};
use faer::prelude::ReborrowMut;
use faer::{MatMut, MatRef, Par};

/// A velocity field that also provides Jacobian traces.
pub trait DivergenceField: VelocityField {
    /// Workspace of [`eval_div`](Self::eval_div) for `batch` rows.
    fn eval_div_scratch(&self, batch: usize) -> StackReq;
    /// `v <- v(x, t)` and `div[i] <- trace(dv/dx)` at row `i`.
    fn eval_div(
        &self,
        times: Times<'_>,
        x: MatRef<'_, f64>,
        v: MatMut<'_, f64>,
        div: &mut [f64],
        stack: &mut MemStack,
    );
    /// Workspace of [`eval_jvp`](Self::eval_jvp) for `batch` rows.
    fn eval_jvp_scratch(&self, batch: usize) -> StackReq;
    /// `v <- v(x, t)` and `quad[i] <- e_i^T (dv/dx) e_i` with `e_i` row `i`
    /// of `probe`.
    fn eval_jvp(
        &self,
        times: Times<'_>,
        x: MatRef<'_, f64>,
        probe: MatRef<'_, f64>,
        v: MatMut<'_, f64>,
        quad: &mut [f64],
        stack: &mut MemStack,
    );
}

impl<T: Real> DivergenceField for VelocityNet<T> {
    fn eval_div_scratch(&self, batch: usize) -> StackReq {
        self.forward_div_scratch(batch)
    }
    fn eval_div(
        &self,
        times: Times<'_>,
        x: MatRef<'_, f64>,
        v: MatMut<'_, f64>,
        div: &mut [f64],
        stack: &mut MemStack,
    ) {
        self.forward_div(times, x, v, div, Par::Seq, stack);
    }
    fn eval_jvp_scratch(&self, batch: usize) -> StackReq {
        self.forward_jvp_scratch(batch)
    }
    fn eval_jvp(
        &self,
        times: Times<'_>,
        x: MatRef<'_, f64>,
        probe: MatRef<'_, f64>,
        v: MatMut<'_, f64>,
        quad: &mut [f64],
        stack: &mut MemStack,
    ) {
        self.forward_jvp(times, x, probe, v, quad, Par::Seq, stack);
    }
}

/// The augmented field `(x, l, e) -> (v, div, 0)`.
struct Augmented<'a, F: ?Sized> {
    field: &'a F,
    hutchinson: bool,
}

impl<F: DivergenceField + ?Sized> VelocityField for Augmented<'_, F> {
    fn dim(&self) -> usize {
        let k = self.field.dim();
        if self.hutchinson {
            2 * k + 1
        } else {
            k + 1
        }
    }
    fn error_dim(&self) -> usize {
        self.field.dim() + 1
    }
    fn eval_scratch(&self, batch: usize) -> StackReq {
        StackReq::all_of(&[
            temp_slice_scratch::<f64>(batch),
            if self.hutchinson {
                self.field.eval_jvp_scratch(batch)
            } else {
                self.field.eval_div_scratch(batch)
            },
        ])
    }
    fn eval(&self, times: Times<'_>, x: MatRef<'_, f64>, v: MatMut<'_, f64>, stack: &mut MemStack) {
        let k = self.field.dim();
        let b = x.nrows();
        let (div, stack) = temp_slice(b, 0.0f64, stack);
        let mut v = v;
        if self.hutchinson {
            self.field.eval_jvp(
                times,
                x.subcols(0, k),
                x.subcols(k + 1, k),
                v.rb_mut().subcols_mut(0, k),
                div,
                stack,
            );
            v.rb_mut().subcols_mut(k + 1, k).fill(0.0);
        } else {
            self.field.eval_div(
                times,
                x.subcols(0, k),
                v.rb_mut().subcols_mut(0, k),
                div,
                stack,
            );
        }
        for (i, d) in div.iter().enumerate() {
            v[(i, k)] = *d;
        }
    }
}

/// Workspace for [`log_prob`] of `batch` rows.
pub fn log_prob_scratch<F: DivergenceField + ?Sized>(
    field: &F,
    batch: usize,
    opts: &SolverOptions,
) -> StackReq {
    let aug = Augmented {
        field,
        hutchinson: matches!(opts.divergence, Divergence::Hutchinson { .. }),
    };
    StackReq::all_of(&[
        temp_mat_scratch::<f64>(batch, aug.dim()),
        integrate_scratch(&aug, batch, opts),
    ])
}

/// `out[i] <- log p_1(x1_i)` for every row of `x1` (`batch x k`): the density
/// of the flow started from `N(0, I_k)` at `t = 0`. `first_index` numbers
/// the rows for the Hutchinson probe streams. A non-finite result is an
/// `ErrorKind::Numerical` failure.
pub fn log_prob<F: DivergenceField + ?Sized>(
    field: &F,
    opts: &SolverOptions,
    first_index: u64,
    x1: MatRef<'_, f64>,
    out: &mut [f64],
    stack: &mut MemStack,
) -> Result<()> {
    opts.check()?;
    let (b, k) = x1.shape();
    assert!(k == field.dim() && out.len() == b);
    let aug = Augmented {
        field,
        hutchinson: matches!(opts.divergence, Divergence::Hutchinson { .. }),
    };
    let (mut state, stack) = temp_mat_zeroed::<f64>(b, aug.dim(), stack);
    state.rb_mut().subcols_mut(0, k).copy_from(x1);
    if let Divergence::Hutchinson { seed } = opts.divergence {
        let mut probe = [0.0f64; 64];
        for i in 0..b {
            let mut r = rng::stream(seed, first_index.wrapping_add(i as u64));
            for j0 in (0..k).step_by(64) {
                let n = (k - j0).min(64);
                rng::fill_rademacher(&mut r, &mut probe[..n]);
                for (j, p) in probe[..n].iter().enumerate() {
                    state[(i, k + 1 + j0 + j)] = *p;
                }
            }
        }
    }
    integrate(&aug, opts, 1.0, 0.0, state.rb_mut(), stack)?;
    let log_2pi = (2.0 * core::f64::consts::PI).ln();
    for (i, o) in out.iter_mut().enumerate() {
        let mut sq = 0.0;
        for j in 0..k {
            sq += state[(i, j)] * state[(i, j)];
        }
        *o = -0.5 * (k as f64 * log_2pi + sq) + state[(i, k)];
        if !o.is_finite() {
            return Err(Error::numerical(format!(
                "log_prob: non-finite log-density for row {i}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::ode::Solver;
    use faer::dyn_stack::MemBuffer;
    use faer::Mat;

    /// `v(x, t) = (a - 1) / (1 + (a - 1) t) x` per coordinate: the flow maps
    /// `N(0, 1)` at `t = 0` to `N(0, a^2)` at `t = 1` (`x(t) = (1 + (a-1) t) x0`).
    struct Scaling {
        a: [f64; 3],
    }

    impl VelocityField for Scaling {
        fn dim(&self) -> usize {
            3
        }
        fn eval_scratch(&self, _: usize) -> StackReq {
            StackReq::EMPTY
        }
        fn eval(&self, times: Times<'_>, x: MatRef<'_, f64>, v: MatMut<'_, f64>, _: &mut MemStack) {
            let mut v = v;
            for i in 0..x.nrows() {
                let t = match times {
                    Times::Shared(t) => t,
                    Times::PerRow(ts) => ts[i],
                };
                for j in 0..3 {
                    let c = self.a[j] - 1.0;
                    v[(i, j)] = c / (1.0 + c * t) * x[(i, j)];
                }
            }
        }
    }

    impl DivergenceField for Scaling {
        fn eval_div_scratch(&self, _: usize) -> StackReq {
            StackReq::EMPTY
        }
        fn eval_div(
            &self,
            times: Times<'_>,
            x: MatRef<'_, f64>,
            v: MatMut<'_, f64>,
            div: &mut [f64],
            s: &mut MemStack,
        ) {
            self.eval(times, x, v, s);
            for (i, d) in div.iter_mut().enumerate() {
                let t = match times {
                    Times::Shared(t) => t,
                    Times::PerRow(ts) => ts[i],
                };
                *d = (0..3)
                    .map(|j| (self.a[j] - 1.0) / (1.0 + (self.a[j] - 1.0) * t))
                    .sum();
            }
        }
        fn eval_jvp_scratch(&self, _: usize) -> StackReq {
            StackReq::EMPTY
        }
        fn eval_jvp(
            &self,
            times: Times<'_>,
            x: MatRef<'_, f64>,
            p: MatRef<'_, f64>,
            v: MatMut<'_, f64>,
            quad: &mut [f64],
            s: &mut MemStack,
        ) {
            self.eval(times, x, v, s);
            for (i, q) in quad.iter_mut().enumerate() {
                let t = match times {
                    Times::Shared(t) => t,
                    Times::PerRow(ts) => ts[i],
                };
                *q = (0..3)
                    .map(|j| {
                        p[(i, j)] * p[(i, j)] * (self.a[j] - 1.0) / (1.0 + (self.a[j] - 1.0) * t)
                    })
                    .sum();
            }
        }
    }

    #[test]
    fn log_prob_of_an_analytic_flow() {
        let f = Scaling { a: [0.5, 2.0, 1.3] };
        let x = Mat::from_fn(4, 3, |i, j| (i as f64 - 1.5) * 0.7 + j as f64 * 0.2);
        let want: Vec<f64> = (0..4)
            .map(|i| {
                (0..3)
                    .map(|j| {
                        let s = f.a[j];
                        -0.5 * (2.0 * core::f64::consts::PI).ln()
                            - s.ln()
                            - 0.5 * (x[(i, j)] / s).powi(2)
                    })
                    .sum()
            })
            .collect();
        for (opts, tol) in [
            (
                SolverOptions {
                    solver: Solver::Rk4,
                    steps: 32,
                    ..Default::default()
                },
                1e-5,
            ),
            (
                SolverOptions {
                    solver: Solver::Dopri5,
                    rtol: 1e-8,
                    atol: 1e-8,
                    ..Default::default()
                },
                1e-6,
            ),
            (
                SolverOptions {
                    solver: Solver::Rk4,
                    steps: 32,
                    divergence: Divergence::Hutchinson { seed: 4 },
                    ..Default::default()
                },
                1e-5,
            ),
        ] {
            let mut mem = MemBuffer::new(log_prob_scratch(&f, 4, &opts));
            let mut out = vec![0.0; 4];
            log_prob(&f, &opts, 0, x.as_ref(), &mut out, MemStack::new(&mut mem)).unwrap();
            for i in 0..4 {
                // For a diagonal Jacobian e^T J e = trace(J) with Rademacher
                // probes, so Hutchinson is exact here too.
                assert!(
                    (out[i] - want[i]).abs() < tol,
                    "{opts:?}: {} vs {}",
                    out[i],
                    want[i]
                );
            }
        }
    }
}
