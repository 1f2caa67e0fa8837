//! Baselines for comparisons, in the same engine as CoreFlow (the same
//! network, trainer, solvers and random streams), so that a comparison
//! measures the modelling choice and nothing else.
//!
//! Every baseline is fitted on a training batch of `N` matrices `X_i`
//! (`m x n`) and returns a [`Sampler`]: sample `j` of a call is number
//! `first_index + j` of stream `seed`, so it depends only on `(seed, index)`
//! and the fitted baseline.
//!
//! - **Ambient flow matching** ([`AmbientFlow`]): flow matching directly on
//!   `x = vec(X)` in `R^D`, `D = m n` (column-major `vec`), standardised per
//!   entry, `z = (x - mu) / sigma` with the sample mean and standard
//!   deviation of every entry (`sigma_e` floored at `1e-12 max sigma`). The
//!   velocity network and its training are those of the core flow (same
//!   width, depth, time features, steps, batch, learning-rate schedule, EMA);
//!   samples integrate `dz/dt = v(z, t)` from `z(0) ~ N(0, I_D)` with the
//!   given solver and return `X = unvec(mu + sigma * z(1))`. There is no
//!   moment matching and no Gaussian block: at `D = 40,000` moment matching
//!   would need `4 D` flow samples and `D x D` matrices, which is the point
//!   of not working in the ambient space.
//! - **Gaussian on the cores** ([`GaussianCore`]): the CoreFlow geometry
//!   (`U`, `V`, and the masked fit for incomplete data) with the
//!   full-covariance Gaussian core model, `c ~ N(mean, Sigma + delta I)`:
//!   [`Model::fit`] with `core_model = Gaussian`.
//! - **PCA + flow** ([`PcaFlow`]): vectorised PCA of the centered data
//!   `Y = [vec(X_i) - xbar]` (`N x D`) to `q = min(r s, N - 1, D)` components
//!   (fewer when the spectrum has exactly-zero tail: components with
//!   eigenvalue below `1e-12` times the largest are dropped). For `D <= N`
//!   the principal directions are the top eigenvectors of the covariance
//!   `Y^T Y`; otherwise of the `N x N` Gram matrix `G = Y Y^T = W L W^T`,
//!   with directions `P = Y^T W L^(-1/2)` (orthonormal columns) and
//!   coefficients `a_i = P^T y_i`. The coefficients get the CoreFlow core
//!   model ([`CoreModel::fit`] with the same flow options: flow block,
//!   moment matching, Gaussian fallback), and samples decode as
//!   `X = unvec(xbar + P a)`. The only difference from CoreFlow is the
//!   geometry: one basis of `D`-vectors instead of separable row and column
//!   bases.
//!
//! Incomplete training data: [`GaussianCore`] uses the masked CoreFlow fit.
//! The two vectorised baselines have no missing-data model of their own;
//! they fill every missing entry with the mean of the observed values of
//! that entry over the training set (the global observed mean where an entry
//! is never observed) and fit on the filled matrices.
//!
//! Baselines exist for evaluation: fitting and sampling allocate, and
//! sampling runs on the calling thread.
//!
//! [`Sampler`]: crate::baselines::Sampler
//! [`AmbientFlow`]: crate::baselines::AmbientFlow
//! [`GaussianCore`]: crate::baselines::GaussianCore
//! [`PcaFlow`]: crate::baselines::PcaFlow
//! [`CoreModel::fit`]: crate::core_model::CoreModel::fit

use crate::batch::{MatrixBatch, MatrixBatchMut};
use crate::core_model::{CoreModel, CoreModelChoice, FlowOptions, Precision};
use crate::error::{Error, Result};
use crate::flow::latent::{self, LatentMaps};
use crate::flow::network::{NetConfig, VelocityNet};
use crate::flow::ode::SolverOptions;
use crate::flow::train::{self, TrainOptions};
use crate::model::{FitOptions, Model};
use crate::numerics::{self, par_for_threads, MemBuffer, MemStack};
use crate::rng;
use faer::prelude::ReborrowMut;
use faer::{Accum, Mat, MatRef, Par};

