//! Flow-matching training of the velocity network.
//!
//! Data: a standardised `N x k` matrix, one sample `x1` per row. Each
//! optimiser step draws a batch of `B` rows (uniformly, with replacement),
//! noise `x0 ~ N(0, I_k)` and times `t ~ U[0, 1]`, forms the rectified path
//! `x_t = (1 - t) x0 + t x1` with target velocity `u = x1 - x0`, and takes one
//! Adam step on the loss `(1/B) sum_b ||v(x_t, t) - u||^2`.
//!
//! Coupling: [`Coupling::Independent`] pairs noise and data as drawn;
//! [`Coupling::MinibatchOt`] re-pairs them within the batch by the exact
//! assignment minimising `sum_a ||x0_a - x1_pi(a)||^2` (see
//! [`assignment`](super::assignment)).
//!
//! The whole run is one random stream of the seed, so a seed fixes the
//! result. A [`Trainer`] allocates everything once; [`Trainer::step`] does not
//! allocate (with `Par::Seq`; a thread pool may allocate internally).
//!
//! Early stopping ([`Trainer::run_validated`]): a fixed validation problem
//! ([`Validation`]: held-out rows, each with [`VALIDATION_DRAWS`] fixed
//! noise and time draws) is scored with the EMA weights every
//! `max(25, steps / 50)` steps after the warm-up; training stops after
//! [`PATIENCE`] scores without a relative improvement of 1e-3, and the EMA
//! weights of the best score are the result. The flow-matching loss has an
//! irreducible part (the conditional variance of `u` given `x_t`), so its
//! value says nothing absolute; only its turn upward on held-out rows
//! does, which is where a network starts to fit the training rows rather
//! than their law (measured: the forced flow on 64 motion matrices copied
//! its training set, closest-record ratio 0.55).
//!
//! Data-parallel training: with a [`Reducer`], each step computes the
//! gradient of the *summed* local loss, packs it (as `f64`) with the local
//! loss sum and sample count into one buffer, lets the reducer sum that
//! buffer over participants, and divides by the total count. With no reducer
//! (or [`LocalReducer`](crate::reduce::LocalReducer)) the local batch is the
//! whole batch and no packing is done.

use super::assignment::{min_cost_assignment, min_cost_assignment_scratch};
use super::network::{NetConfig, Tape, VelocityNet};
use super::noise::fill_normal_fast;
use super::optim::{clip_grad_norm, Adam, AdamConfig, Ema, LrSchedule};
use super::real::{col_mut, col_ref, multiversion, Real};
use crate::error::{Error, Result};
use crate::numerics::{temp_slice, temp_slice_scratch};
use crate::reduce::Reducer;
use crate::rng::{self, Rng};
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::matmul::matmul;
use faer::prelude::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};

/// How noise and data are paired within a batch.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Coupling {
    /// As drawn (default).
    #[default]
    Independent,
    /// Exact minibatch optimal transport (squared Euclidean cost).
    MinibatchOt,
}

/// Training hyper-parameters (defaults from DESIGN.md section 5).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Optimiser steps (default 4000).
    pub steps: usize,
    /// Batch size `B` (default 128).
    pub batch_size: usize,
    /// Peak learning rate (default 1e-2).
    pub learning_rate: f64,
    /// Linear warm-up steps before the cosine decay (default 200, capped at
    /// half the steps).
    pub warmup_steps: usize,
    /// Decoupled weight decay (default 0).
    pub weight_decay: f64,
    /// Cap of the EMA decay (default 0.999).
    pub ema_decay: f64,
    /// Gradient-norm clipping threshold, 0 = off (default 0).
    pub clip_norm: f64,
    /// Noise-data pairing (default independent).
    pub coupling: Coupling,
    /// Seed of the training stream (batches, noise, times, initial weights).
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 4000,
            batch_size: 128,
            learning_rate: 1e-2,
            warmup_steps: 200,
            weight_decay: 0.0,
            ema_decay: 0.999,
            clip_norm: 0.0,
            coupling: Coupling::Independent,
            seed: 0,
        }
    }
}

