//! `coreflow demo`: the whole pipeline on a built-in synthetic set.
//!
//! Draws a training set and a held-out test set from one of the synthetic
//! families (DESIGN.md section 7), fits CoreFlow, generates as many matrices
//! as the test set holds, and scores every generator against the test set
//! beside two floors: the training set itself (the finite-sample floor: no
//! generator can be expected to beat fresh samples of the truth) and the test
//! set projected onto the fitted geometry (the rank floor). The baseline is
//! the library's Gaussian core model fitted to the training cores, decoded
//! through the same geometry.
//! Pictures go to the output directory.

use crate::baseline::gaussian_cores;
use crate::commands::eval::metric_rows;
use crate::commands::fit::fit_with_bars;
use crate::commands::info::core_model_summary;
use crate::commands::sample;
use crate::error::{CliError, Context};
use crate::input::with_workspace;
use crate::plot::{self, Mat, Series};
use crate::progress::check_cancelled;
use crate::ThreadArgs;
use clap::{Args, ValueEnum};
use coreflow::core_model::CoreModelKind;
use coreflow::datasets::{Dataset, DatasetSpec};
use coreflow::flow::SolverOptions;
use coreflow::metrics::{self, EvalOptions, Metrics};
use coreflow::{FitOptions, MatrixBatch, MatrixBatchMut, Model};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The synthetic families.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetName {
    Blobs,
    Bands,
    Waves,
    Crosshatch,
}

impl From<DatasetName> for Dataset {
    fn from(d: DatasetName) -> Self {
        match d {
            DatasetName::Blobs => Dataset::Blobs,
            DatasetName::Bands => Dataset::Bands,
            DatasetName::Waves => Dataset::Waves,
            DatasetName::Crosshatch => Dataset::Crosshatch,
        }
    }
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Synthetic data set.
    #[arg(long, value_enum, default_value_t = DatasetName::Waves)]
    pub dataset: DatasetName,
    /// Directory for the pictures and the model file (created if missing).
    #[arg(long, value_name = "DIR", default_value = "coreflow-demo")]
    pub out: PathBuf,
    /// Training matrices (the held-out test set has as many).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Rows and columns of each matrix.
    #[arg(long, value_name = "M")]
    pub size: Option<usize>,
    /// Optimiser steps of the flow [default: the library's 4000; 1000 with --quick].
    #[arg(long, value_name = "N")]
    pub flow_steps: Option<usize>,
    /// Small sizes and a short flow training, for a run of a few seconds.
    #[arg(long)]
    pub quick: bool,
    /// Seed of the data set, the fit and the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// No progress output (bars on a terminal, one line per stage otherwise).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Flow steps of a quick run: enough to see the flow move away from its
/// Gaussian start, short enough for a smoke test.
const QUICK_FLOW_STEPS: usize = 1000;

/// Sizes of a demo run.
struct Plan {
    count: usize,
    test: usize,
    size: usize,
    flow_steps: usize,
}

impl DemoArgs {
    fn plan(&self) -> Result<Plan, CliError> {
        let (count, size) = if self.quick { (200, 32) } else { (500, 128) };
        let count = self.count.unwrap_or(count);
        let size = self.size.unwrap_or(size);
        if count < 4 {
            return Err(CliError::input(
                "--count: the demo needs at least 4 training matrices",
            ));
        }
        if size < 4 {
            return Err(CliError::input(
                "--size: the demo needs matrices of at least 4 x 4",
            ));
        }
        let flow_steps = self.flow_steps.unwrap_or(if self.quick {
            QUICK_FLOW_STEPS
        } else {
            coreflow::core_model::FlowOptions::default().steps
        });
        if flow_steps == 0 {
            return Err(CliError::input(
                "--flow-steps: the demo compares the flow's samples, so it needs at least 1 step",
            ));
        }
        Ok(Plan {
            count,
            test: count,
            size,
            flow_steps,
        })
    }
}

/// A set of generated (or reference) matrices in C order.
struct Generated {
    name: &'static str,
    data: Vec<f64>,
}

/// Cores of every matrix of `batch` (count x d, column-major cores).
fn encode(model: &Model, batch: &MatrixBatch) -> Result<Vec<f64>, CliError> {
    let mut cores = vec![0.0; batch.count() * model.core_dim()];
    with_workspace(
        model.encode_scratch(batch.count()),
        |st| model.encode(batch, &mut cores, st),
        "encode",
    )?;
    Ok(cores)
}

/// Matrices `U C V^T (+ Xbar)` of `cores`, C order.
fn decode(model: &Model, cores: &[f64]) -> Result<Vec<f64>, CliError> {
    let i = model.info();
    let count = cores.len() / model.core_dim();
    let mut data = vec![0.0; count * i.rows * i.cols];
    let mut out = MatrixBatchMut::from_c_order(&mut data, count, i.rows, i.cols)
        .map_err(|e| CliError::internal(e.message().to_string()))?;
    with_workspace(
        model.decode_scratch(count),
        |st| model.decode(cores, &mut out, st),
        "decode",
    )?;
    Ok(data)
}

fn c_batch(data: &[f64], size: usize) -> MatrixBatch<'_> {
    MatrixBatch::from_c_order(data, data.len() / (size * size), size, size)
        .expect("demo sets are C-order stacks of square matrices")
}

