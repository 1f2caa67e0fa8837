//! The comparison harness behind `examples/benchmark.rs` (shared with the
//! test `tests/benchmark_quick.rs` through `#[path]`, so the library itself
//! carries none of it).
//!
//! For every synthetic set it draws one stream of `N_max + T` matrices: the
//! first `N` are the training set of a setting (sample `i` depends only on
//! the seed and `i`, so the training sets of the regimes are nested) and
//! draws `I..I+T` are the test set, `I = max(N_max, test_offset)` (runs with
//! the same `I` share their test set). They are fresh draws of the same distribution:
//! a different seed would also redraw the set's palette (its blob centres,
//! band positions, line positions), that is, change the distribution.
//!
//! Methods (same network, steps, batch and solver for every flow):
//! CoreFlow (`Model::fit`, core model AUTO), Gaussian-core, ambient flow
//! matching, PCA + flow (see `coreflow::baselines`). Every method draws
//! `G` samples (seed `seed + 7`) which are scored against the test set with
//! `coreflow::metrics::evaluate`. Beside them, the floors of DESIGN.md
//! section 6: the training set scored against the test set (finite-sample
//! floor) and `decode(encode(test))` through the fitted CoreFlow geometry
//! scored against the test set (rank floor).
//!
//! Tables: regimes (every N at the base rank, complete data), compression
//! (every rank at one N) and missing entries (every MCAR rate at one N and
//! the base rank). A setting shared by two tables is computed once.

#![allow(dead_code)]

use coreflow::baselines::{AmbientFlow, GaussianCore, PcaFlow, Sampler};
use coreflow::core_model::{CoreModelChoice, CoreModelKind};
use coreflow::datasets::mcar_mask;
use coreflow::flow::SolverOptions;
use coreflow::metrics::{EvalOptions, Metrics, Reference};
use coreflow::numerics::{MemBuffer, MemStack, StackReq};
use coreflow::{Dataset, DatasetSpec, FitOptions, MatrixBatch, MatrixBatchMut, Model};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Instant;

/// A method of the comparison, or a floor.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// CoreFlow: separable geometry + core model (AUTO).
    CoreFlow,
    /// The CoreFlow geometry with a full Gaussian on the cores.
    GaussianCore,
    /// Flow matching on standardised vec(X).
    Ambient,
    /// Vectorised PCA to r s components + the core model.
    PcaFlow,
    /// The training set against the test set.
    FiniteFloor,
    /// decode(encode(test)) against the test set.
    RankFloor,
}

impl Method {
    /// The label in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Method::CoreFlow => "CoreFlow",
            Method::GaussianCore => "Gaussian-core",
            Method::Ambient => "ambient FM",
            Method::PcaFlow => "PCA + flow",
            Method::FiniteFloor => "floor: finite-sample",
            Method::RankFloor => "floor: rank",
        }
    }
    /// Whether it is a floor rather than a method.
    pub fn is_floor(self) -> bool {
        matches!(self, Method::FiniteFloor | Method::RankFloor)
    }
}

