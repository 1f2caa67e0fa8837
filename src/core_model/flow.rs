//! The flow kind's leading block: a flow-matching network on the
//! standardised scores, its moment matching and its support radius.

use super::leading::BlockDensity;
use super::parts::{FlowParts, NetParams};
use super::{format_err, rowwise_matmul, FlowOptions, Precision, SAMPLE_CHUNK};
use crate::error::{Error, ErrorKind, Result};
use crate::flow::latent::{self, LatentMaps};
use crate::flow::likelihood::{self, DivergenceField};
use crate::flow::network::{Io, NetConfig, VelocityNet};
use crate::flow::ode::{
    self, fused_velocity_field, Divergence, FusedField, SolveStats, SolverOptions,
};
use crate::flow::ode::{Times, VelocityField};
use crate::flow::train::{TrainReport, Trainer, Validation};
use crate::moments::{column_moments, covariance, sym_pow};
use crate::numerics::{
    par_for_threads, temp_mat_scratch, temp_mat_zeroed, temp_slice, temp_slice_scratch,
};
use crate::reduce::{LocalReducer, Reducer};
use crate::rng;
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::matmul::matmul;
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par, RowMut, RowRef};

/// Draws of a sample's flow block before sampling gives up on it (see
/// [`CoreModel::sample`](super::CoreModel::sample)): a flow that leaves its support once in a
/// thousand draws fails here with probability 1e-48.
pub const FLOW_DRAWS: u32 = 16;

/// The network in either precision.
#[derive(Clone, Debug)]
pub(super) enum FlowNet {
    F32(VelocityNet<f32>),
    F64(VelocityNet<f64>),
}

macro_rules! with_net {
    ($net:expr, $n:ident => $body:expr) => {
        match $net {
            FlowNet::F32($n) => $body,
            FlowNet::F64($n) => $body,
        }
    };
}

impl FusedField for FlowNet {
    fn fused_dim(&self) -> usize {
        with_net!(self, n => n.fused_dim())
    }
    fn fused_scratch(&self, batch: usize) -> StackReq {
        with_net!(self, n => n.fused_scratch(batch))
    }
    fn forward_fused(&self, times: Times<'_>, io: Io<'_, f64>, stack: &mut MemStack) {
        with_net!(self, n => n.forward_fused(times, io, stack))
    }
}

impl VelocityField for FlowNet {
    fused_velocity_field!();
}

impl DivergenceField for FlowNet {
    fn eval_div_scratch(&self, batch: usize) -> StackReq {
        with_net!(self, n => n.eval_div_scratch(batch))
    }
    fn eval_div(
        &self,
        times: Times<'_>,
        x: MatRef<'_, f64>,
        v: MatMut<'_, f64>,
        div: &mut [f64],
        stack: &mut MemStack,
    ) {
        with_net!(self, n => n.eval_div(times, x, v, div, stack))
    }
    fn eval_jvp_scratch(&self, batch: usize) -> StackReq {
        with_net!(self, n => n.eval_jvp_scratch(batch))
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
        with_net!(self, n => n.eval_jvp(times, x, probe, v, quad, stack))
    }
}

/// The hidden-coordinate maps of a [`FlowNet`] (see [`latent`]).
#[derive(Clone, Debug)]
enum FlowMaps {
    F32(LatentMaps<f32>),
    F64(LatentMaps<f64>),
}

impl FlowNet {
    /// The maps when some fixed-step solve can be cheaper in hidden
    /// coordinates ([`LatentMaps::for_net`]), else `None`.
    fn maps(&self) -> Option<FlowMaps> {
        match self {
            FlowNet::F32(n) => LatentMaps::for_net(n).map(FlowMaps::F32),
            FlowNet::F64(n) => LatentMaps::for_net(n).map(FlowMaps::F64),
        }
    }

    /// Workspace of [`integrate`](Self::integrate).
    fn integrate_scratch(
        &self,
        maps: Option<&FlowMaps>,
        batch: usize,
        solver: &SolverOptions,
    ) -> StackReq {
        match (self, maps) {
            (FlowNet::F32(n), Some(FlowMaps::F32(m))) => {
                latent::integrate_scratch(n, Some(m), batch, solver)
            }
            (FlowNet::F64(n), Some(FlowMaps::F64(m))) => {
                latent::integrate_scratch(n, Some(m), batch, solver)
            }
            _ => ode::integrate_scratch(self, batch, solver),
        }
    }