/// Mean singular-value spectrum of a set.
fn mean_spectrum(data: &[f64], size: usize, threads: usize) -> Result<Vec<f64>, CliError> {
    let sv = metrics::singular_values(
        &c_batch(data, size),
        coreflow::numerics::par_for_threads(threads),
    )
    .ctx("singular values")?;
    Ok((0..sv.ncols())
        .map(|k| (0..sv.nrows()).map(|i| sv[(i, k)]).sum::<f64>() / sv.nrows() as f64)
        .collect())
}

/// The 99.5th percentile of |x| over the drawn matrices: one outlying entry
/// should not wash out every colour.
fn color_limit(mats: &[Mat]) -> f64 {
    let mut a: Vec<f64> = mats
        .iter()
        .flat_map(|m| m.data.iter().map(|x| x.abs()))
        .collect();
    a.sort_by(f64::total_cmp);
    let v = a[((a.len() - 1) as f64 * 0.995) as usize];
    if v > 0.0 {
        v
    } else {
        1.0
    }
}

/// The first `k` matrices of a C-order stack of `size x size` matrices.
fn first(data: &[f64], size: usize, k: usize) -> Vec<Mat<'_>> {
    data.chunks_exact(size * size)
        .take(k)
        .map(|d| Mat {
            data: d,
            rows: size,
            cols: size,
        })
        .collect()
}

fn print_table(rows: &[(&str, Metrics)]) {
    let header = [
        "SVE",
        "top-k W1",
        "MMD^2",
        "1-NN acc",
        "mean err",
        "row-cov err",
        "col-cov err",
    ];
    let mut line = format!("{:<28}", "generator (vs test set)");
    for h in header {
        line += &format!(" {h:>11}");
    }
    out!("{line}");
    for (name, m) in rows {
        let mut line = format!("{name:<28}");
        for (key, _, v) in metric_rows(m) {
            if key != "mmd_bandwidth" {
                line += &format!(" {v:>11.3e}");
            }
        }
        out!("{line}");
    }
}

