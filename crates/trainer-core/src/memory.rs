//! How much memory this process can have, and how much a model and a training run need.
//!
//! The limit is the smallest of: `MemAvailable` (`/proc/meminfo`), the cgroup's memory limit less its usage
//! (cgroup v2 `memory.max`/`memory.current` of the process's cgroup and its parents, or v1
//! `memory.limit_in_bytes`/`memory.usage_in_bytes`), and the address-space limit (`RLIMIT_AS`, from
//! `/proc/self/limits`) less the address space already mapped (`VmSize`). A source that cannot be read is left
//! out; on a system where none can be read there is no limit to check against.

use std::path::Path;

use serde::Serialize;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// The memory a process can still take, and which limit says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// Where the figure comes from (e.g. `MemAvailable in /proc/meminfo`).
    pub source: String,
}

/// The value of a `Key:   123 kB` line of a `/proc` status-like text, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The soft `Max address space` limit in `/proc/self/limits` text (`None` when unlimited).
fn address_space_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The limits found in the given texts of `/proc/meminfo`, `/proc/self/limits`, `/proc/self/status` and the
/// cgroup (limit, usage) pairs from the innermost cgroup outwards.
pub(crate) fn limits_from(
    meminfo: Option<&str>,
    limits: Option<&str>,
    status: Option<&str>,
    cgroups: &[(u64, u64)],
) -> Vec<MemoryLimit> {
    let mut out = Vec::new();
    if let Some(avail) = meminfo.and_then(|m| kb_field(m, "MemAvailable")) {
        out.push(MemoryLimit {
            bytes: avail,
            source: "MemAvailable in /proc/meminfo".into(),
        });
    }
    if let Some(&(limit, usage)) = cgroups.iter().min_by_key(|(l, u)| l.saturating_sub(*u)) {
        out.push(MemoryLimit {
            bytes: limit.saturating_sub(usage),
            source: format!(
                "the cgroup memory limit ({} MiB, {} MiB in use)",
                limit >> 20,
                usage >> 20
            ),
        });
    }
    if let Some(max) = limits.and_then(address_space_limit) {
        let used = status.and_then(|s| kb_field(s, "VmSize")).unwrap_or(0);
        out.push(MemoryLimit {
            bytes: max.saturating_sub(used),
            source: format!(
                "the address-space limit RLIMIT_AS ({} MiB, {} MiB mapped; `ulimit -v`)",
                max >> 20,
                used >> 20
            ),
        });
    }
    out
}

/// A cgroup file holding a byte count (`max` and v1's huge "unlimited" values give `None`).
fn cgroup_value(path: &Path) -> Option<u64> {
    let v: u64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    (v < 1 << 60).then_some(v)
}

/// (limit, usage) of the process's cgroup and its parents.
fn cgroups() -> Vec<(u64, u64)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, rel) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let (root, limit_file, usage_file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        let mut dir = Path::new(root).join(rel.trim_start_matches('/'));
        loop {
            if let (Some(l), Some(u)) = (
                cgroup_value(&dir.join(limit_file)),
                cgroup_value(&dir.join(usage_file)),
            ) {
                out.push((l, u));
            }
            if dir == Path::new(root) || !dir.pop() {
                break;
            }
        }
    }
    out
}

/// The memory this process can still take (the smallest limit), if any limit can be read.
pub fn process_limit() -> Option<MemoryLimit> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let (meminfo, limits, status) = (
        read("/proc/meminfo"),
        read("/proc/self/limits"),
        read("/proc/self/status"),
    );
    limits_from(
        meminfo.as_deref(),
        limits.as_deref(),
        status.as_deref(),
        &cgroups(),
    )
    .into_iter()
    .min_by_key(|l| l.bytes)
}

/// Binary gigabytes with two decimals, for messages.
pub(crate) fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses to load `needed` bytes of weights from `path` when `limit` says the process cannot have them.
pub(crate) fn check_load(
    path: &Path,
    needed: u64,
    keep: bool,
    limit: Option<&MemoryLimit>,
) -> Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    if needed <= limit.bytes {
        return Ok(());
    }
    let what_to_do = if keep {
        "free memory or raise the limit, or use a smaller quantized file (e.g. Q4_K instead of Q8_0)"
    } else {
        "use `base_weights = keep` (the weights stay as stored in the file, no f32 copy), free memory or raise the limit"
    };
    Err(Error::model(
        path,
        format!(
            "loading needs about {} for the weights ({}) but this process can have only {} ({}): {what_to_do}",
            gib(needed),
            if keep { "kept as stored" } else { "expanded to f32" },
            gib(limit.bytes),
            limit.source
        ),
    ))
}

