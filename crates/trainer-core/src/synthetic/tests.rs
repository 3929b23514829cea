//! The synthetic models' pieces: tokenizer, tensor list, permutation, fallbacks, names.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{Device, Tensor};

use super::tensors::{hf_index, storage_type, tensors, Init};
use super::vocab::{metadata, vocab, BOS, EOS, PAD, SPECIALS};
use super::{Shape, Spec, WeightType};
use crate::dataset::{ChatTemplate, Message};
use crate::quant::QuantType;

#[test]
fn the_vocabulary_fills_the_size_with_valid_unique_merges() {
    for size in [259, 260, 512, 32000, 152_064] {
        let v = vocab(size).unwrap();
        assert_eq!(v.tokens.len(), size);
        assert_eq!(v.types.len(), size);
        assert_eq!(v.merges.len(), size - 259);
        let set: HashSet<&str> = v.tokens.iter().map(String::as_str).collect();
        assert_eq!(set.len(), size, "tokens are unique");
        for (i, m) in v.merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').unwrap();
            assert!(set.contains(a) && set.contains(b), "{m}");
            assert_eq!(v.tokens[259 + i], format!("{a}{b}"));
        }
    }
    assert!(matches!(vocab(258), Err(e) if e.to_string().contains("259")));
}

#[test]
fn the_tokenizer_loads_and_round_trips_text() {
    let md: HashMap<String, _> = metadata(512).unwrap().into_iter().collect();
    let (tok, special, template) = crate::tokenizer::from_gguf(&md, Path::new("s.gguf")).unwrap();
    assert_eq!(
        (special.bos, special.eos, special.pad),
        (Some(BOS), Some(EOS), Some(PAD))
    );
    assert_eq!(tok.get_vocab_size(true), 512);
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "  leading spaces,\ttabs\nand newlines\n\n",
        "Ünïcödé: 中文字符, emoji 🦀👍, ∑ x² ≤ ∞",
        "1234567890 !@#$%^&*()_+-=[]{};':\",./<>?",
        "",
    ];
    for text in texts {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert!(ids.len() <= text.len(), "{text}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // English takes half as many tokens as bytes or fewer, at every size.
    let english = " the tea is on the table";
    for size in [512, 32000, 152_064] {
        let md: HashMap<String, _> = metadata(size).unwrap().into_iter().collect();
        let (t, _, _) = crate::tokenizer::from_gguf(&md, Path::new("s.gguf")).unwrap();
        let ids = t.encode(english, false).unwrap().get_ids().to_vec();
        assert!(ids.len() * 2 <= english.len(), "{size}: {ids:?}");
        assert_eq!(t.decode(&ids, false).unwrap(), english);
    }
    // The control tokens are single tokens.
    let ids = tok
        .encode("<|im_start|>user\nhi<|im_end|>", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids[0], BOS);
    assert_eq!(*ids.last().unwrap(), EOS);
    for (i, s) in SPECIALS.iter().enumerate() {
        assert_eq!(tok.token_to_id(s), Some(i as u32));
    }
    // The chat template is ChatML, and the project's chat-template renderer runs it.
    let template = template.unwrap();
    let t = ChatTemplate::new(&template, Path::new("s.gguf"), SPECIALS[1], SPECIALS[2]).unwrap();
    let messages = [
        Message::new("user", "Hi!"),
        Message::new("assistant", "Hello."),
    ];
    assert_eq!(
        t.render(&messages, false).unwrap(),
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    );
    assert_eq!(
        t.render(&messages[..1], true).unwrap(),
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn the_permutation_is_llama_cpp_s_and_the_loader_undoes_it() {
    // The GGUF loader's un-permutation: reshape (heads, hd/2, 2) -> swap -> reshape.
    for (rows, heads) in [(8, 2), (256, 4), (128, 1), (576, 9)] {
        let gguf: Vec<usize> = (0..rows).map(|r| hf_index(r, rows, Some(heads))).collect();
        let mut seen = gguf.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..rows).collect::<Vec<_>>(), "a bijection");
        let t =
            Tensor::from_vec(gguf.iter().map(|&x| x as u32).collect(), rows, &Device::Cpu).unwrap();
        let back = t
            .reshape((heads, rows / heads / 2, 2))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape(rows)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(back, (0..rows as u32).collect::<Vec<_>>());
        assert_eq!(hf_index(5, rows, None), 5);
    }
}

#[test]
fn fallbacks_follow_llama_cpp() {
    use QuantType::*;
    for t in QuantType::ALL {
        assert_eq!(storage_type(t, 512), t);
    }
    let cases = [
        (Q4K, 576, Q5_0),
        (Q5K, 576, Q5_1),
        (Q6K, 576, Q8_0),
        (Q2K, 576, Q4_0),
        (Q3K, 576, Q4_0),
        (Q4K, 1536, Q4K),
        (Q4K, 80, F16),
        (Q4_0, 80, F16),
        (Q8_0, 96, Q8_0),
        (F16, 7, F16),
        (BF16, 7, BF16),
    ];
    for (want, cols, got) in cases {
        assert_eq!(storage_type(want, cols), got, "{} at {cols}", want.name());
    }
}

#[test]
fn tensor_lists_match_the_shapes() {
    let llama = tensors(&Shape::TinyLlama.config());
    assert_eq!(llama.len(), 1 + 2 * 9 + 2);
    let q = llama
        .iter()
        .find(|t| t.gguf == "blk.1.attn_q.weight")
        .unwrap();
    assert_eq!(
        (q.hf.as_str(), q.permute_heads),
        ("model.layers.1.self_attn.q_proj.weight", Some(4))
    );
    let k = llama
        .iter()
        .find(|t| t.gguf == "blk.0.attn_k.weight")
        .unwrap();
    assert_eq!(
        (k.dims.as_slice(), k.permute_heads),
        ([128, 256].as_slice(), Some(2))
    );
    assert!(llama.iter().any(|t| t.gguf == "output.weight"));
    assert!(!llama.iter().any(|t| t.gguf.ends_with(".bias")));
    let down = llama
        .iter()
        .find(|t| t.gguf == "blk.0.ffn_down.weight")
        .unwrap();
    assert_eq!(down.init, Init::Uniform(1.0 / 512f32.sqrt()));

    let qwen = tensors(&Shape::TinyQwen2.config());
    assert_eq!(qwen.len(), 1 + 2 * 12 + 1, "q/k/v biases, tied head");
    assert!(
        qwen.iter().all(|t| t.permute_heads.is_none()),
        "qwen2 is not permuted"
    );
    let b = qwen.iter().find(|t| t.gguf == "blk.0.attn_k.bias").unwrap();
    assert_eq!(
        (b.hf.as_str(), b.dims.as_slice()),
        ("model.layers.0.self_attn.k_proj.bias", [128].as_slice())
    );

    let big = tensors(&Shape::Qwen2_7b.config());
    let params: usize = big.iter().map(|t| t.elements()).sum();
    assert_eq!(params, 7_615_616_512, "Qwen2-7B's parameter count");
    let big = tensors(&Shape::Llama7b.config());
    let params: usize = big.iter().map(|t| t.elements()).sum();
    assert_eq!(params, 6_738_415_616, "Llama-2-7B's parameter count");
    let smol = tensors(&Shape::Smollm2_135m.config());
    let params: usize = smol.iter().map(|t| t.elements()).sum();
    assert_eq!(params, 134_515_008, "SmolLM2-135M's parameter count");
}

#[test]
fn names_parse_and_specs_validate() {
    for s in Shape::ALL {
        assert_eq!(s.name().parse::<Shape>().unwrap(), s);
        s.config().validate(Path::new("x")).unwrap();
    }
    assert!("llama-13b"
        .parse::<Shape>()
        .unwrap_err()
        .to_string()
        .contains("tiny-qwen2"));
    for t in WeightType::ALL {
        assert_eq!(t.name().parse::<WeightType>().unwrap(), t);
        assert_eq!(t.name().to_lowercase().parse::<WeightType>().unwrap(), t);
        assert_eq!(WeightType::from_quant(t.quant()), t);
        assert_eq!(t.quant().name(), t.name());
    }
    assert_eq!("q4k".parse::<WeightType>().unwrap(), WeightType::Q4_K);
    assert!("IQ4_NL"
        .parse::<WeightType>()
        .unwrap_err()
        .to_string()
        .contains("Q6_K"));
    let spec = Spec::new(Shape::TinyLlama, WeightType::F16)
        .with_layers(5)
        .with_seed(9);
    assert_eq!((spec.config.num_hidden_layers, spec.seed), (5, 9));
    let mut bad = spec.clone();
    bad.config.vocab_size = 258;
    assert!(bad
        .validate(Path::new("x"))
        .unwrap_err()
        .to_string()
        .contains("259"));
    let mut bad = spec.clone();
    bad.config.model_type = "gpt2".into();
    assert!(bad
        .validate(Path::new("x"))
        .unwrap_err()
        .to_string()
        .contains("gpt2"));
    let bad = spec.with_layers(0);
    assert!(bad
        .validate(Path::new("x"))
        .unwrap_err()
        .to_string()
        .contains("num_hidden_layers"));
}
