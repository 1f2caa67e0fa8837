//! End-to-end tests of the `coreflow` binary on small data.

mod common;

use common::*;

const N: usize = 40;
const M: usize = 18;
const K: usize = 14;

#[test]
fn every_command_has_help() {
    let top = coreflow(&["--help"]);
    let out = top.ok();
    for cmd in [
        "fit", "sample", "complete", "impute", "score", "eval", "info", "encode", "decode", "demo",
    ] {
        assert!(out.contains(cmd), "top-level help lists {cmd}");
        let r = coreflow(&[cmd, "--help"]);
        assert!(r.ok().contains("Usage: coreflow"), "{cmd} --help");
    }
    assert!(coreflow(&["fit", "--help"]).ok().contains("--nan-missing"));
}

#[test]
fn fit_info_complete_encode_decode_eval() {
    let dir = temp_dir("pipeline");
    let data = waves(N, M, K, 1);
    let x = dir.join("x.npy");
    write_f64(&x, &data, [N, M, K], false);
    let model = dir.join("model.cfm");
    let out = coreflow(&[
        "fit",
        "--data",
        s(&x),
        "--rank",
        "6x6",
        "--quiet",
        "--out",
        s(&model),
    ]);
    assert!(out.ok().contains("ranks 6 x 6"), "{}", out.stdout);

    let info = coreflow(&["info", s(&model), "--json"]);
    let v: serde_json::Value = serde_json::from_str(info.ok().trim()).unwrap();
    assert_eq!(v["rows"], M);
    assert_eq!(v["cols"], K);
    assert_eq!(v["rank_rows"], 6);
    assert_eq!(v["train_count"], N);
    assert!(v["explained_energy"].as_f64().unwrap() > 0.99);
    assert!(coreflow(&["info", s(&model)]).ok().contains("rank_rows"));

    // Complete 30 % missing entries of fresh matrices from the same family.
    let y = waves(N + 5, M, K, 1).split_off(N * M * K);
    let mask: Vec<u8> = coreflow::datasets::mcar_mask(5, M, K, 0.3, 9).unwrap();
    let (yp, mp, filled) = (dir.join("y.npy"), dir.join("m.npy"), dir.join("filled.npy"));
    write_f64(&yp, &y, [5, M, K], false);
    write_mask(&mp, &mask, [5, M, K], false, "|u1");
    coreflow(&[
        "complete",
        "--model",
        s(&model),
        "--data",
        s(&yp),
        "--mask",
        s(&mp),
        "--out",
        s(&filled),
    ])
    .ok();
    let (shape, z) = read_f64(&filled);
    assert_eq!(shape, vec![5, M, K]);
    let (mut num, mut den) = (0.0, 0.0);
    for k in 0..z.len() {
        if mask[k] != 0 {
            assert_eq!(
                z[k].to_bits(),
                y[k].to_bits(),
                "observed entries are copied"
            );
        } else {
            num += (z[k] - y[k]).powi(2);
            den += y[k] * y[k];
        }
    }
    assert!(
        (num / den).sqrt() < 0.05,
        "completion error {}",
        (num / den).sqrt()
    );

    // Encode, decode: the round trip is the projection onto the geometry.
    let (cores, back) = (dir.join("cores.npy"), dir.join("back.npy"));
    coreflow(&[
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&x),
        "--out",
        s(&cores),
    ])
    .ok();
    assert_eq!(read_f64(&cores).0, vec![N, 6, 6]);
    coreflow(&[
        "decode",
        "--model",
        s(&model),
        "--cores",
        s(&cores),
        "--out",
        s(&back),
    ])
    .ok();
    let (shape, b) = read_f64(&back);
    assert_eq!(shape, vec![N, M, K]);
    let err: f64 = b
        .iter()
        .zip(&data)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = data.iter().map(|a| a * a).sum::<f64>().sqrt();
    assert!(err / norm < 0.02, "projection error {}", err / norm);

    // The set against itself scores zero; against its projection, small.
    let e = coreflow(&["eval", "--real", s(&x), "--generated", s(&x), "--json"]);
    let v: serde_json::Value = serde_json::from_str(e.ok().trim()).unwrap();
    for key in [
        "sve",
        "topk_w1",
        "mmd2",
        "mean_error",
        "rowcov_error",
        "colcov_error",
    ] {
        assert!(v[key].is_number(), "eval --json has {key}: {v}");
    }
    assert_eq!(v["sve"], 0.0);
    assert_eq!(v["real_count"], N);
    let table = coreflow(&["eval", "--real", s(&x), "--generated", s(&back)]);
    let t = table.ok();
    for label in [
        "spectrum error (SVE)",
        "top-k spectrum W1",
        "MMD^2",
        "mean error",
    ] {
        assert!(t.contains(label), "{t}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fortran_order_and_float32_inputs_give_the_same_results() {
    let dir = temp_dir("layouts");
    let data = waves(N, M, K, 2);
    let files = [
        ("c64.npy", false, false),
        ("f64.npy", true, false),
        ("c32.npy", false, true),
        ("f32.npy", true, true),
    ];
    let mut cores = Vec::new();
    for (name, fortran, single) in files {
        let p = dir.join(name);
        if single {
            write_f32(&p, &data, [N, M, K], fortran);
        } else {
            write_f64(&p, &data, [N, M, K], fortran);
        }
        let model = dir.join(format!("{name}.cfm"));
        coreflow(&[
            "fit",
            "--data",
            s(&p),
            "--rank",
            "5x4",
            "-q",
            "--out",
            s(&model),
        ])
        .ok();
        let c = dir.join(format!("{name}.cores.npy"));
        coreflow(&[
            "encode",
            "--model",
            s(&model),
            "--data",
            s(&p),
            "--out",
            s(&c),
        ])
        .ok();
        cores.push(read_f64(&c).1);
    }
    let scale = cores[0].iter().fold(0.0f64, |a, b| a.max(b.abs()));
    let close =
        |a: &[f64], b: &[f64], tol: f64| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * scale);
    // The layout must not change the fit beyond rounding; float32 input
    // rounds the data at 6e-8 relative.
    assert!(close(&cores[0], &cores[1], 1e-9), "C vs Fortran float64");
    assert!(close(&cores[2], &cores[3], 1e-9), "C vs Fortran float32");
    assert!(close(&cores[0], &cores[2], 1e-4), "float64 vs float32");

    // A Fortran-order bool mask on C-order data, and the reverse.
    let mask = coreflow::datasets::mcar_mask(N, M, K, 0.2, 3).unwrap();
    let (mf, mc) = (dir.join("mf.npy"), dir.join("mc.npy"));
    write_mask(&mf, &mask, [N, M, K], true, "|b1");
    write_mask(&mc, &mask, [N, M, K], false, "|u1");
    let model = dir.join("c64.npy.cfm");
    let (o1, o2) = (dir.join("o1.npy"), dir.join("o2.npy"));
    coreflow(&[
        "complete",
        "--model",
        s(&model),
        "--data",
        s(&dir.join("c64.npy")),
        "--mask",
        s(&mf),
        "--out",
        s(&o1),
    ])
    .ok();
    coreflow(&[
        "complete",
        "--model",
        s(&model),
        "--data",
        s(&dir.join("f64.npy")),
        "--mask",
        s(&mc),
        "--out",
        s(&o2),
    ])
    .ok();
    assert!(close(&read_f64(&o1).1, &read_f64(&o2).1, 1e-9));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nan_entries_are_missing_only_when_asked() {
    let dir = temp_dir("nan");
    let mut data = waves(N, M, K, 3);
    let mask = coreflow::datasets::mcar_mask(N, M, K, 0.2, 4).unwrap();
    for (x, m) in data.iter_mut().zip(&mask) {
        if *m == 0 {
            *x = f64::NAN;
        }
    }
    let x = dir.join("x.npy");
    write_f64(&x, &data, [N, M, K], false);
    let model = dir.join("model.cfm");
    coreflow(&[
        "fit",
        "--data",
        s(&x),
        "--rank",
        "6",
        "-q",
        "--out",
        s(&model),
    ])
    .bad_input(&["x.npy", "NaN", "--nan-missing"]);
    let fit = coreflow(&[
        "fit",
        "--data",
        s(&x),
        "--nan-missing",
        "--rank",
        "6",
        "-q",
        "--out",
        s(&model),
    ]);
    assert!(fit.ok().contains("completion rounds"));
    let filled = dir.join("filled.npy");
    coreflow(&[
        "complete",
        "--model",
        s(&model),
        "--data",
        s(&x),
        "--nan-missing",
        "--out",
        s(&filled),
    ])
    .ok();
    let z = read_f64(&filled).1;
    assert!(z.iter().all(|v| v.is_finite()));
    // Neither a mask nor --nan-missing: a usage error.
    coreflow(&[
        "complete",
        "--model",
        s(&model),
        "--data",
        s(&x),
        "--out",
        s(&filled),
    ])
    .bad_input(&["--mask", "--nan-missing"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_gives_exit_code_2_and_one_line() {
    let dir = temp_dir("bad");
    let data = waves(6, 8, 7, 5);
    let good = dir.join("good.npy");
    write_f64(&good, &data, [6, 8, 7], false);
    let model = dir.join("model.cfm");
    coreflow(&[
        "fit",
        "--data",
        s(&good),
        "--rank",
        "3",
        "-q",
        "--out",
        s(&model),
    ])
    .ok();
    let out = dir.join("out.npy");
    let fit = |p: &std::path::Path| {
        coreflow(&["fit", "--data", s(p), "-q", "--out", s(&dir.join("m2.cfm"))])
    };

    fit(&dir.join("missing.npy")).bad_input(&["missing.npy", "no such file"]);

    let ints = dir.join("ints.npy");
    write_npy_raw(&ints, "<i8", false, &[2, 2, 2], &[0u8; 64]);
    fit(&ints).bad_input(&["ints.npy", "int64", "float64"]);

    let flat = dir.join("flat.npy");
    write_npy_raw(&flat, "<f8", false, &[8, 7], &vec![0u8; 8 * 56]);
    fit(&flat).bad_input(&["flat.npy", "2-D", "(N, m, n)"]);

    let short = dir.join("short.npy");
    write_npy_raw(&short, "<f8", false, &[6, 8, 7], &[0u8; 100]);
    fit(&short).bad_input(&["short.npy", "truncated"]);

    let text = dir.join("text.npy");
    std::fs::write(&text, "1,2,3\n4,5,6\n").unwrap();
    fit(&text).bad_input(&["text.npy", "not a .npy file"]);

    let mut with_inf = data.clone();
    with_inf[10] = f64::INFINITY;
    let inf = dir.join("inf.npy");
    write_f64(&inf, &with_inf, [6, 8, 7], false);
    fit(&inf).bad_input(&["inf.npy", "inf", "row 1, column 3"]);

    // Masks: wrong type and wrong shape.
    let fmask = dir.join("fmask.npy");
    write_f64(&fmask, &vec![1.0; 6 * 8 * 7], [6, 8, 7], false);
    coreflow(&[
        "fit",
        "--data",
        s(&good),
        "--mask",
        s(&fmask),
        "-q",
        "--out",
        s(&model),
    ])
    .bad_input(&["fmask.npy", "uint8"]);
    let smask = dir.join("smask.npy");
    write_mask(&smask, &[1u8; 5 * 8 * 7], [5, 8, 7], false, "|u1");
    coreflow(&[
        "fit",
        "--data",
        s(&good),
        "--mask",
        s(&smask),
        "-q",
        "--out",
        s(&model),
    ])
    .bad_input(&["smask.npy", "(5, 8, 7)", "(6, 8, 7)"]);

    coreflow(&[
        "fit",
        "--data",
        s(&good),
        "--rank",
        "9x3",
        "-q",
        "--out",
        s(&model),
    ])
    .bad_input(&["--rank", "8 x 7"]);
    coreflow(&[
        "fit",
        "--data",
        s(&good),
        "--rank",
        "0",
        "-q",
        "--out",
        s(&model),
    ])
    .bad_input(&["rank"]);
    coreflow(&[
        "fit",
        "--data",
        s(&good),
        "--bogus",
        "-q",
        "--out",
        s(&model),
    ])
    .bad_input(&["--bogus"]);
    coreflow(&[
        "fit",
        "--data",
        s(&good),
        "--flow-noise-gap",
        "0.5",
        "-q",
        "--out",
        s(&model),
    ])
    .bad_input(&["--flow-noise-gap 0.5", "ratio >= 1"]);

    // Model files: missing, not a model, truncated.
    coreflow(&["info", s(&dir.join("none.cfm"))]).bad_input(&["none.cfm", "no such file"]);
    coreflow(&["info", s(&good)]).bad_input(&["good.npy", "corrupt"]);
    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.join("cut.cfm");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    coreflow(&["info", s(&cut)]).bad_input(&["cut.cfm"]);
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let bad_model = dir.join("flipped.cfm");
    std::fs::write(&bad_model, &flipped).unwrap();
    coreflow(&[
        "complete",
        "--model",
        s(&bad_model),
        "--data",
        s(&good),
        "--nan-missing",
        "--out",
        s(&out),
    ])
    .bad_input(&["flipped.cfm"]);

    // Shapes that do not match the model or each other.
    let other = dir.join("other.npy");
    write_f64(&other, &waves(3, 7, 8, 5), [3, 7, 8], false);
    coreflow(&[
        "complete",
        "--model",
        s(&model),
        "--data",
        s(&other),
        "--nan-missing",
        "--out",
        s(&out),
    ])
    .bad_input(&["other.npy", "7 x 8", "8 x 7"]);
    coreflow(&[
        "encode",
        "--model",
        s(&model),
        "--data",
        s(&other),
        "--out",
        s(&out),
    ])
    .bad_input(&["other.npy", "7 x 8"]);
    coreflow(&["eval", "--real", s(&good), "--generated", s(&other)])
        .bad_input(&["other.npy", "7 x 8"]);

    // An output that cannot be written.
    coreflow(&[
        "fit",
        "--data",
        s(&good),
        "-q",
        "--out",
        s(&dir.join("no/such/dir/m.cfm")),
    ])
    .bad_input(&["cannot write"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_quick_writes_pictures() {
    let dir = temp_dir("demo");
    let t = std::time::Instant::now();
    let r = coreflow(&["demo", "--quick", "--quiet", "--out", s(&dir)]);
    let out = r.ok();
    assert!(
        t.elapsed().as_secs() < 30,
        "quick demo took {:?}",
        t.elapsed()
    );
    for name in [
        "training set (floor)",
        "projected test (rank floor)",
        "Gaussian on cores",
        "CoreFlow",
    ] {
        assert!(out.contains(name), "table row {name}:\n{out}");
    }
    assert!(out.contains("core model: flow"), "{out}");
    // Heat maps: 4 x 4 grids of 96-pixel cells, training left, generated right.
    for picture in ["samples_gaussian.png", "samples_coreflow.png"] {
        let img = read_png(&dir.join(picture));
        assert_eq!((img.0, img.1), (948, 458), "{picture}");
        let (panel, y0) = (396, 46);
        let (left, right) = (16, 16 + panel + 28);
        assert!(
            region_variance(&img, left, y0, panel, panel) > 50.0,
            "{picture}"
        );
        assert!(
            region_variance(&img, right, y0, panel, panel) > 50.0,
            "{picture}"
        );
    }
    let spec = read_png(&dir.join("spectrum.png"));
    assert_eq!((spec.0, spec.1), (760, 480));
    assert!(region_variance(&spec, 80, 40, 660, 390) > 10.0);
    assert!(dir.join("model.cfm").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fits a small model with a trained flow; returns (data, data file, model file).
fn flow_model(dir: &std::path::Path) -> (Vec<f64>, std::path::PathBuf, std::path::PathBuf) {
    let (n, m, k) = (80, 16, 12);
    let data = waves(n, m, k, 6);
    let x = dir.join("train.npy");
    write_f64(&x, &data, [n, m, k], false);
    let model = dir.join("flow.cfm");
    let fit = coreflow(&[
        "fit",
        "--data",
        s(&x),
        "--rank",
        "6x6",
        "--flow-steps",
        "300",
        "--hidden",
        "32",
        "--core-model",
        "flow",
        "-q",
        "--out",
        s(&model),
    ]);
    assert!(fit.ok().contains("core model: flow"), "{}", fit.stdout);
    (data, x, model)
}

#[test]
fn sample_and_score() {
    let dir = temp_dir("sample");
    let (data, x, model) = flow_model(&dir);
    let (m, k) = (16, 12);
    let info = coreflow(&["info", s(&model), "--json"]);
    let v: serde_json::Value = serde_json::from_str(info.ok().trim()).unwrap();
    assert_eq!(v["core_model"], "flow");
    assert_eq!(v["has_flow"], true);
    assert_eq!(v["flow_hidden"], 32);

    let sample = |name: &str, extra: &[&str]| {
        let p = dir.join(name);
        let mut args = vec!["sample", "--model", s(&model), "--out", s(&p)];
        args.extend_from_slice(extra);
        coreflow(&args).ok();
        read_f64(&p)
    };
    let (shape, a) = sample("a.npy", &["-n", "10", "--seed", "7", "--threads", "1"]);
    assert_eq!(shape, vec![10, m, k]);
    assert!(a.iter().all(|v| v.is_finite()));
    assert!(a.iter().any(|v| v.abs() > 1e-3), "samples are not all zero");
    // Sample j depends only on (seed, j): thread count, run length and the
    // first index do not change it.
    let (_, b) = sample("b.npy", &["-n", "10", "--seed", "7", "--threads", "2"]);
    assert_eq!(a, b);
    let (_, head) = sample("c.npy", &["-n", "4", "--seed", "7"]);
    assert_eq!(&a[..4 * m * k], &head[..]);
    let (_, tail) = sample("d.npy", &["-n", "6", "--seed", "7", "--first-index", "4"]);
    assert_eq!(&a[4 * m * k..], &tail[..]);
    let (_, other) = sample("e.npy", &["-n", "10", "--seed", "8"]);
    assert_ne!(a, other);
    let (_, euler) = sample("f.npy", &["-n", "3", "--solver", "euler", "--steps", "4"]);
    assert!(euler.iter().all(|v| v.is_finite()));
    let (_, dopri) = sample("g.npy", &["-n", "3", "--solver", "dopri5"]);
    assert!(dopri.iter().all(|v| v.is_finite()));

    // Scores of the training data, in C and Fortran order.
    let score = |input: &std::path::Path, name: &str| {
        let p = dir.join(name);
        coreflow(&[
            "score",
            "--model",
            s(&model),
            "--data",
            s(input),
            "--out",
            s(&p),
        ])
        .ok();
        read_f64(&p)
    };
    let (shape, sc) = score(&x, "scores.npy");
    assert_eq!(shape, vec![80, 2]);
    let xf = dir.join("train_f.npy");
    write_f64(&xf, &data, [80, m, k], true);
    let (_, sf) = score(&xf, "scores_f.npy");
    for (p, q) in sc.iter().zip(&sf) {
        assert!((p - q).abs() <= 1e-9 * p.abs().max(1.0), "{p} vs {q}");
    }
    let lp: Vec<f64> = sc.iter().step_by(2).copied().collect();
    let res: Vec<f64> = sc.iter().skip(1).step_by(2).copied().collect();
    assert!(lp.iter().all(|v| v.is_finite()));
    assert!(
        res.iter().all(|r| (0.0..0.2).contains(r)),
        "training data lie near the geometry"
    );
    // Matrices of another kind score lower and lie far from the geometry.
    let noise: Vec<f64> = (0..5 * m * k)
        .map(|i| ((i * 7919) % 13) as f64 - 6.0)
        .collect();
    let np = dir.join("noise.npy");
    write_f64(&np, &noise, [5, m, k], false);
    let (_, sn) = score(&np, "scores_n.npy");
    let mean_lp = lp.iter().sum::<f64>() / lp.len() as f64;
    for row in sn.chunks_exact(2) {
        assert!(
            row[0] < mean_lp,
            "noise log-likelihood {} vs training {mean_lp}",
            row[0]
        );
        assert!(row[1] > 0.5, "noise residual {}", row[1]);
    }

    // A geometry-only model cannot sample or score.
    let geo = dir.join("geo.cfm");
    coreflow(&[
        "fit",
        "--data",
        s(&x),
        "--rank",
        "6x6",
        "--flow-steps",
        "0",
        "-q",
        "--out",
        s(&geo),
    ])
    .ok();
    let out = dir.join("z.npy");
    coreflow(&["sample", "--model", s(&geo), "-n", "3", "--out", s(&out)])
        .bad_input(&["geo.cfm", "--flow-steps"]);
    coreflow(&[
        "score",
        "--model",
        s(&geo),
        "--data",
        s(&x),
        "--out",
        s(&out),
    ])
    .bad_input(&["geo.cfm", "--flow-steps"]);
    coreflow(&["sample", "--model", s(&model), "-n", "0", "--out", s(&out)]).bad_input(&["-n"]);
    coreflow(&[
        "sample",
        "--model",
        s(&model),
        "-n",
        "2",
        "--steps",
        "0",
        "--out",
        s(&out),
    ])
    .bad_input(&["--steps"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn ctrl_c_cancels_the_fit() {
    use std::time::{Duration, Instant};
    let dir = temp_dir("cancel");
    let data = waves(80, 16, 12, 7);
    let x = dir.join("x.npy");
    write_f64(&x, &data, [80, 16, 12], false);
    let model = dir.join("m.cfm");
    // A flow training far longer than the test: only Ctrl-C ends it.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coreflow"))
        .args([
            "fit",
            "--data",
            s(&x),
            "--rank",
            "6x6",
            "--core-model",
            "flow",
            "--flow-steps",
            "100000000",
            "--out",
            s(&model),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    // The shell's built-in kill: no separate binary needed.
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the fit did not stop within 20 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().last().map(str::trim),
        Some("cancelled"),
        "{stderr}"
    );
    assert!(!model.exists(), "a cancelled fit writes no model");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_with_train_reports_nn_accuracy_and_closest_record_ratio() {
    let dir = temp_dir("eval-train");
    let (nt, na) = (30, 12);
    let train = waves(nt, M, K, 21);
    let test = waves(na, M, K, 22);
    let fresh = waves(na, M, K, 23);
    let (t, a, f, c) = (
        dir.join("train.npy"),
        dir.join("test.npy"),
        dir.join("fresh.npy"),
        dir.join("copies.npy"),
    );
    write_f64(&t, &train, [nt, M, K], false);
    write_f64(&a, &test, [na, M, K], false);
    write_f64(&f, &fresh, [na, M, K], false);
    // Copies of training matrices, stored column-major.
    write_f64(&c, &train[..na * M * K], [na, M, K], true);
    let json = |gen: &std::path::Path| -> serde_json::Value {
        let e = coreflow(&[
            "eval",
            "--real",
            s(&a),
            "--generated",
            s(gen),
            "--train",
            s(&t),
            "--json",
        ]);
        serde_json::from_str(e.ok().trim()).unwrap()
    };
    let copies = json(&c);
    assert_eq!(copies["train_count"], nt);
    let dcr = copies["dcr_ratio"].as_f64().unwrap();
    assert!(dcr < 1e-6, "copies: {copies}");
    let nna = copies["nn_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&nna), "{copies}");
    let fresh = json(&f);
    let dcr = fresh["dcr_ratio"].as_f64().unwrap();
    assert!(dcr > 0.3, "fresh: {fresh}");

    // Without --train: the 1-NN accuracy but no closest-record ratio.
    let e = coreflow(&["eval", "--real", s(&a), "--generated", s(&f), "--json"]);
    let v: serde_json::Value = serde_json::from_str(e.ok().trim()).unwrap();
    assert!(
        v["nn_accuracy"].is_number() && v.get("dcr_ratio").is_none(),
        "{v}"
    );
    // The table names both.
    let table = coreflow(&[
        "eval",
        "--real",
        s(&a),
        "--generated",
        s(&f),
        "--train",
        s(&t),
    ]);
    let out = table.ok();
    assert!(
        out.contains("1-NN accuracy") && out.contains("closest-record ratio"),
        "{out}"
    );

    // A training set of another matrix size is named.
    let other = dir.join("other.npy");
    write_f64(&other, &waves(4, M, K - 1, 24), [4, M, K - 1], false);
    coreflow(&[
        "eval",
        "--real",
        s(&a),
        "--generated",
        s(&f),
        "--train",
        s(&other),
    ])
    .bad_input(&["other.npy", &format!("{M} x {}", K - 1)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn outputs_never_replace_inputs_or_existing_files() {
    let dir = temp_dir("outputs");
    let x = dir.join("x.npy");
    write_f64(&x, &waves(8, 8, 7, 5), [8, 8, 7], false);
    let data_bytes = std::fs::read(&x).unwrap();
    let fit = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "fit",
            "--data",
            s(&x),
            "--rank",
            "2",
            "--flow-steps",
            "0",
            "--core-model",
            "gaussian",
            "-q",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        coreflow(&args)
    };
    // The training data are never replaced by the model, not even with --force.
    fit(&x, &[]).bad_input(&["--out", "x.npy", "--data"]);
    fit(&x, &["--force"]).bad_input(&["--out", "x.npy", "--data"]);
    assert_eq!(std::fs::read(&x).unwrap(), data_bytes);

    let model = dir.join("m.cfm");
    fit(&model, &[]).ok();
    let model_bytes = std::fs::read(&model).unwrap();
    // An existing model is kept without --force, replaced with it.
    fit(&model, &[]).bad_input(&["m.cfm", "exists", "--force"]);
    fit(&model, &["--force"]).ok();

    let sample = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["sample", "--model", s(&model), "-n", "3", "--out", s(out)];
        args.extend_from_slice(extra);
        coreflow(&args)
    };
    sample(&model, &["--force"]).bad_input(&["--out", "m.cfm", "--model"]);
    assert_eq!(std::fs::read(&model).unwrap(), model_bytes);
    let out = dir.join("s.npy");
    std::fs::write(&out, b"keep me").unwrap();
    sample(&out, &[]).bad_input(&["s.npy", "exists", "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    sample(&out, &["--force"]).ok();
    assert_eq!(read_f64(&out).0, vec![3, 8, 7]);
    for (cmd, flag) in [("score", "--data"), ("encode", "--data")] {
        coreflow(&[
            cmd,
            "--model",
            s(&model),
            flag,
            s(&x),
            "--out",
            s(&x),
            "--force",
        ])
        .bad_input(&["--out", "x.npy", "--data"]);
    }
    coreflow(&[
        "complete",
        "--model",
        s(&model),
        "--data",
        s(&x),
        "--nan-missing",
        "--out",
        s(&x),
    ])
    .bad_input(&["--out", "x.npy", "--data"]);
    assert_eq!(std::fs::read(&x).unwrap(), data_bytes);

    // A failed command leaves no output and no temporary file behind.
    sample(&dir.join("never.npy"), &["--steps", "0"]).bad_input(&["--steps"]);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("tmp") && n != "never.npy"),
        "{names:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn progress_without_a_terminal_is_one_line_per_stage() {
    let dir = temp_dir("progress_lines");
    let x = dir.join("x.npy");
    write_f64(&x, &waves(N, M, K, 1), [N, M, K], false);
    let model = dir.join("m.cfm");
    let args = [
        "fit",
        "--data",
        s(&x),
        "--rank",
        "4x4",
        "--core-model",
        "flow",
        "--flow-steps",
        "40",
        "--hidden",
        "16",
        "--layers",
        "2",
        "--batch",
        "16",
        "--threads",
        "1",
        "--out",
        s(&model),
    ];
    // stderr is a pipe here, not a terminal.
    let run = coreflow(&args);
    run.ok();
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("subspace: "), "{lines:?}");
    assert!(
        lines[0].contains("/100 iterations, objective "),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("flow: "), "{lines:?}");
    assert!(lines[1].contains(" steps, loss "), "{lines:?}");
    let mut quiet = args.to_vec();
    quiet.extend(["--quiet", "--force"]);
    let run = coreflow(&quiet);
    run.ok();
    assert_eq!(run.stderr, "");
}

#[test]
fn fit_warns_when_the_core_outgrows_the_data() {
    let dir = temp_dir("small_data");
    let x = dir.join("x.npy");
    write_f64(&x, &waves(N, M, K, 2), [N, M, K], false);
    let model = dir.join("m.cfm");
    let run = coreflow(&[
        "fit",
        "--data",
        s(&x),
        "--rank",
        "8x8",
        "--flow-steps",
        "0",
        "--quiet",
        "--out",
        s(&model),
    ]);
    run.ok();
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("warning: the core has 64 dimensions (ranks 8 x 8)"),
        "{lines:?}"
    );
    assert!(lines[0].contains("only 40 training matrices"), "{lines:?}");
    // Ranks chosen by energy stay within N/2 = 20 dimensions.
    let run = coreflow(&[
        "fit",
        "--data",
        s(&x),
        "--flow-steps",
        "0",
        "--quiet",
        "--force",
        "--out",
        s(&model),
    ]);
    let out = run.ok().to_string();
    let ranks = out
        .split("ranks ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .expect("ranks in the summary");
    let (r, c) = ranks.split_once(" x ").unwrap();
    let (r, c): (usize, usize) = (r.trim().parse().unwrap(), c.trim().parse().unwrap());
    assert!(r * c <= 20, "{out}");
    assert!(!run.stderr.contains("core has"), "{}", run.stderr);
}

#[test]
fn absurd_sizes_and_options_exit_with_code_2() {
    let dir = temp_dir("absurd");
    let x = dir.join("x.npy");
    write_f64(&x, &waves(8, 8, 7, 5), [8, 8, 7], false);
    let model = dir.join("m.cfm");
    let fit = |extra: &[&str]| {
        let mut args = vec![
            "fit",
            "--data",
            s(&x),
            "--rank",
            "2",
            "-q",
            "--force",
            "--out",
            s(&model),
        ];
        args.extend_from_slice(extra);
        coreflow(&args)
    };
    // These aborted the process (exit 134) when the allocations failed.
    fit(&["--hidden", "1048576"]).bad_input(&["hidden", "maximum"]);
    fit(&["--max-iter", "4294967295"]).bad_input(&["max_iter", "maximum"]);
    fit(&[
        "--flow-steps",
        "0",
        "--core-model",
        "gaussian",
        "--threads",
        "99999999999",
    ])
    .ok();
    coreflow(&[
        "sample",
        "--model",
        s(&model),
        "--count",
        "1000000000000",
        "--out",
        s(&dir.join("big.npy")),
    ])
    .bad_input(&["-n 1000000000000"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn impute_draws_completions() {
    let dir = temp_dir("impute");
    let data = waves(N, M, K, 5);
    let x = dir.join("x.npy");
    write_f64(&x, &data, [N, M, K], false);
    let model = dir.join("model.cfm");
    coreflow(&[
        "fit",
        "--data",
        s(&x),
        "--rank",
        "6",
        "--core-model",
        "gaussian",
        "-q",
        "--out",
        s(&model),
    ])
    .ok();
    let y = waves(N + 3, M, K, 5).split_off(N * M * K);
    let mask = coreflow::datasets::mcar_mask(3, M, K, 0.3, 6).unwrap();
    let (yp, mp) = (dir.join("y.npy"), dir.join("m.npy"));
    write_f64(&yp, &y, [3, M, K], false);
    write_mask(&mp, &mask, [3, M, K], true, "|b1");
    let (d1, d2, dn) = (dir.join("d1.npy"), dir.join("d2.npy"), dir.join("dn.npy"));
    let run = |out: &std::path::Path, data: &std::path::Path, mask: bool, threads: &str| {
        let mut args = vec![
            "impute",
            "--model",
            s(&model),
            "--data",
            s(data),
            "--draws",
            "7",
            "--seed",
            "4",
            "--threads",
            threads,
            "--out",
            s(out),
        ];
        if mask {
            args.extend(["--mask", s(&mp)]);
        }
        coreflow(&args)
    };
    assert!(run(&d1, &yp, true, "1")
        .ok()
        .contains("drew 7 completions of 3 matrices"));
    run(&d2, &yp, true, "2").ok();
    let (shape, a) = read_f64(&d1);
    assert_eq!(shape, vec![7, 3, M, K]);
    // The same file whatever the thread count.
    assert_eq!(a, read_f64(&d2).1);
    // Observed entries copied, missing ones drawn (they differ between draws).
    let mn = M * K;
    for j in 0..7 {
        for i in 0..3 {
            for e in 0..mn {
                let v = a[(j * 3 + i) * mn + e];
                if mask[i * mn + e] != 0 {
                    assert_eq!(v.to_bits(), y[i * mn + e].to_bits());
                } else {
                    assert!(v.is_finite());
                }
            }
        }
    }
    let e = (0..3 * mn).find(|&e| mask[e] == 0).unwrap();
    assert_ne!(a[e].to_bits(), a[3 * mn + e].to_bits());
    // NaN marks the missing entries without a mask: the same draws.
    let mut yn = y.clone();
    for (v, m) in yn.iter_mut().zip(&mask) {
        if *m == 0 {
            *v = f64::NAN;
        }
    }
    let ynp = dir.join("yn.npy");
    write_f64(&ynp, &yn, [3, M, K], false);
    run(&dn, &ynp, false, "1").ok();
    assert_eq!(a, read_f64(&dn).1);
    // --level: fitted is the default; observed reports the multiplier,
    // copies the observed entries and gives the same file for any thread
    // count; an unknown level is a usage error naming the option.
    let run_level = |out: &std::path::Path, threads: &str, level: &str| {
        coreflow(&[
            "impute",
            "--model",
            s(&model),
            "--data",
            s(&yp),
            "--mask",
            s(&mp),
            "--draws",
            "7",
            "--seed",
            "4",
            "--threads",
            threads,
            "--level",
            level,
            "--out",
            s(out),
        ])
    };
    let (lf, lo1, lo2) = (dir.join("lf.npy"), dir.join("lo1.npy"), dir.join("lo2.npy"));
    run_level(&lf, "1", "fitted").ok();
    assert_eq!(a, read_f64(&lf).1);
    assert!(run_level(&lo1, "1", "observed")
        .ok()
        .contains("multiplier of sigma^2"));
    run_level(&lo2, "2", "observed").ok();
    let b = read_f64(&lo1).1;
    assert_eq!(b, read_f64(&lo2).1);
    for (k, v) in b.iter().enumerate() {
        let e = k % (3 * mn);
        if mask[e] != 0 {
            assert_eq!(v.to_bits(), y[e].to_bits());
        } else {
            assert!(v.is_finite());
        }
    }
    let bad = run_level(&dir.join("lx.npy"), "1", "training");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--level"), "{}", bad.stderr);
    // An existing output is refused without --force.
    run(&d1, &yp, true, "1").bad_input(&["d1.npy", "--force"]);
    coreflow(&[
        "impute",
        "--model",
        s(&model),
        "--data",
        s(&yp),
        "--draws",
        "0",
        "--out",
        s(&dir.join("d0.npy")),
    ])
    .bad_input(&["--draws"]);
    let _ = std::fs::remove_dir_all(&dir);
}
