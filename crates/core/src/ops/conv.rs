//! 2-D convolution on the CPU as matrix products: forward, input gradient and kernel gradient,
//! each an im2col (or col2im) pass and one `gemm` product per image or band of output rows,
//! any stride, zero padding below the kernel size. Three candle custom ops: [`Conv`] (no
//! bias), [`ConvBias`] and [`ConvResidual`] (bias and residual branch in the same pass), each
//! with an exact backward pass; tested against `Tensor::conv2d` and its gradients.
//!
//! candle's CPU `conv2d` builds its im2col tiles element by element, needs transposes around
//! its matrix product, and its backward pass (a transposed convolution and a convolution for
//! the kernel) runs mostly on one thread. Here each task (an image, or a band of output rows of
//! one image when there are fewer images than threads) copies the `k·k` shifted (and, for
//! stride s > 1, strided) rows of every input channel into a per-thread column matrix
//! `[C·k·k, rows·Wo]` (for a kernel-1, padding-0, stride-1 convolution the image itself is that
//! matrix), and one `gemm` call multiplies the kernel `[O, C·k·k]` (the `[O, C, k, k]` layout
//! as it is) by it into the output `[O, rows·Wo]` of that image, in place, starting from the
//! bias. The backward pass is exact: the kernel gradient is the sum over images of the output
//! gradient times the transposed column matrix; the input gradient is, for stride 1, the same
//! convolution of the output gradient with the flipped, transposed kernel, and for larger
//! strides the column gradient `Wᵀ · grad` scattered back onto the pixels its taps read (the
//! adjoint of im2col).
//!
//! They take contiguous `f32` tensors on the CPU only; a model dispatches to them there and to
//! candle's convolution elsewhere (as `recompose_diffusion::nn::conv::Conv2d` does).

use std::cell::RefCell;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, bail};

use crate::gemm::strided;
use crate::host::{SendPtr, f32_data, output_buffer};

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    p: usize,
    s: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    /// Rows of the column matrix, `C·k·k`.
    fn kk(&self) -> usize {
        self.c * self.k * self.k
    }

    fn hw_out(&self) -> usize {
        self.ho * self.wo
    }

    /// Whether the input image is its own column matrix.
    fn direct(&self) -> bool {
        self.k == 1 && self.p == 0 && self.s == 1
    }

    /// Output columns `x` whose tap `kx` falls inside the input: `lo..hi` with
    /// `0 ≤ x·s + kx − p < w`.
    fn columns(&self, kx: usize) -> (usize, usize) {
        let lo = self.p.saturating_sub(kx).div_ceil(self.s).min(self.wo);
        let hi = if self.w + self.p > kx {
            ((self.w - 1 + self.p - kx) / self.s + 1).clamp(lo, self.wo)
        } else {
            lo
        };
        (lo, hi)
    }
}

/// The geometry of a convolution of input dims `x` with a `k×k` kernel, padding `p` and
/// stride `s` (`p < k`, `s ≥ 1`).
fn geom(x: &[usize], k: usize, p: usize, s: usize) -> candle_core::Result<Geom> {
    let [b, c, h, w] = x else {
        bail!("conv: expected a 4-D input, got {x:?}")
    };
    if s == 0 {
        bail!("conv: the stride must be positive")
    }
    let (ho, wo) = match ((h + 2 * p).checked_sub(k), (w + 2 * p).checked_sub(k)) {
        (Some(a), Some(bb)) if p < k => (a / s + 1, bb / s + 1),
        _ => bail!("conv: kernel {k} with padding {p} does not fit an input of {h}x{w}"),
    };
    Ok(Geom {
        b: *b,
        c: *c,
        h: *h,
        w: *w,
        k,
        p,
        s,
        ho,
        wo,
    })
}

thread_local! {
    /// The column matrix of the current task, reused across calls.
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The product of a task that gathers several images, before it is scattered to them.
    static PRODUCT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's column buffer of at least `len` elements.
fn with_cols<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_scratch(&COLS, len, f)
}

