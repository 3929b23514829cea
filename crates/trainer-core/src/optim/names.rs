//! The optimizer setting's text: names, the aliases of AdamW, the refused 8-bit optimizers, and the
//! Trainer's `optim_args` string.

use crate::error::{Error, Result};
use crate::optim::{AdafactorParams, AdagradParams, Optimizer, SgdParams};

/// The names [`Optimizer::from_name`] accepts for its four optimizers.
pub const OPTIMIZER_NAMES: [&str; 4] = ["adamw", "sgd", "adagrad", "adafactor"];

/// The Hugging Face Trainer's names that are the same AdamW maths here.
pub const ADAMW_ALIASES: [&str; 6] = [
    "adamw_hf",
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_xla",
    "adamw_apex_fused",
    "adamw_anyprecision",
];

const ALIAS_NOTE: &str = "an alias of `adamw` (torch's AdamW maths): the implementation it names (Hugging Face's \
     own AdamW, a fused, XLA or apex kernel, or any-precision state) only changes how the same update is \
     computed on other hardware, and this trainer keeps the optimizer state in f32 anyway";

const FIELD: &str = "optimizer";

impl Optimizer {
    /// The optimizer a setting names, with its Trainer defaults, and a note to show the user when the name
    /// is an alias of `adamw` ([`ADAMW_ALIASES`]). Case and surrounding spaces are ignored. 8-bit optimizers
    /// and unknown names are an [`Error::Setting`] for field `optimizer` saying why and what to use.
    pub fn from_name(name: &str) -> Result<(Optimizer, Option<&'static str>)> {
        let key = name.trim().to_ascii_lowercase();
        Ok(match key.as_str() {
            "adamw" => (Optimizer::AdamW, None),
            "sgd" => (Optimizer::Sgd(SgdParams::default()), None),
            "adagrad" => (Optimizer::Adagrad(AdagradParams::default()), None),
            "adafactor" => (Optimizer::Adafactor(AdafactorParams::default()), None),
            k if ADAMW_ALIASES.contains(&k) => (Optimizer::AdamW, Some(ALIAS_NOTE)),
            k if k.contains("8bit") || k.contains("4bit") || k.starts_with("paged_") => {
                return Err(Error::setting(
                    FIELD,
                    format!(
                        "`{}` keeps the optimizer state quantized (bitsandbytes): a LoRA's optimizer state is \
                         small (a few MB even at rank 64), so quantized state saves almost nothing here and \
                         changes the results; use `adamw` (the same maths with f32 state)",
                        name.trim()
                    ),
                ))
            }
            _ => {
                return Err(Error::setting(
                    FIELD,
                    format!(
                        "`{}` is not an optimizer this trainer has; use one of {} (or an alias of adamw: {})",
                        name.trim(),
                        OPTIMIZER_NAMES.join(", "),
                        ADAMW_ALIASES.join(", ")
                    ),
                ))
            }
        })
    }

