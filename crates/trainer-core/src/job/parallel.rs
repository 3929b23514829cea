//! Data parallelism in a job: micro-batch `k` of a step runs on rank `k mod N`; every rank gathers every
//! micro-batch's gradient and NLL and adds them in order of `k` (the order of the single-process step, so the
//! bytes are the same), then applies the same update. Rank 0 alone writes files and reads control; it
//! broadcasts whether the run goes on.

use std::time::Duration;

use checkpoint_policy::StopReason;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::agree::{disagreements, PARTS};
use crate::job::observer::End;
use crate::job::Collective;
use crate::train::{Sample, StepStats, StepSum, Trainer};

/// Micro-batches per step must split evenly over the processes.
pub(crate) fn check_grad_accum(grad_accum: u64, size: usize) -> Result<()> {
    let n = size as u64;
    if n > 1 && !grad_accum.is_multiple_of(n) {
        let next = grad_accum.div_ceil(n) * n;
        return Err(Error::setting(
            "grad_accum",
            format!(
                "{grad_accum} micro-batches per step cannot be split evenly over {n} processes: use a multiple \
                 of {n} (e.g. {next})"
            ),
        ));
    }
    Ok(())
}

/// Compares the processes' digests ([`PARTS`]); every rank returns the same refusal when any differs.
pub(crate) fn agree(c: &dyn Collective, mine: [u64; 4], timeout: Duration) -> Result<()> {
    let table = c.all_gather_u64(&mine, timeout)?;
    let differ = disagreements(&table);
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::distributed(
        c.rank(),
        format!(
            "the processes do not agree before the first step: {} differ(s) from process 0 (compared: {}). \
             Give every process the same settings, data files, model file and checkpoint",
            differ.join("; "),
            PARTS.join(", ")
        ),
    ))
}

/// One optimizer step over `micro_batches` on every rank: this rank computes its share, all gather, every rank
/// adds in order of `k` and updates. Returns the step's figures and whether any rank's interrupter was raised.
pub(crate) fn step(
    c: &dyn Collective,
    trainer: &mut Trainer,
    micro_batches: &[Vec<Sample>],
    lr: f64,
    interrupted: bool,
    timeout: Duration,
) -> Result<(StepStats, bool)> {
    let (rank, n) = (c.rank(), c.size());
    let total = trainer.check_step(micro_batches, lr)?;
    let g = trainer.gradient_len();
    let count = |r: usize| (r..micro_batches.len()).step_by(n).count();
    let counts: Vec<usize> = (0..n).map(|r| count(r) * g).collect();
    let most = count(0);
    let mut mine = Vec::with_capacity(counts[rank]);
    // [interrupt flag, then (nll bits, padded) per micro-batch slot of this rank, zero-filled to `most`].
    let mut meta = vec![0u64; 1 + 2 * most];
    meta[0] = u64::from(interrupted);
    for (j, k) in (rank..micro_batches.len()).step_by(n).enumerate() {
        let (nll, padded) = trainer.micro_batch_gradient(k, &micro_batches[k], total)?;
        trainer.copy_micro_batch_gradient(&mut mine);
        meta[1 + 2 * j] = nll.to_bits();
        meta[2 + 2 * j] = padded as u64;
    }
    let all = c.all_gather_f32(&mine, &counts, timeout)?;
    let metas = c.all_gather_u64(&meta, timeout)?;
    let starts: Vec<usize> = counts
        .iter()
        .scan(0, |s, &c| {
            let start = *s;
            *s += c;
            Some(start)
        })
        .collect();
    trainer.zero_step_gradient();
    let mut sum = StepSum::default();
    for k in 0..micro_batches.len() {
        let (r, j) = (k % n, k / n);
        let at = starts[r] + j * g;
        trainer.add_flat_gradient(&all[at..at + g])?;
        let m = &metas[r * meta.len()..(r + 1) * meta.len()];
        sum.add(f64::from_bits(m[1 + 2 * j]), m[2 + 2 * j] as usize);
    }
    let any_interrupt = metas.chunks(meta.len()).any(|m| m[0] != 0);
    Ok((trainer.apply_update(sum, total, lr), any_interrupt))
}

/// Rank 0's word after a step: go on, or stop (every rank at the same step).
pub(crate) fn decide(c: &dyn Collective, stop: bool, timeout: Duration) -> Result<bool> {
    let mut bytes = vec![u8::from(stop)];
    c.broadcast(&mut bytes, timeout)?;
    Ok(bytes.first() == Some(&1))
}

/// How the run ended, as rank 0 tells the others at the end.
#[derive(Serialize, Deserialize)]
pub(crate) struct Ending {
    /// "finished", "interrupted" or "stopped".
    end: String,
    reason: Option<StopReason>,
    pub(crate) adapter: std::path::PathBuf,
    pub(crate) last_checkpoint: Option<std::path::PathBuf>,
}

impl Ending {
    pub(crate) fn new(
        end: End,
        adapter: std::path::PathBuf,
        last_checkpoint: Option<std::path::PathBuf>,
    ) -> Self {
        let (end, reason) = match end {
            End::Finished => ("finished", None),
            End::Interrupted => ("interrupted", None),
            End::Stopped(r) => ("stopped", Some(r)),
        };
        Self {
            end: end.into(),
            reason,
            adapter,
            last_checkpoint,
        }
    }

    pub(crate) fn end(&self) -> End {
        match (self.end.as_str(), self.reason) {
            ("interrupted", _) => End::Interrupted,
            (_, Some(r)) => End::Stopped(r),
            _ => End::Finished,
        }
    }

    /// Rank 0 sends its ending; the others receive it.
    pub(crate) fn share(self, c: &dyn Collective, timeout: Duration) -> Result<Self> {
        let mut bytes = serde_json::to_vec(&self)
            .map_err(|e| Error::distributed(c.rank(), format!("encoding the ending: {e}")))?;
        c.broadcast(&mut bytes, timeout)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::distributed(
                c.rank(),
                format!("process 0 sent an unreadable ending ({e}): the processes are out of step"),
            )
        })
    }
}