/// An estimate of the peak memory of a training run, in bytes (see [`estimate_training`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// The frozen weights as loaded ([`crate::Model::resident_bytes`]).
    pub weights: u64,
    /// Trainable tensors with their step and micro-batch gradients (3 f32 per trainable value) and the
    /// optimizer's state ([`Optimizer::state_values`](crate::Optimizer::state_values) f32 values).
    pub trainable: u64,
    /// The engine's activation and gradient buffers at the largest micro-batch.
    pub activations: u64,
    /// The rest of the process (code, tokenizer, thread stacks, allocator slack): a fixed allowance.
    pub runtime: u64,
}

impl MemoryEstimate {
    /// The estimated peak: the sum of the parts.
    pub fn total(&self) -> u64 {
        self.weights + self.trainable + self.activations + self.runtime
    }
}

/// The fixed allowance for the rest of the process in [`MemoryEstimate::runtime`] (measured: 100-200 MB).
const RUNTIME: u64 = 200 << 20;
/// Rows of the output projection computed at once (as the engine does for a packed head; 256 for an f32 one).
const HEAD_CHUNK: u64 = 512;
/// The largest expanded weight panels (as the engine cuts them), in f32 values: a layer's matrix and the head's.
const LAYER_PANEL: u64 = 1 << 24;
const HEAD_PANEL: u64 = 1 << 22;

/// An estimate of a training run's peak memory on the CPU engine: a micro-batch of `batch` sequences of `seq`
/// tokens, LoRA of rank `rank` on `modules` of the 7 linear modules per layer, `trainable` trainable values whose
/// optimizer keeps `optimizer_state` f32 values, with or without gradient checkpointing. It counts the engine's
/// buffers exactly as it sizes them (per layer: the normalized inputs, q/k/v, the attention probabilities
/// `heads × seq²` per sequence, the MLP's gate/up/act, LoRA intermediates; without checkpointing one such set per
/// layer, with it one set plus each layer's input).
#[allow(clippy::too_many_arguments)]
pub fn estimate_training(
    cfg: &ModelConfig,
    weights: u64,
    (trainable, optimizer_state): (u64, u64),
    (batch, seq): (usize, usize),
    rank: usize,
    modules: usize,
    checkpointing: bool,
) -> MemoryEstimate {
    let (b, t) = (batch as u64, seq as u64);
    let n = b * t;
    let h = cfg.hidden_size as u64;
    let qw = (cfg.num_attention_heads * cfg.head_dim) as u64;
    let kw = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    let i = cfg.intermediate_size as u64;
    let heads = cfg.num_attention_heads as u64;
    let kv_heads = cfg.num_key_value_heads as u64;
    let layers = cfg.num_hidden_layers as u64;
    let vocab = cfg.vocab_size as u64;
    let max_in = h.max(qw).max(i);
    // One layer's kept activations (f32 values).
    let saved = 2 * n
        + 3 * n * h
        + 2 * n * qw
        + 2 * n * kw
        + b * heads * t * t
        + 3 * n * i
        + modules as u64 * n * rank as u64;
    // Temporaries shared by all layers.
    let scratch = 2 * n * i
        + n * h
        + 3 * n * qw
        + 4 * n * kw
        + b * kv_heads * t * t
        + n * qw
        + 2 * n * max_in
        + n * rank as u64
        + LAYER_PANEL
            .min(h * qw.max(kw).max(i))
            .max(HEAD_PANEL.min(vocab * h))
            .max(max_in * 16);
    // The residual stream (each layer's input and the last output) and its gradient.
    let stream = (layers + 2) * n * h;
    let head = 2 * n * h + n + HEAD_CHUNK * vocab + 2 * HEAD_CHUNK * h;
    let kept = if checkpointing { saved } else { layers * saved };
    MemoryEstimate {
        weights,
        trainable: 4 * (3 * trainable + optimizer_state),
        activations: 4 * (kept + scratch + stream + head),
        runtime: RUNTIME,
    }
}