    /// The flow from `t = 0` to 1 of every row of `x`, in hidden
    /// coordinates when the maps are given and that is cheaper.
    fn integrate(
        &self,
        maps: Option<&FlowMaps>,
        solver: &SolverOptions,
        x: MatMut<'_, f64>,
        stack: &mut MemStack,
    ) -> Result<SolveStats> {
        match (self, maps) {
            (FlowNet::F32(n), Some(FlowMaps::F32(m))) => {
                latent::integrate(n, Some(m), solver, 0.0, 1.0, x, stack)
            }
            (FlowNet::F64(n), Some(FlowMaps::F64(m))) => {
                latent::integrate(n, Some(m), solver, 0.0, 1.0, x, stack)
            }
            _ => ode::integrate(self, solver, 0.0, 1.0, x, stack),
        }
    }
}

/// The flow block ready for sampling and scoring.
#[derive(Clone, Debug)]
pub(super) struct FlowBlock {
    pub(super) parts: FlowParts,
    pub(super) net: FlowNet,
    /// Hidden-coordinate maps of `net` (sampling).
    maps: Option<FlowMaps>,
    /// `A^T`.
    a_t: Mat<f64>,
    /// `A^-T`.
    a_inv_t: Mat<f64>,
    /// `log|det A|`.
    log_det_a: f64,
}

impl FlowBlock {
    pub(super) fn from_parts(p: FlowParts) -> Result<Self> {
        let k = p.scale.len();
        if k == 0 {
            return Err(format_err("core model: the flow block is empty"));
        }
        if p.mm_shift.len() != k || p.mm_matrix.len() != k * k {
            return Err(format_err(
                "core model: moment-matching sizes are inconsistent",
            ));
        }
        if p.mm_shift
            .iter()
            .chain(&p.mm_matrix)
            .any(|v| !v.is_finite())
        {
            return Err(format_err("core model: flow block has a non-finite value"));
        }
        if p.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(format_err(
                "core model: flow scales must be finite and positive",
            ));
        }
        if !(p.support_radius.is_finite() && p.support_radius > 0.0) {
            return Err(format_err(
                "core model: the flow's support radius must be finite and positive",
            ));
        }
        let config = NetConfig {
            dim: k,
            hidden: p.hidden,
            layers: p.layers,
            time_freqs: p.time_freqs,
        };
        let net = match &p.params {
            NetParams::F32(v) => VelocityNet::from_params(config, v.clone()).map(FlowNet::F32),
            NetParams::F64(v) => VelocityNet::from_params(config, v.clone()).map(FlowNet::F64),
        }
        .map_err(|e| format_err(format!("core model: network: {}", e.message())))?;
        let a = MatRef::from_column_major_slice(&p.mm_matrix, k, k);
        let (log_det_a, a_inv) = crate::numerics::lu_log_det_inverse(a, Par::Seq)
            .ok_or_else(|| format_err("core model: moment-matching matrix is singular"))?;
        if a_inv.as_ref().norm_max().is_nan() || !a_inv.as_ref().norm_max().is_finite() {
            return Err(format_err("core model: moment-matching matrix is singular"));
        }
        Ok(Self {
            a_t: a.transpose().to_owned(),
            a_inv_t: a_inv.transpose().to_owned(),
            log_det_a,
            maps: net.maps(),
            net,
            parts: p,
        })
    }

    /// The network's architecture.
    pub(super) fn config(&self) -> NetConfig {
        *with_net!(&self.net, n => n.config())
    }

    /// The `k` base normals of draw `attempt` of sample `index` into `z`
    /// (`row` is a scratch of at least `k` values): attempt 0 is the prefix
    /// of the sample's own stream, later attempts come from
    /// [`rng::redraw_stream`].
    fn draw_noise(&self, seed: u64, index: u64, attempt: u32, row: &mut [f64], z: RowMut<'_, f64>) {
        let k = self.dim();
        let mut r = if attempt == 0 {
            rng::stream(seed, index)
        } else {
            rng::redraw_stream(seed, index, attempt)
        };
        rng::fill_normal(&mut r, &mut row[..k]);
        let mut z = z;
        for j in 0..k {
            z[j] = row[j];
        }
    }

    /// `y = A (z - m)` row by row, the standardised component scores of
    /// flow states `z` (`z` is shifted in place).
    fn standardised_scores(&self, z: MatMut<'_, f64>, y: MatMut<'_, f64>) {
        let mut z = z;
        for (j, &m) in self.parts.mm_shift.iter().enumerate() {
            for i in 0..z.nrows() {
                z[(i, j)] -= m;
            }
        }
        rowwise_matmul(y, z.rb(), self.a_t.as_ref(), false);
    }

    /// Whether standardised scores `y` lie in the region the training data
    /// justify: `||y|| <= support_radius` (false for non-finite values).
    fn in_support(&self, y: RowRef<'_, f64>) -> bool {
        let r = self.parts.support_radius;
        let mut sq = 0.0;
        for j in 0..y.ncols() {
            sq += y[j] * y[j];
        }
        sq <= r * r
    }

    /// Draws the flow block of sample `index` again, from attempt `from`
    /// on, until a draw lands in the support (see [`sample`](CoreModel::sample)):
    /// its standardised scores go to `y` (`1 x k`). More than
    /// [`FLOW_DRAWS`] attempts is `ErrorKind::Numerical`.
    #[allow(clippy::too_many_arguments)]
    fn redraw(
        &self,
        solver: &SolverOptions,
        seed: u64,
        index: u64,
        from: u32,
        row: &mut [f64],
        y: MatMut<'_, f64>,
        stack: &mut MemStack,
    ) -> Result<()> {
        let k = self.dim();
        let mut y = y;
        let (mut z, stack) = temp_mat_zeroed::<f64>(1, k, stack);
        for attempt in from..FLOW_DRAWS {
            self.draw_noise(seed, index, attempt, row, z.rb_mut().row_mut(0));
            match self
                .net
                .integrate(self.maps.as_ref(), solver, z.rb_mut(), &mut *stack)
            {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Numerical => continue,
                Err(e) => return Err(e),
            }
            self.standardised_scores(z.rb_mut(), y.rb_mut());
            if self.in_support(y.rb().row(0)) {
                return Ok(());
            }
        }
        Err(Error::numerical(format!(
            "sample: the flow left the region of its training data (standardised norm above {:.3}) \
             in {FLOW_DRAWS} draws of sample {index}; the flow is unreliable: refit it \
             (e.g. core_model GAUSSIAN or a lower learning rate)",
            self.parts.support_radius
        )))
    }
}

