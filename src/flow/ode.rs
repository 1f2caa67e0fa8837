//! ODE solvers for `dx/dt = v(x, t)` on a batch of states.
//!
//! Fixed-step methods with `n` steps of size `h = (t1 - t0) / n`, all rows at
//! the same times (so a network folds the time features into a bias):
//! - Euler (order 1): `x <- x + h v(x, t)`;
//! - Heun (order 2): `k1 = v(x, t)`, `k2 = v(x + h k1, t + h)`,
//!   `x <- x + h (k1 + k2) / 2`;
//! - classic Runge–Kutta (order 4): `x <- x + h (k1 + 2 k2 + 2 k3 + k4) / 6`.
//!
//! Adaptive Dormand–Prince 5(4) with the FSAL property and the usual error
//! control: the local error estimate `h sum_s e_s k_s` is measured in the RMS
//! norm scaled by `atol + rtol max(|y|, |y_new|)`; a step is accepted when
//! that norm is at most 1, and the next step is `h * clamp(0.9 err^(-1/5),
//! 0.2, 5)` (at most `h` after a rejection). The initial step follows Hairer,
//! Nørsett and Wanner (II.4). Each row is integrated with its own step
//! sequence, so a row's result does not depend on the rest of the batch:
//! rows that finish leave the batch, the others keep going. A row needing
//! more than `max_steps` steps, a step size underflow or a non-finite error
//! estimate is an `ErrorKind::Numerical` failure.
//!
//! All buffers come from the caller's workspace ([`integrate_scratch`]);
//! nothing allocates.

pub use super::network::Times;
use super::network::{Io, VelocityNet};
use super::real::{col_mut, col_ref, multiversion, Real};
use crate::error::{Error, Result};
use crate::numerics::{temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch};
use faer::dyn_stack::{MemStack, StackReq};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{MatMut, MatRef, Par};

