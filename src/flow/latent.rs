//! Fixed-step sampling in the hidden coordinates of the velocity network.
//!
//! The network is `v(x, t) = phi(x W + tau(t) W_tau + b_1, t) W_o + b_o`,
//! where `W` (`k x H`) is the state part of the first weight and `phi` maps
//! the first pre-activation to the last hidden activation `a_L`. The state
//! enters only through `y = x W`, and along a solution
//! `dy/dt = v W = a_L M + m` with `M = W_o W` (`H x H`) and `m = b_o W`.
//! Appending `s` with `ds/dt = a_L` gives a closed system for `(y, s)` of
//! size `2 H`, started at `(x_0 W, 0)`.
//!
//! An explicit Runge–Kutta method applies the same linear combinations of
//! stage velocities to every component, and its stage points `x + a k` map
//! to `y + a k W`; so the method on `(y, s)` evaluates the network at the
//! same points as the method on `x`, and its result gives the state by
//! `x_n = x_0 + s_n W_o + (t_n - t_0) b_o`. This is identical in exact
//! arithmetic; in floating point the products round at other points (the
//! state is multiplied by `W` once, the steps go through `M`), so the two
//! routes agree to the network's precision, not bitwise.
//!
//! A field evaluation then costs `L H^2` multiply-adds per row instead of
//! `2 k H + (L - 1) H^2` (the first layer needs no product at all, the
//! output layer becomes `a_L M`), plus `2 k H` once per row to lift the
//! state and to lower it. [`LatentMaps::pays`] compares the two for a solve.
//! Adaptive solvers measure their error in the state itself and keep to
//! the state coordinates.

use super::network::{gemm, temp_rows_scratch, temp_rows_uninit, Io, NetConfig};
use super::network::{Times, VelocityNet};
use super::ode::VelocityField;
use super::ode::{self, fused_velocity_field, FusedField, SolveStats, Solver, SolverOptions};
use super::real::{self, Real};
use crate::error::{Error, Result};
use crate::numerics::{temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch};
use faer::dyn_stack::{MemStack, StackReq};
use faer::linalg::matmul::matmul;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

/// The products `M = W_o W` and `m = b_o W` of a network, in its precision.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentMaps<T: Real> {
    config: NetConfig,
    /// `M`, `H x H` column-major.
    m: Vec<T>,
    /// `m`, `H` values.
    mb: Vec<T>,
}

impl<T: Real> LatentMaps<T> {
    /// The maps of `net` for its current parameters (formed in `f64`, then
    /// rounded to `T`). Allocates `H^2 + H` values; rebuild them after the
    /// parameters change.
    pub fn new(net: &VelocityNet<T>) -> Self {
        let c = *net.config();
        let (k, h) = (c.dim, c.hidden);
        let w = net.weight(0).subrows(0, k);
        let wo = net.weight(c.layers);
        let w64 = Mat::<f64>::from_fn(k, h, |i, j| w[(i, j)].to_f64());
        let wo64 = Mat::<f64>::from_fn(h, k, |i, j| wo[(i, j)].to_f64());
        let bo64 = Mat::<f64>::from_fn(1, k, |_, j| net.bias(c.layers)[j].to_f64());
        let mut m = Mat::<f64>::zeros(h, h);
        matmul(
            m.as_mut(),
            Accum::Replace,
            wo64.as_ref(),
            w64.as_ref(),
            1.0,
            Par::Seq,
        );
        let mut mb = Mat::<f64>::zeros(1, h);
        matmul(
            mb.as_mut(),
            Accum::Replace,
            bo64.as_ref(),
            w64.as_ref(),
            1.0,
            Par::Seq,
        );
        Self {
            config: c,
            m: (0..h * h).map(|i| T::from_f64(m[(i % h, i / h)])).collect(),
            mb: (0..h).map(|j| T::from_f64(mb[(0, j)])).collect(),
        }
    }

    /// The maps of `net` when some fixed-step solve can be cheaper in hidden
    /// coordinates (`H < 2 k`, see [`pays`](Self::pays)), else `None`.
    pub fn for_net(net: &VelocityNet<T>) -> Option<Self> {
        let c = net.config();
        (c.hidden < 2 * c.dim).then(|| Self::new(net))
    }