/// Tangent rows (`rows x k`) per chunk for exact-divergence log-densities.
const DIV_ROWS: usize = 2048;

impl BlockDensity for FlowBlock {
    fn dim(&self) -> usize {
        self.parts.scale.len()
    }

    fn scale(&self) -> &[f64] {
        &self.parts.scale
    }

    fn sample_scratch(&self, rows: usize, solver: &SolverOptions) -> StackReq {
        let k = self.dim();
        let redraw = StackReq::all_of(&[
            temp_mat_scratch::<f64>(1, k),
            self.net.integrate_scratch(self.maps.as_ref(), 1, solver),
        ]);
        StackReq::all_of(&[
            temp_slice_scratch::<f64>(k),
            temp_mat_scratch::<f64>(rows, k),
            StackReq::any_of(&[
                self.net.integrate_scratch(self.maps.as_ref(), rows, solver),
                redraw,
            ]),
        ])
    }

    /// A flow draw: `z` from the sample's normals, integrated from `t = 0`
    /// to 1, then `y = A (z - m)`; a draw outside the support (or whose
    /// solve fails numerically) is drawn again ([`FlowBlock::redraw`]).
    fn sample(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first: u64,
        y: MatMut<'_, f64>,
        stack: &mut MemStack,
    ) -> Result<()> {
        let mut y = y;
        let (b, k) = y.shape();
        let (row, stack) = temp_slice(k, 0.0f64, stack);
        let (mut z, st) = temp_mat_zeroed::<f64>(b, k, stack);
        for i in 0..b {
            self.draw_noise(
                seed,
                first.wrapping_add(i as u64),
                0,
                row,
                z.rb_mut().row_mut(i),
            );
        }
        // A solve that fails numerically (an adaptive step underflows on
        // a diverging row) has left no usable state: every row of the
        // chunk is then drawn again on its own, from its first stream, so
        // the result is what a chunk without that row would give.
        let solved = match self
            .net
            .integrate(self.maps.as_ref(), solver, z.rb_mut(), &mut *st)
        {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::Numerical => false,
            Err(e) => return Err(e),
        };
        self.standardised_scores(z.rb_mut(), y.rb_mut());
        for i in 0..b {
            if !solved || !self.in_support(y.rb().row(i)) {
                let index = first.wrapping_add(i as u64);
                let from = if solved { 1 } else { 0 };
                self.redraw(
                    solver,
                    seed,
                    index,
                    from,
                    row,
                    y.rb_mut().subrows_mut(i, 1),
                    st,
                )?;
            }
        }
        Ok(())
    }

