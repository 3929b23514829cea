//! A bounds-checked, safe entry to the `gemm` crate's strided f32 matrix product: the one place in trainer-core
//! that needs `unsafe`. Every view is checked against its slice before the call, and the destination is
//! row-major (unit column stride, row stride at least its width), so no two destination elements alias.

#![allow(unsafe_code)]

use candle_core::Result;
use gemm::Parallelism;

/// A read-only strided matrix view: element `(i, j)` is `data[off + i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major view starting at `off` with row stride `rs`.
    pub fn rows(data: &'a [f32], off: usize, rs: usize) -> Self {
        Self {
            data,
            off,
            rs,
            cs: 1,
        }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether an `r × c` matrix read through this view stays inside `data`.
    fn fits(&self, r: usize, c: usize) -> bool {
        if r == 0 || c == 0 {
            return true;
        }
        (r - 1)
            .checked_mul(self.rs)
            .and_then(|a| (c - 1).checked_mul(self.cs).and_then(|b| a.checked_add(b)))
            .and_then(|last| last.checked_add(self.off))
            .is_some_and(|last| last < self.data.len())
    }
}

/// How the product lands in the destination.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// `dst = beta · lhs · rhs`.
    Set,
    /// `dst += beta · lhs · rhs`.
    Add,
}

/// Whether a product may use the rayon pool (`Par`) or must stay on the calling thread (`Seq`, for calls made
/// from inside parallel tasks or for tiny products).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Threads {
    Par,
    Seq,
}

/// `dst[m × n] (=|+=) beta · lhs[m × k] · rhs[k × n]`, with `dst` row-major from `dst_off` with row stride `dst_rs`.
///
/// Fails when a view does not fit its slice or `dst_rs < n` (callers build views from the shapes they allocate, so
/// that is a bug in the caller, reported instead of touching memory out of bounds).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: View<'_>,
    rhs: View<'_>,
    mode: Mode,
    beta: f32,
    threads: Threads,
) -> Result<()> {
    let out = View::rows(dst, dst_off, dst_rs);
    if !((m <= 1 || dst_rs >= n) && out.fits(m, n) && lhs.fits(m, k) && rhs.fits(k, n)) {
        candle_core::bail!("engine matmul: a view exceeds its buffer ({m}x{n}x{k}) (a bug)")
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if mode == Mode::Set {
            for i in 0..m {
                dst[dst_off + i * dst_rs..][..n].fill(0.0);
            }
        }
        return Ok(());
    }
    let parallelism = match threads {
        Threads::Par if rayon::current_num_threads() > 1 => {
            Parallelism::Rayon(rayon::current_num_threads())
        }
        _ => Parallelism::None,
    };
    let isz = |v: usize| v as isize;
    // SAFETY: all three views were checked above to lie inside their slices for the given shapes; `dst` is a
    // unique borrow with a non-overlapping row-major layout (`dst_rs >= n`, unit column stride), and `lhs`/`rhs`
    // are shared borrows, so they cannot alias `dst`. `gemm` reads and writes only within those extents.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_off),
            1,
            isz(dst_rs),
            mode == Mode::Add,
            lhs.data.as_ptr().add(lhs.off),
            isz(lhs.cs),
            isz(lhs.rs),
            rhs.data.as_ptr().add(rhs.off),
            isz(rhs.cs),
            isz(rhs.rs),
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_naive_product_through_transposed_views(
            m in 1usize..20, n in 1usize..20, k in 0usize..20, seed in any::<u64>(), add in any::<bool>(),
        ) {
            let mut rng = Rng::new(seed);
            let a = rng.uniform(m * k, -1.0, 1.0);
            let b = rng.uniform(k * n, -1.0, 1.0);
            // bt is b stored transposed ([n, k]); read back through `.t()`.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let start = rng.uniform(m * n, -1.0, 1.0);
            let mut dst = start.clone();
            let mode = if add { Mode::Add } else { Mode::Set };
            matmul(&mut dst, 0, n, (m, n, k), View::rows(&a, 0, k), View::rows(&bt, 0, k).t(), mode, 0.5, Threads::Par).unwrap();
            let want = naive(&a, &b, m, n, k);
            for i in 0..m * n {
                let w = 0.5 * want[i] + if add { start[i] } else { 0.0 };
                prop_assert!((dst[i] - w).abs() < 1e-4, "{} vs {}", dst[i], w);
            }
        }
    }

    #[test]
    fn refuses_a_view_past_its_slice() {
        let a = [0f32; 6];
        let mut d = [0f32; 4];
        let r = matmul(
            &mut d,
            0,
            2,
            (2, 2, 3),
            View::rows(&a, 1, 3),
            View::rows(&a, 0, 2),
            Mode::Set,
            1.0,
            Threads::Seq,
        );
        assert!(r.unwrap_err().to_string().contains("exceeds its buffer"));
    }
}
