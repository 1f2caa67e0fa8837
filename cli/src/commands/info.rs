//! `coreflow info`: a model file's summary.

use crate::error::CliError;
use crate::input::load_model;
use clap::Args;
use coreflow::flow::CoreModelKind;
use coreflow::ModelInfo;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Model file written by `coreflow fit`.
    #[arg(value_name = "model.cfm")]
    pub model: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// (key, value) pairs of the model summary, in display order.
fn fields(m: &coreflow::Model) -> Vec<(&'static str, Value)> {
    let i = m.info();
    // JSON has no NaN: quantities that do not apply become null.
    let num = |x: f64| {
        if x.is_finite() {
            Value::from(x)
        } else {
            Value::Null
        }
    };
    vec![
        ("rows", i.rows.into()),
        ("cols", i.cols.into()),
        ("rank_rows", i.rank_rows.into()),
        ("rank_cols", i.rank_cols.into()),
        ("core_dim", i.core_dim.into()),
        ("centered", i.centered.into()),
        ("train_count", i.train_count.into()),
        ("explained_energy", num(i.explained_energy)),
        ("noise_variance", num(i.noise_variance)),
        ("masked", i.masked.into()),
        ("subspace_iterations", i.subspace_iterations.into()),
        ("subspace_converged", i.subspace_converged.into()),
        ("subspace_objective", num(i.subspace_objective)),
        ("completion_iterations", i.completion_iterations.into()),
        ("completion_converged", i.completion_converged.into()),
        ("completion_objective", num(i.completion_objective)),
        (
            "core_model",
            match i.core_model {
                Some(CoreModelKind::Flow) => "flow".into(),
                Some(CoreModelKind::Gaussian) => "gaussian".into(),
                None => Value::Null,
            },
        ),
        ("has_flow", i.has_flow.into()),
        ("flow_dim", i.flow_dim.into()),
        ("flow_block", i.flow_block.into()),
        ("flow_hidden", i.flow_hidden.into()),
        ("flow_layers", i.flow_layers.into()),
        ("final_loss", num(i.final_loss)),
        ("heldout_loglik_flow", num(i.heldout_loglik_flow)),
        ("heldout_loglik_gaussian", num(i.heldout_loglik_gaussian)),
    ]
}

/// One line about the fitted core model, for `fit` and `demo`.
pub fn core_model_summary(i: &ModelInfo, kind: CoreModelKind) -> String {
    let mut s = match kind {
        CoreModelKind::Flow => format!(
            "flow on the {} leading principal components of the {} core coordinates (hidden {} x {} layers), final loss {:.4}",
            i.flow_dim, i.core_dim, i.flow_hidden, i.flow_layers, i.final_loss
        ),
        CoreModelKind::Gaussian => format!(
            "full-covariance Gaussian on all {} core coordinates{}",
            i.core_dim,
            if i.flow_block > 0 {
                format!(
                    " (a flow on {} principal components needs at least {} training matrices)",
                    i.flow_block,
                    3 * i.flow_block
                )
            } else {
                String::new()
            }
        ),
    };
    if i.heldout_loglik_flow.is_finite() || i.heldout_loglik_gaussian.is_finite() {
        let f = |x: f64| {
            if x.is_finite() {
                format!("{x:.3}")
            } else {
                "-".into()
            }
        };
        s += &format!(
            "; held-out log-likelihood: flow {}, Gaussian {}",
            f(i.heldout_loglik_flow),
            f(i.heldout_loglik_gaussian)
        );
    }
    s
}

pub fn run(a: InfoArgs) -> Result<(), CliError> {
    let model = load_model(&a.model)?;
    let f = fields(&model);
    if a.json {
        let obj: serde_json::Map<String, Value> =
            f.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        out!("{}", Value::Object(obj));
    } else {
        out!("{}", a.model.display());
        for (k, v) in f {
            let v = match v {
                Value::Null => "-".to_string(),
                Value::Number(n) if n.is_f64() => format!("{:.6e}", n.as_f64().unwrap_or(f64::NAN)),
                Value::String(t) => t,
                other => other.to_string(),
            };
            out!("  {k:<24} {v}");
        }
    }
    Ok(())
}
