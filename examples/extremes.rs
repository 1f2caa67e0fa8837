//! The largest magnitude among many draws of a model fitted by `coreflow
//! demo`, against that of the demo's training matrices: the check that no
//! sample is absurd (every draw within 10x the data).
//!
//! ```sh
//! cargo run --release -p coreflow-cli -- demo --out demo-out   # waves, seed 0
//! cargo run --release --example extremes -- demo-out/model.cfm waves 100000
//! ```

use coreflow::datasets::{Dataset, DatasetSpec};
use coreflow::flow::SolverOptions;
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{MatrixBatchMut, Model};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: extremes MODEL.cfm DATASET(blobs|bands|waves|crosshatch) COUNT [SEED]");
        std::process::exit(2);
    }
    let model = Model::load(&args[1]).unwrap_or_else(|e| {
        eprintln!("{}: {}", args[1], e.message());
        std::process::exit(2)
    });
    let dataset = match args[2].as_str() {
        "blobs" => Dataset::Blobs,
        "bands" => Dataset::Bands,
        "waves" => Dataset::Waves,
        "crosshatch" => Dataset::Crosshatch,
        other => {
            eprintln!("unknown data set {other}");
            std::process::exit(2)
        }
    };
    let count: usize = args[3].parse().expect("COUNT");
    let seed: u64 = args.get(4).map_or(0, |s| s.parse().expect("SEED"));
    let (m, n) = (model.info().rows, model.info().cols);
    // The demo's training set: the first 500 of 1000 matrices of its seed.
    let all = dataset
        .generate(&DatasetSpec::new(1000, m, n, 0))
        .expect("data set");
    let data_max = all.data[..500 * m * n]
        .iter()
        .fold(0.0f64, |a, v| a.max(v.abs()));
    let opts = SolverOptions::default();
    let chunk = 1000;
    let mut out = vec![0.0; chunk * m * n];
    let mut buf = MemBuffer::new(model.sample_scratch(chunk, &opts));
    let (mut worst, mut at) = (0.0f64, 0u64);
    let mut start = 0;
    while start < count {
        let b = chunk.min(count - start);
        let mut ob = MatrixBatchMut::from_c_order(&mut out[..b * m * n], b, m, n).unwrap();
        model
            .sample(&opts, seed, start as u64, &mut ob, MemStack::new(&mut buf))
            .expect("sample");
        for (i, x) in out[..b * m * n].chunks(m * n).enumerate() {
            let v = x.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            if v > worst {
                worst = v;
                at = (start + i) as u64;
            }
        }
        start += b;
    }
    println!(
        "{count} draws (seed {seed}): largest |x| {worst:.4} (sample {at}); training data {data_max:.4}; ratio {:.3}",
        worst / data_max
    );
}
