//! The model file: exact round trips and robust loading of damaged data.

use coreflow::datasets::{mcar_mask, planted_low_rank, PlantedSpec};
use coreflow::numerics::{MemBuffer, MemStack};
use coreflow::{ErrorKind, FitOptions, MatrixBatch, MatrixBatchMut, Model};

fn fitted(center: bool, masked: bool) -> (Model, Vec<f64>, Vec<u8>) {
    let mut spec = PlantedSpec::new(40, 40, 30, 3, 3, 51);
    spec.noise = 1e-2;
    let p = planted_low_rank(&spec).unwrap();
    let mask = mcar_mask(40, 40, 30, if masked { 0.3 } else { 0.0 }, 52).unwrap();
    let batch = MatrixBatch::from_c_order(&p.data.data, 40, 40, 30).unwrap();
    let batch = if masked {
        batch.with_mask(&mask).unwrap()
    } else {
        batch
    };
    let opts = FitOptions {
        rank_rows: 3,
        rank_cols: 3,
        center,
        threads: 1,
        ..FitOptions::default().geometry_only()
    };
    (Model::fit(&batch, &opts).unwrap(), p.data.data, mask)
}

/// Every output of the model on fixed inputs, as bits.
fn outputs(model: &Model, data: &[f64], mask: &[u8]) -> Vec<u64> {
    let (n, m, k) = (10, 40, 30);
    let batch = MatrixBatch::from_c_order(&data[..n * m * k], n, m, k).unwrap();
    let mut buf = MemBuffer::new(
        model
            .encode_scratch(n)
            .or(model.decode_scratch(n))
            .or(model.complete_scratch(n)),
    );
    let mut cores = vec![0.0; n * model.core_dim()];
    model
        .encode(&batch, &mut cores, MemStack::new(&mut buf))
        .unwrap();
    let mut dec = vec![0.0; n * m * k];
    model
        .decode(
            &cores,
            &mut MatrixBatchMut::from_c_order(&mut dec, n, m, k).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    let partial = batch.with_mask(&mask[..n * m * k]).unwrap();
    let mut comp = vec![0.0; n * m * k];
    model
        .complete(
            &partial,
            &mut MatrixBatchMut::from_c_order(&mut comp, n, m, k).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    cores
        .iter()
        .chain(&dec)
        .chain(&comp)
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn save_and_load_reproduce_every_output_bitwise() {
    for (center, masked) in [(false, false), (true, false), (true, true)] {
        let (model, data, _) = fitted(center, masked);
        let mask = mcar_mask(40, 40, 30, 0.3, 53).unwrap();
        let expect = outputs(&model, &data, &mask);
        let bytes = model.to_bytes();
        let back = Model::from_bytes(&bytes).unwrap();
        // Debug text: NaN fields (no flow, no missing data) compare equal there.
        assert_eq!(format!("{:?}", back.info()), format!("{:?}", model.info()));
        assert_eq!(outputs(&back, &data, &mask), expect);
        let path = std::env::temp_dir().join(format!(
            "coreflow-persist-{}-{center}-{masked}.cfm",
            std::process::id()
        ));
        model.save(&path).unwrap();
        let loaded = Model::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(outputs(&loaded, &data, &mask), expect);
        assert_eq!(loaded.to_bytes(), bytes, "re-serialization differs");
    }
}

fn rejected(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Format | ErrorKind::Version)
}

#[test]
fn every_bit_flip_and_truncation_is_rejected() {
    let (model, _, _) = fitted(true, false);
    let bytes = model.to_bytes();
    assert!(
        bytes.len() > 4096,
        "the model file should exceed 4 KiB for this test: {}",
        bytes.len()
    );
    let mut damaged = bytes.clone();
    // Every bit of the first 4 KiB, then every 97th bit of the rest.
    let bits = (0..4096 * 8).chain((4096 * 8..bytes.len() * 8).step_by(97));
    for bit in bits {
        damaged[bit / 8] ^= 1 << (bit % 8);
        match Model::from_bytes(&damaged) {
            Err(e) => assert!(rejected(e.kind()), "bit {bit}: {e}"),
            // A flip the checksum cannot see must still give a valid model.
            Ok(m) => assert_eq!(m.info().rows, 40, "bit {bit}"),
        }
        damaged[bit / 8] ^= 1 << (bit % 8);
    }
    for len in 0..4096.min(bytes.len()) {
        let err = Model::from_bytes(&bytes[..len]).unwrap_err();
        assert!(rejected(err.kind()), "length {len}: {err}");
    }
}

#[test]
fn a_future_version_is_refused_with_a_version_error() {
    let (model, _, _) = fitted(false, false);
    let mut bytes = model.to_bytes();
    bytes[8..12].copy_from_slice(&(coreflow::model::FORMAT_VERSION + 1).to_le_bytes());
    let err = Model::from_bytes(&bytes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Version);
    assert!(err.message().contains("version"));
    // Version 1 (dense core prior and coordinate flow blocks) is no longer
    // read.
    assert_eq!(coreflow::model::FORMAT_VERSION, 4);
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let err = Model::from_bytes(&bytes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Version);
    assert!(err.message().contains("version 1"), "{}", err.message());
    let err = Model::load("/nonexistent/dir/model.cfm").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().starts_with("path"));
}

/// Samples and log-densities of a model with a core model, as bits.
fn generative_outputs(model: &Model, data: &[f64]) -> Vec<u64> {
    use coreflow::flow::SolverOptions;
    let (n, m, k) = (12, 40, 30);
    let solver = SolverOptions::default();
    let mut buf = MemBuffer::new(
        model
            .sample_scratch(n, &solver)
            .or(model.log_prob_scratch(n, &solver)),
    );
    let mut draws = vec![0.0; n * m * k];
    model
        .sample(
            &solver,
            9,
            3,
            &mut MatrixBatchMut::from_c_order(&mut draws, n, m, k).unwrap(),
            MemStack::new(&mut buf),
        )
        .unwrap();
    let batch = MatrixBatch::from_c_order(&data[..n * m * k], n, m, k).unwrap();
    let mut lp = vec![0.0; n];
    let mut res = vec![0.0; n];
    model
        .log_prob(
            &solver,
            &batch,
            &mut lp,
            Some(&mut res),
            MemStack::new(&mut buf),
        )
        .unwrap();
    draws
        .iter()
        .chain(&lp)
        .chain(&res)
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn every_core_model_kind_survives_save_and_load_bitwise() {
    use coreflow::core_model::{CoreModelChoice, CoreModelKind, FlowOptions};
    let mut spec = PlantedSpec::new(120, 40, 30, 3, 3, 61);
    spec.noise = 1e-2;
    let p = planted_low_rank(&spec).unwrap();
    let batch = MatrixBatch::from_c_order(&p.data.data, 120, 40, 30).unwrap();
    for (choice, kind) in [
        (CoreModelChoice::Gaussian, CoreModelKind::Gaussian),
        (CoreModelChoice::Mixture, CoreModelKind::Mixture),
        (CoreModelChoice::Flow, CoreModelKind::Flow),
    ] {
        let opts = FitOptions {
            rank_rows: 3,
            rank_cols: 3,
            threads: 1,
            flow: FlowOptions {
                core_model: choice,
                steps: 40,
                hidden: 16,
                layers: 1,
                moment_samples: 100,
                ..FlowOptions::default()
            },
            ..FitOptions::default()
        };
        let model = Model::fit(&batch, &opts).unwrap();
        assert_eq!(model.info().core_model, Some(kind));
        let expect = generative_outputs(&model, &p.data.data);
        let bytes = model.to_bytes();
        let back = Model::from_bytes(&bytes).unwrap();
        assert_eq!(format!("{:?}", back.info()), format!("{:?}", model.info()));
        assert_eq!(generative_outputs(&back, &p.data.data), expect, "{kind:?}");
        assert_eq!(back.to_bytes(), bytes, "{kind:?}: re-serialization differs");
    }
}
