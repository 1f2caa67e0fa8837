//! Runs the comparison harness of `examples/benchmark.rs` in its quick mode
//! (48 x 48, few steps): every method, floor and table is produced, every
//! score is finite, and the floors sit where they must.

#[path = "../examples/benchmark/harness.rs"]
mod harness;

use coreflow::Dataset;
use harness::{Config, Method};

#[test]
fn quick_harness_produces_every_table() {
    let mut cfg = Config::quick();
    // Two threads at most: the suite runs tests in parallel.
    cfg.threads = 2;
    let mut log = Vec::new();
    let report = harness::run(&cfg, &mut log).expect("harness");
    let md = &report.markdown;
    for set in Dataset::ALL {
        for table in ["regimes", "compression", "missing entries"] {
            assert!(
                md.contains(&format!("**{}: {table}**", set.name())),
                "no {table} table for {}",
                set.name()
            );
        }
    }
    for label in [
        "CoreFlow",
        "Gaussian-core",
        "ambient FM",
        "PCA + flow",
        "floor: finite-sample",
        "floor: rank",
    ] {
        assert!(md.contains(label), "{label} missing");
    }
    assert!(md.contains("seed 1"), "settings not printed");
    assert!(md.contains("Total wall time"));
    for r in &report.rows {
        let m = &r.metrics;
        for (v, what) in [
            (m.sve, "sve"),
            (m.topk_w1, "topk"),
            (m.mean_error, "mean"),
            (m.rowcov_rel_error, "rowcov"),
            (m.colcov_rel_error, "colcov"),
            (m.mmd.unwrap().mmd2, "mmd2"),
        ] {
            assert!(v.is_finite(), "{what} of {r:?}");
        }
    }
    // Every regime has all four methods and both floors.
    for set in Dataset::ALL {
        for &n in &cfg.regimes {
            for m in [
                Method::CoreFlow,
                Method::GaussianCore,
                Method::Ambient,
                Method::PcaFlow,
                Method::FiniteFloor,
                Method::RankFloor,
            ] {
                assert!(
                    report.get(set, n, cfg.base_rank, 0.0, m).is_some(),
                    "{} N={n} {m:?}",
                    set.name()
                );
            }
        }
        // The rank floor improves (weakly) with the rank: a larger geometry
        // holds more of every test matrix.
        let floor = |rank| {
            report
                .get(set, cfg.ranks_n, rank, 0.0, Method::RankFloor)
                .unwrap()
                .metrics
                .sve
        };
        let (lo, hi) = (cfg.ranks[0], *cfg.ranks.last().unwrap());
        assert!(
            floor(hi) <= floor(lo) + 1e-9,
            "{}: rank floor {} at r={hi} > {} at r={lo}",
            set.name(),
            floor(hi),
            floor(lo)
        );
    }
    assert!(
        report.total_s < 120.0,
        "quick mode took {} s",
        report.total_s
    );
}