/// What the harness runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Rows and columns of every matrix.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// The data sets.
    pub sets: Vec<Dataset>,
    /// Training-set sizes of the regimes table.
    pub regimes: Vec<usize>,
    /// r = s of the regimes and missing-entries tables.
    pub base_rank: usize,
    /// r = s of the compression table.
    pub ranks: Vec<usize>,
    /// N of the compression table.
    pub ranks_n: usize,
    /// MCAR rates of the missing-entries table.
    pub missing: Vec<f64>,
    /// N of the missing-entries table.
    pub missing_n: usize,
    /// Test matrices T.
    pub test_count: usize,
    /// Index of the first test draw in the stream (0 = right after the
    /// largest training set). Runs with the same offset share a test set.
    pub test_offset: usize,
    /// Generated matrices G per method.
    pub gen_count: usize,
    /// Optimiser steps of every flow.
    pub steps: usize,
    /// Batch size of every flow.
    pub batch: usize,
    /// Hidden width of every flow.
    pub hidden: usize,
    /// Hidden layers of every flow.
    pub layers: usize,
    /// Learning-rate warm-up steps.
    pub warmup: usize,
    /// Flow samples of CoreFlow's moment matching.
    pub moment_samples: usize,
    /// Run the ambient baseline (regimes table only).
    pub ambient: bool,
    /// Training-set sizes at which the ambient baseline runs (empty = every
    /// regime).
    pub ambient_n: Vec<usize>,
    /// HOOI iteration limit of the CoreFlow geometry (CoreFlow and
    /// Gaussian-core alike).
    pub subspace_max_iter: usize,
    /// Core-model choice of CoreFlow and PCA + flow (default AUTO).
    pub core_model: CoreModelChoice,
    /// Run the PCA + flow baseline.
    pub pca: bool,
    /// Tables to run: any of "regimes", "ranks", "missing".
    pub tables: Vec<String>,
    /// Seed of the data, the fits and the samples.
    pub seed: u64,
    /// Worker threads (0 = all cores).
    pub threads: usize,
}

impl Config {
    /// The full comparison on 200 x 200 matrices.
    pub fn full() -> Config {
        Config {
            rows: 200,
            cols: 200,
            sets: Dataset::ALL.to_vec(),
            regimes: vec![100, 300, 1000],
            base_rank: 20,
            ranks: vec![10, 20, 40, 60, 100, 140],
            ranks_n: 300,
            missing: vec![0.0, 0.2, 0.4],
            missing_n: 300,
            test_count: 500,
            test_offset: 0,
            gen_count: 300,
            steps: 1000,
            batch: 128,
            hidden: 256,
            layers: 3,
            warmup: 200,
            moment_samples: 4000,
            ambient: true,
            ambient_n: Vec::new(),
            subspace_max_iter: 10,
            core_model: CoreModelChoice::Auto,
            pca: true,
            tables: vec!["regimes".into(), "ranks".into(), "missing".into()],
            seed: 1,
            threads: 1,
        }
    }

    /// A small run of every code path (48 x 48, few steps).
    pub fn quick() -> Config {
        Config {
            rows: 48,
            cols: 48,
            regimes: vec![100, 300],
            base_rank: 8,
            ranks: vec![4, 8, 16],
            ranks_n: 100,
            missing: vec![0.0, 0.4],
            missing_n: 100,
            test_count: 100,
            gen_count: 100,
            steps: 150,
            batch: 64,
            hidden: 64,
            layers: 2,
            warmup: 20,
            moment_samples: 500,
            ..Config::full()
        }
    }

