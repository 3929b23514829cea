use std::collections::BTreeSet;
use std::path::PathBuf;

use lora_targets::{
    lora_tensor_key, parse_lora_tensor_key, AdapterConfig, Error, LoraPart, TargetModules,
};

fn reference(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/peft-reference-qv")
        .join(file)
}

fn read_reference_config() -> (String, AdapterConfig) {
    let path = reference("adapter_config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    (text, AdapterConfig::load(&path).unwrap())
}

#[test]
fn reads_the_config_peft_wrote() {
    let (_, cfg) = read_reference_config();
    assert_eq!(cfg.peft_type, "LORA");
    assert_eq!(cfg.task_type.as_deref(), Some("CAUSAL_LM"));
    assert_eq!(cfg.r, 8);
    assert_eq!(cfg.lora_alpha, 16.0);
    assert_eq!(cfg.peft_version.as_deref(), Some("0.21.2"));
    assert_eq!(
        cfg.target_modules,
        Some(TargetModules::List(vec!["q_proj".into(), "v_proj".into()]))
    );
    // Keys this crate does not model are kept, not dropped.
    assert_eq!(cfg.extra["megatron_core"], "megatron.core");
    assert_eq!(cfg.extra["qalora_group_size"], 16);

    let s = cfg.to_settings().unwrap();
    assert_eq!(
        (s.r, s.alpha, s.dropout, s.use_rslora),
        (8, 16.0, 0.0, false)
    );
    assert_eq!(s.target_modules, ["q_proj", "v_proj"]);
    assert!(s.modules_to_save.is_empty());
    assert_eq!(s.scaling(), 2.0);
}

#[test]
fn rewriting_the_reference_keeps_every_key_and_value() {
    let (text, cfg) = read_reference_config();
    let original: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rewritten: serde_json::Value = serde_json::from_str(&cfg.to_json()).unwrap();
    assert_eq!(original, rewritten);
}

#[test]
fn written_config_has_what_peft_needs_and_matches_the_reference() {
    let (text, cfg) = read_reference_config();
    let ours = AdapterConfig::from_settings(&cfg.to_settings().unwrap(), "SmolLM2-135M-Instruct");
    let ours: serde_json::Value = serde_json::from_str(&ours.to_json()).unwrap();
    let peft: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "use_rslora",
        "modules_to_save",
        "bias",
        "fan_in_fan_out",
        "init_lora_weights",
        "base_model_name_or_path",
        "inference_mode",
        "use_dora",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "layers_pattern",
        "lora_bias",
        "revision",
    ] {
        assert_eq!(ours[key], peft[key], "key {key}");
    }
    // Every key written is one PEFT itself writes.
    for key in ours.as_object().unwrap().keys() {
        assert!(peft.get(key).is_some(), "{key} is not a PEFT key");
    }
}

#[test]
fn the_minimal_hand_written_config_loads() {
    // The minimal config verified to load with PeftModel.from_pretrained.
    let cfg = AdapterConfig::from_json(
        r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj","v_proj"],
            "task_type":"CAUSAL_LM","use_rslora":true}"#,
    )
    .unwrap();
    let s = cfg.to_settings().unwrap();
    assert!((s.scaling() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
}

#[test]
fn bad_configs_give_errors_that_name_the_field_or_line() {
    let (text, _) = read_reference_config();
    let edit = |from: &str, to: &str| {
        assert!(text.contains(from), "{from}");
        text.replacen(from, to, 1)
    };
    let cases = [
        (edit("\"r\": 8", "\"r\": 0"), "`r` = 0"),
        (
            edit("\"lora_alpha\": 16", "\"lora_alpha\": -16"),
            "lora_alpha",
        ),
        (
            edit("\"lora_dropout\": 0.0", "\"lora_dropout\": 1.5"),
            "lora_dropout",
        ),
        (
            edit("\"use_dora\": false", "\"use_dora\": true"),
            "use_dora",
        ),
        (
            edit("\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 4}"),
            "rank_pattern",
        ),
        (
            edit("\"use_qalora\": false", "\"use_qalora\": true"),
            "use_qalora",
        ),
        (edit("\"bias\": \"none\"", "\"bias\": \"all\""), "bias"),
        (
            edit(
                "\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]",
                "\"target_modules\": \".*q_proj\"",
            ),
            "target_modules",
        ),
    ];
    for (bad, want) in cases {
        let err = AdapterConfig::from_json(&bad)
            .and_then(|c| c.to_settings())
            .unwrap_err();
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
    let err = AdapterConfig::from_json(&edit("\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\""))
        .unwrap_err();
    assert!(err.to_string().contains("peft_type"), "{err}");
    let err = AdapterConfig::from_json(&edit("\"r\": 8", "\"r\": \"eight\"")).unwrap_err();
    assert!(matches!(err, Error::Json { .. }));
    assert!(err.to_string().contains("line 31"), "{err}");
    assert!(err.to_string().contains(r#"in `"r": "eight",`"#), "{err}");
}

#[test]
fn load_and_save_name_the_file_and_write_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = dir.join("adapter_config.json");
    let err = AdapterConfig::load(&path).unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");

    let (_, cfg) = read_reference_config();
    cfg.save(&path).unwrap();
    assert_eq!(AdapterConfig::load(&path).unwrap(), cfg);
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    std::fs::write(&path, "{\"peft_type\": \"LORA\",\n \"r\": }").unwrap();
    // The error names the file; its source, the parse error, names the line.
    let err = AdapterConfig::load(&path).unwrap_err();
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    assert!(
        text.contains("adapter_config.json") && text.contains("line 2"),
        "{text}"
    );
}

/// The tensor names in a safetensors file: an 8-byte little-endian header length, then a JSON header.
fn safetensors_keys(file: &str) -> Vec<String> {
    let bytes = std::fs::read(reference(file)).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != "__metadata__")
        .collect()
}

#[test]
fn every_tensor_key_peft_wrote_parses_and_round_trips() {
    for file in [
        "adapter_model.safetensors",
        "init/adapter_model.safetensors",
    ] {
        let keys = safetensors_keys(file);
        // SmolLM2-135M: 30 layers x 2 modules x 2 parts.
        assert_eq!(keys.len(), 120, "{file}");
        let mut modules = BTreeSet::new();
        for key in &keys {
            let (path, part) = parse_lora_tensor_key(key).unwrap();
            assert_eq!(&lora_tensor_key(&path, part), key);
            assert!(path.starts_with("model.layers."), "{path}");
            modules.insert(path.rsplit('.').next().unwrap().to_owned());
            if part == LoraPart::A {
                assert!(keys.contains(&lora_tensor_key(&path, LoraPart::B)));
            }
        }
        assert_eq!(
            modules.into_iter().collect::<Vec<_>>(),
            ["q_proj", "v_proj"]
        );
    }
}
