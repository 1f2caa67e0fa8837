//! Adam with decoupled weight decay, the learning-rate schedule, gradient
//! clipping and the exponential moving average of the weights.
//!
//! Adam (step `n = 1, 2, ...`, gradient `g`):
//! `m <- b1 m + (1 - b1) g`, `v <- b2 v + (1 - b2) g^2`,
//! `p <- p (1 - lr wd) - lr / (1 - b1^n) * m / (sqrt(v) / sqrt(1 - b2^n) + eps)`
//! with `b1 = 0.9`, `b2 = 0.999`, `eps = 1e-8` by default and `wd` the
//! decoupled weight decay (AdamW).
//!
//! Learning rate at step `s` (0-based) of `S`: a linear warm-up
//! `lr (s + 1) / W` for `s < W`, then a cosine decay
//! `lr (1 + cos(pi (s - W) / (S - W))) / 2` towards 0. The warm-up length is
//! `min(warmup, S / 2)` so that short runs still decay.
//!
//! EMA after step `s`: `e <- d e + (1 - d) p` with
//! `d = min(ema_decay, (1 + s) / (10 + s))`, so early random weights fade
//! quickly.
//!
//! Every pass over the parameters is one vectorised loop; [`Adam::step_with_ema`]
//! fuses the Adam update and the EMA into a single pass (the parameter
//! buffers of the largest networks do not fit in cache).

use super::real::{multiversion, Real};

/// Adam hyper-parameters.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct AdamConfig {
    /// Decay of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (default 0.999).
    pub beta2: f64,
    /// Denominator guard (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay per unit learning rate (default 0).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adam state: first and second moments and the step count.
#[derive(Clone, Debug)]
pub struct Adam<T> {
    config: AdamConfig,
    m: Vec<T>,
    v: Vec<T>,
    steps: u64,
}

/// Scalars of one Adam step, precomputed in `T`.
#[derive(Copy, Clone)]
struct AdamScalars<T> {
    b1: T,
    one_minus_b1: T,
    b2: T,
    one_minus_b2: T,
    step_size: T,
    inv_sqrt_bc2: T,
    eps: T,
    decay_factor: T,
}

impl<T: Real> Adam<T> {
    /// Zero moments for `n` parameters.
    pub fn new(n: usize, config: AdamConfig) -> Self {
        Self {
            config,
            m: vec![T::ZERO; n],
            v: vec![T::ZERO; n],
            steps: 0,
        }
    }
    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// First and second moments.
    pub fn moments(&self) -> (&[T], &[T]) {
        (&self.m, &self.v)
    }

    fn scalars(&mut self, lr: f64) -> AdamScalars<T> {
        self.steps += 1;
        let c = &self.config;
        let n = self.steps as f64;
        let bc1 = 1.0 - c.beta1.powf(n);
        let bc2 = 1.0 - c.beta2.powf(n);
        AdamScalars {
            b1: T::from_f64(c.beta1),
            one_minus_b1: T::from_f64(1.0 - c.beta1),
            b2: T::from_f64(c.beta2),
            one_minus_b2: T::from_f64(1.0 - c.beta2),
            step_size: T::from_f64(lr / bc1),
            inv_sqrt_bc2: T::from_f64(1.0 / bc2.sqrt()),
            eps: T::from_f64(c.eps),
            decay_factor: T::from_f64(1.0 - lr * c.weight_decay),
        }
    }

    /// One Adam step with learning rate `lr`.
    pub fn step(&mut self, params: &mut [T], grad: &[T], lr: f64) {
        assert!(params.len() == self.m.len() && grad.len() == self.m.len());
        let s = self.scalars(lr);
        adam_kernel(params, grad, &mut self.m, &mut self.v, s);
    }

    /// One Adam step followed by the EMA update, in one pass.
    pub fn step_with_ema(&mut self, params: &mut [T], grad: &[T], lr: f64, ema: &mut Ema<T>) {
        assert!(params.len() == self.m.len() && grad.len() == self.m.len());
        assert!(ema.params.len() == params.len());
        let s = self.scalars(lr);
        let d = ema.next_decay();
        adam_ema_kernel(
            params,
            grad,
            &mut self.m,
            &mut self.v,
            &mut ema.params,
            s,
            T::from_f64(1.0 - d),
        );
    }
}