/// Runs `f` with this thread's buffer `key` grown to at least `len` elements.
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// The most bytes a column matrix of one task should take, so that it stays in the L2 cache
/// beside the product's other operands: larger ones (many input channels on a large map) are
/// built and multiplied in bands of output rows.
const COLS_BYTES: usize = 3 << 19;

/// Bands of output rows for a column matrix of `kk` rows over `ho × wo` output pixels: the
/// fewest that keep each within [`COLS_BYTES`].
fn cols_bands(kk: usize, ho: usize, wo: usize) -> usize {
    (kk * ho * wo * std::mem::size_of::<f32>())
        .div_ceil(COLS_BYTES)
        .clamp(1, ho.max(1))
}

/// Products narrower than this many columns gather several images into one: a product over
/// the 64 or 16 pixels of one small feature map leaves most of the microkernel's rows empty.
const GROUP_COLUMNS: usize = 256;

/// Images per task for output maps of `hw` pixels: enough for [`GROUP_COLUMNS`] columns, but no
/// fewer tasks than threads.
fn images_per_task(hw: usize, b: usize, threads: usize) -> usize {
    if hw >= GROUP_COLUMNS || hw == 0 {
        1
    } else {
        GROUP_COLUMNS
            .div_ceil(hw)
            .min(b.div_ceil(threads.max(1)))
            .max(1)
    }
}

/// Images `i0..i1` of `src` (`[B, C, HW]`) side by side as one matrix `[C × (i1 − i0)·HW]`
/// in `dst`.
fn gather(src: &[f32], (i0, i1): (usize, usize), (c, hw): (usize, usize), dst: &mut [f32]) {
    let n = (i1 - i0) * hw;
    for (j, bi) in (i0..i1).enumerate() {
        for ch in 0..c {
            dst[ch * n + j * hw..][..hw].copy_from_slice(&src[(bi * c + ch) * hw..][..hw]);
        }
    }
}

/// The row stride of a column matrix of `n` columns: `n` plus one cache line when `n` is a
/// multiple of 16, so that consecutive rows never fall into the same cache set (with rows of
/// 256 or 1024 floats they all would, and the products reading a few values of each row would
/// miss the L1 cache on every row).
fn col_stride(n: usize) -> usize {
    if n >= 64 && n.is_multiple_of(16) {
        n + 16
    } else {
        n
    }
}