    fn runs(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t == table)
    }

    /// Index of the first test draw.
    fn test_start(&self) -> usize {
        self.max_n().max(self.test_offset)
    }

    /// Largest training set any table needs.
    fn max_n(&self) -> usize {
        let mut n = 0;
        if self.runs("regimes") {
            n = n.max(self.regimes.iter().copied().max().unwrap_or(0));
        }
        if self.runs("ranks") && !self.ranks.is_empty() {
            n = n.max(self.ranks_n);
        }
        if self.runs("missing") && !self.missing.is_empty() {
            n = n.max(self.missing_n);
        }
        n
    }

    /// The fit options of a setting (every flow method uses these).
    pub fn fit_options(&self, rank: usize) -> FitOptions {
        let mut o = FitOptions {
            rank_rows: rank,
            rank_cols: rank,
            seed: self.seed,
            threads: self.threads,
            subspace_max_iter: self.subspace_max_iter,
            ..FitOptions::default()
        };
        o.flow.steps = self.steps;
        o.flow.batch_size = self.batch;
        o.flow.hidden = self.hidden;
        o.flow.layers = self.layers;
        o.flow.warmup_steps = self.warmup;
        o.flow.moment_samples = self.moment_samples;
        o.flow.core_model = self.core_model;
        // Every method trains on all N matrices; the held-out diagnostics
        // are not part of the comparison.
        o.flow.holdout_fraction = 0.0;
        o
    }

    /// The settings as printed above the tables.
    pub fn describe(&self) -> String {
        let o = self.fit_options(self.base_rank);
        format!(
            "seed {seed}; {m} x {n} matrices; sets {sets}; test set T = {t} (draws {t0}..{t1} \
             of the training stream); G = {g} generated per method (sample seed {sseed}); \
             every flow: H = {h}, L = {l}, {k} time frequencies, {steps} steps, batch {b}, \
             learning rate {lr}, warm-up {w}, EMA {ema}, solver RK4 with 16 steps; CoreFlow and \
             PCA + flow: flow block energy {fe}, noise gap {ng}, moment matching with {ms} samples, core model \
             {cm:?}, no hold-out; CoreFlow geometry: HOOI, at most {hooi} iterations; threads {th}",
            seed = self.seed,
            m = self.rows,
            n = self.cols,
            sets = self
                .sets
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
            t = self.test_count,
            t0 = self.test_start(),
            t1 = self.test_start() + self.test_count - 1,
            g = self.gen_count,
            sseed = self.sample_seed(),
            h = o.flow.hidden,
            l = o.flow.layers,
            k = o.flow.time_freqs,
            steps = o.flow.steps,
            b = o.flow.batch_size,
            lr = o.flow.learning_rate,
            w = o.flow.warmup_steps,
            ema = o.flow.ema_decay,
            fe = o.flow.flow_energy,
            ng = o.flow.flow_noise_gap,
            ms = o.flow.moment_samples,
            hooi = self.subspace_max_iter,
            cm = self.core_model,
            th = if self.threads == 0 {
                "all cores".to_string()
            } else {
                self.threads.to_string()
            },
        )
    }

    fn sample_seed(&self) -> u64 {
        self.seed + 7
    }
    fn mask_seed(&self) -> u64 {
        self.seed + 13
    }
}

/// One scored cell.
#[derive(Clone, Debug)]
pub struct Row {
    /// Data set.
    pub set: Dataset,
    /// Training matrices N.
    pub n: usize,
    /// r = s (0 where it does not apply).
    pub rank: usize,
    /// MCAR rate of the training set.
    pub missing: f64,
    /// Method or floor.
    pub method: Method,
    /// The scores against the test set.
    pub metrics: Metrics,
    /// Fit wall time, seconds.
    pub fit_s: f64,
    /// Sampling wall time, seconds.
    pub sample_s: f64,
    /// Model details (core model, its dimension).
    pub note: String,
}

/// Everything a run produced.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every scored cell, in the order computed.
    pub rows: Vec<Row>,
    /// The markdown output.
    pub markdown: String,
    /// Total wall time, seconds.
    pub total_s: f64,
}

impl Report {
    /// The row of a cell, if it was computed.
    pub fn get(
        &self,
        set: Dataset,
        n: usize,
        rank: usize,
        missing: f64,
        method: Method,
    ) -> Option<&Row> {
        let rank = if matches!(method, Method::Ambient | Method::FiniteFloor) {
            0
        } else {
            rank
        };
        self.rows.iter().find(|r| {
            r.set == set && r.n == n && r.rank == rank && r.missing == missing && r.method == method
        })
    }
}

type Key = (Dataset, usize, usize, u32, Method);

fn key(set: Dataset, n: usize, rank: usize, missing: f64, method: Method) -> Key {
    (set, n, rank, (missing * 1000.0).round() as u32, method)
}

fn err(e: coreflow::Error) -> String {
    format!("{}: {}", e.kind().as_str(), e.message())
}

/// The data of one set: training stream and test set.
struct SetData {
    set: Dataset,
    data: coreflow::MatrixSet,
    test_start: usize,
}