    fn log_prob_rows(&self, solver: &SolverOptions) -> usize {
        match solver.divergence {
            Divergence::Exact => (DIV_ROWS / self.dim()).max(1),
            Divergence::Hutchinson { .. } => usize::MAX,
        }
    }

    fn log_prob_scratch(&self, rows: usize, solver: &SolverOptions) -> StackReq {
        StackReq::all_of(&[
            temp_mat_scratch::<f64>(rows, self.dim()),
            likelihood::log_prob_scratch(&self.net, rows, solver),
        ])
    }

    /// `log p(y) = log p_flow(z) - log|det A|`, `z = A^-1 y + m`.
    fn log_prob(
        &self,
        solver: &SolverOptions,
        first: u64,
        y: MatRef<'_, f64>,
        out: &mut [f64],
        stack: &mut MemStack,
    ) -> Result<()> {
        let (b, k) = y.shape();
        let (mut z, s) = temp_mat_zeroed::<f64>(b, k, stack);
        rowwise_matmul(z.rb_mut(), y, self.a_inv_t.as_ref(), false);
        for j in 0..k {
            let m = self.parts.mm_shift[j];
            for i in 0..b {
                z[(i, j)] += m;
            }
        }
        likelihood::log_prob(&self.net, solver, first, z.rb(), out, s)?;
        for o in out.iter_mut() {
            *o -= self.log_det_a;
        }
        Ok(())
    }
}

/// Trains the flow on the standardised scores `x1` (`N x k`, this
/// participant's rows) of the first `k` components, of scales `sigma`, and
/// moment-matches it; returns the flow parts and the training report.
/// With `validation` (held-out standardised scores of the same components)
/// training stops early on their flow-matching loss
/// ([`Trainer::run_validated`]); `steps`, when given, replaces
/// `opts.steps` (the refit on every core trains as long as the validated
/// fit did).
pub(super) fn fit_flow(
    x1: MatRef<'_, f64>,
    sigma: Vec<f64>,
    validation: Option<MatRef<'_, f64>>,
    steps: Option<usize>,
    reducer: &dyn Reducer,
    opts: &FlowOptions,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
) -> Result<(FlowParts, TrainReport)> {
    let k = x1.ncols();
    let support_radius = support_radius(x1, reducer)?;
    let config = NetConfig {
        dim: k,
        hidden: opts.hidden,
        layers: opts.layers,
        time_freqs: opts.time_freqs,
    };
    let mut topts = opts.train_options();
    if let Some(s) = steps {
        topts.steps = s.max(1);
        topts.warmup_steps = topts.warmup_steps.min(topts.steps / 2);
    }
    let validation = validation.map(|v| Validation::new(v, opts.seed));
    let par = par_for_threads(opts.threads);
    let (net, report) = match opts.precision {
        Precision::F32 => {
            let mut t = Trainer::<f32>::new(config, x1, &topts, Some(reducer), par)?;
            let rep = match &validation {
                Some(v) => t.run_validated(v, progress)?,
                None => t.run(progress)?,
            };
            (FlowNet::F32(t.into_nets().0), rep)
        }
        Precision::F64 => {
            let mut t = Trainer::<f64>::new(config, x1, &topts, Some(reducer), par)?;
            let rep = match &validation {
                Some(v) => t.run_validated(v, progress)?,
                None => t.run(progress)?,
            };
            (FlowNet::F64(t.into_nets().0), rep)
        }
    };
    let (mm_shift, mm_matrix) = if opts.moment_matching {
        moment_match(&net, x1, opts, reducer)?
    } else {
        let mut a = vec![0.0; k * k];
        for j in 0..k {
            a[j + j * k] = 1.0;
        }
        (vec![0.0; k], a)
    };
    let params = match net {
        FlowNet::F32(n) => NetParams::F32(n.into_params()),
        FlowNet::F64(n) => NetParams::F64(n.into_params()),
    };
    Ok((
        FlowParts {
            scale: sigma,
            hidden: opts.hidden,
            layers: opts.layers,
            time_freqs: opts.time_freqs,
            params,
            mm_shift,
            mm_matrix,
            support_radius,
        },
        report,
    ))
}

/// Exponent of the power mean that stands in for the largest training
/// norm in [`support_radius`].
const SUPPORT_POWER: i32 = 32;
/// Margin of [`support_radius`] over the training data.
pub const SUPPORT_MARGIN: f64 = 1.25;