    /// Whether a solve with `opts` costs fewer multiply-adds per row in the
    /// hidden coordinates: fixed-step solvers only, when
    /// `2 k H + n L H^2 < n (2 k H + (L - 1) H^2)` for `n` evaluations.
    pub fn pays(config: &NetConfig, opts: &SolverOptions) -> bool {
        let Some(n) = opts.evaluations() else {
            return false;
        };
        let (k, h, l) = (
            config.dim as f64,
            config.hidden as f64,
            config.layers as f64,
        );
        let n = n as f64;
        2.0 * k * h + n * l * h * h < n * (2.0 * k * h + (l - 1.0) * h * h)
    }

    fn m(&self) -> MatRef<'_, T> {
        let h = self.config.hidden;
        MatRef::from_column_major_slice(&self.m, h, h)
    }
}

/// The field on `(y, s)`: `(a_L M + m, a_L)`.
struct LatentField<'a, T: Real> {
    net: &'a VelocityNet<T>,
    maps: &'a LatentMaps<T>,
}

impl<T: Real> FusedField for LatentField<'_, T> {
    fn fused_dim(&self) -> usize {
        2 * self.net.config().hidden
    }
    fn fused_scratch(&self, batch: usize) -> StackReq {
        let c = self.net.config();
        let h = c.hidden;
        StackReq::all_of(&[
            temp_slice_scratch::<T>(h),
            temp_slice_scratch::<T>(h),
            temp_rows_scratch::<T>(batch, h),
            temp_rows_scratch::<T>(batch, h),
            temp_rows_scratch::<T>(batch, h),
            temp_mat_scratch::<T>(1, 2 * c.time_freqs),
        ])
    }

    fn forward_fused(&self, times: Times<'_>, mut io: Io<'_, f64>, stack: &mut MemStack) {
        let c = *self.net.config();
        let h = c.hidden;
        let b = io.rows();
        io.check(2 * h);
        let (bias, stack) = temp_slice(h, T::ZERO, stack);
        let (zeros, stack) = temp_slice(h, T::ZERO, stack);
        // SAFETY: a is written by the conversion of y, z and o are
        // destinations of Replace products, before any of them is read.
        let (mut a, stack) = unsafe { temp_rows_uninit::<T>(b, h, stack) };
        let (mut z, stack) = unsafe { temp_rows_uninit::<T>(b, h, stack) };
        let (mut o, stack) = unsafe { temp_rows_uninit::<T>(b, h, stack) };
        // First layer: the pre-activation is y plus the time part.
        io.input().subcols(0, h).write(a.rb_mut());
        // Only `integrate` builds this field, and only for fixed-step
        // solvers, which evaluate every row at the same time.
        let Times::Shared(t) = times else {
            unreachable!("hidden coordinates are used by fixed-step solvers only");
        };
        self.net.shared_time_bias(t, bias, stack);
        real::bias_silu(a.rb_mut(), bias);
        let a = self.net.hidden_layers(a.rb_mut(), z.rb_mut(), Par::Seq);
        gemm(o.rb_mut(), a.rb(), self.maps.m(), Par::Seq);
        io.emit(o.rb(), &self.maps.mb, 0);
        io.emit(a.rb(), zeros, h);
    }
}

impl<T: Real> VelocityField for LatentField<'_, T> {
    fused_velocity_field!();
}

/// Workspace for [`integrate`] of `batch` rows.
pub fn integrate_scratch<T: Real>(
    net: &VelocityNet<T>,
    maps: Option<&LatentMaps<T>>,
    batch: usize,
    opts: &SolverOptions,
) -> StackReq {
    let c = net.config();
    match maps {
        Some(maps) if LatentMaps::<T>::pays(c, opts) => {
            let field = LatentField { net, maps };
            let h = c.hidden;
            StackReq::all_of(&[
                temp_mat_scratch::<f64>(batch, 2 * h),
                StackReq::any_of(&[
                    // Lift and lower.
                    StackReq::all_of(&[
                        temp_rows_scratch::<T>(batch, c.dim),
                        temp_rows_scratch::<T>(batch, h),
                    ]),
                    ode::integrate_scratch(&field, batch, opts),
                ]),
            ])
        }
        _ => ode::integrate_scratch(net, batch, opts),
    }
}