pub fn run(a: DemoArgs) -> Result<(), CliError> {
    let plan = a.plan()?;
    // Ctrl-C cancels the fit at its next progress report and the other
    // phases between their steps.
    crate::progress::install_ctrlc();
    let started = Instant::now();
    let threads = a.threads.threads;
    std::fs::create_dir_all(&a.out)
        .map_err(|e| CliError::input(format!("{}: cannot create: {e}", a.out.display())))?;
    let dataset: Dataset = a.dataset.into();
    let n = plan.size;

    // One draw split in two: the palette is fixed by the seed, so training
    // and test matrices come from the same distribution.
    let t = Instant::now();
    let spec = DatasetSpec {
        threads,
        ..DatasetSpec::new(plan.count + plan.test, n, n, a.seed)
    };
    let all = dataset.generate(&spec).ctx("data set")?;
    let (train, test) = all.data.split_at(plan.count * n * n);
    out!(
        "{}: {} training + {} test matrices of {n} x {n} ({:.1} s)",
        dataset.name(),
        plan.count,
        plan.test,
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let mut opts = FitOptions {
        seed: a.seed,
        threads,
        ..FitOptions::default()
    };
    opts.flow.steps = plan.flow_steps;
    if a.quick {
        // A smaller network is enough for the quick run's small cores.
        opts.flow.hidden = 64;
        opts.flow.moment_samples = 1000;
    }
    let model = fit_with_bars(&c_batch(train, n), &opts, a.quiet)?;
    let info = model.info();
    out!(
        "fit: ranks {} x {} (chosen by energy {}), explained energy {:.5} ({:.1} s)",
        info.rank_rows,
        info.rank_cols,
        opts.energy,
        info.explained_energy,
        t.elapsed().as_secs_f64()
    );
    let kind = info
        .core_model
        .ok_or_else(|| CliError::internal("the demo's fit has no core model"))?;
    out!("core model: {}", core_model_summary(&model, kind));
    for w in info.warnings(&opts) {
        eprintln!("warning: {w}");
    }
    check_cancelled()?;
    let model_path = a.out.join("model.cfm");
    model
        .save(&model_path)
        .map_err(|e| CliError::input(format!("{}: {}", model_path.display(), e.message())))?;

    // Generators and floors, each a set as large as the test set.
    let t = Instant::now();
    let d = model.core_dim();
    let train_cores = encode(&model, &c_batch(train, n))?;
    let gauss =
        gaussian_cores(&train_cores, d, plan.test, a.seed, threads).ctx("Gaussian baseline")?;
    let gauss_samples = decode(&model, &gauss)?;
    let projected = decode(&model, &encode(&model, &c_batch(test, n))?)?;
    let coreflow_samples = sample::draw(
        &model,
        &SolverOptions::default(),
        a.seed,
        0,
        plan.test,
        threads,
    )?;
    let sets = [
        Generated {
            name: "training set (floor)",
            data: train.to_vec(),
        },
        Generated {
            name: "projected test (rank floor)",
            data: projected,
        },
        Generated {
            name: "Gaussian on cores",
            data: gauss_samples,
        },
        Generated {
            name: match kind {
                CoreModelKind::Flow => "CoreFlow",
                CoreModelKind::Gaussian => "CoreFlow (Gaussian fallback)",
                CoreModelKind::Mixture => "CoreFlow (Gaussian mixture)",
            },
            data: coreflow_samples,
        },
    ];
    out!("sampling: {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let eval_opts = EvalOptions {
        threads,
        ..EvalOptions::default()
    };
    let test_batch = c_batch(test, n);
    let mut rows = Vec::new();
    for s in &sets {
        check_cancelled()?;
        let m = metrics::evaluate(&test_batch, &c_batch(&s.data, n), &eval_opts).ctx("metrics")?;
        rows.push((s.name, m));
    }
    out!("metrics: {:.1} s", t.elapsed().as_secs_f64());
    out!("");
    print_table(&rows);
    out!("SVE, top-k W1, MMD^2 and the mean and covariance errors: lower is better.");
    out!("The floors score what an ideal generator would. MMD^2 is the unbiased estimate");
    out!("(0 on average for two samples of one distribution): near the floors it can be negative.");
    out!("");

    let t = Instant::now();
    // The spectra beyond a few times the rank are noise: plot the part
    // where generators differ.
    let shown_sv = n.min(20.max(3 * info.rank_rows.max(info.rank_cols)));
    let pictures = draw(&a.out, train, test, &sets[2..], n, shown_sv, threads)?;
    out!("pictures ({:.1} s):", t.elapsed().as_secs_f64());
    for p in pictures {
        out!("  {}", p.display());
    }
    out!("  {} (the fitted model)", model_path.display());
    out!("total: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// File name for a generator's picture.
fn picture_name(name: &str) -> String {
    let slug: String = name
        .split_whitespace()
        .next()
        .unwrap_or("generated")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("samples_{slug}.png")
}

/// Writes the heat-map comparisons (training vs each generator) and the
/// spectrum plot; returns the files written.
fn draw(
    dir: &Path,
    train: &[f64],
    test: &[f64],
    generated: &[Generated],
    n: usize,
    shown_sv: usize,
    threads: usize,
) -> Result<Vec<PathBuf>, CliError> {
    const SHOWN: usize = 16;
    let mut written = Vec::new();
    let real = first(train, n, SHOWN);
    let vmax = color_limit(&real);
    for g in generated {
        let gen = first(&g.data, n, SHOWN);
        let cv = plot::pair_figure(["training", g.name], [&real, &gen], vmax);
        let path = dir.join(picture_name(g.name));
        cv.save_png(&path)?;
        written.push(path);
    }
    let spectrum = |d: &[f64]| -> Result<Vec<f64>, CliError> {
        let mut s = mean_spectrum(d, n, threads)?;
        s.truncate(shown_sv);
        Ok(s)
    };
    let mut spectra = vec![("test set", spectrum(test)?)];
    for g in generated {
        spectra.push((g.name, spectrum(&g.data)?));
    }
    let series: Vec<Series> = spectra
        .iter()
        .enumerate()
        .map(|(k, (label, v))| Series {
            label,
            values: v,
            color: plot::SERIES[k % plot::SERIES.len()],
            width: if k == 0 { 3 } else { 2 },
        })
        .collect();
    let cv = plot::log_line_plot(
        &format!("mean singular values, first {shown_sv}"),
        "index",
        "singular value",
        &series,
        SPECTRUM_SIZE.0,
        SPECTRUM_SIZE.1,
    );
    let path = dir.join("spectrum.png");
    cv.save_png(&path)?;
    written.push(path);
    Ok(written)
}

/// Pixel size of `spectrum.png`.
pub const SPECTRUM_SIZE: (usize, usize) = (760, 480);
