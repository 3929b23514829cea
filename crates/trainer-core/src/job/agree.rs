//! What the processes of a data-parallel job must agree on before the first step, as 64-bit digests: the
//! settings, the data, the model's bytes and the trainer's start state.

use candle_core::Tensor;

use crate::error::Result;
use crate::matrix::{Matrix, RefData};
use crate::model::Model;
use crate::train::Trainer;

/// The names of the digests [`digests`] returns, in order.
pub(crate) const PARTS: [&str; 4] = ["settings", "data fingerprint", "model bytes", "start state"];

/// A 64-bit FNV-1a digest fed word by word (for agreement between processes; not a cryptographic hash).
#[derive(Clone, Copy)]
pub(crate) struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    pub(crate) fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x0000_0100_0000_01B3);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        for &x in chunks.remainder() {
            self.word(u64::from(x));
        }
    }

    pub(crate) fn floats(&mut self, v: &[f32]) {
        self.word(v.len() as u64);
        v.iter().for_each(|x| self.word(u64::from(x.to_bits())));
    }

    pub(crate) fn value(self) -> u64 {
        self.0
    }
}

fn matrix(d: &mut Digest, m: &Matrix) -> Result<()> {
    m.with_ref(|r| {
        d.word(r.rows as u64);
        d.word(r.cols as u64);
        match r.data {
            RefData::F32(v) => d.floats(v),
            RefData::Packed { kind, bytes } => {
                d.bytes(kind.name().as_bytes());
                d.bytes(bytes);
            }
        }
        Ok(())
    })?;
    Ok(())
}

fn tensor(d: &mut Digest, t: &Tensor) -> Result<()> {
    let v = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    d.floats(&v);
    Ok(())
}

/// A digest of the model: its configuration and every frozen weight's bytes, as loaded.
pub(crate) fn model_digest(model: &Model) -> Result<u64> {
    let mut d = Digest::default();
    d.bytes(format!("{:?}", model.config).as_bytes());
    let w = &model.weights;
    matrix(&mut d, &w.embed)?;
    for l in &w.layers {
        tensor(&mut d, &l.input_norm)?;
        for m in &l.linears {
            matrix(&mut d, m)?;
        }
        for b in l.qkv_bias.iter().flatten() {
            tensor(&mut d, b)?;
        }
        tensor(&mut d, &l.post_norm)?;
    }
    tensor(&mut d, &w.norm)?;
    if let Some(h) = &w.lm_head {
        matrix(&mut d, h)?;
    }
    for f in w.rope_freq_factors.iter().flatten() {
        d.word(f.to_bits());
    }
    Ok(d.value())
}

/// A digest of the trainer's state: the step, every trainable value and the optimizer's buffers.
pub(crate) fn start_digest(trainer: &Trainer) -> u64 {
    let mut d = Digest::default();
    d.word(trainer.step);
    for p in &trainer.params {
        d.bytes(p.key.as_bytes());
        d.floats(&p.value);
        let mut state = p.state.clone();
        for (name, _, values) in state.buffers(&p.shape) {
            d.bytes(name.as_bytes());
            d.floats(values);
        }
    }
    d.value()
}

/// Which ranks differ from rank 0 in which parts, from the gathered table (`PARTS.len()` digests per rank, in
/// rank order); empty when all agree.
pub(crate) fn disagreements(table: &[u64]) -> Vec<String> {
    let n = PARTS.len();
    let first = &table[..n];
    table
        .chunks(n)
        .enumerate()
        .skip(1)
        .filter_map(|(rank, row)| {
            let parts: Vec<&str> = PARTS
                .iter()
                .zip(row.iter().zip(first))
                .filter(|(_, (a, b))| a != b)
                .map(|(name, _)| *name)
                .collect();
            (!parts.is_empty()).then(|| format!("process {rank} ({})", parts.join(", ")))
        })
        .collect()
}