/// Integrates the flow of `net` from `t0` to `t1` for every row of `x`
/// (`batch x k`, unit row stride, overwritten), like [`ode::integrate`];
/// with `maps` (built from `net`) and a solve where
/// [`LatentMaps::pays`], in the hidden coordinates. Workspace of
/// [`integrate_scratch`]; does not allocate.
pub fn integrate<T: Real>(
    net: &VelocityNet<T>,
    maps: Option<&LatentMaps<T>>,
    opts: &SolverOptions,
    t0: f64,
    t1: f64,
    x: MatMut<'_, f64>,
    stack: &mut MemStack,
) -> Result<SolveStats> {
    let c = *net.config();
    let maps = match maps {
        Some(m) if m.config != c => {
            return Err(Error::invalid(
                "maps: built for a network of another architecture",
            ))
        }
        Some(m) if LatentMaps::<T>::pays(&c, opts) => m,
        _ => return ode::integrate(net, opts, t0, t1, x, stack),
    };
    opts.check()?;
    debug_assert!(matches!(
        opts.solver,
        Solver::Euler | Solver::Heun | Solver::Rk4
    ));
    ode::check_state(x.rb(), c.dim)?;
    let (b, h) = (x.nrows(), c.hidden);
    if b == 0 || t0 == t1 {
        return Ok(SolveStats::default());
    }
    let mut x = x;
    let (mut z, stack) = temp_mat_zeroed::<f64>(b, 2 * h, stack);
    lift(net, x.rb(), z.rb_mut().subcols_mut(0, h), stack);
    let field = LatentField { net, maps };
    let stats = ode::integrate(&field, opts, t0, t1, z.rb_mut(), stack)?;
    lower(net, z.rb().subcols(h, h), t1 - t0, x.rb_mut(), stack);
    Ok(stats)
}

/// `y <- x W`.
fn lift<T: Real>(
    net: &VelocityNet<T>,
    x: MatRef<'_, f64>,
    y: MatMut<'_, f64>,
    stack: &mut MemStack,
) {
    let c = net.config();
    let (b, h) = (x.nrows(), c.hidden);
    // SAFETY: xin is written by the conversion, o by a Replace product.
    let (mut xin, stack) = unsafe { temp_rows_uninit::<T>(b, c.dim, stack) };
    let (mut o, _) = unsafe { temp_rows_uninit::<T>(b, h, stack) };
    real::convert(x, xin.rb_mut());
    gemm(
        o.rb_mut(),
        xin.rb(),
        net.weight(0).subrows(0, c.dim),
        Par::Seq,
    );
    real::convert(o.rb(), y);
}

