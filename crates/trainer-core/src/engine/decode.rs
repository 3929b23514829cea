//! Incremental inference with a key/value cache: the forward pass of new tokens at positions after the cached ones,
//! on the frozen weights as stored (the same products as training, `product.rs`) with an adapter applied unmerged
//! (`y = x Wᵀ + scale · (x Aᵀ) Bᵀ`), returning the logits of the last new position.

use candle_core::Result;
use rayon::prelude::*;

use super::gemm::Mode;
use super::kernels;
use super::layer::{lora_linear, LayerWeights};
use super::net::Net;
use super::product::{x_wt, HEAD_PANEL};
use super::workspace::Buf;

/// Keys and values of every layer for the positions seen so far (`[len, kv_heads · head_dim]` each, RoPE applied
/// to the keys), and the buffers one step reuses.
#[derive(Default)]
pub(crate) struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    bufs: [Buf; 8],
    panel: Buf,
}

impl KvCache {
    /// Positions cached.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes held by the cache and its buffers.
    pub(crate) fn bytes(&self) -> usize {
        let kv: usize = self.k.iter().chain(&self.v).map(|v| v.capacity() * 4).sum();
        kv + self.bufs.iter().map(Buf::bytes).sum::<usize>() + self.panel.bytes()
    }
}

/// `y[n, out] = x[n, in] Wᵀ (+ scale · (x Aᵀ) Bᵀ) (+ bias)` for module `m`: training's product, without dropout.
fn project(
    w: &LayerWeights,
    m: usize,
    x: &[f32],
    n: usize,
    y: &mut Buf,
    u: &mut Buf,
    panel: &mut Buf,
) -> Result<()> {
    lora_linear(w, m, x, x, n, y.fit(n * w.linears[m].rows), u, panel)
}

/// Causal attention of the new queries (rows of `q`) at positions `p0..`, each over the cached keys/values up to
/// its own position, into `out` `[rows, heads · hd]`. Softmax sums in f64, as the training kernels do.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p0: usize,
    (heads, kv_heads, hd): (usize, usize, usize),
    out: &mut [f32],
) {
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let group = heads / kv_heads.max(1);
    let scale = 1.0 / (hd as f64).sqrt();
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let (i, h) = (idx / heads, idx % heads);
        let kh = h / group.max(1);
        let qi = &q[i * qw + h * hd..][..hd];
        let seen = p0 + i + 1;
        let scores: Vec<f64> = (0..seen)
            .map(|j| {
                let kj = &k[j * kw + kh * hd..][..hd];
                qi.iter()
                    .zip(kj)
                    .map(|(a, b)| f64::from(a * b))
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let mut acc = vec![0f64; hd];
        for (j, p) in e.iter().enumerate() {
            let vj = &v[j * kw + kh * hd..][..hd];
            acc.iter_mut()
                .zip(vj)
                .for_each(|(a, &x)| *a += p / sum * f64::from(x));
        }
        o.iter_mut().zip(&acc).for_each(|(o, a)| *o = *a as f32);
    });
}

/// Runs `ids` (the tokens after the `cache.len()` cached ones) through the model, appends their keys and values
/// to `cache`, and returns the logits `[vocab]` of the last one.
pub(crate) fn step(net: &Net, cache: &mut KvCache, ids: &[u32]) -> Result<Vec<f32>> {
    let cfg = net.cfg;
    let (n, p0) = (ids.len(), cache.len);
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let eps = cfg.rms_norm_eps as f32;
    if cache.k.len() != net.layers.len() {
        cache.k = vec![Vec::new(); net.layers.len()];
        cache.v = vec![Vec::new(); net.layers.len()];
    }
    let (cos, sin) = net.rope_half_tables(p0 + n);
    let half = hd / 2;
    let (cos, sin) = (&cos[p0 * half..], &sin[p0 * half..]);
    let [x, xn, q, k, v, att, y, u] = &mut cache.bufs;
    let panel = &mut cache.panel;
    let x = x.fit(n * h);
    net.embed.gather_rows(ids, x)?;
    let mut inv = vec![0f32; n];
    for (li, lw) in net.layers.iter().enumerate() {
        kernels::rms_forward(x, lw.input_norm, eps, xn.fit(n * h), &mut inv);
        project(lw, 0, xn, n, q, u, panel)?;
        project(lw, 1, xn, n, k, u, panel)?;
        project(lw, 2, xn, n, v, u, panel)?;
        kernels::rope(q, qw, hd, n, cos, sin, false);
        kernels::rope(k, kw, hd, n, cos, sin, false);
        cache.k[li].extend_from_slice(k);
        cache.v[li].extend_from_slice(v);
        attend(
            q,
            &cache.k[li],
            &cache.v[li],
            p0,
            (heads, kv_heads, hd),
            att.fit(n * qw),
        );
        project(lw, 3, att, n, y, u, panel)?;
        kernels::add_assign(x, y);
        kernels::rms_forward(x, lw.post_norm, eps, xn.fit(n * h), &mut inv);
        project(lw, 4, xn, n, q, u, panel)?;
        project(lw, 5, xn, n, k, u, panel)?;
        let inter = q.len();
        let act = att.fit(inter);
        kernels::swiglu(q, k, act);
        project(lw, 6, act, n, y, u, panel)?;
        kernels::add_assign(x, y);
    }
    cache.len = p0 + n;
    let last = &x[(n - 1) * h..];
    let xn = xn.fit(h);
    kernels::rms_forward(last, net.norm, eps, xn, &mut inv[..1]);
    let mut logits = vec![0f32; net.head.rows];
    x_wt(
        &mut logits,
        xn,
        net.head,
        1,
        (Mode::Set, 1.0),
        panel,
        HEAD_PANEL,
    )?;
    Ok(logits)
}