/// A velocity field `v(x, t)` evaluated on a batch (one state per row).
pub trait VelocityField {
    /// State dimension.
    fn dim(&self) -> usize;
    /// Leading state columns that enter the adaptive error norm (default:
    /// all). Trailing columns with zero velocity (e.g. fixed probes carried
    /// along) can be excluded.
    fn error_dim(&self) -> usize {
        self.dim()
    }
    /// Workspace of [`eval`](Self::eval) for `batch` rows.
    fn eval_scratch(&self, batch: usize) -> StackReq;
    /// `v <- v(x, t)`; `x` and `v` are `batch x dim` with unit row stride.
    fn eval(&self, times: Times<'_>, x: MatRef<'_, f64>, v: MatMut<'_, f64>, stack: &mut MemStack);
    /// Workspace of [`eval_stage`](Self::eval_stage) for `batch` rows.
    fn eval_stage_scratch(&self, batch: usize) -> StackReq {
        StackReq::all_of(&[
            temp_mat_scratch::<f64>(batch, self.dim()),
            self.eval_scratch(batch),
        ])
    }
    /// `v <- v(x + a k, t)` (a Runge–Kutta stage). The default forms
    /// `x + a k` in a temporary; fields may fuse it into their input.
    fn eval_stage(
        &self,
        times: Times<'_>,
        x: MatRef<'_, f64>,
        a: f64,
        k: MatRef<'_, f64>,
        v: MatMut<'_, f64>,
        stack: &mut MemStack,
    ) {
        let (mut xs, stack) = temp_mat_zeroed::<f64>(x.nrows(), x.ncols(), stack);
        lincomb(xs.rb_mut(), x, a, k);
        self.eval(times, xs.rb(), v, stack);
    }
    /// Workspace of [`eval_combine`](Self::eval_combine) for `batch` rows.
    fn eval_combine_scratch(&self, batch: usize) -> StackReq {
        StackReq::any_of(&[self.eval_scratch(batch), self.eval_stage_scratch(batch)])
    }
    /// `v <- f` and `acc <- base + c f` (`base` is `acc` itself when
    /// `None`) with `f = v(x + a k, t)`, or `v(x, t)` without `stage`: a
    /// Runge–Kutta stage that also accumulates the step. The default
    /// evaluates into `v` and combines in a second pass; fields may fuse
    /// the two.
    #[allow(clippy::too_many_arguments)]
    fn eval_combine(
        &self,
        times: Times<'_>,
        x: MatRef<'_, f64>,
        stage: Option<(f64, MatRef<'_, f64>)>,
        v: MatMut<'_, f64>,
        acc: MatMut<'_, f64>,
        base: Option<MatRef<'_, f64>>,
        c: f64,
        stack: &mut MemStack,
    ) {
        let (mut v, mut acc) = (v, acc);
        match stage {
            None => self.eval(times, x, v.rb_mut(), stack),
            Some((a, k)) => self.eval_stage(times, x, a, k, v.rb_mut(), stack),
        }
        match base {
            Some(base) => lincomb(acc.rb_mut(), base, c, v.rb()),
            None => add_combination(acc.rb_mut(), c, v.rb(), 0.0, v.rb()),
        }
    }
    /// Workspace of [`eval_advance`](Self::eval_advance) for `batch` rows.
    fn eval_advance_scratch(&self, batch: usize) -> StackReq {
        StackReq::all_of(&[
            temp_mat_scratch::<f64>(batch, self.dim()),
            self.eval_combine_scratch(batch),
        ])
    }
    /// `x <- x + c (acc + v(x + a k, t))` (`acc` = 0 when `None`, `v(x, t)`
    /// without `stage`): the last stage of a solver step. The default
    /// evaluates into a temporary; fields may fuse the update into their
    /// output.
    fn eval_advance(
        &self,
        times: Times<'_>,
        x: MatMut<'_, f64>,
        stage: Option<(f64, MatRef<'_, f64>)>,
        acc: Option<MatRef<'_, f64>>,
        c: f64,
        stack: &mut MemStack,
    ) {
        let mut x = x;
        let (mut f, stack) = temp_mat_zeroed::<f64>(x.nrows(), x.ncols(), stack);
        match stage {
            None => self.eval(times, x.rb(), f.rb_mut(), stack),
            Some((a, k)) => self.eval_stage(times, x.rb(), a, k, f.rb_mut(), stack),
        }
        match acc {
            Some(acc) => add_combination(x.rb_mut(), c, acc, 1.0, f.rb()),
            None => add_combination(x.rb_mut(), c, f.rb(), 0.0, f.rb()),
        }
    }
}

/// A field whose forward pass takes its input and its (possibly fused)
/// output as one [`Io`], with one workspace for every kind of stage. Such a
/// field gets its [`VelocityField`] methods from
/// [`fused_velocity_field!`].
pub(crate) trait FusedField {
    /// State dimension.
    fn fused_dim(&self) -> usize;
    /// Workspace of [`forward_fused`](Self::forward_fused) for `batch` rows.
    fn fused_scratch(&self, batch: usize) -> StackReq;
    /// One evaluation: input and output as `io` says.
    fn forward_fused(&self, times: Times<'_>, io: Io<'_, f64>, stack: &mut MemStack);
}

/// The [`VelocityField`] methods of a [`FusedField`]: every stage kind is
/// one `forward_fused` call.
macro_rules! fused_velocity_field {
    () => {
        fn dim(&self) -> usize {
            $crate::flow::ode::FusedField::fused_dim(self)
        }
        fn eval_scratch(&self, batch: usize) -> faer::dyn_stack::StackReq {
            $crate::flow::ode::FusedField::fused_scratch(self, batch)
        }
        fn eval(
            &self,
            times: $crate::flow::network::Times<'_>,
            x: faer::MatRef<'_, f64>,
            v: faer::MatMut<'_, f64>,
            stack: &mut faer::dyn_stack::MemStack,
        ) {
            $crate::flow::ode::FusedField::forward_fused(
                self,
                times,
                $crate::flow::network::Io::store(x, None, v),
                stack,
            )
        }
        fn eval_stage_scratch(&self, batch: usize) -> faer::dyn_stack::StackReq {
            $crate::flow::ode::FusedField::fused_scratch(self, batch)
        }
        fn eval_stage(
            &self,
            times: $crate::flow::network::Times<'_>,
            x: faer::MatRef<'_, f64>,
            a: f64,
            k: faer::MatRef<'_, f64>,
            v: faer::MatMut<'_, f64>,
            stack: &mut faer::dyn_stack::MemStack,
        ) {
            $crate::flow::ode::FusedField::forward_fused(
                self,
                times,
                $crate::flow::network::Io::store(x, Some((a, k)), v),
                stack,
            )
        }
        fn eval_combine_scratch(&self, batch: usize) -> faer::dyn_stack::StackReq {
            $crate::flow::ode::FusedField::fused_scratch(self, batch)
        }
        fn eval_combine(
            &self,
            times: $crate::flow::network::Times<'_>,
            x: faer::MatRef<'_, f64>,
            stage: Option<(f64, faer::MatRef<'_, f64>)>,
            v: faer::MatMut<'_, f64>,
            acc: faer::MatMut<'_, f64>,
            base: Option<faer::MatRef<'_, f64>>,
            c: f64,
            stack: &mut faer::dyn_stack::MemStack,
        ) {
            let input = $crate::flow::network::Input { x, step: stage };
            let sink = $crate::flow::network::Sink::StoreCombine {
                out: v,
                acc,
                base,
                c,
            };
            $crate::flow::ode::FusedField::forward_fused(
                self,
                times,
                $crate::flow::network::Io::Separate { input, sink },
                stack,
            )
        }
        fn eval_advance_scratch(&self, batch: usize) -> faer::dyn_stack::StackReq {
            $crate::flow::ode::FusedField::fused_scratch(self, batch)
        }
        fn eval_advance(
            &self,
            times: $crate::flow::network::Times<'_>,
            x: faer::MatMut<'_, f64>,
            stage: Option<(f64, faer::MatRef<'_, f64>)>,
            acc: Option<faer::MatRef<'_, f64>>,
            c: f64,
            stack: &mut faer::dyn_stack::MemStack,
        ) {
            $crate::flow::ode::FusedField::forward_fused(
                self,
                times,
                $crate::flow::network::Io::Advance {
                    x,
                    step: stage,
                    acc,
                    c,
                },
                stack,
            )
        }
    };
}
pub(crate) use fused_velocity_field;

impl<T: Real> FusedField for VelocityNet<T> {
    fn fused_dim(&self) -> usize {
        self.config().dim
    }
    fn fused_scratch(&self, batch: usize) -> StackReq {
        self.forward_scratch(batch)
    }
    fn forward_fused(&self, times: Times<'_>, io: Io<'_, f64>, stack: &mut MemStack) {
        self.forward_io(times, io, Par::Seq, stack)
    }
}

impl<T: Real> VelocityField for VelocityNet<T> {
    fused_velocity_field!();
}

/// The integration method.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Solver {
    /// Forward Euler, fixed steps.
    Euler,
    /// Heun (explicit trapezoid), fixed steps.
    Heun,
    /// Classic fourth-order Runge–Kutta, fixed steps (default).
    #[default]
    Rk4,
    /// Adaptive Dormand–Prince 5(4).
    Dopri5,
}

/// How the divergence of the velocity is computed for log-densities.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Divergence {
    /// The exact Jacobian trace (default).
    #[default]
    Exact,
    /// The Hutchinson estimate `e^T J e` with one Rademacher probe `e` per
    /// row, fixed along the trajectory; the probe of row `j` comes from
    /// stream `(seed, j)`.
    Hutchinson {
        /// Seed of the probe streams.
        seed: u64,
    },
}

/// Options of an ODE solve.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct SolverOptions {
    /// The method (default RK4).
    pub solver: Solver,
    /// Number of steps of the fixed-step methods (default 16).
    pub steps: usize,
    /// Relative tolerance of DOPRI5 (default 1e-5).
    pub rtol: f64,
    /// Absolute tolerance of DOPRI5 (default 1e-5).
    pub atol: f64,
    /// DOPRI5 step limit per row, accepted plus rejected (default 10000).
    pub max_steps: usize,
    /// Divergence computation for log-densities (default exact).
    pub divergence: Divergence,
}

impl Default for SolverOptions {
    fn default() -> Self {
        Self {
            solver: Solver::Rk4,
            steps: 16,
            rtol: 1e-5,
            atol: 1e-5,
            max_steps: 10_000,
            divergence: Divergence::Exact,
        }
    }
}

impl SolverOptions {
    /// Checks the fields used by the chosen solver.
    pub fn check(&self) -> Result<()> {
        match self.solver {
            Solver::Euler | Solver::Heun | Solver::Rk4 => {
                if self.steps == 0 {
                    return Err(Error::invalid("solver.steps: must be > 0"));
                }
                if self.steps > crate::limits::MAX_SOLVER_STEPS {
                    return Err(Error::invalid(format!(
                        "solver.steps: {} exceeds the maximum {}",
                        self.steps,
                        crate::limits::MAX_SOLVER_STEPS
                    )));
                }
            }
            Solver::Dopri5 => {
                if !(self.rtol.is_finite() && self.rtol > 0.0) {
                    return Err(Error::invalid(format!(
                        "solver.rtol: must be finite and > 0, got {}",
                        self.rtol
                    )));
                }
                if !(self.atol.is_finite() && self.atol >= 0.0) {
                    return Err(Error::invalid(format!(
                        "solver.atol: must be finite and >= 0, got {}",
                        self.atol
                    )));
                }
                if self.max_steps == 0 {
                    return Err(Error::invalid("solver.max_steps: must be > 0"));
                }
            }
        }
        Ok(())
    }
    /// Field evaluations per row of a fixed-step solve (`None` for DOPRI5).
    pub fn evaluations(&self) -> Option<usize> {
        match self.solver {
            Solver::Euler => Some(self.steps),
            Solver::Heun => Some(2 * self.steps),
            Solver::Rk4 => Some(4 * self.steps),
            Solver::Dopri5 => None,
        }
    }
}

/// Counters of a solve (DOPRI5 counts are summed over rows).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SolveStats {
    /// Batched field evaluations.
    pub evaluations: usize,
    /// Accepted steps.
    pub accepted: usize,
    /// Rejected steps.
    pub rejected: usize,
}

/// Workspace for [`integrate`] of `batch` rows.
pub fn integrate_scratch<F: VelocityField + ?Sized>(
    field: &F,
    batch: usize,
    opts: &SolverOptions,
) -> StackReq {
    let mat = temp_mat_scratch::<f64>(batch, field.dim());
    match opts.solver {
        Solver::Euler => field.eval_advance_scratch(batch),
        Solver::Heun => StackReq::all_of(&[
            mat,
            StackReq::any_of(&[field.eval_scratch(batch), field.eval_advance_scratch(batch)]),
        ]),
        Solver::Rk4 => StackReq::all_of(&[
            mat,
            mat,
            mat,
            StackReq::any_of(&[
                field.eval_scratch(batch),
                field.eval_combine_scratch(batch),
                field.eval_advance_scratch(batch),
            ]),
        ]),
        Solver::Dopri5 => StackReq::all_of(&[
            StackReq::all_of(&[mat; 9]),
            temp_slice_scratch::<f64>(batch),
            temp_slice_scratch::<f64>(batch),
            temp_slice_scratch::<f64>(batch),
            temp_slice_scratch::<usize>(batch),
            temp_slice_scratch::<usize>(batch),
            field.eval_scratch(batch),
        ]),
    }
}

/// Checks the state argument `x` of a solve: `dim` columns, unit row stride.
pub(crate) fn check_state(x: MatRef<'_, f64>, dim: usize) -> Result<()> {
    if x.ncols() != dim {
        return Err(Error::shape(format!(
            "x: has {} columns, the field dimension is {dim}",
            x.ncols()
        )));
    }
    if x.row_stride() != 1 {
        return Err(Error::shape("x: must have unit row stride"));
    }
    Ok(())
}

/// Integrates `dx/dt = v(x, t)` from `t0` to `t1` (either direction) for
/// every row of `x` (`batch x dim`, overwritten by the solution at `t1`).
pub fn integrate<F: VelocityField + ?Sized>(
    field: &F,
    opts: &SolverOptions,
    t0: f64,
    t1: f64,
    x: MatMut<'_, f64>,
    stack: &mut MemStack,
) -> Result<SolveStats> {
    opts.check()?;
    check_state(x.rb(), field.dim())?;
    if x.nrows() == 0 || t0 == t1 {
        return Ok(SolveStats::default());
    }
    match opts.solver {
        Solver::Euler | Solver::Heun | Solver::Rk4 => {
            Ok(fixed_step(field, opts.solver, opts.steps, t0, t1, x, stack))
        }
        Solver::Dopri5 => dopri5(field, opts, t0, t1, x, stack),
    }
}

multiversion! {
    /// `y <- x + a k`.
    fn lincomb<T: Real>(y: MatMut<'_, T>, x: MatRef<'_, T>, a: T, k: MatRef<'_, T>) {
        let mut y = y;
        for j in 0..x.ncols() {
            let (xc, kc) = (col_ref(&x, j), col_ref(&k, j));
            for ((yv, xv), kv) in col_mut(&mut y, j).iter_mut().zip(xc).zip(kc) {
                *yv = *xv + a * *kv;
            }
        }
    }
}

multiversion! {
    /// `x <- x + a (k1 + b k2)`.
    fn add_combination<T: Real>(x: MatMut<'_, T>, a: T, k1: MatRef<'_, T>, b: T, k2: MatRef<'_, T>) {
        let mut x = x;
        for j in 0..k1.ncols() {
            let (c1, c2) = (col_ref(&k1, j), col_ref(&k2, j));
            for ((xv, u), v) in col_mut(&mut x, j).iter_mut().zip(c1).zip(c2) {
                *xv += a * (*u + b * *v);
            }
        }
    }
}

fn fixed_step<F: VelocityField + ?Sized>(
    field: &F,
    solver: Solver,
    n: usize,
    t0: f64,
    t1: f64,
    mut x: MatMut<'_, f64>,
    stack: &mut MemStack,
) -> SolveStats {
    let (b, m) = x.shape();
    let h = (t1 - t0) / n as f64;
    // The last stage of every step updates x in the same pass as it
    // converts the network output (eval_advance), and the middle RK4 stages
    // accumulate k1 + 2 k2 + 2 k3 as they store their k (eval_combine): the
    // same operations in the same order as separate passes, fewer sweeps
    // over the batch.
    let evals = match solver {
        Solver::Euler => {
            for i in 0..n {
                let t = t0 + i as f64 * h;
                field.eval_advance(Times::Shared(t), x.rb_mut(), None, None, h, stack);
            }
            n
        }
        Solver::Heun => {
            let (mut k1, stack) = temp_mat_zeroed::<f64>(b, m, stack);
            for i in 0..n {
                let t = t0 + i as f64 * h;
                field.eval(Times::Shared(t), x.rb(), k1.rb_mut(), stack);
                let stage = Some((h, k1.rb()));
                field.eval_advance(
                    Times::Shared(t + h),
                    x.rb_mut(),
                    stage,
                    Some(k1.rb()),
                    0.5 * h,
                    stack,
                );
            }
            2 * n
        }
        Solver::Rk4 | Solver::Dopri5 => {
            // acc accumulates k1 + 2 k2 + 2 k3; ka and kb alternate as the
            // latest stage.
            let (mut acc, stack) = temp_mat_zeroed::<f64>(b, m, stack);
            let (mut ka, stack) = temp_mat_zeroed::<f64>(b, m, stack);
            let (mut kb, stack) = temp_mat_zeroed::<f64>(b, m, stack);
            for i in 0..n {
                let t = t0 + i as f64 * h;
                let half = Times::Shared(t + 0.5 * h);
                field.eval(Times::Shared(t), x.rb(), ka.rb_mut(), stack);
                let stage = Some((0.5 * h, ka.rb()));
                field.eval_combine(
                    half,
                    x.rb(),
                    stage,
                    kb.rb_mut(),
                    acc.rb_mut(),
                    Some(ka.rb()),
                    2.0,
                    stack,
                );
                let stage = Some((0.5 * h, kb.rb()));
                field.eval_combine(
                    half,
                    x.rb(),
                    stage,
                    ka.rb_mut(),
                    acc.rb_mut(),
                    None,
                    2.0,
                    stack,
                );
                let stage = Some((h, ka.rb()));
                field.eval_advance(
                    Times::Shared(t + h),
                    x.rb_mut(),
                    stage,
                    Some(acc.rb()),
                    h / 6.0,
                    stack,
                );
            }
            4 * n
        }
    };
    SolveStats {
        evaluations: evals,
        accepted: n * b,
        rejected: 0,
    }
}

// Dormand–Prince 5(4) tableau.
const C: [f64; 7] = [0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0];
const A: [[f64; 6]; 7] = [
    [0.0; 6],
    [0.2, 0.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
        0.0,
    ],
    [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// Error weights `b - b*` (fifth minus fourth order).
const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

fn dopri5<F: VelocityField + ?Sized>(
    field: &F,
    opts: &SolverOptions,
    t0: f64,
    t1: f64,
    mut x: MatMut<'_, f64>,
    stack: &mut MemStack,
) -> Result<SolveStats> {
    let (b, m) = x.shape();
    let me = field.error_dim().min(m);
    let (mut y, stack) = temp_mat_zeroed::<f64>(b, m, stack);
    let (mut ys, stack) = temp_mat_zeroed::<f64>(b, m, stack);
    let (mut k1, stack) = temp_mat_zeroed::<f64>(b, m, stack);
    let (mut k2, stack) = temp_mat_zeroed::<f64>(b, m, stack);
    let (mut k3, stack) = temp_mat_zeroed::<f64>(b, m, stack);
    let (mut k4, stack) = temp_mat_zeroed::<f64>(b, m, stack);
    let (mut k5, stack) = temp_mat_zeroed::<f64>(b, m, stack);
    let (mut k6, stack) = temp_mat_zeroed::<f64>(b, m, stack);
    let (mut k7, stack) = temp_mat_zeroed::<f64>(b, m, stack);
    let (t, stack) = temp_slice(b, t0, stack);
    let (hs, stack) = temp_slice(b, 0.0f64, stack);
    let (times, stack) = temp_slice(b, t0, stack);
    let (idx, stack) = temp_slice(b, 0usize, stack);
    let (nsteps, stack) = temp_slice(b, 0usize, stack);
    let dir = if t1 > t0 { 1.0 } else { -1.0 };
    let span = (t1 - t0).abs();
    let (rtol, atol) = (opts.rtol, opts.atol);
    let mut stats = SolveStats::default();

    y.copy_from(x.rb());
    for (i, v) in idx.iter_mut().enumerate() {
        *v = i;
    }
    let rms = |f: &dyn Fn(usize) -> f64| -> f64 {
        let mut s = 0.0;
        for j in 0..me {
            let v = f(j);
            s += v * v;
        }
        (s / me.max(1) as f64).sqrt()
    };

    // Initial derivative and step size (Hairer, Norsett, Wanner II.4).
    field.eval(Times::PerRow(&t[..b]), y.rb(), k1.rb_mut(), stack);
    stats.evaluations += 1;
    for i in 0..b {
        let d0 = rms(&|j| y[(i, j)] / (atol + rtol * y[(i, j)].abs()));
        let d1 = rms(&|j| k1[(i, j)] / (atol + rtol * y[(i, j)].abs()));
        let h0 = if d0 < 1e-5 || d1 < 1e-5 {
            1e-6
        } else {
            0.01 * d0 / d1
        };
        hs[i] = h0.min(span);
        times[i] = t0 + dir * hs[i];
        for j in 0..m {
            ys[(i, j)] = y[(i, j)] + dir * hs[i] * k1[(i, j)];
        }
    }
    field.eval(Times::PerRow(&times[..b]), ys.rb(), k2.rb_mut(), stack);
    stats.evaluations += 1;
    for i in 0..b {
        let h0 = hs[i];
        let d1 = rms(&|j| k1[(i, j)] / (atol + rtol * y[(i, j)].abs()));
        let d2 = rms(&|j| (k2[(i, j)] - k1[(i, j)]) / (atol + rtol * y[(i, j)].abs())) / h0;
        let dm = d1.max(d2);
        let h1 = if dm <= 1e-15 {
            (h0 * 1e-3).max(1e-6)
        } else {
            libm::pow(0.01 / dm, 0.2)
        };
        hs[i] = (100.0 * h0).min(h1).min(span);
        if !hs[i].is_finite() || hs[i] <= 0.0 {
            return Err(Error::numerical(
                "solver: DOPRI5 could not choose an initial step (non-finite velocity)",
            ));
        }
    }

    let mut na = b;
    while na > 0 {
        // Signed step; the last step of a row lands exactly on t1.
        for i in 0..na {
            let remaining = (t1 - t[i]) * dir;
            if hs[i] >= remaining {
                hs[i] = remaining;
            }
        }
        for s in 1..7 {
            for i in 0..na {
                times[i] = t[i] + C[s] * dir * hs[i];
            }
            {
                let kk: [MatRef<'_, f64>; 6] =
                    [k1.rb(), k2.rb(), k3.rb(), k4.rb(), k5.rb(), k6.rb()];
                for j in 0..m {
                    for i in 0..na {
                        let mut acc = 0.0;
                        for (q, kq) in kk.iter().enumerate().take(s) {
                            acc += A[s][q] * kq[(i, j)];
                        }
                        ys[(i, j)] = y[(i, j)] + dir * hs[i] * acc;
                    }
                }
            }
            let out = match s {
                1 => k2.rb_mut(),
                2 => k3.rb_mut(),
                3 => k4.rb_mut(),
                4 => k5.rb_mut(),
                5 => k6.rb_mut(),
                _ => k7.rb_mut(),
            };
            field.eval(
                Times::PerRow(&times[..na]),
                ys.rb().subrows(0, na),
                out.subrows_mut(0, na),
                stack,
            );
            stats.evaluations += 1;
        }
        // Error control per row, last row first so swap-removal is safe.
        for i in (0..na).rev() {
            let h = hs[i];
            let kk: [MatRef<'_, f64>; 7] = [
                k1.rb(),
                k2.rb(),
                k3.rb(),
                k4.rb(),
                k5.rb(),
                k6.rb(),
                k7.rb(),
            ];
            let err = rms(&|j| {
                let mut e = 0.0;
                for (q, kq) in kk.iter().enumerate() {
                    e += E[q] * kq[(i, j)];
                }
                h * e / (atol + rtol * y[(i, j)].abs().max(ys[(i, j)].abs()))
            });
            nsteps[i] += 1;
            if !err.is_finite() {
                return Err(Error::numerical(
                    "solver: DOPRI5 error estimate is not finite (the velocity field produced NaN or infinity)",
                ));
            }
            let fac = if err == 0.0 {
                5.0
            } else {
                (0.9 * libm::pow(err, -0.2)).clamp(0.2, 5.0)
            };
            if err <= 1.0 {
                stats.accepted += 1;
                let last = h >= (t1 - t[i]) * dir;
                t[i] = if last { t1 } else { t[i] + dir * h };
                for j in 0..m {
                    y[(i, j)] = ys[(i, j)];
                    k1[(i, j)] = k7[(i, j)];
                }
                hs[i] = h * fac;
                if last {
                    // Done: write back and swap-remove row i.
                    let orig = idx[i];
                    for j in 0..m {
                        x[(orig, j)] = y[(i, j)];
                    }
                    let l = na - 1;
                    if i != l {
                        for j in 0..m {
                            y[(i, j)] = y[(l, j)];
                            k1[(i, j)] = k1[(l, j)];
                        }
                        t[i] = t[l];
                        hs[i] = hs[l];
                        idx[i] = idx[l];
                        nsteps[i] = nsteps[l];
                    }
                    na -= 1;
                    continue;
                }
            } else {
                stats.rejected += 1;
                hs[i] = h * fac.min(1.0);
            }
            if nsteps[i] >= opts.max_steps {
                return Err(Error::numerical(format!(
                    "solver: DOPRI5 exceeded solver.max_steps = {} steps (tolerances too tight or the field is stiff)",
                    opts.max_steps
                )));
            }
            if hs[i] < 1e-14 * span.max(t[i].abs()) {
                return Err(Error::numerical("solver: DOPRI5 step size underflow"));
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::dyn_stack::MemBuffer;
    use faer::Mat;

    /// `v(x, t) = (1 + t) M x` with `M = [[-0.5, -2], [2, -0.5]]`; the
    /// solution is `x(t) = exp(M (t + t^2 / 2)) x(0)`.
    struct Linear;

    impl VelocityField for Linear {
        fn dim(&self) -> usize {
            2
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
                let (a, b) = (x[(i, 0)], x[(i, 1)]);
                v[(i, 0)] = (1.0 + t) * (-0.5 * a - 2.0 * b);
                v[(i, 1)] = (1.0 + t) * (2.0 * a - 0.5 * b);
            }
        }
    }

    fn exact(x0: MatRef<'_, f64>, t0: f64, t1: f64) -> Mat<f64> {
        let s = (t1 + t1 * t1 / 2.0) - (t0 + t0 * t0 / 2.0);
        let (e, c, sn) = ((-0.5 * s).exp(), (2.0 * s).cos(), (2.0 * s).sin());
        Mat::from_fn(x0.nrows(), 2, |i, j| {
            let (a, b) = (x0[(i, 0)], x0[(i, 1)]);
            e * if j == 0 {
                c * a - sn * b
            } else {
                sn * a + c * b
            }
        })
    }

    fn start() -> Mat<f64> {
        Mat::from_fn(5, 2, |i, j| {
            (i as f64 + 1.0) * if j == 0 { 0.3 } else { -0.7 }
        })
    }

    fn solve(opts: &SolverOptions, t0: f64, t1: f64, x: &mut Mat<f64>) -> Result<SolveStats> {
        let mut mem = MemBuffer::new(integrate_scratch(&Linear, x.nrows(), opts));
        integrate(&Linear, opts, t0, t1, x.as_mut(), MemStack::new(&mut mem))
    }

    #[test]
    fn fixed_step_methods_converge_at_their_order() {
        // Step counts in each method's asymptotic range.
        for (solver, order, n0) in [
            (Solver::Euler, 1.0, 200),
            (Solver::Heun, 2.0, 32),
            (Solver::Rk4, 4.0, 16),
        ] {
            let x0 = start();
            let want = exact(x0.as_ref(), 0.0, 1.0);
            let errs: Vec<f64> = [n0, 2 * n0, 4 * n0, 8 * n0]
                .iter()
                .map(|&n| {
                    let mut x = x0.clone();
                    let opts = SolverOptions {
                        solver,
                        steps: n,
                        ..Default::default()
                    };
                    solve(&opts, 0.0, 1.0, &mut x).unwrap();
                    (&x - &want).norm_max()
                })
                .collect();
            for w in errs.windows(2) {
                let p = (w[0] / w[1]).log2();
                eprintln!("{solver:?}: observed order {p:.3}");
                assert!((p - order).abs() < 0.1, "{solver:?}: order {p} ({errs:?})");
            }
        }
    }

    /// A network seen only through `eval`: every solver stage goes through
    /// the trait's unfused defaults.
    struct Unfused<'a>(&'a VelocityNet<f32>);

    impl VelocityField for Unfused<'_> {
        fn dim(&self) -> usize {
            VelocityField::dim(self.0)
        }
        fn eval_scratch(&self, batch: usize) -> StackReq {
            self.0.eval_scratch(batch)
        }
        fn eval(
            &self,
            times: Times<'_>,
            x: MatRef<'_, f64>,
            v: MatMut<'_, f64>,
            stack: &mut MemStack,
        ) {
            self.0.eval(times, x, v, stack)
        }
    }

    #[test]
    fn fused_network_stages_equal_separate_passes_bitwise() {
        let config = super::super::NetConfig {
            dim: 7,
            hidden: 16,
            layers: 2,
            time_freqs: 3,
        };
        let net = VelocityNet::<f32>::new(config, 5).unwrap();
        let x0 = Mat::from_fn(9, 7, |i, j| ((3 * i + 5 * j) % 11) as f64 / 5.0 - 1.0);
        for solver in [Solver::Euler, Solver::Heun, Solver::Rk4] {
            let opts = SolverOptions {
                solver,
                steps: 6,
                ..Default::default()
            };
            let run = |field: &dyn VelocityField| {
                let mut x = x0.clone();
                let mut mem = MemBuffer::new(integrate_scratch(field, x.nrows(), &opts));
                integrate(field, &opts, 0.0, 1.0, x.as_mut(), MemStack::new(&mut mem)).unwrap();
                x
            };
            let (fused, separate) = (run(&net), run(&Unfused(&net)));
            assert!(
                (&fused - &x0).norm_max() > 1e-3,
                "{solver:?}: the state moved"
            );
            for j in 0..x0.ncols() {
                for i in 0..x0.nrows() {
                    assert_eq!(
                        fused[(i, j)].to_bits(),
                        separate[(i, j)].to_bits(),
                        "{solver:?} ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn dopri5_meets_its_tolerance_both_ways() {
        for tol in [1e-4, 1e-6, 1e-8] {
            let x0 = start();
            let mut x = x0.clone();
            let opts = SolverOptions {
                solver: Solver::Dopri5,
                rtol: tol,
                atol: tol,
                ..Default::default()
            };
            let stats = solve(&opts, 0.0, 1.0, &mut x).unwrap();
            let err = (&x - exact(x0.as_ref(), 0.0, 1.0)).norm_max();
            assert!(err < 10.0 * tol, "tol {tol}: error {err}, {stats:?}");
            // And back to the start.
            solve(&opts, 1.0, 0.0, &mut x).unwrap();
            assert!((&x - &x0).norm_max() < 20.0 * tol);
        }
    }

    #[test]
    fn dopri5_rows_do_not_depend_on_the_batch() {
        let x0 = start();
        let opts = SolverOptions {
            solver: Solver::Dopri5,
            ..Default::default()
        };
        let mut all = x0.clone();
        solve(&opts, 0.0, 1.0, &mut all).unwrap();
        for i in 0..x0.nrows() {
            let mut one = x0.as_ref().subrows(i, 1).to_owned();
            solve(&opts, 0.0, 1.0, &mut one).unwrap();
            assert_eq!(one[(0, 0)].to_bits(), all[(i, 0)].to_bits());
            assert_eq!(one[(0, 1)].to_bits(), all[(i, 1)].to_bits());
        }
    }

    #[test]
    fn dopri5_step_limit_is_an_error() {
        let mut x = start();
        let opts = SolverOptions {
            solver: Solver::Dopri5,
            rtol: 1e-12,
            atol: 1e-12,
            max_steps: 5,
            ..Default::default()
        };
        let err = solve(&opts, 0.0, 1.0, &mut x).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Numerical);
        assert!(err.message().contains("max_steps"));
    }

    #[test]
    fn invalid_options_are_rejected() {
        let bad = [
            SolverOptions {
                steps: 0,
                ..Default::default()
            },
            SolverOptions {
                solver: Solver::Dopri5,
                rtol: 0.0,
                ..Default::default()
            },
            SolverOptions {
                solver: Solver::Dopri5,
                atol: -1.0,
                ..Default::default()
            },
            SolverOptions {
                solver: Solver::Dopri5,
                max_steps: 0,
                ..Default::default()
            },
        ];
        for (o, field) in bad.iter().zip(["steps", "rtol", "atol", "max_steps"]) {
            let e = o.check().unwrap_err();
            assert!(
                e.message().starts_with(&format!("solver.{field}:")),
                "{}",
                e.message()
            );
        }
    }
}