impl TrainOptions {
    /// Checks every field; the error names the first invalid one.
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid("opts.steps: must be > 0"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("opts.batch_size: must be > 0"));
        }
        if self.batch_size > 1 << 20 {
            return Err(Error::invalid(format!(
                "opts.batch_size: {} exceeds the maximum {}",
                self.batch_size,
                1 << 20
            )));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::invalid(format!(
                "opts.learning_rate: must be finite and > 0, got {}",
                self.learning_rate
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(format!(
                "opts.weight_decay: must be finite and >= 0, got {}",
                self.weight_decay
            )));
        }
        if !(self.ema_decay >= 0.0 && self.ema_decay < 1.0) {
            return Err(Error::invalid(format!(
                "opts.ema_decay: must be in [0, 1), got {}",
                self.ema_decay
            )));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm >= 0.0) {
            return Err(Error::invalid(format!(
                "opts.clip_norm: must be finite and >= 0 (0 = off), got {}",
                self.clip_norm
            )));
        }
        Ok(())
    }
}

/// Summary of a training run.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct TrainReport {
    /// Steps taken.
    pub steps: usize,
    /// Mean batch loss over the last `min(100, steps)` steps.
    pub final_loss: f64,
    /// Loss of the first batch.
    pub first_loss: f64,
    /// The step whose EMA weights are the result: `steps` without early
    /// stopping, else the step of the best validation score.
    pub best_step: usize,
    /// Best validation loss (`None` without a validation problem).
    pub validation_loss: Option<f64>,
}

/// Fixed noise and time draws per validation row.
pub const VALIDATION_DRAWS: usize = 8;
/// Validation scores without improvement before training stops.
pub const PATIENCE: usize = 8;

/// A fixed flow-matching problem on held-out rows: for each row `x1` and
/// each of [`VALIDATION_DRAWS`] draws, noise `x0` and a time `t` from a
/// stream of the seed, so every score of a run uses the same problem.
#[derive(Clone, Debug)]
pub struct Validation {
    x0: faer::Mat<f64>,
    x1: faer::Mat<f64>,
    t: Vec<f64>,
}

impl Validation {
    /// The problem for the rows of `held` (`n x k`, this participant's).
    pub fn new(held: MatRef<'_, f64>, seed: u64) -> Self {
        let (n, k) = held.shape();
        let rows = n * VALIDATION_DRAWS;
        let mut r = rng::stream(seed, 0x7661_6c69_6400);
        let mut x0 = faer::Mat::<f64>::zeros(rows, k);
        let mut x1 = faer::Mat::<f64>::zeros(rows, k);
        let mut t = vec![0.0; rows];
        let mut z = vec![0.0; k];
        for i in 0..rows {
            rng::fill_normal(&mut r, &mut z);
            t[i] = rng::uniform(&mut r);
            for j in 0..k {
                x0[(i, j)] = z[j];
                x1[(i, j)] = held[(i / VALIDATION_DRAWS, j)];
            }
        }
        Self { x0, x1, t }
    }
}

/// Number of trailing losses averaged into [`TrainReport::final_loss`].
const LOSS_WINDOW: usize = 100;

/// The state of a training run: network, optimiser, EMA and every buffer a
/// step needs.
pub struct Trainer<'r, T: Real> {
    net: VelocityNet<T>,
    opts: TrainOptions,
    /// The training set, row-major (`n x k`).
    data: Vec<T>,
    n: usize,
    adam: Adam<T>,
    ema: Ema<T>,
    schedule: LrSchedule,
    grad: Vec<T>,
    reducer: Option<&'r dyn Reducer>,
    reduce_buf: Vec<f64>,
    tape: Vec<T>,
    x0: Vec<T>,
    x1: Vec<T>,
    dout: Vec<T>,
    t: Vec<f64>,
    idx: Vec<usize>,
    perm: Vec<usize>,
    work: MemBuffer,
    rng: Rng,
    par: Par,
    step: usize,
    losses: [f64; LOSS_WINDOW],
    first_loss: f64,
    /// EMA weights and score of the best validation so far.
    best: Option<(Vec<T>, usize, f64)>,
}