/// A fitted generative model that draws seeded samples.
pub trait Sampler {
    /// Draws `out.count()` matrices into `out`: matrix `j` is sample number
    /// `first_index + j` of stream `seed`. `solver` integrates the flow
    /// (ignored by models without one). A non-finite sample is
    /// `ErrorKind::Numerical`.
    fn sample_into(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first_index: u64,
        out: &mut MatrixBatchMut,
    ) -> Result<()>;

    /// Rows and columns of the matrices it draws.
    fn shape(&self) -> (usize, usize);
}

impl Sampler for Model {
    fn sample_into(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first_index: u64,
        out: &mut MatrixBatchMut,
    ) -> Result<()> {
        let mut buf = MemBuffer::new(self.sample_scratch(out.count(), solver));
        self.sample(solver, seed, first_index, out, MemStack::new(&mut buf))
    }
    fn shape(&self) -> (usize, usize) {
        (self.info().rows, self.info().cols)
    }
}

/// Checks a training batch: at least `min` matrices, finite observed values.
fn check_train(train: &MatrixBatch, min: usize) -> Result<()> {
    if train.count() < min {
        return Err(Error::invalid(format!(
            "train: {} matrices, but at least {min} are needed",
            train.count()
        )));
    }
    crate::completion::check_observed_finite(train, false, "train")
}

/// Checks that `out` holds `rows x cols` matrices.
fn check_out(out: &MatrixBatchMut, rows: usize, cols: usize) -> Result<()> {
    if out.rows() != rows || out.cols() != cols {
        return Err(Error::shape(format!(
            "out: matrices are {} x {}, but the baseline was fitted on {rows} x {cols}",
            out.rows(),
            out.cols()
        )));
    }
    Ok(())
}

/// The training set as an `N x D` matrix of `vec(X_i)` (column-major vec),
/// missing entries filled with the observed mean of their entry.
fn vectorise(train: &MatrixBatch) -> Result<Mat<f64>> {
    let (count, m, n) = (train.count(), train.rows(), train.cols());
    let d = m * n;
    let mut y = Mat::<f64>::zeros(count, d);
    if !train.has_mask() {
        for i in 0..count {
            let x = train.sample(i);
            for c in 0..n {
                for a in 0..m {
                    y[(i, a + c * m)] = x[(a, c)];
                }
            }
        }
        return Ok(y);
    }
    let mut sum = vec![0.0; d];
    let mut seen = vec![0usize; d];
    for i in 0..count {
        let x = train.sample(i);
        let mask = train.mask(i).expect("masked batch");
        for c in 0..n {
            for a in 0..m {
                if mask.observed(a, c) {
                    let e = a + c * m;
                    sum[e] += x[(a, c)];
                    seen[e] += 1;
                    y[(i, e)] = x[(a, c)];
                }
            }
        }
    }
    let (total, total_seen) = (sum.iter().sum::<f64>(), seen.iter().sum::<usize>());
    if total_seen == 0 {
        return Err(Error::invalid("train.mask: no entry is observed"));
    }
    let global = total / total_seen as f64;
    let fill: Vec<f64> = sum
        .iter()
        .zip(&seen)
        .map(|(&s, &k)| if k > 0 { s / k as f64 } else { global })
        .collect();
    for i in 0..count {
        let mask = train.mask(i).expect("masked batch");
        for c in 0..n {
            for a in 0..m {
                if !mask.observed(a, c) {
                    y[(i, a + c * m)] = fill[a + c * m];
                }
            }
        }
    }
    Ok(y)
}

/// Column means of `y`.
fn column_means(y: MatRef<'_, f64>) -> Vec<f64> {
    let n = y.nrows() as f64;
    (0..y.ncols())
        .map(|j| (0..y.nrows()).map(|i| y[(i, j)]).sum::<f64>() / n)
        .collect()
}