impl SetData {
    fn train(&self, n: usize) -> MatrixBatch<'_> {
        let (m, c) = (self.data.rows, self.data.cols);
        MatrixBatch::from_c_order(&self.data.data[..n * m * c], n, m, c).unwrap()
    }
    fn train_data(&self, n: usize) -> &[f64] {
        let (m, c) = (self.data.rows, self.data.cols);
        &self.data.data[..n * m * c]
    }
    fn test(&self) -> MatrixBatch<'_> {
        let (m, c) = (self.data.rows, self.data.cols);
        let t = self.data.count - self.test_start;
        MatrixBatch::from_c_order(&self.data.data[self.test_start * m * c..], t, m, c).unwrap()
    }
}

fn core_note(kind: Option<CoreModelKind>, flow_dim: usize, block: usize) -> String {
    match kind {
        Some(CoreModelKind::Flow) => format!("flow k={flow_dim}"),
        Some(CoreModelKind::Gaussian) => format!("Gaussian (k={block})"),
        Some(CoreModelKind::Mixture) => format!("mixture (k={block})"),
        None => String::new(),
    }
}

struct Runner<'a> {
    cfg: &'a Config,
    eval: EvalOptions,
    cache: HashMap<Key, Row>,
    /// CoreFlow models, kept for the rank floors.
    models: HashMap<Key, Model>,
    log: &'a mut dyn Write,
}

