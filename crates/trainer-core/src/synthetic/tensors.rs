//! The tensors of a synthetic model: names (GGUF and Hugging Face), shapes, how their values are drawn, the
//! per-tensor storage type (llama.cpp's fallbacks) and the rows themselves.
//!
//! Every row of every tensor is drawn from its own RNG stream, seeded by (model seed, HF tensor name, HF row),
//! so a tensor can be generated in any order, in parallel, or with its rows permuted, and the GGUF and
//! safetensors outputs of one seed hold the same model.

use crate::config::ModelConfig;
use crate::lora::module_path;
use crate::quant::QuantType;
use crate::rng::Rng;

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Init {
    /// Uniform in `±bound`.
    Uniform(f32),
    /// `1 + U(±0.1)`: RMSNorm weights.
    Norm,
}

/// One tensor of the model.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Logical {
    pub(super) hf: String,
    pub(super) gguf: String,
    /// HF shape, outermost first: `[out, in]` for matrices, `[n]` for vectors.
    pub(super) dims: Vec<usize>,
    pub(super) init: Init,
    /// For llama-arch q/k weights and biases: the head count of llama.cpp's row permutation.
    pub(super) permute_heads: Option<usize>,
}

impl Logical {
    pub(super) fn rows(&self) -> usize {
        if self.dims.len() == 2 {
            self.dims[0]
        } else {
            1
        }
    }

    pub(super) fn cols(&self) -> usize {
        self.dims[self.dims.len() - 1]
    }

    pub(super) fn is_matrix(&self) -> bool {
        self.dims.len() == 2
    }

    pub(super) fn elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// The model's tensors, in the order a GGUF file lists them: embedding, blocks, final norm, untied head.
pub(super) fn tensors(c: &ModelConfig) -> Vec<Logical> {
    let h = c.hidden_size;
    let (q, kv, inter) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    );
    // llama.cpp permutes q/k rows for every architecture that uses interleaved RoPE (not qwen2).
    let permuted = c.model_type != "qwen2";
    let perm = |heads: usize| permuted.then_some(heads);
    let linear = |inp: usize| Init::Uniform(1.0 / (inp as f32).sqrt());
    // Logits of a normalized hidden state against rows of this bound have a spread of about 2.3.
    let vocab_bound = Init::Uniform(4.0 / (h as f32).sqrt());
    let t = |hf: String, gguf: String, dims: &[usize], init, permute_heads| Logical {
        hf,
        gguf,
        dims: dims.to_vec(),
        init,
        permute_heads,
    };
    let mut out = vec![t(
        "model.embed_tokens.weight".into(),
        "token_embd.weight".into(),
        &[c.vocab_size, h],
        vocab_bound,
        None,
    )];
    for l in 0..c.num_hidden_layers {
        let blk = |s: &str| format!("blk.{l}.{s}");
        let layer = |s: &str| format!("model.layers.{l}.{s}");
        out.push(t(
            layer("input_layernorm.weight"),
            blk("attn_norm.weight"),
            &[h],
            Init::Norm,
            None,
        ));
        let shapes = [
            ([q, h], "attn_q", perm(c.num_attention_heads)),
            ([kv, h], "attn_k", perm(c.num_key_value_heads)),
            ([kv, h], "attn_v", None),
            ([h, q], "attn_output", None),
            ([inter, h], "ffn_gate", None),
            ([inter, h], "ffn_up", None),
            ([h, inter], "ffn_down", None),
        ];
        for (m, (dims, name, heads)) in shapes.into_iter().enumerate() {
            out.push(t(
                format!("{}.weight", module_path(l, m)),
                blk(&format!("{name}.weight")),
                &dims,
                linear(dims[1]),
                heads,
            ));
            if c.attention_bias && m < 3 {
                out.push(t(
                    format!("{}.bias", module_path(l, m)),
                    blk(&format!("{name}.bias")),
                    &dims[..1],
                    Init::Uniform(0.1),
                    heads,
                ));
            }
        }
        out.push(t(
            layer("post_attention_layernorm.weight"),
            blk("ffn_norm.weight"),
            &[h],
            Init::Norm,
            None,
        ));
    }
    out.push(t(
        "model.norm.weight".into(),
        "output_norm.weight".into(),
        &[h],
        Init::Norm,
        None,
    ));
    if !c.tie_word_embeddings {
        out.push(t(
            "lm_head.weight".into(),
            "output.weight".into(),
            &[c.vocab_size, h],
            vocab_bound,
            None,
        ));
    }
    out
}

