//! The final RMSNorm, the output projection and the cross-entropy, over selected rows a chunk at a time: the
//! `[rows, vocab]` logits exist one chunk at a time (training, evaluation) unless all logits are asked for.

use candle_core::Result;
use rayon::prelude::*;

use super::gemm::{matmul, Mode, Threads, View};
use super::kernels;
use super::layer::Dims;
use super::net::Net;
use super::product::{g_w, x_wt, HEAD_PANEL};
use super::workspace::{Buf, HeadBufs};
use crate::matrix::{MatrixRef, RefData};

/// Rows of the output projection computed at once (the `[rows, vocab]` logits buffer).
const HEAD_CHUNK: usize = 256;
/// The same for a packed head: twice the rows, so the head is expanded half as often (a 100 MB buffer for
/// SmolLM2's 49152 tokens).
const PACKED_HEAD_CHUNK: usize = 512;

/// Rows per chunk for this head.
fn chunk_rows(head: &MatrixRef) -> usize {
    match head.data {
        RefData::F32(_) => HEAD_CHUNK,
        RefData::Packed { .. } => PACKED_HEAD_CHUNK,
    }
}

/// The final RMSNorm of the residual stream `x` into `hb.hf`.
fn final_norm(net: &Net, dims: &Dims, x: &[f32], hb: &mut HeadBufs) {
    kernels::rms_forward(
        x,
        net.norm,
        dims.eps,
        hb.hf.fit(x.len()),
        hb.inv.fit(dims.n()),
    );
}

fn check_targets(targets: &[u32], vocab: usize) -> Result<()> {
    match targets.iter().find(|&&tg| tg as usize >= vocab) {
        Some(bad) => candle_core::bail!("engine: label {bad} is outside the vocabulary of {vocab}"),
        None => Ok(()),
    }
}

/// Copies the rows `rows` of `hf` (width `h`) into `dst`.
fn gather(hf: &[f32], rows: &[u32], h: usize, dst: &mut [f32]) -> Result<()> {
    for (dst, &r) in dst.chunks_mut(h).zip(rows) {
        let r = r as usize;
        let src = hf.get(r * h..(r + 1) * h).ok_or_else(|| {
            candle_core::Error::Msg(format!("engine: scored row {r} outside the batch (a bug)"))
        })?;
        dst.copy_from_slice(src);
    }
    Ok(())
}

/// Training: `Σ nll` over the scored `rows` (labels `targets`) of the last layer's output `x`, and the gradient
/// of `Σ nll / total` at `x` into `dy`. A trained head gets its gradient added into `grads`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn loss_backward(
    net: &Net,
    dims: &Dims,
    x: &[f32],
    (rows, targets, total): (&[u32], &[u32], usize),
    hb: &mut HeadBufs,
    panel: &mut Buf,
    dy: &mut Buf,
    grads: &mut [Vec<f32>],
) -> Result<f64> {
    let h = dims.hidden;
    let vocab = net.head.rows;
    check_targets(targets, vocab)?;
    final_norm(net, dims, x, hb);
    let scale = 1.0 / total as f32;
    let rows_per = chunk_rows(&net.head);
    let chunk = rows_per.min(rows.len());
    let d_hf = hb.d_hf.fit(x.len());
    d_hf.fill(0.0);
    let mut nll = 0f64;
    for (rows, targets) in rows.chunks(rows_per).zip(targets.chunks(rows_per)) {
        let len = rows.len();
        let rows_in = &mut hb.rows_in.fit(chunk * h)[..len * h];
        gather(&hb.hf, rows, h, rows_in)?;
        let logits = &mut hb.logits.fit(chunk * vocab)[..len * vocab];
        x_wt(
            logits,
            rows_in,
            net.head,
            len,
            (Mode::Set, 1.0),
            panel,
            HEAD_PANEL,
        )?;
        let per_row: Vec<f64> = logits
            .par_chunks_mut(vocab)
            .zip(targets.par_iter())
            .map(|(row, &tg)| {
                let l = crate::loss::softmax_minus_onehot(row, tg as usize);
                row.iter_mut().for_each(|v| *v *= scale);
                f64::from(l)
            })
            .collect();
        nll = in_row_order(nll, &per_row);
        let rows_out = &mut hb.rows_out.fit(chunk * h)[..len * h];
        g_w(
            rows_out,
            logits,
            net.head,
            len,
            (Mode::Set, 1.0),
            panel,
            HEAD_PANEL,
        )?;
        if let Some(gi) = net.head_grad {
            let g = grads.get_mut(gi).ok_or_else(|| {
                candle_core::Error::Msg("engine: missing lm_head gradient buffer (a bug)".into())
            })?;
            // d head += (softmax - onehot)ᵀ · rows.
            matmul(
                g,
                0,
                h,
                (vocab, h, len),
                View::rows(logits, 0, vocab).t(),
                View::rows(rows_in, 0, h),
                Mode::Add,
                1.0,
                Threads::Par,
            )?;
        }
        for (src, &r) in rows_out.chunks(h).zip(rows) {
            let r = r as usize;
            d_hf[r * h..(r + 1) * h].copy_from_slice(src);
        }
    }
    let dy = dy.fit(x.len());
    dy.fill(0.0);
    kernels::rms_backward(d_hf, x, &hb.inv, net.norm, dy);
    Ok(nll)
}