/// Output rows `y0..y1` of one image `img` (`[C, H, W]`) as the column matrix
/// `[C·k·k, (y1 − y0)·Wo]` (row `(ci·k + ky)·k + kx`) with row stride `ld`, zero where a tap
/// falls outside.
fn im2col(img: &[f32], g: &Geom, y0: usize, y1: usize, ld: usize, dst: &mut [f32]) {
    let (k, p, s, h, w, wo) = (g.k, g.p, g.s, g.h, g.w, g.wo);
    let n = (y1 - y0) * wo;
    // Stride 1 with "same" padding: output rows are input rows, so a tap's row of the column
    // matrix is one shifted copy of the input plane (long copies instead of one per line).
    let same = s == 1 && wo == w;
    for ci in 0..g.c {
        let plane = &img[ci * h * w..][..h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut dst[((ci * k + ky) * k + kx) * ld..][..n];
                if same {
                    shifted_rows(plane, g, (y0, y1), (ky, kx), row);
                    continue;
                }
                let (x_lo, x_hi) = g.columns(kx);
                for (yi, line) in row.chunks_exact_mut(wo).enumerate() {
                    let sy = (y0 + yi) * s + ky;
                    if sy < p || sy - p >= h {
                        line.fill(0.0);
                        continue;
                    }
                    let src = &plane[(sy - p) * w..][..w];
                    line[..x_lo].fill(0.0);
                    line[x_hi..].fill(0.0);
                    let sx = x_lo * s + kx - p;
                    if s == 1 {
                        line[x_lo..x_hi].copy_from_slice(&src[sx..sx + (x_hi - x_lo)]);
                    } else {
                        for (d, v) in line[x_lo..x_hi].iter_mut().zip(src[sx..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// One row of the column matrix of a stride-1 "same" convolution: output rows `y0..y1` of
/// tap `(ky, kx)`, i.e. `plane[(y + ky − p)·W + x + kx − p]`, zero outside the plane.
fn shifted_rows(
    plane: &[f32],
    g: &Geom,
    (y0, y1): (usize, usize),
    (ky, kx): (usize, usize),
    row: &mut [f32],
) {
    let (h, w, p) = (g.h, g.w, g.p);
    // Output rows whose source row y + ky − p lies inside the plane.
    let ya = y0.max(p.saturating_sub(ky)).min(y1);
    let yb = y1.min((h + p).saturating_sub(ky)).max(ya);
    let (body_lo, body_hi) = ((ya - y0) * w, (yb - y0) * w);
    row[..body_lo].fill(0.0);
    row[body_hi..].fill(0.0);
    if ya == yb {
        return;
    }
    let body = &mut row[body_lo..body_hi];
    // body[i] reads plane[base + i]: a flat shift by the column offset d = kx − p.
    let d = kx as isize - p as isize;
    let base = ((ya + ky - p) * w) as isize + d;
    let len = body.len() as isize;
    let lo = (-base).clamp(0, len) as usize;
    let hi = ((h * w) as isize - base).clamp(lo as isize, len) as usize;
    body[..lo].fill(0.0);
    body[hi..].fill(0.0);
    let start = (base + lo as isize) as usize;
    body[lo..hi].copy_from_slice(&plane[start..start + (hi - lo)]);
    // The shift wrapped the first (d < 0) or last (d > 0) |d| columns of each line around
    // to the neighbouring input row: those taps fall outside the image.
    let count = d.unsigned_abs().min(w);
    let from = if d < 0 { 0 } else { w - count };
    for x in from..from + count {
        for v in body[x..].iter_mut().step_by(w) {
            *v = 0.0;
        }
    }
}

/// The adjoint of [`im2col`] over a whole image: adds every entry of the column matrix
/// `[C·k·k, Ho·Wo]` to the input pixel its tap reads (`img` `[C, H, W]`, zeroed by the caller).
fn col2im(cols: &[f32], ld: usize, g: &Geom, img: &mut [f32]) {
    let (k, p, s, h, w, wo) = (g.k, g.p, g.s, g.h, g.w, g.wo);
    let n = g.hw_out();
    for ci in 0..g.c {
        let plane = &mut img[ci * h * w..][..h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((ci * k + ky) * k + kx) * ld..][..n];
                let (x_lo, x_hi) = g.columns(kx);
                for (y, line) in row.chunks_exact(wo).enumerate() {
                    let sy = y * s + ky;
                    if sy < p || sy - p >= h {
                        continue;
                    }
                    let dst = &mut plane[(sy - p) * w..][..w];
                    let sx = x_lo * s + kx - p;
                    for (d, v) in dst[sx..].iter_mut().step_by(s).zip(&line[x_lo..x_hi]) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// `x ⋆ w` with zero padding `padding < k` and stride `stride` (input `[B, C, H, W]`, kernel
/// `[O, C, k, k]`, both contiguous `f32`), without bias.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    /// Zero padding on each side (below the kernel size).
    pub padding: usize,
    /// The stride (at least 1).
    pub stride: usize,
}

/// What the output of [`conv_forward`] starts from before the product is added: a bias
/// `[1 or B, O]` (flattened, with its batch size) and a tensor of the output's shape (a
/// residual branch), each optional.
#[derive(Clone, Copy, Default)]
struct Start<'a> {
    bias: Option<(&'a [f32], usize)>,
    residual: Option<&'a [f32]>,
}

/// The convolution of [`Conv`] of `x` with the kernel `wm` of dims `[O, C, k, k]`, plus
/// `start`.
fn conv_forward(
    conv: Conv,
    (s1, l1): (&CpuStorage, &Layout),
    (wm, wdims): (&[f32], &[usize]),
    start: Start,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let [co, ci, k, k2] = *wdims else {
        bail!("conv: expected a 4-D kernel, got {wdims:?}")
    };
    let g = geom(l1.dims(), k, conv.padding, conv.stride)?;
    if ci != g.c || k != k2 || wm.len() != co * ci * k * k {
        bail!("conv: kernel {wdims:?} does not fit input {:?}", l1.dims())
    }
    let x = f32_data(s1, l1)?;
    let (kk, hw) = (g.kk(), g.hw_out());
    if let Some((bias, bb)) = start.bias
        && (bias.len() != bb * co || (bb != 1 && bb != g.b))
    {
        bail!(
            "conv: a bias of {} values does not fit {co} channels",
            bias.len()
        )
    }
    if let Some(r) = start.residual
        && r.len() != g.b * co * hw
    {
        bail!(
            "conv: a residual of {} values does not fit the output [{}, {co}, {}, {}]",
            r.len(),
            g.b,
            g.ho,
            g.wo
        )
    }
    // The start value of output element `i` (flat) of channel `o` of image `bi`.
    let bias_of = |bi: usize, o: usize| match start.bias {
        Some((bias, 1)) => bias[o],
        Some((bias, _)) => bias[bi * co + o],
        None => 0.0,
    };
    // SAFETY: written whole below: every band of every image is filled with its start or
    // written by its product without being read (or copied from a gathered product).
    let mut out = unsafe { output_buffer(g.b * co * hw) };
    let accumulate = start.bias.is_some() || start.residual.is_some();
    if out.is_empty() {
        return Ok((CpuStorage::F32(out), Shape::from((g.b, co, g.ho, g.wo))));
    }
    let threads = candle_core::utils::get_num_threads().max(1);
    let dst = SendPtr(out.as_mut_ptr());
    let per_task = images_per_task(hw, g.b, threads);
    if per_task > 1 {
        // Small maps: the columns of several images side by side, one product, scattered.
        candle_core::utils::barrier_pool().execute_chunked(g.b.div_ceil(per_task), |range| {
            for t in range {
                let (i0, i1) = (t * per_task, ((t + 1) * per_task).min(g.b));
                let n = (i1 - i0) * hw;
                let ld = col_stride(n);
                with_cols(kk * ld, |cols| {
                    for (j, bi) in (i0..i1).enumerate() {
                        let img = &x[bi * g.c * g.h * g.w..][..g.c * g.h * g.w];
                        im2col(img, &g, 0, g.ho, ld, &mut cols[j * hw..]);
                    }
                    with_scratch(&PRODUCT, co * n, |prod| {
                        // SAFETY: prod [co × n] = W [co × kk] · cols [kk × n] (row stride ld).
                        unsafe {
                            strided(
                                (co, n, kk),
                                prod.as_mut_ptr(),
                                (n, 1),
                                false,
                                wm.as_ptr(),
                                (kk, 1),
                                cols.as_ptr(),
                                (ld, 1),
                            );
                        }
                        for (j, bi) in (i0..i1).enumerate() {
                            for o in 0..co {
                                let src = &prod[o * n + j * hw..][..hw];
                                // SAFETY: channel o of image bi belongs to this task only.
                                let d = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        dst.ptr().add((bi * co + o) * hw),
                                        hw,
                                    )
                                };
                                let v = bias_of(bi, o);
                                match start.residual {
                                    Some(r) => {
                                        let r = &r[(bi * co + o) * hw..][..hw];
                                        for ((d, s), r) in d.iter_mut().zip(src).zip(r) {
                                            *d = s + v + r;
                                        }
                                    }
                                    None if start.bias.is_some() => {
                                        for (d, s) in d.iter_mut().zip(src) {
                                            *d = s + v;
                                        }
                                    }
                                    None => d.copy_from_slice(src),
                                }
                            }
                        }
                    });
                });
            }
        });
        return Ok((CpuStorage::F32(out), Shape::from((g.b, co, g.ho, g.wo))));
    }
    // Bands of output rows per image, so that every thread has work.
    let bands = threads
        .div_ceil(g.b)
        .max(cols_bands(kk, g.ho, g.wo))
        .clamp(1, g.ho);
    let task = |t: usize| {
        let (bi, band) = (t / bands, t % bands);
        let (y0, y1) = (band * g.ho / bands, (band + 1) * g.ho / bands);
        let n = (y1 - y0) * g.wo;
        if n == 0 {
            return;
        }
        let img = &x[bi * g.c * g.h * g.w..][..g.c * g.h * g.w];
        // SAFETY: rows y0..y1 of every output channel of image bi belong to this task
        // only; `out` outlives the pool call.
        let d = unsafe { dst.ptr().add(bi * co * hw + y0 * g.wo) };
        if accumulate {
            for o in 0..co {
                // SAFETY: as above, the band of channel o.
                let band = unsafe { std::slice::from_raw_parts_mut(d.add(o * hw), n) };
                let v = bias_of(bi, o);
                match start.residual {
                    Some(r) => {
                        let r = &r[(bi * co + o) * hw + y0 * g.wo..][..n];
                        for (d, r) in band.iter_mut().zip(r) {
                            *d = r + v;
                        }
                    }
                    None => band.fill(v),
                }
            }
        }
        if g.direct() {
            // SAFETY: lhs [co × kk], rhs rows of the image, dst [co × n] with row
            // stride hw, all in bounds.
            unsafe {
                strided(
                    (co, n, kk),
                    d,
                    (hw, 1),
                    accumulate,
                    wm.as_ptr(),
                    (kk, 1),
                    img[y0 * g.wo..].as_ptr(),
                    (hw, 1),
                );
            }
            return;
        }
        let ld = col_stride(n);
        with_cols(kk * ld, |cols| {
            im2col(img, &g, y0, y1, ld, cols);
            // SAFETY: as above, with the column matrix [kk × n] of row stride ld.
            unsafe {
                strided(
                    (co, n, kk),
                    d,
                    (hw, 1),
                    accumulate,
                    wm.as_ptr(),
                    (kk, 1),
                    cols.as_ptr(),
                    (ld, 1),
                );
            }
        });
    };
    candle_core::utils::barrier_pool().execute_chunked(g.b * bands, |range| {
        for t in range {
            task(t);
        }
    });
    Ok((CpuStorage::F32(out), Shape::from((g.b, co, g.ho, g.wo))))
}

/// The input and kernel gradients of [`Conv`] for the output gradient `grad`; no input
/// gradient for an input that no variable reaches (see [`Tensor::track_op`]).
fn conv_grads(
    conv: Conv,
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Tensor)> {
    let (co, ci, k, _) = w.dims4()?;
    let grad = grad.contiguous()?;
    let grad_x = if !x.track_op() {
        // The network's input (images, noisy samples): nothing upstream takes a gradient, so
        // the transposed convolution (and its full-size accumulation) is skipped.
        None
    } else if conv.stride == 1 {
        // The same convolution of the gradient with the flipped kernel, input and output
        // channels swapped: [C, O, k, k].
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let mut flipped = vec![0f32; wv.len()];
        for o in 0..co {
            for i in 0..ci {
                for a in 0..k {
                    for b in 0..k {
                        flipped[((i * co + o) * k + a) * k + b] =
                            wv[((o * ci + i) * k + (k - 1 - a)) * k + (k - 1 - b)];
                    }
                }
            }
        }
        let flipped = Tensor::from_vec(flipped, (ci, co, k, k), w.device())?;
        Some(grad.apply_op2_no_bwd(
            &flipped,
            &Conv {
                padding: k - 1 - conv.padding,
                stride: 1,
            },
        )?)
    } else {
        let (_, _, h, wd) = x.dims4()?;
        Some(grad.apply_op2_no_bwd(&w.contiguous()?, &InputGrad { conv, h, w: wd })?)
    };
    let grad_w = x
        .contiguous()?
        .apply_op2_no_bwd(&grad, &KernelGrad { k, conv })?;
    Ok((grad_x, grad_w))
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "recompose-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        conv_forward(
            *self,
            (s1, l1),
            (f32_data(s2, l2)?, l2.dims()),
            Start::default(),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w) = conv_grads(*self, x, w, grad)?;
        Ok((grad_x, Some(grad_w)))
    }
}

/// [`Conv`] plus a per-channel bias `[1 or B, O]` (shared by the batch or per sample),
/// added by starting the product from it.
#[derive(Clone, Copy, Debug)]
pub struct ConvBias(pub Conv);

impl CustomOp3 for ConvBias {
    fn name(&self) -> &'static str {
        "recompose-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [bb, _] = *l3.dims() else {
            bail!("conv: expected a [1 or B, O] bias, got {:?}", l3.dims())
        };
        let start = Start {
            bias: Some((f32_data(s3, l3)?, bb)),
            residual: None,
        };
        conv_forward(self.0, (s1, l1), (f32_data(s2, l2)?, l2.dims()), start)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w) = conv_grads(self.0, x, w, grad)?;
        let d_bias = super::group_norm::channel_bias_grad(grad, bias)?;
        Ok((grad_x, Some(grad_w), Some(d_bias)))
    }
}

/// [`Conv`] plus a bias plus a residual branch: `x ⋆ w + b + r`, the product added to the
/// sum the output starts from. Inputs: `x` `[B, C, H, W]`; the kernel and the bias packed as
/// one vector (`[O·C·k·k]` then `[O]` or `[B·O]`), so that one graph node replaces the
/// convolution and the residual sum (whose backward pass would cost a full-size gradient
/// buffer of its own); `r` of the output's shape.
#[derive(Clone, Copy, Debug)]
pub struct ConvResidual {
    /// The convolution.
    pub conv: Conv,
    /// The kernel's dims `[O, C, k, k]`.
    pub kernel: [usize; 4],
}

impl ConvResidual {
    fn split(&self, packed: usize) -> candle_core::Result<(usize, usize)> {
        let nw: usize = self.kernel.iter().product();
        let co = self.kernel[0];
        if packed < nw + co || !(packed - nw).is_multiple_of(co) {
            bail!(
                "conv: {packed} packed parameters do not fit a kernel {:?} and its bias",
                self.kernel
            )
        }
        Ok((nw, (packed - nw) / co))
    }
}

impl CustomOp3 for ConvResidual {
    fn name(&self) -> &'static str {
        "recompose-conv2d-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let packed = f32_data(s2, l2)?;
        let (nw, bb) = self.split(packed.len())?;
        let start = Start {
            bias: Some((&packed[nw..], bb)),
            residual: Some(f32_data(s3, l3)?),
        };
        conv_forward(self.conv, (s1, l1), (&packed[..nw], &self.kernel), start)
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (nw, bb) = self.split(packed.elem_count())?;
        let w = packed.narrow(0, 0, nw)?.reshape(self.kernel.as_slice())?;
        let bias = packed
            .narrow(0, nw, packed.elem_count() - nw)?
            .reshape((bb, self.kernel[0]))?;
        let (grad_x, grad_w) = conv_grads(self.conv, x, &w, grad)?;
        let d_bias = super::group_norm::channel_bias_grad(grad, &bias)?;
        let d_packed = Tensor::cat(&[grad_w.flatten_all()?, d_bias.flatten_all()?], 0)?;
        Ok((grad_x, Some(d_packed), Some(grad.clone())))
    }
}

/// The input gradient of a strided [`Conv`]: output gradient `[B, O, Ho, Wo]` and kernel
/// `[O, C, k, k]` to `[B, C, H, W]`, per image the column gradient `Wᵀ · grad` scattered back
/// by [`col2im`].
#[derive(Clone, Copy, Debug)]
struct InputGrad {
    conv: Conv,
    h: usize,
    w: usize,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "recompose-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [co, ci, k, _] = *l2.dims() else {
            bail!("conv: expected a 4-D kernel, got {:?}", l2.dims())
        };
        let [b, gco, gh, gw] = *l1.dims() else {
            bail!("conv: expected a 4-D gradient, got {:?}", l1.dims())
        };
        let g = geom(
            &[b, ci, self.h, self.w],
            k,
            self.conv.padding,
            self.conv.stride,
        )?;
        if (gco, gh, gw) != (co, g.ho, g.wo) {
            bail!(
                "conv: gradient {:?} does not fit kernel {:?} on {}x{}",
                l1.dims(),
                l2.dims(),
                self.h,
                self.w
            );
        }
        let grad = f32_data(s1, l1)?;
        let wm = f32_data(s2, l2)?;
        let (kk, hw, chw) = (g.kk(), g.hw_out(), ci * self.h * self.w);
        let mut out = vec![0f32; b * chw];
        if out.is_empty() || hw == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((b, ci, self.h, self.w))));
        }
        let dst = SendPtr(out.as_mut_ptr());
        let per = images_per_task(hw, b, candle_core::utils::get_num_threads());
        candle_core::utils::barrier_pool().execute_chunked(b.div_ceil(per), |range| {
            for t in range {
                let (i0, i1) = (t * per, ((t + 1) * per).min(b));
                let n = (i1 - i0) * hw;
                // SAFETY: images i0..i1 of `out` belong to this task only; `out` outlives the
                // call.
                let imgs = unsafe {
                    std::slice::from_raw_parts_mut(dst.ptr().add(i0 * chw), (i1 - i0) * chw)
                };
                // cols [kk × n] = Wᵀ (W [co × kk] read transposed) · grad [co × n], the
                // gradients of several images side by side on small maps; then each image's
                // block of columns scattered back.
                let mut scatter = |gr: &[f32], cols: &mut [f32]| {
                    // SAFETY: the operands hold [co × kk], [co × n] and [kk × n].
                    unsafe {
                        strided(
                            (kk, n, co),
                            cols.as_mut_ptr(),
                            (n, 1),
                            false,
                            wm.as_ptr(),
                            (1, kk),
                            gr.as_ptr(),
                            (n, 1),
                        );
                    }
                    for (j, img) in imgs.chunks_exact_mut(chw).enumerate() {
                        col2im(&cols[j * hw..], n, &g, img);
                    }
                };
                with_cols(kk * n, |cols| {
                    if i1 - i0 == 1 {
                        scatter(&grad[i0 * co * hw..][..co * hw], cols);
                    } else {
                        with_scratch(&PRODUCT, co * n, |gr| {
                            gather(grad, (i0, i1), (co, hw), gr);
                            scatter(gr, cols);
                        });
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, ci, self.h, self.w))))
    }
}