impl<'r, T: Real> Trainer<'r, T> {
    /// Sets up training of a fresh network of architecture `config` on `data`
    /// (`N x k`, `k = config.dim`, finite). Allocates everything the steps
    /// need. `reducer` (optional) completes gradient sums across participants.
    pub fn new(
        config: NetConfig,
        data: MatRef<'_, f64>,
        opts: &TrainOptions,
        reducer: Option<&'r dyn Reducer>,
        par: Par,
    ) -> Result<Self> {
        opts.check()?;
        config.check()?;
        let (n, k) = data.shape();
        if k != config.dim {
            return Err(Error::shape(format!(
                "data: has {k} columns, the network dimension is {}",
                config.dim
            )));
        }
        if n == 0 {
            return Err(Error::shape("data: has no rows"));
        }
        let mut flat = vec![T::ZERO; n * k];
        for i in 0..n {
            for j in 0..k {
                let v = data[(i, j)];
                if !v.is_finite() {
                    return Err(Error::non_finite(format!(
                        "data: non-finite value at ({i}, {j})"
                    )));
                }
                flat[i * k + j] = T::from_f64(v);
            }
        }
        let net = VelocityNet::<T>::new(config, rng::mix64(opts.seed ^ 0x6e65_7477))?;
        let np = config.num_params();
        let b = opts.batch_size;
        let ema = Ema::new(net.params(), opts.ema_decay);
        let work = MemBuffer::new(StackReq::any_of(&[
            net.backward_scratch(b),
            StackReq::all_of(&[
                temp_slice_scratch::<T>(b * b),
                temp_slice_scratch::<f64>(b * b),
                min_cost_assignment_scratch(b),
            ]),
        ]));
        Ok(Self {
            adam: Adam::new(
                np,
                AdamConfig {
                    weight_decay: opts.weight_decay,
                    ..Default::default()
                },
            ),
            ema,
            schedule: LrSchedule::new(opts.learning_rate, opts.warmup_steps, opts.steps),
            grad: vec![T::ZERO; np],
            reducer,
            reduce_buf: if reducer.is_some() {
                vec![0.0; np + 2]
            } else {
                Vec::new()
            },
            tape: vec![T::ZERO; Tape::<T>::len(&config, b)],
            x0: vec![T::ZERO; b * k],
            x1: vec![T::ZERO; b * k],
            dout: vec![T::ZERO; b * k],
            t: vec![0.0; b],
            idx: vec![0; b],
            perm: vec![0; b],
            work,
            rng: rng::stream(opts.seed, 0x7472_6169_6e00),
            par,
            step: 0,
            losses: [0.0; LOSS_WINDOW],
            first_loss: f64::NAN,
            best: None,
            net,
            opts: *opts,
            data: flat,
            n,
        })
    }

    /// The network being trained (raw weights).
    pub fn net(&self) -> &VelocityNet<T> {
        &self.net
    }
    /// The EMA weights.
    pub fn ema_params(&self) -> &[T] {
        self.ema.params()
    }
    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// One optimiser step; returns the batch loss. Does not allocate.
    pub fn step(&mut self) -> Result<f64> {
        let c = *self.net.config();
        let (b, k) = (self.opts.batch_size, c.dim);
        let par = self.par;

        // Batch, times and noise from the training stream.
        for i in 0..b {
            self.idx[i] = rng::below(&mut self.rng, self.n as u64) as usize;
            self.t[i] = rng::uniform(&mut self.rng);
        }
        fill_normal_fast(&mut self.rng, &mut self.x0);
        gather_rows(&self.data, k, &self.idx, &mut self.x1);
        if self.opts.coupling == Coupling::MinibatchOt {
            self.couple_ot(b, k)?;
        }

        // Forward pass on x_t = (1 - t) x0 + t x1.
        let mut tape = Tape::new(&c, b, &mut self.tape);
        {
            let mut input = tape.input_mut();
            interpolate(
                MatRef::from_column_major_slice(&self.x0, b, k),
                MatRef::from_column_major_slice(&self.x1, b, k),
                &self.t,
                input.rb_mut().subcols_mut(0, k),
            );
            self.net
                .time_features(&self.t, input.subcols_mut(k, 2 * c.time_freqs));
        }
        self.net.forward_train(&mut tape, par);

        // Residual r = v - (x1 - x0); loss sum ||r||^2; dout = scale * 2 r.
        // With a reducer the gradient of the summed loss is reduced, then
        // divided by the global count.
        let summed = self.reducer.is_some();
        let scale = if summed { 2.0 } else { 2.0 / b as f64 };
        let loss_sum = residual(
            tape.output(),
            MatRef::from_column_major_slice(&self.x0, b, k),
            MatRef::from_column_major_slice(&self.x1, b, k),
            T::from_f64(scale),
            MatMut::from_column_major_slice_mut(&mut self.dout, b, k),
        );
        self.net.backward(
            &tape,
            MatRef::from_column_major_slice(&self.dout, b, k),
            &mut self.grad,
            par,
            MemStack::new(&mut self.work),
        );

        let loss = match self.reducer {
            None => loss_sum / b as f64,
            Some(r) => {
                let np = self.grad.len();
                for (d, g) in self.reduce_buf.iter_mut().zip(self.grad.iter()) {
                    *d = g.to_f64();
                }
                self.reduce_buf[np] = loss_sum;
                self.reduce_buf[np + 1] = b as f64;
                r.sum_in_place(&mut self.reduce_buf)?;
                let count = self.reduce_buf[np + 1];
                for (g, d) in self.grad.iter_mut().zip(self.reduce_buf.iter()) {
                    *g = T::from_f64(*d / count);
                }
                self.reduce_buf[np] / count
            }
        };
        if !loss.is_finite() {
            return Err(Error::numerical(format!(
                "flow training diverged at step {} (non-finite loss); lower opts.learning_rate or set opts.clip_norm",
                self.step
            )));
        }
        if self.opts.clip_norm > 0.0 {
            clip_grad_norm(&mut self.grad, self.opts.clip_norm);
        }
        let lr = self.schedule.at(self.step);
        self.adam
            .step_with_ema(self.net.params_mut(), &self.grad, lr, &mut self.ema);
        if self.step == 0 {
            self.first_loss = loss;
        }
        self.losses[self.step % LOSS_WINDOW] = loss;
        self.step += 1;
        Ok(loss)
    }

