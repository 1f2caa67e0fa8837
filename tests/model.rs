//! The fitted model through its public Rust API: fit, encode, decode.

mod common;

use common::{planted, subspace_distance};
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{ErrorKind, FitOptions, MatrixBatch, MatrixBatchMut, Model};
use faer::Mat;

fn fit(data: &[f64], n: usize, m: usize, k: usize, r: usize, s: usize) -> Model {
    let batch = MatrixBatch::from_c_order(data, n, m, k).unwrap();
    let opts = FitOptions {
        rank_rows: r,
        rank_cols: s,
        threads: 1,
        ..FitOptions::default().geometry_only()
    };
    Model::fit(&batch, &opts).unwrap()
}

#[test]
fn decode_of_encode_is_the_projection() {
    let p = planted(40, 30, 20, 4, 3, 0.05, 11);
    let model = fit(&p.data, p.count, p.rows, p.cols, 4, 3);
    let batch = MatrixBatch::from_c_order(&p.data, p.count, p.rows, p.cols).unwrap();
    let d = model.core_dim();
    let mut cores = vec![0.0; p.count * d];
    let mut buf = MemBuffer::new(
        model
            .encode_scratch(p.count)
            .or(model.decode_scratch(p.count)),
    );
    model
        .encode(&batch, &mut cores, MemStack::new(&mut buf))
        .unwrap();
    let mut out = vec![0.0; p.data.len()];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, p.count, p.rows, p.cols).unwrap();
    model
        .decode(&cores, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    let (u, v) = (model.u(), model.v());
    for i in 0..p.count {
        let x = batch.sample(i);
        let proj = u * (u.transpose() * x * v) * v.transpose();
        let err = (ob.sample(i) - &proj).norm_l2() / proj.norm_l2();
        assert!(err < 1e-13, "sample {i}: {err}");
    }
}

#[test]
fn matrices_inside_the_span_come_back_exactly() {
    let p = planted(30, 25, 18, 3, 2, 0.0, 12);
    let model = fit(&p.data, p.count, p.rows, p.cols, 3, 2);
    assert!(subspace_distance(model.u(), p.u.as_ref()) < 1e-8);
    let batch = MatrixBatch::from_c_order(&p.data, p.count, p.rows, p.cols).unwrap();
    let mut cores = vec![0.0; p.count * model.core_dim()];
    let mut buf = MemBuffer::new(
        model
            .encode_scratch(p.count)
            .or(model.decode_scratch(p.count)),
    );
    model
        .encode(&batch, &mut cores, MemStack::new(&mut buf))
        .unwrap();
    let mut out = vec![0.0; p.data.len()];
    let mut ob = MatrixBatchMut::from_col_major(&mut out, p.rows, p.cols, p.count).unwrap();
    model
        .decode(&cores, &mut ob, MemStack::new(&mut buf))
        .unwrap();
    for i in 0..p.count {
        let x = batch.sample(i);
        let err = (ob.sample(i) - x).norm_l2() / x.norm_l2();
        assert!(err < 1e-12, "sample {i}: {err}");
    }
}

#[test]
fn centered_model_adds_the_mean_back() {
    let mut p = planted(30, 20, 16, 3, 3, 0.0, 13);
    for (k, x) in p.data.iter_mut().enumerate() {
        *x += 5.0 + ((k % (20 * 16)) as f64).sin();
    }
    let batch = MatrixBatch::from_c_order(&p.data, p.count, p.rows, p.cols).unwrap();
    let opts = FitOptions {
        rank_rows: 3,
        rank_cols: 3,
        center: true,
        threads: 1,
        ..FitOptions::default().geometry_only()
    };
    let model = Model::fit(&batch, &opts).unwrap();
    let mean = model.mean().expect("centered model has a mean");
    let mut expect = Mat::<f64>::zeros(p.rows, p.cols);
    for i in 0..p.count {
        expect += batch.sample(i);
    }
    expect *= faer::Scale(1.0 / p.count as f64);
    assert!((mean - &expect).norm_max() < 1e-12);
    // The mean of the cores of the training set is zero.
    let mut cores = vec![0.0; p.count * model.core_dim()];
    let mut buf = MemBuffer::new(model.encode_scratch(p.count));
    model
        .encode(&batch, &mut cores, MemStack::new(&mut buf))
        .unwrap();
    for k in 0..model.core_dim() {
        let m: f64 = (0..p.count)
            .map(|i| cores[i * model.core_dim() + k])
            .sum::<f64>()
            / p.count as f64;
        assert!(m.abs() < 1e-10, "core mean {m}");
    }
}