/// The storage type of a matrix with rows of `cols` values when `requested` is asked for: llama.cpp's
/// `llama_tensor_get_type` fallbacks for rows that do not fill whole blocks (Q4_K -> Q5_0, Q5_K -> Q5_1,
/// Q6_K -> Q8_0; llama.cpp turns Q2_K and Q3_K into IQ4_NL, which candle cannot read, so Q4_0 here), then F16
/// when even 32-value blocks do not fit (llama.cpp refuses such rows for the legacy types; F16 here).
pub(super) fn storage_type(requested: QuantType, cols: usize) -> QuantType {
    if cols.is_multiple_of(requested.block_len()) {
        return requested;
    }
    let fallback = match requested {
        QuantType::Q2K | QuantType::Q3K => QuantType::Q4_0,
        QuantType::Q4K => QuantType::Q5_0,
        QuantType::Q5K => QuantType::Q5_1,
        QuantType::Q6K => QuantType::Q8_0,
        other => other,
    };
    if cols.is_multiple_of(fallback.block_len()) {
        fallback
    } else {
        QuantType::F16
    }
}

/// The HF row (or, for vectors, element) stored at `index` in the GGUF file: llama.cpp's q/k permutation puts
/// the two halves of each head's rotary pairs side by side (`(head, pair, half)` from HF's `(head, half, pair)`).
pub(super) fn hf_index(index: usize, rows: usize, permute_heads: Option<usize>) -> usize {
    let Some(heads) = permute_heads else {
        return index;
    };
    let hd = rows / heads;
    let (head, rem) = (index / hd, index % hd);
    head * hd + (rem % 2) * (hd / 2) + rem / 2
}

/// FNV-1a of a tensor name: the name's part of the row seeds.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fills `out` with HF row `row` of `t` (for a vector, `row` is 0 and `out` the whole vector).
pub(super) fn fill_row(seed: u64, t: &Logical, row: usize, out: &mut [f32]) {
    let key = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ name_hash(&t.hf)
        ^ (row as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut rng = Rng::new(key);
    let (lo, span, offset) = match t.init {
        Init::Uniform(b) => (-b, 2.0 * b, 0.0),
        Init::Norm => (-0.1, 0.2, 1.0),
    };
    for v in out.iter_mut() {
        *v = offset + (lo + span * rng.next_f32());
    }
}

/// The whole tensor in HF layout (tests and the safetensors writer).
pub(super) fn hf_values(seed: u64, t: &Logical) -> Vec<f32> {
    let cols = t.cols();
    let mut out = vec![0f32; t.elements()];
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        fill_row(seed, t, r, row);
    }
    out
}

/// GGUF row `index` of matrix `t` (its HF row after llama.cpp's permutation).
pub(super) fn gguf_row(seed: u64, t: &Logical, index: usize, out: &mut [f32]) {
    fill_row(seed, t, hf_index(index, t.rows(), t.permute_heads), out);
}

/// Vector `t` in GGUF order.
pub(super) fn gguf_vector(seed: u64, t: &Logical) -> Vec<f32> {
    let hf = hf_values(seed, t);
    (0..hf.len())
        .map(|i| hf[hf_index(i, hf.len(), t.permute_heads)])
        .collect()
}