    /// Re-pairs `x1` with `x0` by the exact minimum-cost assignment.
    fn couple_ot(&mut self, b: usize, k: usize) -> Result<()> {
        let stack = MemStack::new(&mut self.work);
        let (g, stack) = temp_slice(b * b, T::ZERO, stack);
        let (cost, stack) = temp_slice(b * b, 0.0f64, stack);
        let x0 = MatRef::from_column_major_slice(&self.x0, b, k);
        let x1 = MatRef::from_column_major_slice(&self.x1, b, k);
        // g (column-major) = x1 x0^T, i.e. row-major x0 x1^T: g[a * b + c] = x0_a . x1_c.
        matmul(
            MatMut::from_column_major_slice_mut(g, b, b),
            Accum::Replace,
            x1,
            x0.transpose(),
            T::ONE,
            self.par,
        );
        let sq = |m: MatRef<'_, T>, i: usize| -> f64 {
            (0..k).map(|j| m[(i, j)].to_f64().powi(2)).sum::<f64>()
        };
        for a in 0..b {
            let na = sq(x0, a);
            for c in 0..b {
                cost[a * b + c] = na - 2.0 * g[a * b + c].to_f64();
            }
        }
        for c in 0..b {
            let nc = sq(x1, c);
            for a in 0..b {
                cost[a * b + c] += nc;
            }
        }
        min_cost_assignment(b, cost, &mut self.perm, stack)?;
        for a in 0..b {
            self.perm[a] = self.idx[self.perm[a]];
        }
        self.idx.copy_from_slice(&self.perm);
        gather_rows(&self.data, k, &self.idx, &mut self.x1);
        Ok(())
    }

    /// Runs the remaining steps, calling `progress(step, total, loss)` after
    /// each; `false` from the callback cancels with `ErrorKind::Cancelled`.
    pub fn run(
        &mut self,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<TrainReport> {
        let total = self.opts.steps;
        while self.step < total {
            let loss = self.step()?;
            if !progress(self.step, total, loss) {
                return Err(Error::cancelled("flow"));
            }
        }
        Ok(self.report())
    }

    /// [`run`](Self::run) with early stopping on `validation` (module
    /// docs); the result's EMA weights are those of the best score. With a
    /// reducer, the scores are summed over participants, so every
    /// participant stops at the same step.
    pub fn run_validated(
        &mut self,
        validation: &Validation,
        progress: &mut dyn FnMut(usize, usize, f64) -> bool,
    ) -> Result<TrainReport> {
        let total = self.opts.steps;
        let every = (total / 50).max(25);
        let start = self.schedule.warmup().max(every);
        let mut since = 0;
        while self.step < total {
            let loss = self.step()?;
            if !progress(self.step, total, loss) {
                return Err(Error::cancelled("flow"));
            }
            if self.step >= start && self.step % every == 0 {
                let score = self.validation_loss(validation)?;
                let best = self.best.as_ref().map_or(f64::INFINITY, |b| b.2);
                if score < best * (1.0 - 1e-3) {
                    self.best = Some((self.ema.params().to_vec(), self.step, score));
                    since = 0;
                } else {
                    since += 1;
                    if since >= PATIENCE {
                        break;
                    }
                }
            }
        }
        Ok(self.report())
    }

    /// The mean flow-matching loss of the EMA weights on `validation`
    /// (summed over participants with a reducer).
    pub fn validation_loss(&self, validation: &Validation) -> Result<f64> {
        let config = *self.net.config();
        let net = VelocityNet::from_params(config, self.ema.params().to_vec())?;
        let (rows, k) = validation.x1.shape();
        let chunk = rows.clamp(1, 256);
        let mut mem = MemBuffer::new(StackReq::all_of(&[
            crate::numerics::temp_mat_scratch::<f64>(chunk, k),
            crate::numerics::temp_mat_scratch::<f64>(chunk, k),
            super::ode::VelocityField::eval_scratch(&net, chunk),
        ]));
        let mut sums = [0.0, rows as f64];
        let mut i0 = 0;
        while i0 < rows {
            let b = (rows - i0).min(chunk);
            let stack = MemStack::new(&mut mem);
            let (mut xt, stack) = crate::numerics::temp_mat_zeroed::<f64>(b, k, stack);
            let (mut v, stack) = crate::numerics::temp_mat_zeroed::<f64>(b, k, stack);
            let t = &validation.t[i0..i0 + b];
            for j in 0..k {
                for i in 0..b {
                    let (a, c) = (validation.x0[(i0 + i, j)], validation.x1[(i0 + i, j)]);
                    xt[(i, j)] = (1.0 - t[i]) * a + t[i] * c;
                }
            }
            super::ode::VelocityField::eval(
                &net,
                super::network::Times::PerRow(t),
                xt.as_ref(),
                v.as_mut(),
                stack,
            );
            for j in 0..k {
                for i in 0..b {
                    let u = validation.x1[(i0 + i, j)] - validation.x0[(i0 + i, j)];
                    sums[0] += (v[(i, j)] - u).powi(2);
                }
            }
            i0 += b;
        }
        if let Some(r) = self.reducer {
            r.sum_in_place(&mut sums)?;
        }
        let loss = sums[0] / sums[1].max(1.0);
        if !loss.is_finite() {
            return Err(Error::numerical(format!(
                "flow training: non-finite validation loss at step {}",
                self.step
            )));
        }
        Ok(loss)
    }

    /// The summary so far.
    pub fn report(&self) -> TrainReport {
        let w = self.step.min(LOSS_WINDOW);
        let final_loss = if w == 0 {
            f64::NAN
        } else {
            self.losses[..w].iter().sum::<f64>() / w as f64
        };
        TrainReport {
            steps: self.step,
            final_loss,
            first_loss: self.first_loss,
            best_step: self.best.as_ref().map_or(self.step, |b| b.1),
            validation_loss: self.best.as_ref().map(|b| b.2),
        }
    }

    /// The network with the EMA weights (the one to sample from; those of
    /// the best validation score after early stopping) and the network
    /// with the raw weights.
    pub fn into_nets(self) -> (VelocityNet<T>, VelocityNet<T>) {
        let config = *self.net.config();
        let params = match self.best {
            Some((p, _, _)) => p,
            None => self.ema.into_params(),
        };
        let ema = VelocityNet::from_params(config, params);
        let raw = self.net;
        match ema {
            Ok(ema) => (ema, raw),
            // Unreachable after finite losses, but never hand out NaNs.
            Err(_) => (raw.clone(), raw),
        }
    }
}

