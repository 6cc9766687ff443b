//! The model variant of a run ([`Variant`]: `--lowrank-act`, `--rank`, `--only-lr-act`) on the command
//! line and in `state.json`, and the checks a run makes of it.
use super::{Options, Result, TrainError};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use cola_nn::{LowRankActivation, Variant};
use cola_tensor::Device;
use serde::{Deserialize, Serialize};

/// The clap parser of `--lowrank-act`: one of [`LowRankActivation::ALL`]'s names.
pub(super) fn activation_parser() -> impl TypedValueParser<Value = LowRankActivation> {
    PossibleValuesParser::new(LowRankActivation::ALL.map(LowRankActivation::name))
        .try_map(|name| name.parse::<LowRankActivation>())
}

/// The variant `options` ask for.
pub fn of_options(options: &Options) -> Variant {
    Variant { lowrank_act: options.lowrank_act, rank: options.rank, only_lr_act: options.only_lr_act }
}

/// The variant's checks that depend on the device: gelu and relu have CPU kernels only.
pub(super) fn check_device(variant: &Variant, device: Device) -> Result<()> {
    match variant.lowrank_act {
        Some(act @ (LowRankActivation::Gelu | LowRankActivation::Relu)) if device != Device::Cpu => {
            Err(TrainError::Config(format!(
                "--lowrank-act {act} has a CPU kernel only; on a GPU use silu or identity, or train with \
                 --device cpu"
            )))
        }
        _ => Ok(()),
    }
}

/// On resume, the error for a variant flag that differs from the checkpoint's (the weights' shapes and
/// the model's maths are the run's identity); `None` when every given flag matches.
pub(super) fn resume_conflict(given: &Variant, saved: &Variant) -> Option<String> {
    let differs = |g: Option<String>, s: Option<String>| g.is_some() && g != s;
    let fields = [
        ("--lowrank-act", given.lowrank_act.map(|a| a.to_string()), saved.lowrank_act.map(|a| a.to_string())),
        ("--rank", given.rank.map(|r| r.to_string()), saved.rank.map(|r| r.to_string())),
        ("--only-lr-act", given.only_lr_act.map(|b| b.to_string()), saved.only_lr_act.map(|b| b.to_string())),
    ];
    let (flag, g, s) = fields.into_iter().find(|(_, g, s)| differs(g.clone(), s.clone()))?;
    Some(format!(
        "{flag} {} differs from the checkpoint's {} (its model variant is part of the run); drop {flag}, or \
         start a new run without --resume",
        g.unwrap_or_default(),
        s.unwrap_or_else(|| "preset default".into())
    ))
}

/// The `state.json` form of a [`Variant`]: the activation by name, absent fields for the preset's
/// choices (files written before variants existed have none, meaning the preset's model).
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lowrank_act: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rank: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    only_lr_act: Option<bool>,
}

pub(crate) fn serialize<S: serde::Serializer>(
    variant: &Variant,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    Record {
        lowrank_act: variant.lowrank_act.map(|a| a.name().to_string()),
        rank: variant.rank,
        only_lr_act: variant.only_lr_act,
    }
    .serialize(serializer)
}

pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Variant, D::Error> {
    let record = Record::deserialize(deserializer)?;
    let lowrank_act = match record.lowrank_act {
        Some(name) => Some(name.parse::<LowRankActivation>().map_err(serde::de::Error::custom)?),
        None => None,
    };
    Ok(Variant { lowrank_act, rank: record.rank, only_lr_act: record.only_lr_act })
}
