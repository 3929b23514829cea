//! The settings of `trainer-cli train`: arbitrary config-file text and arbitrary command-line
//! flags. No panic; a rejected file or value gives one line naming it; settings that validate
//! are what `training_parameters.toml` records and read back unchanged (the run state a resume compares
//! is built by `trainer_core::job` from these same values).
//!
//! The same text read as Training PRO's `training_parameters.json` (`--config FILE.json`): no panic; it maps
//! or gives one line naming the file; what it maps is listed key by key.
//!
//! `trainer-cli` is a binary, so this target compiles its settings modules itself
//! (`crates/trainer-cli/src/settings.rs`, which turns the settings into the library's types, and the
//! `sources.rs` and `original_config/` beside it).
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/trainer-cli/src/original_config/mod.rs"]
mod original_config;
#[allow(dead_code)]
#[path = "../../crates/trainer-cli/src/settings.rs"]
mod settings;
#[allow(dead_code)]
#[path = "../../crates/trainer-cli/src/sources.rs"]
mod sources;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use original_config::OriginalConfig;
use settings::{SettingFlags, Settings};
use sources::Sources;

/// The settings flags of `train`, alone.
#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct Flags {
    #[command(flatten)]
    settings: SettingFlags,
}

// Input: the config text, then the flags, each after a NUL byte.
fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let args: Vec<OsString> = parts.map(|p| OsString::from_vec(p.to_vec())).collect();

    let path = std::path::Path::new("training_parameters.json");
    match OriginalConfig::parse(path, &text) {
        Ok(mut original) => {
            let (mut s, mut sources) = (Settings::default(), Sources::default());
            match original.apply(&mut s, &mut sources) {
                Ok(()) => {
                    original
                        .finish(&mut s, &sources)
                        .expect("micro-steps convert again");
                    let listing = original.listing(&s, &sources);
                    assert!(listing.lines().count() > 0);
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("training_parameters.json") && !msg.contains('\n'),
                        "{msg:?}"
                    );
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("training_parameters.json") && !msg.contains('\n'),
                "{msg:?}"
            );
        }
    }

    let mut s = match Settings::from_toml(&text) {
        Ok(s) => {
            // A file that reads is one the program can write back.
            let again = s
                .to_toml()
                .expect("a settings file that reads can be written");
            let back = Settings::from_toml(&again).expect("written settings read back");
            assert_eq!(back.to_toml().unwrap(), again, "to_toml is not stable");
            s
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
            Settings::default()
        }
    };
    if let Ok(flags) = Flags::try_parse_from(&args) {
        s.apply(&flags.settings);
    }
    match s.validate() {
        Ok(()) => {
            // training_parameters.toml, then `--config` / `--resume`: the same run.
            let written = s.to_toml().expect("valid settings can be recorded");
            let back = Settings::from_toml(&written).expect("recorded settings read back");
            assert_eq!(back, s, "recorded settings changed\n{written}");
            // Equal settings build the same job, whose resume settings then cannot conflict.
            assert!(back.validate().is_ok());
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("setting") || msg.contains("settings"), "{msg}");
            assert!(!msg.contains('\n'), "{msg:?}");
        }
    }
});
