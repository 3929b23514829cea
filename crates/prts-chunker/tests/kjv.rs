//! The reference sample: first ~1 MB of the King James Bible, 229 hard cuts `\n\n\n`, cutoff
//! 256, SmolLM2 tokenizer. Every block is re-encoded to check the chunker's exact counts.

use prts_chunker::{
    chunk, read_text, Additivity, Block, BlockKind, ChunkConfig, Chunks, EosPlacement, Mode,
    TokenCounter,
};
use tokenizers::Tokenizer;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/");
const HARD_CUT: &str = "\n\n\n";
const CUTOFF: usize = 256;

fn load() -> (String, Tokenizer) {
    let text = read_text(format!("{DATA}kjv-books-1mb.txt").as_ref(), HARD_CUT).unwrap();
    let tok = Tokenizer::from_file(format!("{DATA}smollm2-tokenizer.json")).unwrap();
    (text, tok)
}

/// The Done-when checks of issue 2, for any mode.
fn check(text: &str, out: &Chunks, tok: &Tokenizer) {
    let markers: Vec<usize> = text.match_indices(HARD_CUT).map(|(i, _)| i).collect();
    assert_eq!(markers.len(), 229);
    assert_eq!(out.summary.hard_cuts, 229);
    let mut covered = vec![false; text.len()];
    for b in &out.blocks {
        let real = usize::from(b.bos) + tok.count(&b.text) + usize::from(b.eos);
        assert_eq!(b.tokens, real, "exact size: {:?}", b.text);
        assert!(b.tokens <= CUTOFF, "over {CUTOFF}: {b:?}");
        let r = &b.ranges[0];
        assert_eq!(&text[r.clone()], b.text);
        assert!(
            !markers
                .iter()
                .any(|&m| m + HARD_CUT.len() > r.start && m < r.end),
            "crosses a hard cut: {b:?}"
        );
        if b.kind != BlockKind::Overlap {
            covered[r.clone()].iter_mut().for_each(|c| *c = true);
        }
    }
    let in_marker = |i: usize| markers.iter().any(|&m| i >= m && i < m + HARD_CUT.len());
    let lost = text
        .char_indices()
        .filter(|&(i, c)| !c.is_whitespace() && !covered[i] && !in_marker(i))
        .count();
    assert_eq!(lost, 0, "no text lost");
    assert_eq!(out.summary.pieces_dropped, 0);
    // SmolLM2 is GPT-2-style byte-level BPE: sizes come from sentence counts, none re-encoded.
    assert_eq!(out.summary.recounted_blocks, 0);
}

fn texts(out: &Chunks, kind: BlockKind) -> Vec<&Block> {
    out.blocks.iter().filter(|b| b.kind == kind).collect()
}

#[test]
fn precise_with_overlap() {
    let (text, tok) = load();
    assert_eq!(tok.additivity(), Additivity::AtWhitespace);
    let cfg = ChunkConfig::new(CUTOFF)
        .with_hard_cut(HARD_CUT)
        .with_overlap(true)
        .with_eos(EosPlacement::None);
    let out = chunk(&text, &cfg, &tok).unwrap();
    check(&text, &out, &tok);
    let main = texts(&out, BlockKind::Main);
    let overlap = texts(&out, BlockKind::Overlap);
    assert_eq!(out.summary.overlap_blocks, overlap.len());
    assert!(
        overlap
            .iter()
            .all(|o| main.iter().all(|m| m.text != o.text)),
        "no overlap equals a main block"
    );
    // Figures: see docs/chunker.md (the original: 1,173 blocks, 925 overlap blocks).
    assert!(
        (1000..1300).contains(&main.len()),
        "{} main blocks",
        main.len()
    );
    assert!(overlap.len() > 800, "{} overlap blocks", overlap.len());
}

#[test]
fn precise_with_bos_and_eos_at_hard_cuts() {
    let (text, tok) = load();
    let cfg = ChunkConfig::new(CUTOFF)
        .with_hard_cut(HARD_CUT)
        .with_bos(true)
        .with_eos(EosPlacement::HardCutOnly);
    let out = chunk(&text, &cfg, &tok).unwrap();
    check(&text, &out, &tok);
    // Every hard cut closes exactly one block, and that block carries the EOS.
    assert_eq!(out.blocks.iter().filter(|b| b.eos).count(), 229);
    assert!(out
        .blocks
        .iter()
        .all(|b| b.eos == b.ends_at_hard_cut && b.bos));
}