/// The kernel gradient of [`Conv`]: input `x` `[B, C, H, W]` and output gradient
/// `[B, O, Ho, Wo]` to `[O, C, k, k]`.
#[derive(Clone, Copy, Debug)]
struct KernelGrad {
    k: usize,
    conv: Conv,
}

impl CustomOp2 for KernelGrad {
    fn name(&self) -> &'static str {
        "recompose-conv2d-kernel-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = geom(l1.dims(), self.k, self.conv.padding, self.conv.stride)?;
        let [gb, co, gh, gw] = *l2.dims() else {
            bail!("conv: expected a 4-D gradient, got {:?}", l2.dims())
        };
        if (gb, gh, gw) != (g.b, g.ho, g.wo) {
            bail!(
                "conv: gradient {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let x = f32_data(s1, l1)?;
        let grad = f32_data(s2, l2)?;
        let (kk, hw) = (g.kk(), g.hw_out());
        let size = co * kk;
        // One accumulator per group of images, summed at the end.
        let groups = candle_core::utils::get_num_threads().clamp(1, g.b.max(1));
        if size == 0 || hw == 0 || g.b == 0 {
            return Ok((
                CpuStorage::F32(vec![0f32; size]),
                Shape::from((co, g.c, g.k, g.k)),
            ));
        }
        // SAFETY: every group has at least one image (groups ≤ B), whose product overwrites
        // the group's accumulator before the others add to it.
        let mut acc = unsafe { output_buffer(groups * size) };
        let parts: Vec<Mutex<&mut [f32]>> = acc.chunks_mut(size).map(Mutex::new).collect();
        candle_core::utils::barrier_pool().execute_chunked(groups, |range| {
            for gi in range {
                let mut part = parts[gi].lock().unwrap_or_else(|e| e.into_inner());
                let dst = part.as_mut_ptr();
                let (first, last) = (gi * g.b / groups, (gi + 1) * g.b / groups);
                // Images gathered per product on small maps (the reduction runs over pixels).
                let per = if hw >= GROUP_COLUMNS {
                    1
                } else {
                    GROUP_COLUMNS.div_ceil(hw)
                };
                let mut i0 = first;
                while i0 < last {
                    let i1 = (i0 + per).min(last);
                    let n = (i1 - i0) * hw;
                    // dst [co × kk], stored column by column, (+)= grad [co × m] · colsᵀ, the
                    // gradient with row stride rs, cols [kk × m] with row stride ld; the first
                    // product of the group overwrites. (Column-major output keeps the column
                    // matrix in place: only the small gradient is repacked.)
                    let product = |(gr, rs): (&[f32], usize),
                                   m: usize,
                                   (cols, ld): (&[f32], usize),
                                   add: bool| {
                        // SAFETY: the operands hold [co × m] (row stride rs) and [kk × m] (row
                        // stride ld).
                        unsafe {
                            strided(
                                (co, kk, m),
                                dst,
                                (1, co),
                                add,
                                gr.as_ptr(),
                                (rs, 1),
                                cols.as_ptr(),
                                (1, ld),
                            );
                        }
                    };
                    let img = |bi: usize| &x[bi * g.c * g.h * g.w..][..g.c * g.h * g.w];
                    if i1 - i0 == 1 {
                        let gr = &grad[i0 * co * hw..][..co * hw];
                        if g.direct() {
                            product((gr, hw), hw, (img(i0), hw), i0 != first);
                        } else {
                            // Bands of output rows whose column matrix stays in the L2 cache,
                            // each product adding to the kernel gradient.
                            let bands = cols_bands(kk, g.ho, g.wo);
                            for band in 0..bands {
                                let (y0, y1) = (band * g.ho / bands, (band + 1) * g.ho / bands);
                                let m = (y1 - y0) * g.wo;
                                let ld = col_stride(m);
                                with_cols(kk * ld, |cols| {
                                    im2col(img(i0), &g, y0, y1, ld, cols);
                                    let add = i0 != first || band > 0;
                                    product((&gr[y0 * g.wo..], hw), m, (cols, ld), add);
                                });
                            }
                        }
                    } else {
                        let ld = col_stride(n);
                        with_cols(kk * ld, |cols| {
                            with_scratch(&PRODUCT, co * n, |gr| {
                                for (j, bi) in (i0..i1).enumerate() {
                                    im2col(img(bi), &g, 0, g.ho, ld, &mut cols[j * hw..]);
                                }
                                gather(grad, (i0, i1), (co, hw), gr);
                                product((gr, n), n, (cols, ld), i0 != first);
                            });
                        });
                    }
                    i0 = i1;
                }
            }
        });
        drop(parts);
        let (first, rest) = acc.split_at_mut(size);
        for part in rest.chunks(size) {
            for (a, v) in first.iter_mut().zip(part) {
                *a += v;
            }
        }
        // Column-major [co × kk] to the kernel's row-major [co, C, k, k].
        let mut out = vec![0f32; size];
        for (j, col) in first.chunks_exact(co).enumerate() {
            for (o, v) in col.iter().enumerate() {
                out[o * kk + j] = *v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((co, g.c, g.k, g.k))))
    }
}
