//! The PEFT reference: logits with and without the adapter, tokenizer ids.

use std::time::Instant;

use trainer_core::Adapter;

use crate::common::{ids, max_abs_diff, model, peft_ref, reference, testdata};

#[test]
fn logits_match_peft_with_and_without_adapter() {
    let t0 = Instant::now();
    let m = model();
    eprintln!("model load (or reuse): {:.2?}", t0.elapsed());
    let input = ids("input_ids");
    let base = m.logits(None, &input).unwrap();
    let d_base = max_abs_diff(&base, &reference("base_logits"));
    let adapter = Adapter::load(&peft_ref(), m).unwrap();
    let with = m.logits(Some(&adapter), &input).unwrap();
    let d_adapter = max_abs_diff(&with, &reference("adapter_logits"));
    eprintln!("max abs diff: base {d_base:e}, adapter {d_adapter:e}");
    // f32 through 30 layers: the GEMM kernel in use (AVX2 or AVX-512, chosen at run time) changes the summation
    // order and moves logits of magnitude up to ~30 by about 1e-4 (PyTorch's own kernels differ as much); a wrong
    // weight, mask or LoRA scale moves them by far more than 1e-3.
    assert!(d_base < 2e-4, "base logits differ by {d_base}");
    assert!(d_adapter < 2e-4, "adapter logits differ by {d_adapter}");
}

#[test]
fn gguf_tokenizer_matches_reference_tokenizer_json_on_kjv() {
    let text = std::fs::read_to_string(testdata("kjv-books-1mb.txt")).unwrap();
    let reference = tokenizers::Tokenizer::from_file(testdata("smollm2-tokenizer.json")).unwrap();
    let ours = model().tokenizer();
    let want = reference.encode(text.as_str(), false).unwrap();
    let got = ours.encode(text.as_str(), false).unwrap();
    assert_eq!(got.get_ids().len(), want.get_ids().len());
    assert!(got.get_ids() == want.get_ids(), "token ids differ");
    // Special tokens and the chat template come from the GGUF metadata too.
    let sp = model().special_tokens();
    assert_eq!((sp.bos, sp.eos), (Some(1), Some(2)));
    let chat = "<|im_start|>user\nHi 2024!<|im_end|>\n";
    assert_eq!(
        ours.encode(chat, false).unwrap().get_ids(),
        reference.encode(chat, false).unwrap().get_ids()
    );
    assert!(model()
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>")));
}