/// Evaluation: `Σ nll` over `rows` (labels `targets`) of the last layer's output `x`.
pub(crate) fn nll_sum(
    net: &Net,
    dims: &Dims,
    x: &[f32],
    (rows, targets): (&[u32], &[u32]),
    hb: &mut HeadBufs,
    panel: &mut Buf,
) -> Result<f64> {
    let h = dims.hidden;
    let vocab = net.head.rows;
    check_targets(targets, vocab)?;
    final_norm(net, dims, x, hb);
    let rows_per = chunk_rows(&net.head);
    let chunk = rows_per.min(rows.len());
    let mut nll = 0f64;
    for (rows, targets) in rows.chunks(rows_per).zip(targets.chunks(rows_per)) {
        let len = rows.len();
        let rows_in = &mut hb.rows_in.fit(chunk * h)[..len * h];
        gather(&hb.hf, rows, h, rows_in)?;
        let logits = &mut hb.logits.fit(chunk * vocab)[..len * vocab];
        x_wt(
            logits,
            rows_in,
            net.head,
            len,
            (Mode::Set, 1.0),
            panel,
            HEAD_PANEL,
        )?;
        let per_row: Vec<f64> = logits
            .par_chunks(vocab)
            .zip(targets.par_iter())
            .map(|(row, &tg)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = row.iter().map(|&v| f64::from((v - max).exp())).sum();
                (sum.ln() + f64::from(max)) - f64::from(row[tg as usize])
            })
            .collect();
        nll = in_row_order(nll, &per_row);
    }
    Ok(nll)
}

/// `start` plus the rows' NLL added one by one in row order: the same bits for any thread count (a parallel
/// `sum` groups the additions by how the work was split).
fn in_row_order(start: f64, per_row: &[f64]) -> f64 {
    per_row.iter().fold(start, |acc, l| acc + l)
}

/// Inference: the logits `[n, vocab]` of every row of the last layer's output `x`.
pub(crate) fn logits(
    net: &Net,
    dims: &Dims,
    x: &[f32],
    hb: &mut HeadBufs,
    panel: &mut Buf,
) -> Result<Vec<f32>> {
    final_norm(net, dims, x, hb);
    let vocab = net.head.rows;
    let mut out = vec![0f32; dims.n() * vocab];
    x_wt(
        &mut out,
        &hb.hf,
        net.head,
        dims.n(),
        (Mode::Set, 1.0),
        panel,
        HEAD_PANEL,
    )?;
    Ok(out)
}