impl Runner<'_> {
    fn score(&self, test: &Reference, gen: &[f64], count: usize) -> Result<Metrics, String> {
        let b = MatrixBatch::from_c_order(gen, count, self.cfg.rows, self.cfg.cols).map_err(err)?;
        test.evaluate(&b, &self.eval).map_err(err)
    }

    fn draw(&self, s: &dyn Sampler) -> Result<(Vec<f64>, f64), String> {
        let (m, n, g) = (self.cfg.rows, self.cfg.cols, self.cfg.gen_count);
        let mut buf = vec![0.0; g * m * n];
        let t = Instant::now();
        let mut out = MatrixBatchMut::from_c_order(&mut buf, g, m, n).map_err(err)?;
        s.sample_into(
            &SolverOptions::default(),
            self.cfg.sample_seed(),
            0,
            &mut out,
        )
        .map_err(err)?;
        Ok((buf, t.elapsed().as_secs_f64()))
    }

    /// The row of a cell, computing it (and what it needs) when new.
    fn cell(
        &mut self,
        d: &SetData,
        reference: &Reference,
        n: usize,
        rank: usize,
        missing: f64,
        method: Method,
    ) -> Result<Row, String> {
        let rank = if matches!(method, Method::Ambient | Method::FiniteFloor) {
            0
        } else {
            rank
        };
        let k = key(d.set, n, rank, missing, method);
        if let Some(r) = self.cache.get(&k) {
            return Ok(r.clone());
        }
        let _ = writeln!(
            self.log,
            "[{}] {} N={n} r=s={rank} missing={:.0}%: {}",
            fmt_clock(),
            d.set.name(),
            missing * 100.0,
            method.label()
        );
        let cfg = self.cfg;
        let test = d.test();
        let opts = cfg.fit_options(rank);
        let mask = if missing > 0.0 {
            Some(mcar_mask(n, cfg.rows, cfg.cols, missing, cfg.mask_seed()).map_err(err)?)
        } else {
            None
        };
        let train = match &mask {
            Some(mk) => MatrixBatch::from_c_order(d.train_data(n), n, cfg.rows, cfg.cols)
                .and_then(|b| b.with_mask(mk))
                .map_err(err)?,
            None => d.train(n),
        };
        let (metrics, fit_s, sample_s, note) = match method {
            Method::FiniteFloor => {
                let m = reference.evaluate(&d.train(n), &self.eval).map_err(err)?;
                (m, 0.0, 0.0, String::new())
            }
            Method::RankFloor => {
                // Needs the CoreFlow model of the setting.
                self.cell(d, reference, n, rank, missing, Method::CoreFlow)?;
                let model = &self.models[&key(d.set, n, rank, missing, Method::CoreFlow)];
                let t = test.count();
                let mut cores = vec![0.0; t * model.core_dim()];
                let mut ws = MemBuffer::new(StackReq::any_of(&[
                    model.encode_scratch(t),
                    model.decode_scratch(t),
                ]));
                model
                    .encode(&test, &mut cores, MemStack::new(&mut ws))
                    .map_err(err)?;
                let mut back = vec![0.0; t * cfg.rows * cfg.cols];
                let mut out =
                    MatrixBatchMut::from_c_order(&mut back, t, cfg.rows, cfg.cols).map_err(err)?;
                model
                    .decode(&cores, &mut out, MemStack::new(&mut ws))
                    .map_err(err)?;
                let m = self.score(reference, &back, t)?;
                (m, 0.0, 0.0, String::new())
            }
            Method::CoreFlow | Method::GaussianCore | Method::Ambient | Method::PcaFlow => {
                let t0 = Instant::now();
                let (sampler, note): (Option<Box<dyn Sampler>>, String) = match method {
                    Method::CoreFlow => {
                        let model = Model::fit(&train, &opts).map_err(err)?;
                        let i = model.info();
                        let note = core_note(i.core_model, i.flow_dim, i.flow_block);
                        let _ = writeln!(
                            self.log,
                            "    geometry: {} subspace iterations, {} completion rounds; fit {:.1} s",
                            i.subspace_iterations,
                            i.completion_iterations,
                            t0.elapsed().as_secs_f64()
                        );
                        // Kept for the rank floor of the setting.
                        self.models.insert(k, model);
                        (None, note)
                    }
                    Method::GaussianCore => {
                        let g = GaussianCore::fit(&train, &opts).map_err(err)?;
                        (Some(Box::new(g)), String::new())
                    }
                    Method::Ambient => {
                        let a = AmbientFlow::fit(&train, &opts).map_err(err)?;
                        let note = format!("D={}", cfg.rows * cfg.cols);
                        (Some(Box::new(a)), note)
                    }
                    _ => {
                        let p = PcaFlow::fit(&train, &opts).map_err(err)?;
                        let c = p.core_model();
                        let note = format!(
                            "q={}, {}",
                            p.components(),
                            core_note(Some(c.kind()), c.flow_dim(), c.info().flow_block)
                        );
                        (Some(Box::new(p)), note)
                    }
                };
                let fit_s = t0.elapsed().as_secs_f64();
                let (gen, sample_s) = match &sampler {
                    Some(s) => self.draw(s.as_ref())?,
                    None => self.draw(&self.models[&k])?,
                };
                drop(sampler);
                let m = self.score(reference, &gen, cfg.gen_count)?;
                (m, fit_s, sample_s, note)
            }
        };
        let row = Row {
            set: d.set,
            n,
            rank,
            missing,
            method,
            metrics,
            fit_s,
            sample_s,
            note,
        };
        // Every finished cell also goes to the log, so a run that is stopped
        // early keeps what it measured.
        let _ = writeln!(
            self.log,
            "ROW {} N={n} r={rank} missing={missing} {} {}",
            d.set.name(),
            method.label(),
            cells(&row)
        );
        self.cache.insert(k, row.clone());
        Ok(row)
    }
}

/// Smallest number of leading values (sorted descending) holding `energy`
/// of their sum.
fn leading_count(mut v: Vec<f64>, energy: f64) -> usize {
    v.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = v.iter().sum();
    let mut cum = 0.0;
    for (i, x) in v.iter().enumerate() {
        cum += x;
        if cum >= energy * total * (1.0 - 1e-12) {
            return i + 1;
        }
    }
    v.len()
}