/// The training options of the core flow, taken from `opts` unchanged.
fn train_options(opts: &FlowOptions, seed: u64) -> TrainOptions {
    TrainOptions {
        steps: opts.steps,
        batch_size: opts.batch_size,
        learning_rate: opts.learning_rate,
        warmup_steps: opts.warmup_steps,
        weight_decay: opts.weight_decay,
        ema_decay: opts.ema_decay,
        clip_norm: opts.clip_norm,
        coupling: opts.coupling,
        seed,
    }
}

/// The flow options a fit actually uses: the fit's seed and threads.
fn flow_options(opts: &FitOptions) -> FlowOptions {
    let mut f = opts.flow;
    f.seed = opts.seed;
    f.threads = opts.threads;
    f
}

// ---------------------------------------------------------------------------
// Ambient flow matching

/// The trained network and its hidden-coordinate maps (sampling in
/// `latent` coordinates when that is cheaper, as the core model does).
enum AmbientNet {
    F32(VelocityNet<f32>, Option<LatentMaps<f32>>),
    F64(VelocityNet<f64>, Option<LatentMaps<f64>>),
}

/// Flow matching on standardised `vec(X)` (see the module docs).
pub struct AmbientFlow {
    rows: usize,
    cols: usize,
    mean: Vec<f64>,
    scale: Vec<f64>,
    net: AmbientNet,
    final_loss: f64,
}

/// Samples integrated per chunk: bounds the solver's temporaries
/// (`D` values per row) whatever the count.
const AMBIENT_CHUNK: usize = 32;

impl AmbientFlow {
    /// Fits the ambient flow on `train` (at least 2 matrices). Uses
    /// `opts.flow` for the network and its training (hidden, layers,
    /// time_freqs, steps, batch_size, learning_rate, warmup_steps,
    /// weight_decay, ema_decay, clip_norm, coupling, precision), `opts.seed`
    /// and `opts.threads`; the ranks, the flow block, moment matching and
    /// the core-model choice do not apply.
    pub fn fit(train: &MatrixBatch, opts: &FitOptions) -> Result<AmbientFlow> {
        check_train(train, 2)?;
        let flow = flow_options(opts);
        let topts = train_options(&flow, flow.seed);
        topts.check()?;
        let (m, n) = (train.rows(), train.cols());
        let mut y = vectorise(train)?;
        let d = m * n;
        let mean = column_means(y.as_ref());
        let count = y.nrows();
        let mut scale: Vec<f64> = (0..d)
            .map(|j| {
                let v = (0..count)
                    .map(|i| (y[(i, j)] - mean[j]).powi(2))
                    .sum::<f64>()
                    / (count - 1) as f64;
                v.sqrt()
            })
            .collect();
        let max_sd = scale.iter().copied().fold(0.0, f64::max);
        if max_sd.is_nan() || max_sd <= 0.0 {
            return Err(Error::invalid(
                "train: the matrices are all identical (zero variance)",
            ));
        }
        for s in &mut scale {
            *s = s.max(1e-12 * max_sd);
        }
        for j in 0..d {
            for i in 0..count {
                y[(i, j)] = (y[(i, j)] - mean[j]) / scale[j];
            }
        }
        let config = NetConfig {
            dim: d,
            hidden: flow.hidden,
            layers: flow.layers,
            time_freqs: flow.time_freqs,
        };
        let par = par_for_threads(flow.threads);
        let mut progress = |_: usize, _: usize, _: f64| true;
        let (net, report) = match flow.precision {
            Precision::F32 => {
                let (net, rep) =
                    train::train::<f32>(config, y.as_ref(), &topts, par, &mut progress)?;
                let maps = LatentMaps::for_net(&net);
                (AmbientNet::F32(net, maps), rep)
            }
            Precision::F64 => {
                let (net, rep) =
                    train::train::<f64>(config, y.as_ref(), &topts, par, &mut progress)?;
                let maps = LatentMaps::for_net(&net);
                (AmbientNet::F64(net, maps), rep)
            }
        };
        Ok(AmbientFlow {
            rows: m,
            cols: n,
            mean,
            scale,
            net,
            final_loss: report.final_loss,
        })
    }

