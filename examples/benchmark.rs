//! Comparisons on the synthetic sets: CoreFlow against a Gaussian on the
//! cores, ambient flow matching and PCA + flow, with the finite-sample and
//! rank floors of DESIGN.md section 6 (see BENCHMARKS.md, "Comparisons on
//! the synthetic sets", and `benchmark/harness.rs` for what is run).
//!
//! ```text
//! cargo run --release --example benchmark                    # full run, 200 x 200
//! cargo run --release --example benchmark -- --quick         # 48 x 48, seconds
//! cargo run --release --example benchmark -- --tables regimes --sets blobs,waves --out t.md
//! ```
//!
//! Options: `--quick`, `--seed S`, `--threads T`, `--sets a,b`,
//! `--tables regimes,ranks,missing`, `--regimes 100,300,1000`,
//! `--base-rank R`, `--ranks 10,20,...`, `--ranks-n N`, `--missing 0,0.2,0.4`,
//! `--missing-n N`, `--test T`, `--test-offset I` (first test draw; runs
//! with the same offset share a test set), `--gen G`, `--steps S`, `--batch B`,
//! `--hidden H`, `--no-ambient`, `--ambient-n 100,300`, `--no-pca`,
//! `--subspace-max-iter K`, `--core-model auto|flow|gaussian|mixture` (CoreFlow and
//! PCA + flow), `--out FILE` (the markdown also goes to stdout;
//! progress to stderr).

#[path = "benchmark/harness.rs"]
mod harness;

use coreflow::core_model::CoreModelChoice;
use coreflow::Dataset;
use harness::Config;

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Vec<T> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.trim()
                .parse()
                .unwrap_or_else(|_| usage(&format!("{what}: cannot parse {x:?}")))
        })
        .collect()
}

fn usage(msg: &str) -> ! {
    eprintln!("benchmark: {msg}\nsee the options in examples/benchmark.rs");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = if args.iter().any(|a| a == "--quick") {
        Config::quick()
    } else {
        Config::full()
    };
    let mut out_path = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--quick" => {}
            "--seed" => cfg.seed = list(&val(), "--seed")[0],
            "--threads" => cfg.threads = list(&val(), "--threads")[0],
            "--sets" => {
                cfg.sets = val()
                    .split(',')
                    .map(|s| Dataset::from_name(s).unwrap_or_else(|e| usage(e.message())))
                    .collect()
            }
            "--tables" => cfg.tables = list(&val(), "--tables"),
            "--regimes" => cfg.regimes = list(&val(), "--regimes"),
            "--base-rank" => cfg.base_rank = list(&val(), "--base-rank")[0],
            "--ranks" => cfg.ranks = list(&val(), "--ranks"),
            "--ranks-n" => cfg.ranks_n = list(&val(), "--ranks-n")[0],
            "--missing" => cfg.missing = list(&val(), "--missing"),
            "--missing-n" => cfg.missing_n = list(&val(), "--missing-n")[0],
            "--test" => cfg.test_count = list(&val(), "--test")[0],
            "--test-offset" => cfg.test_offset = list(&val(), "--test-offset")[0],
            "--gen" => cfg.gen_count = list(&val(), "--gen")[0],
            "--steps" => cfg.steps = list(&val(), "--steps")[0],
            "--batch" => cfg.batch = list(&val(), "--batch")[0],
            "--hidden" => cfg.hidden = list(&val(), "--hidden")[0],
            "--no-ambient" => cfg.ambient = false,
            "--ambient-n" => cfg.ambient_n = list(&val(), "--ambient-n"),
            "--subspace-max-iter" => cfg.subspace_max_iter = list(&val(), "--subspace-max-iter")[0],
            "--no-pca" => cfg.pca = false,
            "--core-model" => {
                cfg.core_model = match val().as_str() {
                    "auto" => CoreModelChoice::Auto,
                    "flow" => CoreModelChoice::Flow,
                    "gaussian" => CoreModelChoice::Gaussian,
                    "mixture" => CoreModelChoice::Mixture,
                    x => usage(&format!(
                        "--core-model: {x:?} is not auto, flow, gaussian or mixture"
                    )),
                }
            }
            "--out" => out_path = Some(val()),
            "--help" | "-h" => usage("help"),
            other => usage(&format!("unknown option {other}")),
        }
    }
    let report = harness::run(&cfg, &mut std::io::stderr()).unwrap_or_else(|e| {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1)
    });
    let cmd = format!(
        "Command: `cargo run --release --example benchmark -- {}`\n\n",
        args.join(" ")
    );
    let text = format!("{cmd}{}", report.markdown);
    print!("{text}");
    if let Some(p) = out_path {
        std::fs::write(&p, &text).unwrap_or_else(|e| usage(&format!("--out {p}: {e}")));
    }
}