/// For the training cores of `model`: how many core coordinates (sorted by
/// variance, as the flow block is chosen) and how many principal components
/// of the cores hold `energy` of the core variance.
fn core_dimensions(
    model: &Model,
    train: &MatrixBatch,
    energy: f64,
) -> Result<(usize, usize), String> {
    let (n, d) = (train.count(), model.core_dim());
    let mut cores = vec![0.0; n * d];
    let mut ws = MemBuffer::new(model.encode_scratch(n));
    model
        .encode(train, &mut cores, MemStack::new(&mut ws))
        .map_err(err)?;
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| cores[i * d + j]).sum::<f64>() / n as f64)
        .collect();
    let y = faer::Mat::from_fn(n, d, |i, j| cores[i * d + j] - mean[j]);
    let var: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| y[(i, j)] * y[(i, j)]).sum::<f64>())
        .collect();
    let cov = y.transpose() * &y;
    let ev = cov
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|_| "core covariance: eigenvalues did not converge".to_string())?;
    let ev: Vec<f64> = ev.into_iter().map(|x| x.max(0.0)).collect();
    Ok((leading_count(var, energy), leading_count(ev, energy)))
}

fn fmt_clock() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn sci(x: f64) -> String {
    if x.is_nan() {
        "—".into()
    } else if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1e-2 && x.abs() < 1e3 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

const HEADER: &str =
    "| SVE | top-k W1 | MMD² | mean err | row-cov err | col-cov err | fit s | sample s | model |";
const RULE: &str = "|---:|---:|---:|---:|---:|---:|---:|---:|---|";

fn cells(r: &Row) -> String {
    let m = &r.metrics;
    let (fit, sample) = if r.method.is_floor() {
        ("".to_string(), "".to_string())
    } else {
        (format!("{:.1}", r.fit_s), format!("{:.1}", r.sample_s))
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {fit} | {sample} | {} |",
        sci(m.sve),
        sci(m.topk_w1),
        sci(m.mmd.map_or(f64::NAN, |x| x.mmd2)),
        sci(m.mean_error),
        sci(m.rowcov_rel_error),
        sci(m.colcov_rel_error),
        r.note
    )
}

/// Runs the comparison, writing progress to `log`; returns every row and
/// the markdown tables.
pub fn run(cfg: &Config, log: &mut dyn Write) -> Result<Report, String> {
    let start = Instant::now();
    let mut md = String::new();
    let _ = writeln!(md, "Settings: {}.\n", cfg.describe());
    let mut runner = Runner {
        cfg,
        eval: EvalOptions {
            threads: cfg.threads,
            ..EvalOptions::default()
        },
        cache: HashMap::new(),
        models: HashMap::new(),
        log,
    };
    let test_start = cfg.test_start();
    let mut flow_methods = vec![Method::CoreFlow, Method::GaussianCore];
    if cfg.pca {
        flow_methods.push(Method::PcaFlow);
    }
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for &set in &cfg.sets {
        let spec = DatasetSpec {
            threads: cfg.threads,
            ..DatasetSpec::new(test_start + cfg.test_count, cfg.rows, cfg.cols, cfg.seed)
        };
        let data = set.generate(&spec).map_err(err)?;
        let d = SetData {
            set,
            data,
            test_start,
        };
        let test = d.test();
        let reference = Reference::new(&test, &runner.eval).map_err(err)?;
        let mut tables = Vec::new();
        if cfg.runs("regimes") && !cfg.regimes.is_empty() {
            let mut t = String::new();
            let _ = writeln!(
                t,
                "**{}: regimes** (r = s = {}, complete data)\n\n| N | method {HEADER}\n|---:|---{RULE}",
                set.name(),
                cfg.base_rank
            );
            for &n in &cfg.regimes {
                let mut methods = flow_methods.clone();
                if cfg.ambient && (cfg.ambient_n.is_empty() || cfg.ambient_n.contains(&n)) {
                    methods.insert(2, Method::Ambient);
                }
                methods.extend([Method::FiniteFloor, Method::RankFloor]);
                for m in methods {
                    let r = runner.cell(&d, &reference, n, cfg.base_rank, 0.0, m)?;
                    let _ = writeln!(t, "| {n} | {} {}", m.label(), cells(&r));
                }
            }
            // Where the core variance lives: coordinates (the flow block) vs
            // principal components of the same cores.
            let energy = cfg.fit_options(cfg.base_rank).flow.flow_energy;
            let _ = writeln!(
                t,
                "\nCore structure (r = s = {}): core coordinates / principal components of the training cores holding {energy} of their variance: {}\n",
                cfg.base_rank,
                cfg.regimes
                    .iter()
                    .map(|&n| {
                        let model = &runner.models[&key(set, n, cfg.base_rank, 0.0, Method::CoreFlow)];
                        match core_dimensions(model, &d.train(n), energy) {
                            Ok((c, p)) => format!("N = {n}: {c} / {p}"),
                            Err(e) => format!("N = {n}: {e}"),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            tables.push(t);
        }
        if cfg.runs("ranks") && !cfg.ranks.is_empty() {
            let n = cfg.ranks_n;
            let mut t = String::new();
            let _ = writeln!(
                t,
                "**{}: compression** (N = {n}, complete data; floor: finite-sample does not depend on r)\n\n| r = s | method {HEADER}\n|---:|---{RULE}",
                set.name()
            );
            for &rank in &cfg.ranks {
                let mut methods = flow_methods.clone();
                methods.push(Method::RankFloor);
                for m in methods {
                    let r = runner.cell(&d, &reference, n, rank, 0.0, m)?;
                    let _ = writeln!(t, "| {rank} | {} {}", m.label(), cells(&r));
                }
            }
            let r = runner.cell(&d, &reference, n, 0, 0.0, Method::FiniteFloor)?;
            let _ = writeln!(t, "| all | {} {}", Method::FiniteFloor.label(), cells(&r));
            tables.push(t);
        }
        if cfg.runs("missing") && !cfg.missing.is_empty() {
            let n = cfg.missing_n;
            let mut t = String::new();
            let _ = writeln!(
                t,
                "**{}: missing entries** (N = {n}, r = s = {}, MCAR; the floors score complete matrices)\n\n| missing | method {HEADER}\n|---:|---{RULE}",
                set.name(),
                cfg.base_rank
            );
            for &rate in &cfg.missing {
                let mut methods = flow_methods.clone();
                methods.push(Method::RankFloor);
                for m in methods {
                    let r = runner.cell(&d, &reference, n, cfg.base_rank, rate, m)?;
                    let _ = writeln!(t, "| {:.0} % | {} {}", rate * 100.0, m.label(), cells(&r));
                }
            }
            let r = runner.cell(&d, &reference, n, 0, 0.0, Method::FiniteFloor)?;
            let _ = writeln!(t, "| all | {} {}", Method::FiniteFloor.label(), cells(&r));
            tables.push(t);
        }
        // Free the CoreFlow models of this set (kept only for its floors).
        runner.models.clear();
        sections.push((set.name().to_string(), tables));
    }
    for (_, tables) in &sections {
        for t in tables {
            let _ = writeln!(md, "{t}");
        }
    }
    let total_s = start.elapsed().as_secs_f64();
    let _ = writeln!(md, "Total wall time: {total_s:.0} s.");
    let mut rows: Vec<Row> = runner.cache.into_values().collect();
    rows.sort_by(|a, b| {
        (
            a.set.name(),
            a.n,
            a.rank,
            (a.missing * 1000.0) as u32,
            a.method,
        )
            .cmp(&(
                b.set.name(),
                b.n,
                b.rank,
                (b.missing * 1000.0) as u32,
                b.method,
            ))
    });
    Ok(Report {
        rows,
        markdown: md,
        total_s,
    })
}