    /// Mean training loss over the last 100 steps.
    pub fn final_loss(&self) -> f64 {
        self.final_loss
    }
}

impl Sampler for AmbientFlow {
    fn sample_into(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first_index: u64,
        out: &mut MatrixBatchMut,
    ) -> Result<()> {
        solver.check()?;
        check_out(out, self.rows, self.cols)?;
        let (m, d) = (self.rows, self.rows * self.cols);
        let count = out.count();
        let b = count.clamp(1, AMBIENT_CHUNK);
        let mut z = Mat::<f64>::zeros(b, d);
        let mut row = vec![0.0; d];
        let mut mem = MemBuffer::new(match &self.net {
            AmbientNet::F32(net, maps) => latent::integrate_scratch(net, maps.as_ref(), b, solver),
            AmbientNet::F64(net, maps) => latent::integrate_scratch(net, maps.as_ref(), b, solver),
        });
        let mut start = 0;
        while start < count {
            let len = (count - start).min(b);
            let mut zc = z.as_mut().subrows_mut(0, len);
            for i in 0..len {
                let index = first_index.wrapping_add((start + i) as u64);
                rng::fill_normal(&mut rng::stream(seed, index), &mut row);
                for (j, &v) in row.iter().enumerate() {
                    zc[(i, j)] = v;
                }
            }
            let stack = MemStack::new(&mut mem);
            match &self.net {
                AmbientNet::F32(net, maps) => {
                    latent::integrate(net, maps.as_ref(), solver, 0.0, 1.0, zc.rb_mut(), stack)?
                }
                AmbientNet::F64(net, maps) => {
                    latent::integrate(net, maps.as_ref(), solver, 0.0, 1.0, zc.rb_mut(), stack)?
                }
            };
            for i in 0..len {
                let mut x = out.sample_mut(start + i);
                for j in 0..d {
                    let v = self.mean[j] + self.scale[j] * zc[(i, j)];
                    if !v.is_finite() {
                        return Err(Error::numerical(format!(
                            "sample: sample {} has a non-finite value (the flow diverged)",
                            first_index.wrapping_add((start + i) as u64)
                        )));
                    }
                    x[(j % m, j / m)] = v;
                }
            }
            start += len;
        }
        Ok(())
    }
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

// ---------------------------------------------------------------------------
// Gaussian on the cores

/// The CoreFlow geometry with a full-covariance Gaussian on the cores.
pub struct GaussianCore {
    model: Model,
}

impl GaussianCore {
    /// Fits the geometry as [`Model::fit`] does (ranks, centering, masked
    /// fit, seed, threads from `opts`) and a full-covariance Gaussian on the
    /// cores; the flow options other than `holdout_fraction` do not apply.
    pub fn fit(train: &MatrixBatch, opts: &FitOptions) -> Result<GaussianCore> {
        let mut o = opts.clone();
        o.flow.core_model = CoreModelChoice::Gaussian;
        Ok(GaussianCore {
            model: Model::fit(train, &o)?,
        })
    }
    /// The fitted model.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl Sampler for GaussianCore {
    fn sample_into(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first_index: u64,
        out: &mut MatrixBatchMut,
    ) -> Result<()> {
        self.model.sample_into(solver, seed, first_index, out)
    }
    fn shape(&self) -> (usize, usize) {
        self.model.shape()
    }
}

// ---------------------------------------------------------------------------
// PCA + flow

/// Vectorised PCA to `r s` components and the CoreFlow core model on the
/// coefficients (see the module docs).
pub struct PcaFlow {
    rows: usize,
    cols: usize,
    mean: Vec<f64>,
    /// `D x q`, orthonormal columns.
    components: Mat<f64>,
    core: CoreModel,
    explained: f64,
}

impl PcaFlow {
    /// Fits PCA with `q = min(rank_rows * rank_cols, N - 1, D)` components
    /// (both ranks must be given, > 0) and the core model of `opts.flow` on
    /// the coefficients. Needs at least 3 matrices.
    pub fn fit(train: &MatrixBatch, opts: &FitOptions) -> Result<PcaFlow> {
        check_train(train, 3)?;
        if opts.rank_rows == 0 {
            return Err(Error::invalid(
                "opts.rank_rows: must be > 0 (PCA keeps rank_rows * rank_cols components)",
            ));
        }
        if opts.rank_cols == 0 {
            return Err(Error::invalid(
                "opts.rank_cols: must be > 0 (PCA keeps rank_rows * rank_cols components)",
            ));
        }
        let flow = flow_options(opts);
        flow.check()?;
        let (m, n, count) = (train.rows(), train.cols(), train.count());
        let d = m * n;
        let mut y = vectorise(train)?;
        let mean = column_means(y.as_ref());
        for j in 0..d {
            for i in 0..count {
                y[(i, j)] -= mean[j];
            }
        }
        let total = numerics::norm_sq(y.as_ref());
        if total.is_nan() || total <= 0.0 {
            return Err(Error::invalid(
                "train: the matrices are all identical (zero variance)",
            ));
        }
        let want = opts
            .rank_rows
            .saturating_mul(opts.rank_cols)
            .min(count - 1)
            .min(d);
        let par = par_for_threads(opts.threads);
        let components = principal_directions(y.as_ref(), want, par)?;
        let q = components.ncols();
        let mut coef = Mat::<f64>::zeros(count, q);
        numerics::gemm(
            coef.as_mut(),
            Accum::Replace,
            y.as_ref(),
            components.as_ref(),
            1.0,
            par,
        );
        let explained = numerics::norm_sq(coef.as_ref()) / total;
        let core = CoreModel::fit(coef.as_ref(), &flow, &mut |_, _, _| true)?;
        Ok(PcaFlow {
            rows: m,
            cols: n,
            mean,
            components,
            core,
            explained,
        })
    }