#[inline(always)]
fn adam_one<T: Real>(p: &mut T, g: T, m: &mut T, v: &mut T, s: &AdamScalars<T>) {
    *m = s.b1 * *m + s.one_minus_b1 * g;
    *v = s.b2 * *v + s.one_minus_b2 * (g * g);
    let denom = Real::sqrt(*v) * s.inv_sqrt_bc2 + s.eps;
    *p = *p * s.decay_factor - s.step_size * *m / denom;
}

multiversion! {
    fn adam_kernel<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], s: AdamScalars<T>) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            adam_one(&mut p[i], g[i], &mut m[i], &mut v[i], &s);
        }
    }
}

multiversion! {
    fn adam_ema_kernel<T: Real>(
        p: &mut [T],
        g: &[T],
        m: &mut [T],
        v: &mut [T],
        e: &mut [T],
        s: AdamScalars<T>,
        w: T,
    ) {
        let n = p.len();
        let (g, m, v, e) = (&g[..n], &mut m[..n], &mut v[..n], &mut e[..n]);
        for i in 0..n {
            adam_one(&mut p[i], g[i], &mut m[i], &mut v[i], &s);
            e[i] = e[i] + w * (p[i] - e[i]);
        }
    }
}

/// The learning rate schedule: linear warm-up, then cosine decay to 0.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct LrSchedule {
    base: f64,
    warmup: usize,
    total: usize,
}

impl LrSchedule {
    /// Peak rate `base`, `warmup` warm-up steps (at most `total / 2`),
    /// `total` steps.
    pub fn new(base: f64, warmup: usize, total: usize) -> Self {
        Self {
            base,
            warmup: warmup.min(total / 2),
            total,
        }
    }
    /// The effective warm-up length.
    pub fn warmup(&self) -> usize {
        self.warmup
    }
    /// The rate at step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.base * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.total - self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.base * 0.5 * (1.0 + (core::f64::consts::PI * progress).cos())
    }
}

multiversion! {
    /// Sum of squares of `x`, accumulated in `f64`.
    pub fn sum_sq<T: Real>(x: &[T]) -> f64 {
        let mut acc = [0.0f64; 8];
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            for i in 0..8 {
                let v = c[i].to_f64();
                acc[i] += v * v;
            }
        }
        for (i, v) in chunks.remainder().iter().enumerate() {
            acc[i] += v.to_f64() * v.to_f64();
        }
        acc.iter().sum()
    }
}

multiversion! {
    /// `x <- alpha x`.
    pub fn scale<T: Real>(x: &mut [T], alpha: T) {
        for v in x.iter_mut() {
            *v *= alpha;
        }
    }
}

/// Scales `grad` so that its Euclidean norm is at most `max_norm` (no-op
/// when `max_norm <= 0`); returns the norm before clipping.
pub fn clip_grad_norm<T: Real>(grad: &mut [T], max_norm: f64) -> f64 {
    let norm = sum_sq(grad).sqrt();
    if max_norm > 0.0 && norm > max_norm {
        scale(grad, T::from_f64(max_norm / norm));
    }
    norm
}

/// Exponential moving average of the weights.
#[derive(Clone, Debug)]
pub struct Ema<T> {
    decay: f64,
    params: Vec<T>,
    updates: u64,
}

impl<T: Real> Ema<T> {
    /// Starts the average at `params` with the given decay cap.
    pub fn new(params: &[T], decay: f64) -> Self {
        Self {
            decay,
            params: params.to_vec(),
            updates: 0,
        }
    }
    /// The decay used by update number `t` (0-based):
    /// `min(decay, (1 + t) / (10 + t))`.
    pub fn decay_at(&self, t: u64) -> f64 {
        self.decay.min((1.0 + t as f64) / (10.0 + t as f64))
    }
    fn next_decay(&mut self) -> f64 {
        let d = self.decay_at(self.updates);
        self.updates += 1;
        d
    }
    /// `e <- d e + (1 - d) p` with the scheduled decay.
    pub fn update(&mut self, params: &[T]) {
        assert!(params.len() == self.params.len());
        let w = T::from_f64(1.0 - self.next_decay());
        ema_kernel(&mut self.params, params, w);
    }
    /// The averaged weights.
    pub fn params(&self) -> &[T] {
        &self.params
    }
    /// Consumes the average, returning the weights.
    pub fn into_params(self) -> Vec<T> {
        self.params
    }
}

