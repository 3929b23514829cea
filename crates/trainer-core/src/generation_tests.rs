//! The cached incremental forward against the full forward of `Model::logits`.

use candle_core::Device;

use super::*;
use crate::config::ModelConfig;
use crate::test_models::{adapter, packed_f16, tiny};

/// Feeds `ids` as a prompt of `prompt` tokens, then one token at a time, and checks every returned row against the
/// last row of the full forward over the tokens fed so far.
fn check(m: &Model, a: Option<&Adapter>, ids: &[u32], prompt: usize, what: &str) {
    let mut g = m.generation(a).unwrap();
    let vocab = m.config().vocab_size;
    let mut end = prompt;
    let mut got = g.feed(&ids[..prompt]).unwrap();
    loop {
        assert_eq!(g.len(), end);
        let full = m.logits(a, &ids[..end]).unwrap().to_vec2::<f32>().unwrap();
        let want = &full[end - 1];
        assert_eq!(got.len(), vocab);
        let scale = want.iter().fold(1f32, |s, v| s.max(v.abs()));
        let d = got
            .iter()
            .zip(want)
            .fold(0f32, |d, (a, b)| d.max((a - b).abs()));
        assert!(
            d < 1e-5 * scale,
            "{what}: after {end} tokens the cached logits differ by {d} (scale {scale})"
        );
        if end == ids.len() {
            break;
        }
        got = g.feed(&ids[end..end + 1]).unwrap();
        end += 1;
    }
}

#[test]
fn cached_steps_give_the_logits_of_the_full_forward() {
    let ids: Vec<u32> = vec![1, 17, 200, 45, 3, 99, 250, 7, 7, 130, 64];
    let llama = tiny();
    let f16 = packed_f16(&llama);
    let qwen = Model::random(
        ModelConfig {
            attention_bias: true,
            tie_word_embeddings: false,
            max_position_embeddings: 64,
            ..ModelConfig::tiny_llama(256, 32, 2, 4, 1)
        },
        4,
        &Device::Cpu,
    )
    .unwrap();
    for (what, m) in [
        ("llama", &llama),
        ("f16 packed", &f16),
        ("bias, 1 kv head", &qwen),
    ] {
        check(m, None, &ids, 4, what);
        let a = adapter(m, false);
        check(m, Some(&a), &ids, 1, &format!("{what} + adapter"));
        let a = adapter(m, true);
        check(
            m,
            Some(&a),
            &ids,
            6,
            &format!("{what} + adapter, trained embed"),
        );
    }
}

#[test]
fn empty_and_out_of_vocabulary_feeds_are_refused() {
    let m = tiny();
    let mut g = m.generation(None).unwrap();
    assert!(g.is_empty());
    let e = g.feed(&[]).unwrap_err().to_string();
    assert!(e.contains("no token ids"), "{e}");
    let e = g.feed(&[1, 256]).unwrap_err().to_string();
    assert!(e.contains("256") && e.contains("position 1"), "{e}");
    assert!(g.is_empty(), "a refused feed changed the cache");
    g.feed(&[1, 2]).unwrap();
    assert_eq!(g.len(), 2);
    assert!(g.cache_bytes() > 0);
}