/// Trains a fresh network of architecture `config` on `data` (`N x k`) and
/// returns the EMA network with the report.
pub fn train<T: Real>(
    config: NetConfig,
    data: MatRef<'_, f64>,
    opts: &TrainOptions,
    par: Par,
    progress: &mut dyn FnMut(usize, usize, f64) -> bool,
) -> Result<(VelocityNet<T>, TrainReport)> {
    let mut trainer = Trainer::<T>::new(config, data, opts, None, par)?;
    let report = trainer.run(progress)?;
    Ok((trainer.into_nets().0, report))
}

/// `x1[b, j] = data[idx[b], j]`, both column-major (`data` has `n` rows):
/// each column is gathered from one cache-resident data column.
/// `x1[i, j] = data[idx[i], j]` with `data` row-major (`k` values per row)
/// and `x1` column-major (`b x k`). Tiles of 16 rows by 256 columns keep
/// both the rows read and the column pieces written in cache (a column-major
/// `data` would stream every column of the set on every step).
fn gather_rows<T: Real>(data: &[T], k: usize, idx: &[usize], x1: &mut [T]) {
    const ROWS: usize = 16;
    const COLS: usize = 256;
    let b = idx.len();
    for (i0, rows) in idx.chunks(ROWS).enumerate().map(|(c, r)| (c * ROWS, r)) {
        let mut j0 = 0;
        while j0 < k {
            let j1 = (j0 + COLS).min(k);
            for j in j0..j1 {
                let col = &mut x1[j * b + i0..j * b + i0 + rows.len()];
                for (x, &r) in col.iter_mut().zip(rows) {
                    *x = data[r * k + j];
                }
            }
            j0 = j1;
        }
    }
}

