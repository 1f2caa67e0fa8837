//! `coreflow info`: a model file's summary.

use crate::error::CliError;
use crate::input::load_model;
use clap::Args;
use coreflow::core_model::{CoreModelChoice, CoreModelKind};
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
    // JSON has no NaN or infinity: quantities that do not apply become
    // null, infinities the strings "inf" and "-inf".
    let num = |x: f64| {
        if x.is_finite() {
            Value::from(x)
        } else if x.is_infinite() {
            Value::from(loglik(x))
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
        ("noise_dof", num(i.noise_dof)),
        ("noise_tail_scale", num(i.noise_tail_scale)),
        ("noise_profile_spread", num(i.noise_profile_spread)),
        ("noise_bound", num(i.noise_bound)),
        ("data_min", num(i.data_min)),
        ("data_max", num(i.data_max)),
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
                Some(CoreModelKind::Mixture) => "mixture".into(),
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
        ("heldout_mmd_gaussian", num(i.heldout_mmd_gaussian)),
        ("heldout_mmd_flow", num(i.heldout_mmd_flow)),
        ("heldout_loglik_mixture", num(i.heldout_loglik_mixture)),
        ("heldout_mmd_mixture", num(i.heldout_mmd_mixture)),
        ("mixture_block", i.mixture_block.into()),
        ("mixture_components", i.mixture_components.into()),
        ("flow_train_steps", i.flow_train_steps.into()),
        (
            "core_model_requested",
            match m.core_model().map(|c| c.info().requested) {
                Some(CoreModelChoice::Auto) => "auto".into(),
                Some(CoreModelChoice::Flow) => "flow".into(),
                Some(CoreModelChoice::Gaussian) => "gaussian".into(),
                Some(CoreModelChoice::Mixture) => "mixture".into(),
                None => Value::Null,
            },
        ),
        ("core_model_reason", core_model_reason(m).into()),
    ]
}

/// A log-likelihood for people: `-inf` for minus infinity, `-` when it was
/// not computed (NaN).
fn loglik(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{x:.3}")
    }
}

/// Why the core model is of its kind: forced by the caller, or AUTO's
/// choice with the held-out scores of every candidate.
pub fn core_model_reason(m: &coreflow::Model) -> String {
    let Some(core) = m.core_model() else {
        return "geometry only (no core model)".into();
    };
    let ci = core.info();
    let mut scores = format!(
        "on {} held-out cores, log-likelihood per core: Gaussian {}, mixture {}, flow {}",
        ci.holdout_count,
        loglik(ci.heldout_loglik_gaussian),
        loglik(ci.heldout_loglik_mixture),
        loglik(ci.heldout_loglik_flow)
    );
    if !ci.heldout_mmd_gaussian.is_nan() {
        scores += &format!(
            "; MMD^2 of draws in the leading block (lower is better): Gaussian {:.3e}, mixture {:.3e}, flow {:.3e}",
            ci.heldout_mmd_gaussian, ci.heldout_mmd_mixture, ci.heldout_mmd_flow
        );
    }
    let too_small = format!(
        "a flow on {} principal components needs at least {} training matrices",
        ci.flow_block,
        3 * ci.flow_block
    );
    let name = |k: CoreModelKind| match k {
        CoreModelKind::Flow => "the flow",
        CoreModelKind::Gaussian => "the Gaussian",
        CoreModelKind::Mixture => "the Gaussian mixture",
    };
    match (ci.requested, ci.kind) {
        (CoreModelChoice::Auto, kind) if ci.holdout_count == 0 => match kind {
            CoreModelKind::Flow => "auto without a hold-out: enough matrices for the flow".into(),
            CoreModelKind::Mixture => {
                format!(
                    "auto without a hold-out: {too_small}; BIC prefers a mixture to the Gaussian"
                )
            }
            CoreModelKind::Gaussian => format!("auto without a hold-out: {too_small}"),
        },
        (CoreModelChoice::Auto, CoreModelKind::Gaussian)
            if ci.heldout_loglik_flow.is_nan() && ci.heldout_loglik_mixture.is_nan() =>
        {
            format!("auto chose the Gaussian: {too_small}, and BIC prefers no mixture")
        }
        (CoreModelChoice::Auto, CoreModelKind::Gaussian) => {
            format!("auto chose the Gaussian, no other kind's held-out log-likelihood clearly higher ({scores}); refitted on all matrices")
        }
        (CoreModelChoice::Auto, kind) => {
            format!("auto chose {}, its held-out log-likelihood clearly higher than the simpler kinds' ({scores}); refitted on all matrices", name(kind))
        }
        _ => {
            if ci.holdout_count > 0 {
                format!("forced by the caller; {scores}")
            } else {
                "forced by the caller".into()
            }
        }
    }
}

/// One line about the fitted core model and why it was chosen, for `fit`
/// and `demo`.
pub fn core_model_summary(m: &coreflow::Model, kind: CoreModelKind) -> String {
    let i = m.info();
    let what = match kind {
        CoreModelKind::Flow => format!(
            "flow on the {} leading principal components of the {} core coordinates (hidden {} x {} layers), final loss {:.4}",
            i.flow_dim, i.core_dim, i.flow_hidden, i.flow_layers, i.final_loss
        ),
        CoreModelKind::Gaussian => format!(
            "Gaussian on all {} core coordinates (covariance shrunk when there are fewer than {} matrices per coordinate)",
            i.core_dim,
            coreflow::core_model::SHRINK_BELOW_SAMPLES_PER_DIM
        ),
        CoreModelKind::Mixture => format!(
            "Gaussian mixture of {} components on the {} leading principal components of the {} core coordinates, Gaussian on the rest",
            i.mixture_components, i.mixture_block, i.core_dim
        ),
    };
    format!("{what}; {}", core_model_reason(m))
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