/// `x <- x + s W_o + span b_o`.
fn lower<T: Real>(
    net: &VelocityNet<T>,
    s: MatRef<'_, f64>,
    span: f64,
    x: MatMut<'_, f64>,
    stack: &mut MemStack,
) {
    let c = net.config();
    let (b, h) = (x.nrows(), c.hidden);
    // SAFETY: sin is written by the conversion, o by a Replace product.
    let (mut sin, stack) = unsafe { temp_rows_uninit::<T>(b, h, stack) };
    let (mut o, _) = unsafe { temp_rows_uninit::<T>(b, c.dim, stack) };
    real::convert(s, sin.rb_mut());
    gemm(o.rb_mut(), sin.rb(), net.weight(c.layers), Par::Seq);
    let mut x = x;
    for (j, bj) in net.bias(c.layers).iter().enumerate() {
        let shift = span * bj.to_f64();
        for i in 0..b {
            x[(i, j)] += o[(i, j)].to_f64() + shift;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::dyn_stack::MemBuffer;

    fn config(dim: usize, hidden: usize) -> NetConfig {
        NetConfig {
            dim,
            hidden,
            layers: 3,
            time_freqs: 4,
        }
    }

    fn start(rows: usize, dim: usize) -> Mat<f64> {
        Mat::from_fn(rows, dim, |i, j| ((7 * i + 3 * j) % 13) as f64 / 6.0 - 1.0)
    }

    fn solve<T: Real>(
        net: &VelocityNet<T>,
        maps: Option<&LatentMaps<T>>,
        opts: &SolverOptions,
        x: &mut Mat<f64>,
    ) -> Result<SolveStats> {
        let mut mem = MemBuffer::new(integrate_scratch(net, maps, x.nrows(), opts));
        integrate(
            net,
            maps,
            opts,
            0.0,
            1.0,
            x.as_mut(),
            MemStack::new(&mut mem),
        )
    }

    fn fixed(solver: Solver, steps: usize) -> SolverOptions {
        SolverOptions {
            solver,
            steps,
            ..Default::default()
        }
    }

    #[test]
    fn hidden_coordinates_reproduce_the_state_solution() {
        // f64 network: the two routes differ by rounding only; f32: by the
        // network's own precision.
        let (d, h) = (40, 16);
        let x0 = start(11, d);
        for solver in [Solver::Euler, Solver::Heun, Solver::Rk4] {
            let opts = fixed(solver, 8);
            assert!(LatentMaps::<f64>::pays(&config(d, h), &opts));
            let net = VelocityNet::<f64>::new(config(d, h), 3).unwrap();
            let maps = LatentMaps::new(&net);
            let (mut xs, mut xh) = (x0.clone(), x0.clone());
            solve(&net, None, &opts, &mut xs).unwrap();
            let stats = solve(&net, Some(&maps), &opts, &mut xh).unwrap();
            assert_eq!(stats.evaluations, opts.evaluations().unwrap());
            let scale = (&xs - &x0).norm_max();
            assert!(scale > 0.1, "{solver:?}: the state moved ({scale})");
            let err = (&xs - &xh).norm_max();
            eprintln!("{solver:?}: f64 network, max difference {err:.1e} (state moved {scale:.2})");
            assert!(
                err < 1e-12 * scale.max(1.0) * d as f64,
                "{solver:?} f64: {err}"
            );

            let net = VelocityNet::<f32>::new(config(d, h), 3).unwrap();
            let maps = LatentMaps::new(&net);
            let (mut xs, mut xh) = (x0.clone(), x0.clone());
            solve(&net, None, &opts, &mut xs).unwrap();
            solve(&net, Some(&maps), &opts, &mut xh).unwrap();
            let err = (&xs - &xh).norm_max();
            eprintln!("{solver:?}: f32 network, max difference {err:.1e}");
            assert!(err < 1e-4, "{solver:?} f32: {err}");
        }
    }

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (d, h) = (24, 8);
        let net = VelocityNet::<f32>::new(config(d, h), 9).unwrap();
        let maps = LatentMaps::new(&net);
        let opts = fixed(Solver::Rk4, 5);
        let x0 = start(7, d);
        let mut all = x0.clone();
        solve(&net, Some(&maps), &opts, &mut all).unwrap();
        for i in 0..x0.nrows() {
            let mut one = x0.as_ref().subrows(i, 1).to_owned();
            solve(&net, Some(&maps), &opts, &mut one).unwrap();
            for j in 0..d {
                assert_eq!(one[(0, j)].to_bits(), all[(i, j)].to_bits(), "({i}, {j})");
            }
        }
    }

    #[test]
    fn pays_only_for_fixed_steps_and_wide_states() {
        let opts = fixed(Solver::Rk4, 16);
        // H < 2 k (1 - 1/n) is the break-even point.
        assert!(LatentMaps::<f32>::pays(&config(400, 256), &opts));
        assert!(LatentMaps::<f32>::pays(&config(3600, 512), &opts));
        assert!(!LatentMaps::<f32>::pays(&config(64, 256), &opts));
        assert!(!LatentMaps::<f32>::pays(&config(128, 256), &opts));
        assert!(!LatentMaps::<f32>::pays(
            &config(400, 256),
            &fixed(Solver::Euler, 1)
        ));
        let dopri = SolverOptions {
            solver: Solver::Dopri5,
            ..Default::default()
        };
        assert!(!LatentMaps::<f32>::pays(&config(3600, 256), &dopri));
    }

    #[test]
    fn the_state_route_is_taken_when_hidden_coordinates_do_not_pay() {
        // k = 64 > H / 2 fails here: H = 256, so the maps are ignored and
        // the result is bitwise the state route's.
        let net = VelocityNet::<f32>::new(config(64, 256), 1).unwrap();
        let maps = LatentMaps::new(&net);
        let opts = fixed(Solver::Euler, 4);
        let x0 = start(3, 64);
        let (mut a, mut b) = (x0.clone(), x0.clone());
        solve(&net, None, &opts, &mut a).unwrap();
        solve(&net, Some(&maps), &opts, &mut b).unwrap();
        assert!(a.as_ref() == b.as_ref());
    }

    #[test]
    fn maps_of_another_network_are_rejected() {
        let net = VelocityNet::<f32>::new(config(40, 16), 1).unwrap();
        let other = VelocityNet::<f32>::new(config(40, 12), 1).unwrap();
        let maps = LatentMaps::new(&other);
        let mut x = start(2, 40);
        let before = x.clone();
        let err = solve(&net, Some(&maps), &fixed(Solver::Rk4, 4), &mut x).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert!(err.message().starts_with("maps:"), "{}", err.message());
        assert!(x.as_ref() == before.as_ref(), "x is untouched on error");
    }
}