    /// Number of principal components kept.
    pub fn components(&self) -> usize {
        self.components.ncols()
    }
    /// Fraction of the centered training energy the components hold.
    pub fn explained_energy(&self) -> f64 {
        self.explained
    }
    /// The model of the coefficients.
    pub fn core_model(&self) -> &CoreModel {
        &self.core
    }
}

/// The leading `want` principal directions (`D x q`, orthonormal) of the
/// centered rows of `y`, dropping those with eigenvalue below `1e-12` of the
/// largest.
fn principal_directions(y: MatRef<'_, f64>, want: usize, par: Par) -> Result<Mat<f64>> {
    let (count, d) = y.shape();
    let small_dim = d <= count;
    let g_dim = if small_dim { d } else { count };
    let mut g = Mat::<f64>::zeros(g_dim, g_dim);
    if small_dim {
        numerics::gemm(g.as_mut(), Accum::Replace, y.transpose(), y, 1.0, par);
    } else {
        numerics::gemm(g.as_mut(), Accum::Replace, y, y.transpose(), 1.0, par);
    }
    let mut vecs = Mat::<f64>::zeros(g_dim, g_dim);
    let mut vals = vec![0.0; g_dim];
    let mut buf = MemBuffer::new(numerics::eigh_descending_scratch(g_dim, par));
    numerics::eigh_descending(
        g.as_ref(),
        vecs.as_mut(),
        &mut vals,
        par,
        MemStack::new(&mut buf),
    )?;
    let top = vals[0].max(0.0);
    let q = vals[..want.min(g_dim)]
        .iter()
        .take_while(|&&l| l > 1e-12 * top)
        .count();
    if q == 0 {
        return Err(Error::invalid(
            "train: the centered matrices have no variance to keep",
        ));
    }
    if small_dim {
        return Ok(vecs.as_ref().get(.., ..q).to_owned());
    }
    // P = Y^T W L^(-1/2): unit columns because ||Y^T w||^2 = w^T G w = l.
    let mut p = Mat::<f64>::zeros(d, q);
    numerics::gemm(
        p.as_mut(),
        Accum::Replace,
        y.transpose(),
        vecs.as_ref().get(.., ..q),
        1.0,
        par,
    );
    for j in 0..q {
        let s = 1.0 / vals[j].sqrt();
        for i in 0..d {
            p[(i, j)] *= s;
        }
    }
    Ok(p)
}

impl Sampler for PcaFlow {
    fn sample_into(
        &self,
        solver: &SolverOptions,
        seed: u64,
        first_index: u64,
        out: &mut MatrixBatchMut,
    ) -> Result<()> {
        solver.check()?;
        check_out(out, self.rows, self.cols)?;
        let (m, d, q) = (self.rows, self.rows * self.cols, self.components.ncols());
        let count = out.count();
        let b = count.clamp(1, AMBIENT_CHUNK);
        let mut coef = Mat::<f64>::zeros(b, q);
        let mut x = Mat::<f64>::zeros(d, b);
        let mut mem = MemBuffer::new(self.core.sample_scratch(b, solver));
        let mut start = 0;
        while start < count {
            let len = (count - start).min(b);
            let first = first_index.wrapping_add(start as u64);
            self.core.sample(
                solver,
                seed,
                first,
                coef.as_mut().subrows_mut(0, len),
                MemStack::new(&mut mem),
            )?;
            // Columns of x: P a_j for the chunk's samples.
            numerics::gemm(
                x.as_mut().subcols_mut(0, len),
                Accum::Replace,
                self.components.as_ref(),
                coef.as_ref().subrows(0, len).transpose(),
                1.0,
                Par::Seq,
            );
            for i in 0..len {
                let mut o = out.sample_mut(start + i);
                for j in 0..d {
                    o[(j % m, j / m)] = self.mean[j] + x[(j, i)];
                }
            }
            start += len;
        }
        Ok(())
    }
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{mcar_mask, Dataset, DatasetSpec};
    use crate::error::ErrorKind;