multiversion! {
    fn ema_kernel<T: Real>(e: &mut [T], p: &[T], w: T) {
        let n = e.len();
        let p = &p[..n];
        for i in 0..n {
            e[i] = e[i] + w * (p[i] - e[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_matches_reference_formula() {
        // Two steps by hand on one parameter, f64.
        let cfg = AdamConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut adam = Adam::<f64>::new(1, cfg);
        let mut p = [1.0];
        let (g1, g2, lr) = (0.5, -0.25, 0.01);
        adam.step(&mut p, &[g1], lr);
        let mut q = 1.0f64;
        let (mut m, mut v) = (0.1 * g1, 0.001 * g1 * g1);
        q = q * (1.0 - lr * 0.1) - lr / 0.1 * m / ((v / 0.001f64).sqrt() + 1e-8);
        assert!((p[0] - q).abs() < 1e-15);
        adam.step(&mut p, &[g2], lr);
        m = 0.9 * m + 0.1 * g2;
        v = 0.999 * v + 0.001 * g2 * g2;
        let bc1 = 1.0 - 0.81;
        let bc2 = 1.0 - 0.999f64 * 0.999;
        q = q * (1.0 - lr * 0.1) - lr / bc1 * m / (v.sqrt() / bc2.sqrt() + 1e-8);
        assert!((p[0] - q).abs() < 1e-15);
    }

    #[test]
    fn adam_minimises_a_quadratic_and_fused_ema_matches() {
        let n = 37;
        let target: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
        let mut p1 = vec![0f32; n];
        let mut p2 = p1.clone();
        let mut a1 = Adam::<f32>::new(n, AdamConfig::default());
        let mut a2 = a1.clone();
        let mut e1 = Ema::new(&p1, 0.99);
        let mut e2 = e1.clone();
        let sched = LrSchedule::new(0.05, 20, 600);
        for s in 0..600 {
            let g: Vec<f32> = p1.iter().zip(&target).map(|(p, t)| 2.0 * (p - t)).collect();
            a1.step(&mut p1, &g, sched.at(s));
            e1.update(&p1);
            let g: Vec<f32> = p2.iter().zip(&target).map(|(p, t)| 2.0 * (p - t)).collect();
            a2.step_with_ema(&mut p2, &g, sched.at(s), &mut e2);
        }
        assert_eq!(p1, p2);
        assert_eq!(e1.params(), e2.params());
        for (p, t) in p1.iter().zip(&target) {
            assert!((p - t).abs() < 1e-3);
        }
        for (p, t) in e1.params().iter().zip(&target) {
            assert!((p - t).abs() < 2e-2);
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let s = LrSchedule::new(1e-2, 200, 4000);
        assert!((s.at(0) - 5e-5).abs() < 1e-18);
        assert!((s.at(199) - 1e-2).abs() < 1e-18);
        assert!((s.at(200) - 1e-2).abs() < 1e-18);
        assert!((s.at(2100) - 0.5e-2).abs() < 1e-12);
        assert!(s.at(3999) < 1e-8 && s.at(3999) > 0.0);
        for i in 200..3999 {
            assert!(s.at(i + 1) <= s.at(i));
        }
        assert_eq!(LrSchedule::new(1.0, 200, 100).warmup(), 50);
    }

    #[test]
    fn ema_decay_follows_the_warm_up_formula() {
        let e = Ema::<f64>::new(&[0.0], 0.999);
        assert!((e.decay_at(0) - 0.1).abs() < 1e-15);
        assert!((e.decay_at(90) - 91.0 / 100.0).abs() < 1e-15);
        assert_eq!(e.decay_at(1_000_000), 0.999);
    }

    #[test]
    fn clipping_caps_the_norm() {
        let mut g = vec![3.0f32, 4.0];
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-6);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        let mut h = vec![0.3f32, 0.4];
        clip_grad_norm(&mut h, 1.0);
        assert_eq!(h, vec![0.3, 0.4]);
    }
}