#[test]
fn encode_and_decode_check_their_arguments() {
    let p = planted(10, 12, 9, 2, 2, 0.0, 14);
    let model = fit(&p.data, p.count, p.rows, p.cols, 2, 2);
    let batch = MatrixBatch::from_c_order(&p.data, p.count, p.rows, p.cols).unwrap();
    let mut cores = vec![0.0; p.count * 4];
    let mut tiny = MemBuffer::new(coreflow::numerics::StackReq::new::<u8>(8));
    let e = model
        .encode(&batch, &mut cores, MemStack::new(&mut tiny))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Workspace);
    let mut buf = MemBuffer::new(model.encode_scratch(p.count));
    let e = model
        .encode(&batch, &mut cores[1..], MemStack::new(&mut buf))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    assert!(e.message().starts_with("cores"));
    let other = MatrixBatch::from_c_order(&p.data[..9 * 12 * 9], 9, 9, 12).unwrap();
    let e = model
        .encode(&other, &mut cores[..36], MemStack::new(&mut buf))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shape);
    let mut bad = cores.clone();
    bad[3] = f64::NAN;
    let mut out = vec![0.0; p.data.len()];
    let mut ob = MatrixBatchMut::from_c_order(&mut out, p.count, p.rows, p.cols).unwrap();
    let e = model
        .decode(&bad, &mut ob, MemStack::new(&mut buf))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NonFinite);
    assert!(out.iter().all(|&x| x == 0.0), "output written on failure");
}

#[test]
fn c_order_and_column_major_batches_give_the_same_model() {
    let p = planted(60, 24, 18, 3, 2, 1e-3, 15);
    let mut f = vec![0.0; p.data.len()];
    for i in 0..p.count {
        for a in 0..p.rows {
            for b in 0..p.cols {
                f[a + p.rows * (b + p.cols * i)] = p.data[(i * p.rows + a) * p.cols + b];
            }
        }
    }
    let opts = FitOptions {
        rank_rows: 3,
        rank_cols: 2,
        threads: 1,
        ..FitOptions::default().geometry_only()
    };
    let bc = MatrixBatch::from_c_order(&p.data, p.count, p.rows, p.cols).unwrap();
    let bf = MatrixBatch::from_col_major(&f, p.rows, p.cols, p.count).unwrap();
    let mc = Model::fit(&bc, &opts).unwrap();
    let mf = Model::fit(&bf, &opts).unwrap();
    assert!(
        (mc.u() - mf.u()).norm_max() < 1e-10,
        "U differs by {}",
        (mc.u() - mf.u()).norm_max()
    );
    assert!(
        (mc.v() - mf.v()).norm_max() < 1e-10,
        "V differs by {}",
        (mc.v() - mf.v()).norm_max()
    );
}

#[test]
fn warnings_name_a_core_larger_than_the_training_set() {
    let (n, m, k) = (28, 28, 24);
    // Deterministic, full-rank data (a scrambled sequence).
    let data: Vec<f64> = (0..n * m * k)
        .map(|i| ((i as f64 * 0.618_034).fract() - 0.5) * (1.0 + (i % 7) as f64))
        .collect();
    let big = fit(&data, n, m, k, 20, 6);
    let opts = FitOptions {
        rank_rows: 20,
        rank_cols: 6,
        ..FitOptions::default()
    };
    let w = big.info().warnings(&opts);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("120 dimensions"), "{}", w[0]);
    assert!(w[0].contains("only 28 training matrices"), "{}", w[0]);
    let small = fit(&data, n, m, k, 3, 2);
    let opts = FitOptions {
        rank_rows: 3,
        rank_cols: 2,
        ..FitOptions::default()
    };
    assert_eq!(small.info().warnings(&opts), Vec::<String>::new());
    // Ranks chosen by energy on this set stop at the cap and say so.
    let chosen = Model::fit(
        &MatrixBatch::from_c_order(&data, n, m, k).unwrap(),
        &FitOptions {
            threads: 1,
            ..FitOptions::default().geometry_only()
        },
    )
    .unwrap();
    let i = chosen.info();
    assert!(i.core_dim <= 14, "{} x {}", i.rank_rows, i.rank_cols);
    let w = i.warnings(&FitOptions::default());
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("below the requested 0.99"), "{}", w[0]);
}
