//! Arbitrary text into `AdapterConfig::from_json` and `parse_lora_tensor_key`: no panic, and
//! whatever parses survives the write/read round trips exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_targets::{lora_tensor_key, parse_lora_tensor_key, AdapterConfig, LoraPart};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_config(&text);
    check_key(&text);
});

fn check_config(text: &str) {
    let Ok(cfg) = AdapterConfig::from_json(text) else {
        return;
    };
    // Written text reads back to the same config, and writing is then stable.
    let json = cfg.to_json();
    let back = AdapterConfig::from_json(&json)
        .unwrap_or_else(|e| panic!("to_json output does not parse: {e}\n{json}"));
    assert_eq!(back, cfg, "to_json/from_json changed the config\n{json}");
    assert_eq!(back.to_json(), json, "to_json is not stable");
    // Accepted settings are valid and survive from_settings -> to_json -> from_json -> to_settings.
    match cfg.to_settings() {
        Ok(s) => {
            assert!(
                s.validate().is_ok(),
                "to_settings returned invalid settings {s:?}"
            );
            let again = AdapterConfig::from_settings(&s, "base");
            assert_eq!(again.to_settings().ok().as_ref(), Some(&s));
            let reread = AdapterConfig::from_json(&again.to_json())
                .and_then(|c| c.to_settings())
                .unwrap_or_else(|e| panic!("from_settings output rejected: {e}"));
            assert_eq!(reread, s);
            assert!(s.scaling().is_finite() && s.scaling() > 0.0);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn check_key(key: &str) {
    if let Ok((path, part)) = parse_lora_tensor_key(key) {
        assert_eq!(lora_tensor_key(&path, part), key, "parse/format round trip");
    }
    // Any string used as a module path: the key it makes parses back to it, or is rejected.
    for part in [LoraPart::A, LoraPart::B] {
        let made = lora_tensor_key(key, part);
        if let Ok((path, p)) = parse_lora_tensor_key(&made) {
            assert_eq!(
                (path.as_str(), p),
                (key, part),
                "format/parse round trip of {made:?}"
            );
        }
    }
}