/// The radius of the region the standardised training block `x1` (`N x k`,
/// this participant's rows) justifies: `SUPPORT_MARGIN x sqrt(k) x
/// (sum_i (||x1_i|| / sqrt(k))^p)^(1/p)`, `p = SUPPORT_POWER`, summed over
/// all participants. The power sum is at least the largest normalised norm
/// and at most `N^(1/p)` times it (1.24x at `N = 1000`), and, unlike a
/// maximum, it is a sum the reduction hook can complete.
///
/// Why a radius at all: flow matching constrains the velocity only where
/// the interpolants `x_t` have mass. Outside, the network extrapolates
/// linearly, with gains measured up to 135 per unit time on the demo's
/// model, so a base draw from the tail (`||x0||` about 3 standard
/// deviations out) that leaves the trained region half-way is amplified
/// exponentially (1e17 at `t = 1`). No solver setting fixes this: the
/// field itself diverges. Such a draw is outside what the model can
/// justify, and sampling draws it again.
pub fn support_radius(x1: MatRef<'_, f64>, reducer: &dyn Reducer) -> Result<f64> {
    let (n, k) = x1.shape();
    let inv_k = 1.0 / k as f64;
    let mut sums = [0.0, n as f64];
    for i in 0..n {
        let sq: f64 = (0..k).map(|j| x1[(i, j)] * x1[(i, j)]).sum::<f64>() * inv_k;
        sums[0] += sq.sqrt().powi(SUPPORT_POWER);
    }
    reducer.sum_in_place(&mut sums)?;
    let r = SUPPORT_MARGIN * (k as f64).sqrt() * sums[0].powf(1.0 / SUPPORT_POWER as f64);
    if !(r.is_finite() && r > 0.0) {
        return Err(Error::numerical(
            "core model: the standardised training block has no finite spread",
        ));
    }
    Ok(r)
}

/// `(m, A)` of the moment matching (see the module docs).
fn moment_match(
    net: &FlowNet,
    x1: MatRef<'_, f64>,
    opts: &FlowOptions,
    reducer: &dyn Reducer,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let k = x1.ncols();
    let count = opts.moment_samples.max(4 * k);
    let mut z = Mat::<f64>::zeros(count, k);
    let chunk = count.min(SAMPLE_CHUNK);
    let maps = net.maps();
    let mut mem = MemBuffer::new(net.integrate_scratch(maps.as_ref(), chunk, &opts.solver));
    let seed = rng::mix64(opts.seed ^ 0x6d6f_6d65_6e74);
    let mut row = vec![0.0; k];
    let mut start = 0;
    while start < count {
        let b = (count - start).min(chunk);
        let mut zc = z.as_mut().subrows_mut(start, b);
        for i in 0..b {
            let mut r = rng::stream(seed, (start + i) as u64);
            rng::fill_normal(&mut r, &mut row);
            for j in 0..k {
                zc[(i, j)] = row[j];
            }
        }
        net.integrate(maps.as_ref(), &opts.solver, zc, MemStack::new(&mut mem))?;
        start += b;
    }
    let sq: Vec<f64> = (0..count)
        .map(|i| (0..k).map(|j| z[(i, j)] * z[(i, j)]).sum::<f64>())
        .collect();
    if sq.iter().any(|v| !v.is_finite()) {
        return Err(Error::numerical(
            "core model: flow samples for moment matching are not finite (the flow diverged)",
        ));
    }
    let mut sorted = sq.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if count % 2 == 1 {
        sorted[count / 2]
    } else {
        0.5 * (sorted[count / 2 - 1] + sorted[count / 2])
    };
    let kept: Vec<usize> = (0..count).filter(|&i| sq[i] <= 10.0 * median).collect();
    if kept.len() < 2 {
        return Err(Error::numerical(
            "core model: moment matching kept fewer than 2 flow samples",
        ));
    }
    let zk = super::fit::select_rows(z.as_ref(), &kept);
    // The flow samples are the same on every participant (same seed, same
    // network): their moments are local; the training block's are global.
    let (m, _) = column_moments(zk.as_ref(), &LocalReducer)?;
    let s = covariance(zk.as_ref(), &m, &LocalReducer)?;
    let r = covariance(x1, &column_moments(x1, reducer)?.0, reducer)?;
    let r_half = sym_pow(r.as_ref(), 0.5)?;
    let s_inv_half = sym_pow(s.as_ref(), -0.5)?;
    let mut a = Mat::<f64>::zeros(k, k);
    matmul(
        a.as_mut(),
        Accum::Replace,
        r_half.as_ref(),
        s_inv_half.as_ref(),
        1.0,
        Par::Seq,
    );
    let mut flat = vec![0.0; k * k];
    for j in 0..k {
        for i in 0..k {
            flat[i + j * k] = a[(i, j)];
        }
    }
    Ok((m, flat))
}