multiversion! {
    /// `xt[b, j] = (1 - t_b) x0[b, j] + t_b x1[b, j]`.
    fn interpolate<T: Real>(x0: MatRef<'_, T>, x1: MatRef<'_, T>, t: &[f64], xt: MatMut<'_, T>) {
        let mut xt = xt;
        for j in 0..x0.ncols() {
            let a = col_ref(&x0, j);
            let c = col_ref(&x1, j);
            let o = col_mut(&mut xt, j);
            for (((o, a), c), t) in o.iter_mut().zip(a).zip(c).zip(t) {
                let t = T::from_f64(*t);
                *o = (T::ONE - t) * *a + t * *c;
            }
        }
    }
}

multiversion! {
    /// `dout = scale (v - (x1 - x0))`; returns `sum ||v - (x1 - x0)||^2`.
    fn residual<T: Real>(
        v: MatRef<'_, T>,
        x0: MatRef<'_, T>,
        x1: MatRef<'_, T>,
        scale: T,
        dout: MatMut<'_, T>,
    ) -> f64 {
        let mut dout = dout;
        let mut total = 0.0;
        for j in 0..v.ncols() {
            let (vc, a, c) = (col_ref(&v, j), col_ref(&x0, j), col_ref(&x1, j));
            let o = col_mut(&mut dout, j);
            let mut acc = [0.0f64; 8];
            let n8 = o.len() / 8 * 8;
            let (o8, orest) = o.split_at_mut(n8);
            for (i, oc) in o8.chunks_exact_mut(8).enumerate() {
                let r0 = 8 * i;
                let (vv, aa, cc) = (&vc[r0..r0 + 8], &a[r0..r0 + 8], &c[r0..r0 + 8]);
                for l in 0..8 {
                    let r = vv[l] - (cc[l] - aa[l]);
                    oc[l] = scale * r;
                    let r = r.to_f64();
                    acc[l] += r * r;
                }
            }
            for (l, ov) in orest.iter_mut().enumerate() {
                let i = n8 + l;
                let r = vc[i] - (c[i] - a[i]);
                *ov = scale * r;
                let r = r.to_f64();
                acc[l] += r * r;
            }
            total += acc.iter().sum::<f64>();
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::LocalReducer;
    use faer::Mat;

    fn ring(n: usize, seed: u64) -> Mat<f64> {
        let mut r = rng::stream(seed, 0);
        let mut m = Mat::<f64>::zeros(n, 2);
        for i in 0..n {
            let a = core::f64::consts::TAU * rng::uniform(&mut r);
            m[(i, 0)] = 1.4 * a.cos();
            m[(i, 1)] = 1.4 * a.sin();
        }
        m
    }

    fn small() -> (NetConfig, TrainOptions) {
        (
            NetConfig {
                dim: 2,
                hidden: 32,
                layers: 2,
                time_freqs: 4,
            },
            TrainOptions {
                steps: 300,
                batch_size: 64,
                learning_rate: 5e-3,
                seed: 3,
                ..Default::default()
            },
        )
    }

    #[test]
    fn loss_decreases_and_runs_are_deterministic() {
        // A tight cluster: the optimal velocity (c - x_t) / (1 - t) is nearly
        // exact, so the loss can fall far below its initial value.
        let mut r = rng::stream(1, 1);
        let data = Mat::from_fn(500, 2, |_, j| {
            [1.0, -0.5][j] + 0.05 * (2.0 * rng::uniform(&mut r) - 1.0)
        });
        let (c, o) = small();
        let (net1, rep1) =
            train::<f32>(c, data.as_ref(), &o, Par::Seq, &mut |_, _, _| true).unwrap();
        let (net2, rep2) =
            train::<f32>(c, data.as_ref(), &o, Par::Seq, &mut |_, _, _| true).unwrap();
        assert_eq!(net1.params(), net2.params());
        assert_eq!(rep1, rep2);
        assert!(rep1.final_loss < 0.3 * rep1.first_loss, "{rep1:?}");
    }

    #[test]
    fn local_reducer_matches_no_reducer() {
        let data = ring(200, 2);
        let (c, mut o) = small();
        o.steps = 20;
        let mut a = Trainer::<f64>::new(c, data.as_ref(), &o, None, Par::Seq).unwrap();
        let red = LocalReducer;
        let mut b = Trainer::<f64>::new(c, data.as_ref(), &o, Some(&red), Par::Seq).unwrap();
        for _ in 0..20 {
            let la = a.step().unwrap();
            let lb = b.step().unwrap();
            assert!((la - lb).abs() <= 1e-12 * la.abs());
        }
        for (x, y) in a.net().params().iter().zip(b.net().params()) {
            assert!((x - y).abs() < 1e-9);
        }
    }

    #[test]
    fn ot_coupling_lowers_the_loss() {
        let data = ring(500, 4);
        let (c, mut o) = small();
        let (_, ind) = train::<f32>(c, data.as_ref(), &o, Par::Seq, &mut |_, _, _| true).unwrap();
        o.coupling = Coupling::MinibatchOt;
        let (_, ot) = train::<f32>(c, data.as_ref(), &o, Par::Seq, &mut |_, _, _| true).unwrap();
        assert!(ot.first_loss < ind.first_loss);
        assert!(ot.final_loss < ind.final_loss, "{ot:?} vs {ind:?}");
    }

    #[test]
    fn early_stopping_keeps_the_weights_of_the_best_held_out_loss() {
        // 12 training points, a wide network and many steps: the network
        // learns the points rather than the ring, and the held-out loss
        // turns upward.
        let train_rows = ring(12, 5);
        let held = ring(200, 6);
        let config = NetConfig {
            dim: 2,
            hidden: 128,
            layers: 3,
            time_freqs: 4,
        };
        let o = TrainOptions {
            steps: 6000,
            batch_size: 64,
            learning_rate: 5e-3,
            seed: 3,
            ..Default::default()
        };
        let validation = Validation::new(held.as_ref(), 9);
        let mut t = Trainer::<f32>::new(config, train_rows.as_ref(), &o, None, Par::Seq).unwrap();
        let rep = t.run_validated(&validation, &mut |_, _, _| true).unwrap();
        assert!(rep.steps < o.steps, "no early stop: {rep:?}");
        assert!(rep.best_step < rep.steps && rep.best_step > 0, "{rep:?}");
        // The result holds the best weights: its held-out loss is the
        // reported one, and below that of the last weights.
        let last = t.validation_loss(&validation).unwrap();
        assert!(
            rep.validation_loss.unwrap() < last,
            "{rep:?} vs last {last}"
        );
        let steps = t.steps_taken();
        let (best, _) = t.into_nets();
        let again = Trainer::<f32>::new(config, train_rows.as_ref(), &o, None, Par::Seq).unwrap();
        assert_eq!(steps, rep.steps);
        let mut probe = again;
        probe.ema = Ema::new(best.params(), o.ema_decay);
        let score = probe.validation_loss(&validation).unwrap();
        assert_eq!(Some(score), rep.validation_loss);
        // Deterministic.
        let mut u = Trainer::<f32>::new(config, train_rows.as_ref(), &o, None, Par::Seq).unwrap();
        assert_eq!(
            u.run_validated(&validation, &mut |_, _, _| true).unwrap(),
            rep
        );
    }

    #[test]
    fn cancellation_is_reported() {
        let data = ring(100, 5);
        let (c, o) = small();
        let err = train::<f32>(c, data.as_ref(), &o, Par::Seq, &mut |s, _, _| s < 10).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Cancelled);
    }
}