impl crate::Model {
    /// [`estimate_training`] for this model, these LoRA settings and this optimizer: micro-batches of `batch`
    /// sequences of up to `seq` tokens, with or without gradient checkpointing. Errors name unknown target
    /// modules.
    pub fn estimate_training(
        &self,
        lora: &lora_targets::LoraSettings,
        optimizer: &crate::Optimizer,
        (batch, seq): (usize, usize),
        checkpointing: bool,
    ) -> Result<MemoryEstimate> {
        let modules = lora_targets::resolve(&lora.target_modules, &self.linear_modules())?;
        let c = &self.config;
        let (h, q, kv, i) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
            c.intermediate_size,
        );
        // Every trainable tensor's shape: A [r, in] and B [out, r] per module and layer, and the full copies.
        let mut shapes: Vec<[usize; 2]> = Vec::new();
        for _ in 0..c.num_hidden_layers {
            for m in &modules {
                let (out, inp) = match m.as_str() {
                    "q_proj" => (q, h),
                    "k_proj" | "v_proj" => (kv, h),
                    "o_proj" => (h, q),
                    "down_proj" => (h, i),
                    _ => (i, h),
                };
                shapes.push([lora.r, inp]);
                shapes.push([out, lora.r]);
            }
        }
        shapes.extend(lora.modules_to_save.iter().map(|_| [c.vocab_size, h]));
        let trainable: usize = shapes.iter().map(|[r, c]| r * c).sum();
        let state: usize = shapes.iter().map(|s| optimizer.state_values(s)).sum();
        Ok(estimate_training(
            c,
            self.resident_bytes(),
            (trainable as u64, state as u64),
            (batch, seq),
            lora.r,
            modules.len(),
            checkpointing,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max address space         4294967296           unlimited            bytes     \n";

    #[test]
    fn every_source_is_read_and_the_smallest_wins() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   20000000 kB\n";
        let status = "Name:\tx\nVmSize:\t  1048576 kB\nVmRSS:\t 10 kB\n";
        let got = limits_from(
            Some(meminfo),
            Some(LIMITS),
            Some(status),
            &[(8 << 30, 1 << 30), (16 << 30, 0)],
        );
        let bytes: Vec<u64> = got.iter().map(|l| l.bytes).collect();
        assert_eq!(bytes, vec![20_000_000 * 1024, 7 << 30, 3 << 30]);
        assert!(got[2].source.contains("RLIMIT_AS"), "{}", got[2].source);
        let unlimited = LIMITS.replace("4294967296", "unlimited");
        assert_eq!(
            limits_from(None, Some(&unlimited), Some(status), &[]),
            vec![]
        );
    }

    #[test]
    fn a_load_over_the_limit_is_refused_saying_what_to_do() {
        let limit = MemoryLimit {
            bytes: 1 << 30,
            source: "test".into(),
        };
        let p = Path::new("m.gguf");
        check_load(p, 1 << 29, true, Some(&limit)).unwrap();
        check_load(p, 1 << 40, true, None).unwrap();
        let e = check_load(p, 3 << 30, false, Some(&limit))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3.00 GiB") && e.contains("1.00 GiB") && e.contains("base_weights = keep"),
            "{e}"
        );
    }

    #[test]
    fn the_optimizer_state_is_counted_for_the_chosen_optimizer() {
        use crate::optim::{AdafactorParams, AdagradParams, Optimizer, SgdParams};
        let cfg = ModelConfig::tiny_llama(256, 32, 2, 4, 2);
        let model = crate::Model::random(cfg, 1, &candle_core::Device::Cpu).unwrap();
        let lora = lora_targets::LoraSettings {
            r: 4,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            ..lora_targets::LoraSettings::default()
        };
        let est = |o: Optimizer| {
            model
                .estimate_training(&lora, &o, (1, 16), true)
                .unwrap()
                .trainable
        };
        // Plain SGD keeps no state: 3 f32 per trainable value; AdamW 2 more, Adagrad 1 more.
        let (sgd, adamw) = (
            est(Optimizer::Sgd(SgdParams::default())),
            est(Optimizer::AdamW),
        );
        let adagrad = est(Optimizer::Adagrad(AdagradParams::default()));
        assert_eq!(sgd % 12, 0);
        assert_eq!(adamw, sgd / 3 * 5);
        assert_eq!(adagrad, sgd / 3 * 4);
        // Adafactor's factored second moment: rows + columns, far below one value per value.
        let adafactor = est(Optimizer::Adafactor(AdafactorParams::default()));
        assert!(
            sgd < adafactor && adafactor < adagrad,
            "{sgd} {adafactor} {adagrad}"
        );
    }

    #[test]
    fn checkpointing_shrinks_the_estimate_and_batches_grow_it() {
        let cfg = ModelConfig::tiny_llama(1000, 64, 8, 4, 2);
        let est = |b, ckpt| estimate_training(&cfg, 1 << 20, (1000, 2000), (b, 128), 8, 2, ckpt);
        assert!(est(4, true).activations < est(4, false).activations);
        assert!(est(8, false).activations > est(4, false).activations);
        assert_eq!(
            est(4, true).total(),
            est(4, true).weights + est(4, true).trainable + est(4, true).activations + RUNTIME
        );
    }
}