    fn small_opts() -> FitOptions {
        let mut o = FitOptions {
            rank_rows: 4,
            rank_cols: 4,
            seed: 3,
            threads: 1,
            ..Default::default()
        };
        o.flow.steps = 60;
        o.flow.hidden = 32;
        o.flow.warmup_steps = 10;
        o.flow.batch_size = 32;
        o.flow.moment_samples = 200;
        o.flow.holdout_fraction = 0.0;
        o
    }

    fn draw(s: &dyn Sampler, count: usize, seed: u64, first: u64) -> Vec<f64> {
        let (m, n) = s.shape();
        let mut buf = vec![0.0; count * m * n];
        let mut out = MatrixBatchMut::from_c_order(&mut buf, count, m, n).unwrap();
        s.sample_into(&SolverOptions::default(), seed, first, &mut out)
            .unwrap();
        buf
    }

    #[test]
    fn baselines_fit_and_sample_deterministically() {
        let set = Dataset::Waves
            .generate(&DatasetSpec::new(40, 12, 10, 5))
            .unwrap();
        let opts = small_opts();
        let samplers: Vec<Box<dyn Sampler>> = vec![
            Box::new(AmbientFlow::fit(&set.batch(), &opts).unwrap()),
            Box::new(GaussianCore::fit(&set.batch(), &opts).unwrap()),
            Box::new(PcaFlow::fit(&set.batch(), &opts).unwrap()),
        ];
        for s in &samplers {
            assert_eq!(s.shape(), (12, 10));
            let a = draw(s.as_ref(), 5, 9, 0);
            assert!(a.iter().all(|v| v.is_finite()));
            // Sample j depends only on (seed, index).
            let b = draw(s.as_ref(), 2, 9, 3);
            assert_eq!(&a[3 * 120..], &b[..]);
            let c = draw(s.as_ref(), 5, 10, 0);
            assert_ne!(a, c);
        }
    }