#[test]
fn dementor_windows() {
    let (text, tok) = load();
    let cfg = ChunkConfig::new(CUTOFF)
        .with_hard_cut(HARD_CUT)
        .with_mode(Mode::Dementor)
        .with_eos(EosPlacement::EveryBlock);
    let out = chunk(&text, &cfg, &tok).unwrap();
    check(&text, &out, &tok);
    let ends: Vec<usize> = out.blocks.iter().map(|b| b.ranges[0].end).collect();
    assert!(
        ends.windows(2).all(|w| w[0] < w[1]),
        "window ends strictly increase"
    );
    assert!(out
        .blocks
        .iter()
        .all(|b| b.eos && b.kind == BlockKind::Window));
    assert!(out.summary.blocks > 3000, "{} windows", out.summary.blocks);
}

/// The SmolLM2 tokenizer with its pre-tokenizer replaced by `Sequence[Split(regex), ByteLevel]`
/// (as in Llama-3/Qwen2 tokenizer.json files), and optionally an NFC normalizer.
fn with_split_regex(regex_json: &str, nfc: bool) -> Tokenizer {
    let json = std::fs::read_to_string(format!("{DATA}smollm2-tokenizer.json")).unwrap();
    let byte_level = r#""pre_tokenizer": {
    "type": "ByteLevel",
    "add_prefix_space": false,
    "trim_offsets": true,
    "use_regex": true
  },"#;
    assert!(json.contains(byte_level));
    let sequence = format!(
        r#""pre_tokenizer": {{"type": "Sequence", "pretokenizers": [
        {{"type": "Split", "pattern": {{"Regex": "{regex_json}"}}, "behavior": "Isolated", "invert": false}},
        {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}}]}},"#
    );
    let mut json = json.replace(byte_level, &sequence);
    if nfc {
        json = json.replace(r#""normalizer": null"#, r#""normalizer": {"type": "NFC"}"#);
    }
    json.parse().unwrap()
}

/// Llama-3 and Qwen2 pre-tokenizer regexes keep punctuation with the line breaks after it
/// (`.\n`); sentence ends move past those line breaks and sizes stay exact without re-encoding.
#[test]
fn llama3_and_qwen2_style_pre_tokenizers() {
    let (text, _) = load();
    let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    let qwen2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    for (regex, nfc) in [(llama3, false), (qwen2, true)] {
        let tok = with_split_regex(regex, nfc);
        assert_eq!(tok.additivity(), Additivity::PunctuationTakesLineBreaks);
        for mode in [Mode::Precise, Mode::Dementor] {
            let cfg = ChunkConfig::new(CUTOFF)
                .with_hard_cut(HARD_CUT)
                .with_overlap(true)
                .with_mode(mode)
                .with_eos(EosPlacement::EveryBlock);
            let out = chunk(&text, &cfg, &tok).unwrap();
            check(&text, &out, &tok);
        }
    }
}

/// The same vocabulary with the pre-tokenizer trainer-core builds from GGUF metadata for
/// SmolLM2 (llama.cpp "smollm": digits isolated, then the GPT-2 regex, then byte mapping)
/// still takes the exact fast path.
#[test]
fn gguf_style_pre_tokenizer_is_additive_too() {
    let (text, tok) = load();
    let json = std::fs::read_to_string(format!("{DATA}smollm2-tokenizer.json")).unwrap();
    let byte_level = r#""pre_tokenizer": {
    "type": "ByteLevel",
    "add_prefix_space": false,
    "trim_offsets": true,
    "use_regex": true
  },"#;
    assert!(json.contains(byte_level));
    let gpt2 =
        r#"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"#;
    let sequence = format!(
        r#""pre_tokenizer": {{"type": "Sequence", "pretokenizers": [
        {{"type": "Split", "pattern": {{"Regex": "\\p{{N}}"}}, "behavior": "Isolated", "invert": false}},
        {{"type": "Split", "pattern": {{"Regex": "{gpt2}"}}, "behavior": "Isolated", "invert": false}},
        {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}}]}},"#
    );
    let gguf: Tokenizer = json.replace(byte_level, &sequence).parse().unwrap();
    assert_eq!(gguf.additivity(), Additivity::AtWhitespace);
    let sample = &text[..20_000];
    assert_eq!(
        gguf.encode_fast(sample, false).unwrap().get_ids(),
        tok.encode_fast(sample, false).unwrap().get_ids()
    );
    let cfg = ChunkConfig::new(CUTOFF)
        .with_hard_cut(HARD_CUT)
        .with_overlap(true);
    let out = chunk(&text, &cfg, &gguf).unwrap();
    check(&text, &out, &gguf);
}