    /// The optimizer's name (one of [`OPTIMIZER_NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::AdamW => "adamw",
            Optimizer::Sgd(_) => "sgd",
            Optimizer::Adagrad(_) => "adagrad",
            Optimizer::Adafactor(_) => "adafactor",
        }
    }

    /// Applies the Trainer's `optim_args` string (`"momentum=0.9,nesterov=true"`; empty: no change) and
    /// checks the result ([`Optimizer::validate`]). Keys: SGD `momentum`, `dampening`, `nesterov`; Adagrad
    /// `lr_decay`, `eps`, `initial_accumulator_value`; Adafactor `clip_threshold`, `decay_rate`, `beta1`,
    /// `eps1`, `eps2`, `scale_parameter`, `relative_step`, `warmup_init`. AdamW takes none. The weight decay
    /// is its own setting. Errors name field `optim_args`.
    pub fn with_args(mut self, optim_args: &str) -> Result<Optimizer> {
        for pair in optim_args
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let bad = |m: String| Error::setting("optim_args", m);
            let (key, value) = pair
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| bad(format!("`{pair}` is not KEY=VALUE (e.g. momentum=0.9)")))?;
            let num = || -> Result<f64> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| bad(format!("{key}: `{value}` is not a finite number")))
            };
            let flag = || -> Result<bool> {
                match value.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => Ok(true),
                    "false" | "0" | "no" => Ok(false),
                    _ => Err(bad(format!("{key}: `{value}` is not true or false"))),
                }
            };
            match (&mut self, key) {
                (Optimizer::Sgd(p), "momentum") => p.momentum = num()?,
                (Optimizer::Sgd(p), "dampening") => p.dampening = num()?,
                (Optimizer::Sgd(p), "nesterov") => p.nesterov = flag()?,
                (Optimizer::Adagrad(p), "lr_decay") => p.lr_decay = num()?,
                (Optimizer::Adagrad(p), "eps") => p.eps = num()?,
                (Optimizer::Adagrad(p), "initial_accumulator_value") => {
                    p.initial_accumulator_value = num()?
                }
                (Optimizer::Adafactor(p), "clip_threshold") => p.clip_threshold = num()?,
                (Optimizer::Adafactor(p), "decay_rate") => p.decay_rate = num()?,
                (Optimizer::Adafactor(p), "beta1") => {
                    p.beta1 = (!matches!(value, "none" | "None" | ""))
                        .then(num)
                        .transpose()?
                }
                (Optimizer::Adafactor(p), "eps1") => p.eps.0 = num()?,
                (Optimizer::Adafactor(p), "eps2") => p.eps.1 = num()?,
                (Optimizer::Adafactor(p), "scale_parameter") => p.scale_parameter = flag()?,
                (Optimizer::Adafactor(p), "relative_step") => p.relative_step = flag()?,
                (Optimizer::Adafactor(p), "warmup_init") => p.warmup_init = flag()?,
                (_, "weight_decay") => {
                    return Err(bad(
                        "weight_decay is its own setting (`weight_decay`), for every optimizer"
                            .into(),
                    ))
                }
                (o, _) => {
                    return Err(bad(format!(
                        "`{key}` is not a setting of {} (see the user guide's optimizer section)",
                        o.name()
                    )))
                }
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks the settings as torch and transformers do (ranges, and the combinations they refuse); errors
    /// name field `optimizer`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::setting(FIELD, format!("{}: {m}", self.name())));
        match *self {
            Optimizer::AdamW => {}
            Optimizer::Sgd(p) => {
                if !(p.momentum >= 0.0 && p.momentum.is_finite() && p.dampening.is_finite()) {
                    return bad("momentum must be a finite number >= 0 and dampening finite");
                }
                if p.nesterov && (p.momentum <= 0.0 || p.dampening != 0.0) {
                    return bad("nesterov momentum requires a momentum > 0 and zero dampening");
                }
            }
            Optimizer::Adagrad(p) => {
                let sum = p.lr_decay + p.eps + p.initial_accumulator_value;
                if !(p.lr_decay >= 0.0
                    && p.eps >= 0.0
                    && p.initial_accumulator_value >= 0.0
                    && sum.is_finite())
                {
                    return bad(
                        "lr_decay, eps and initial_accumulator_value must be finite numbers >= 0",
                    );
                }
            }
            Optimizer::Adafactor(p) => {
                let sum = p.clip_threshold + p.eps.0 + p.eps.1 + p.decay_rate;
                if !(p.clip_threshold > 0.0 && p.eps.0 >= 0.0 && p.eps.1 >= 0.0 && sum.is_finite())
                {
                    return bad("clip_threshold must be > 0, eps1 and eps2 >= 0, all finite");
                }
                if p.beta1.is_some_and(|b| !(0.0..1.0).contains(&b)) {
                    return bad("beta1 must be in [0, 1)");
                }
                if p.warmup_init && !p.relative_step {
                    return bad("warmup_init requires relative_step");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_and_message(e: Error) -> (String, String) {
        match e {
            Error::Setting { field, message } => (field, message),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn names_aliases_and_refusals() {
        assert_eq!(
            Optimizer::from_name(" AdamW ").unwrap(),
            (Optimizer::AdamW, None)
        );
        for alias in ADAMW_ALIASES {
            let (o, note) = Optimizer::from_name(alias).unwrap();
            assert_eq!(o, Optimizer::AdamW);
            assert!(note.unwrap().contains("alias of `adamw`"));
        }
        for name in OPTIMIZER_NAMES {
            assert_eq!(Optimizer::from_name(name).unwrap().0.name(), name);
        }
        for name in [
            "adamw_bnb_8bit",
            "adamw_8bit",
            "paged_adamw_8bit",
            "lion_8bit",
            "paged_adamw_32bit",
        ] {
            let (field, message) = field_and_message(Optimizer::from_name(name).unwrap_err());
            assert_eq!(field, "optimizer");
            assert!(
                message.contains("small") && message.contains("use `adamw`"),
                "{message}"
            );
        }
        let (field, message) = field_and_message(Optimizer::from_name("lion").unwrap_err());
        assert_eq!(field, "optimizer");
        assert!(
            message.contains("adamw, sgd, adagrad, adafactor"),
            "{message}"
        );
    }

    #[test]
    fn optim_args_set_known_keys_and_refuse_others() {
        let (sgd, _) = Optimizer::from_name("sgd").unwrap();
        assert_eq!(
            sgd.with_args("momentum=0.9, nesterov=true").unwrap(),
            Optimizer::Sgd(SgdParams {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true
            })
        );
        assert!(sgd.with_args("nesterov=true").is_err());
        assert!(sgd.with_args("momentum=x").is_err());
        assert!(sgd.with_args("beta1=0.9").is_err());
        let (af, _) = Optimizer::from_name("adafactor").unwrap();
        let Optimizer::Adafactor(p) = af.with_args("beta1=0.9,scale_parameter=true").unwrap()
        else {
            panic!()
        };
        assert_eq!((p.beta1, p.scale_parameter), (Some(0.9), true));
        assert!(af.with_args("warmup_init=true").is_err());
        assert!(Optimizer::AdamW.with_args("momentum=0.9").is_err());
        assert_eq!(Optimizer::AdamW.with_args(" ").unwrap(), Optimizer::AdamW);
    }

    #[test]
    fn the_setting_round_trips_through_json() {
        for name in OPTIMIZER_NAMES {
            let (o, _) = Optimizer::from_name(name).unwrap();
            let text = serde_json::to_string(&o).unwrap();
            assert!(text.contains(&format!("\"name\":\"{name}\"")), "{text}");
            assert_eq!(serde_json::from_str::<Optimizer>(&text).unwrap(), o);
        }
    }
}