    #[test]
    fn pca_directions_are_orthonormal_on_both_paths() {
        // D = 30 <= N = 40 (covariance) and D = 30 > N = 8 (Gram).
        for count in [40, 8] {
            let set = Dataset::Blobs
                .generate(&DatasetSpec::new(count, 6, 5, 1))
                .unwrap();
            let mut o = small_opts();
            o.rank_rows = 2;
            o.rank_cols = 3;
            o.flow.core_model = CoreModelChoice::Gaussian;
            let p = PcaFlow::fit(&set.batch(), &o).unwrap();
            assert_eq!(p.components(), 6.min(count - 1));
            let c = &p.components;
            let g = c.transpose() * c;
            for i in 0..g.nrows() {
                for j in 0..g.ncols() {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((g[(i, j)] - want).abs() < 1e-9, "{i} {j} {}", g[(i, j)]);
                }
            }
            assert!(p.explained_energy() > 0.0 && p.explained_energy() <= 1.0 + 1e-12);
        }
    }

    #[test]
    fn masked_training_sets_are_filled() {
        let set = Dataset::Bands
            .generate(&DatasetSpec::new(30, 8, 8, 2))
            .unwrap();
        let mask = mcar_mask(30, 8, 8, 0.3, 4).unwrap();
        let batch = set.batch_with_mask(&mask).unwrap();
        let y = vectorise(&batch).unwrap();
        assert!(y.col_iter().all(|c| c.iter().all(|v| v.is_finite())));
        let mut o = small_opts();
        o.flow.core_model = CoreModelChoice::Gaussian;
        PcaFlow::fit(&batch, &o).unwrap();
        GaussianCore::fit(&batch, &o).unwrap();
    }

    #[test]
    fn errors_name_the_argument() {
        let set = Dataset::Blobs
            .generate(&DatasetSpec::new(2, 6, 5, 1))
            .unwrap();
        let mut o = small_opts();
        let e = PcaFlow::fit(&set.batch(), &o).err().unwrap();
        assert!(e.message().starts_with("train:"), "{}", e.message());
        let set = Dataset::Blobs
            .generate(&DatasetSpec::new(10, 6, 5, 1))
            .unwrap();
        o.rank_rows = 0;
        let e = PcaFlow::fit(&set.batch(), &o).err().unwrap();
        assert!(e.message().starts_with("opts.rank_rows"), "{}", e.message());
        o.rank_rows = 2;
        o.flow.steps = 0;
        let e = AmbientFlow::fit(&set.batch(), &o).err().unwrap();
        assert!(e.message().starts_with("opts.steps"), "{}", e.message());
        let one = Dataset::Blobs
            .generate(&DatasetSpec::new(1, 6, 5, 1))
            .unwrap();
        let e = AmbientFlow::fit(&one.batch(), &small_opts()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let mut bad = set.data.clone();
        bad[7] = f64::NAN;
        let b = MatrixBatch::from_c_order(&bad, 10, 6, 5).unwrap();
        let e = AmbientFlow::fit(&b, &small_opts()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::NonFinite);
        assert!(e.message().contains("train"), "{}", e.message());
        // A sampler checks the output shape.
        let a = AmbientFlow::fit(&set.batch(), &small_opts()).unwrap();
        let mut buf = vec![0.0; 2 * 5 * 6];
        let mut out = MatrixBatchMut::from_c_order(&mut buf, 2, 5, 6).unwrap();
        let e = a
            .sample_into(&SolverOptions::default(), 0, 0, &mut out)
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Shape);
        assert!(e.message().starts_with("out:"), "{}", e.message());
    }
}
