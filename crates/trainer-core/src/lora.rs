//! LoRA factors as the decoder consumes them (shared by inference adapters and the trainer's Vars).

use candle_core::Tensor;

/// The seven linear module short names, in the decoder's fixed order.
pub(crate) const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Index of a module short name in [`MODULES`].
pub(crate) fn module_index(short: &str) -> Option<usize> {
    MODULES.iter().position(|m| *m == short)
}

/// HF module path of module `m` of layer `layer`, e.g. `model.layers.3.self_attn.q_proj`.
pub(crate) fn module_path(layer: usize, m: usize) -> String {
    let group = if m < 4 { "self_attn" } else { "mlp" };
    format!("model.layers.{layer}.{group}.{}", MODULES[m])
}

/// Parses `model.layers.{i}.{self_attn|mlp}.{name}` back into (layer, module index).
pub(crate) fn parse_module_path(path: &str) -> Option<(usize, usize)> {
    let rest = path.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let m = module_index(
        rest.strip_prefix("self_attn.")
            .or_else(|| rest.strip_prefix("mlp."))?,
    )?;
    (module_path(layer, m) == path).then_some((layer, m))
}

/// One LoRA pair: `a` is `[r, in]`, `b` is `[out, r]`.
#[derive(Debug, Clone)]
pub(crate) struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// All LoRA factors and fully trained modules applied on top of the base weights.
#[derive(Debug, Clone)]
pub(crate) struct LoraWeights {
    /// `alpha / r` or `alpha / sqrt(r)`.
    pub scale: f64,
    /// Per layer, per module (in [`MODULES`] order).
    pub layers: Vec<[Option<LoraPair>; 7]>,
    /// A replacement output projection (modules_to_save `lm_head`).
    pub lm_head: Option<Tensor>,
    /// A replacement embedding matrix (modules_to_save `embed_tokens`).
    pub embed_tokens: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn module_path_round_trips(layer in 0usize..200, m in 0usize..7) {
            prop_assert_eq!(parse_module_path(&module_path(layer, m)), Some((layer, m)));
        }
    }

    #[test]
    fn rejects_foreign_paths() {
        assert_eq!(parse_module_path("model.layers.1.mlp.q_proj"), None);
        assert_eq!(parse_module_path("model.layers.x.self_attn.q_proj"), None);
        assert_eq!(parse_module_path("lm_head"), None);
    }
}
