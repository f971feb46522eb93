//! The hand-written CPU kernels of `recompose-core` against candle's own ops.
//!
//! Every candle custom op of [`recompose_core::ops`] (convolution with and without bias and
//! residual branch, fused group norm with and without SiLU, attention in both input layouts,
//! row repeats with and without bias, ReLU, nearest 2× upsampling and 2×2 average pooling,
//! batch-norm moments and normalization) is compared with candle's op, or the same function
//! written with plain candle tensor ops, forward and backward: the gradients of
//! `⟨out, probe⟩` (a random probe) with respect to every input, through `Var`s and
//! `.backward()`, on odd sizes and on sizes large enough to be split into several parts or
//! threads. The host functions without autograd (the AdamW update, the sum of squares, the
//! moving-average blend, the dense products of [`recompose_core::gemm`], the per-channel bias
//! gradient and the shared host helpers) are compared with the same formula in tensor ops or
//! in `f64` on the host. All inputs come from seeded generators of
//! [`recompose_core::random`].
//!
//! Tolerances are relative to the size of the reference: a difference may grow with the
//! number of terms summed into one value, so each check bounds `max |got − want|` by a factor
//! times `max(1, max |want|)`.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor, Var};
use recompose_core::gemm::{dense_backward, dense_forward, dense_weight_grad, gemm_host, matmul};
use recompose_core::host::{ELEMENTWISE_PART, elementwise, fast_exp, par_parts, sum_f64};
use recompose_core::ops::attention::Attention;
use recompose_core::ops::batch_norm::{Moments, Normalize};
use recompose_core::ops::conv::{Conv, ConvBias, ConvResidual};
use recompose_core::ops::group_norm::{GroupNorm, channel_bias_grad};
use recompose_core::ops::optim::{AdamWCoefficients, adamw_update, blend, sum_of_squares};
use recompose_core::ops::relu::Relu;
use recompose_core::ops::repeat::Repeat;
use recompose_core::ops::resample::Resample2x;
use recompose_core::random::{normal, normal_vec, uniform_vec};
use recompose_core::{SeededRng, seeded};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A CPU tensor of standard normal values times `scale` plus `shift`.
fn randn(rng: &mut SeededRng, dims: &[usize], scale: f64, shift: f64) -> Result<Tensor> {
    Ok(normal(rng, dims, &Device::Cpu)?.affine(scale, shift)?)
}

/// [`randn`] as a variable, so that gradients reach it.
fn var(rng: &mut SeededRng, dims: &[usize], scale: f64, shift: f64) -> Result<Var> {
    Ok(Var::from_tensor(&randn(rng, dims, scale, shift)?)?)
}

/// The elements of `t`, flattened, on the host.
fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// The largest `|a − b|` over the elements of two slices of the same length, infinite where
/// either holds a NaN.
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() { f32::INFINITY } else { d }
        })
        .fold(0.0, f32::max)
}

/// The largest `|x|` of a slice.
fn max_abs(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Asserts that `got` has the dims of `want` and `max |got − want| ≤ rel · max(1, max |want|)`.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel: f32) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: dims");
    let (g, w) = (host(got)?, host(want)?);
    let scale = max_abs(&w).max(1.0);
    let d = worst(&g, &w);
    assert!(
        d <= rel * scale,
        "{what}: max |diff| {d:e} over {rel:e} · {scale}"
    );
    Ok(())
}

/// The gradients of `⟨out, probe⟩`.
fn grads(out: &Tensor, probe: &Tensor) -> Result<GradStore> {
    Ok((out * probe)?.sum_all()?.backward()?)
}

/// Asserts that the kernel's and the reference's gradients of each named input exist and
/// agree within `rel` (see [`assert_close`]).
fn assert_grads(
    what: &str,
    kernel: &GradStore,
    reference: &GradStore,
    inputs: &[(&str, &Tensor)],
    rel: f32,
) -> Result<()> {
    for (name, t) in inputs {
        let got = kernel
            .get(t)
            .unwrap_or_else(|| panic!("{what}: the kernel gives no gradient for {name}"));
        let want = reference
            .get(t)
            .unwrap_or_else(|| panic!("{what}: the reference gives no gradient for {name}"));
        assert_close(&format!("{what}, d/d{name}"), got, want, rel)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

/// One convolution: `(B, C, H, W, O, k, padding, stride)`.
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

/// The convolutions tested. Every case has `(H + 2p − k) mod s` equal to
/// `(W + 2p − k) mod s`: candle's backward pass derives the output padding of its transposed
/// convolution from the height alone and fails otherwise.
const CONV_CASES: [ConvCase; 16] = [
    // Stride 1: "same" padding on odd sizes, no padding, kernel 1 (the image is its own
    // column matrix), one image (bands of rows), a 1×1 image.
    (3, 4, 7, 7, 5, 3, 1, 1),
    (2, 3, 8, 6, 4, 3, 0, 1),
    (4, 5, 9, 11, 3, 1, 0, 1),
    (1, 3, 7, 6, 4, 3, 1, 1),
    (5, 3, 1, 1, 2, 3, 1, 1),
    // Stride 2 (and 3): odd and even sizes, padding 0 and 1, kernels 1 and 3.
    (2, 3, 7, 9, 4, 3, 1, 2),
    (3, 2, 8, 8, 3, 3, 1, 2),
    (2, 3, 6, 4, 2, 1, 0, 2),
    (3, 4, 5, 9, 2, 3, 0, 2),
    (2, 2, 3, 3, 3, 3, 1, 2),
    (2, 3, 9, 9, 4, 3, 1, 3),
    // Small maps with several images per task, stride 1 and 2.
    (6, 7, 8, 8, 5, 3, 1, 1),
    (8, 4, 8, 8, 5, 3, 1, 2),
    // Large: maps of more than 256 output pixels on stride 2, a column matrix over the L2
    // budget (built in bands of rows), a wide kernel-1 product.
    (2, 16, 31, 33, 12, 3, 1, 2),
    (2, 96, 32, 32, 8, 3, 1, 1),
    (3, 40, 20, 20, 24, 1, 0, 1),
];

/// Forward values compared with `rel` (sums of C·k² products).
const CONV_FWD: f32 = 1e-5;
/// Gradients compared with `rel` (sums of O·k² or B·Ho·Wo products).
const CONV_GRAD: f32 = 1e-5;

fn conv_name(case: ConvCase) -> String {
    let (b, c, h, w, o, k, p, s) = case;
    format!("[{b}, {c}, {h}, {w}] ⋆ [{o}, {c}, {k}, {k}], padding {p}, stride {s}")
}

/// [`Conv`] against `Tensor::conv2d`: values and the gradients of input and kernel.
#[test]
fn conv_matches_candle_conv2d() -> Result<()> {
    let mut rng = seeded(101);
    for case in CONV_CASES {
        let (b, c, h, w, o, k, p, s) = case;
        let what = conv_name(case);
        let x = var(&mut rng, &[b, c, h, w], 1.0, 0.0)?;
        let wt = var(&mut rng, &[o, c, k, k], 1.0, 0.0)?;
        let conv = Conv {
            padding: p,
            stride: s,
        };
        let got = x.apply_op2(wt.as_tensor(), conv)?;
        let want = x.conv2d(&wt, p, s, 1, 1)?;
        assert_close(&what, &got, &want, CONV_FWD)?;
        let probe = randn(&mut rng, want.dims(), 1.0, 0.0)?;
        assert_grads(
            &what,
            &grads(&got, &probe)?,
            &grads(&want, &probe)?,
            &[("x", x.as_tensor()), ("w", wt.as_tensor())],
            CONV_GRAD,
        )?;
    }
    Ok(())
}

/// [`ConvBias`] against `conv2d` plus the broadcast bias, shared (`[1, O]`) and per sample
/// (`[B, O]`): values and the gradients of input, kernel and bias.
#[test]
fn conv_bias_matches_conv2d_plus_bias() -> Result<()> {
    let mut rng = seeded(102);
    for case in CONV_CASES {
        let (b, c, h, w, o, k, p, s) = case;
        let x = var(&mut rng, &[b, c, h, w], 1.0, 0.0)?;
        let wt = var(&mut rng, &[o, c, k, k], 1.0, 0.0)?;
        let conv = Conv {
            padding: p,
            stride: s,
        };
        for bb in [1, b] {
            let what = format!("{}, bias [{bb}, {o}]", conv_name(case));
            let bias = var(&mut rng, &[bb, o], 1.0, 0.5)?;
            let got = x.apply_op3(wt.as_tensor(), bias.as_tensor(), ConvBias(conv))?;
            let want = x
                .conv2d(&wt, p, s, 1, 1)?
                .broadcast_add(&bias.reshape((bb, o, 1, 1))?)?;
            assert_close(&what, &got, &want, CONV_FWD)?;
            let probe = randn(&mut rng, want.dims(), 1.0, 0.0)?;
            assert_grads(
                &what,
                &grads(&got, &probe)?,
                &grads(&want, &probe)?,
                &[
                    ("x", x.as_tensor()),
                    ("w", wt.as_tensor()),
                    ("bias", bias.as_tensor()),
                ],
                CONV_GRAD,
            )?;
        }
    }
    Ok(())
}

/// [`ConvResidual`] against `conv2d` plus bias plus residual, with the kernel and the bias
/// (shared and per sample) packed into one vector: values and the gradients of input, kernel,
/// bias (through the packing) and residual.
#[test]
fn conv_residual_matches_conv2d_plus_bias_plus_residual() -> Result<()> {
    let mut rng = seeded(103);
    for case in CONV_CASES {
        let (b, c, h, w, o, k, p, s) = case;
        let x = var(&mut rng, &[b, c, h, w], 1.0, 0.0)?;
        let wt = var(&mut rng, &[o, c, k, k], 1.0, 0.0)?;
        let conv = Conv {
            padding: p,
            stride: s,
        };
        for bb in [1, b] {
            let what = format!("{}, bias [{bb}, {o}] and residual", conv_name(case));
            let bias = var(&mut rng, &[bb, o], 1.0, 0.0)?;
            let plain = x.conv2d(&wt, p, s, 1, 1)?;
            let r = var(&mut rng, plain.dims(), 1.0, 0.0)?;
            let packed = Tensor::cat(&[wt.flatten_all()?, bias.flatten_all()?], 0)?;
            let op = ConvResidual {
                conv,
                kernel: [o, c, k, k],
            };
            let got = x.apply_op3(&packed, r.as_tensor(), op)?;
            let want = (plain.broadcast_add(&bias.reshape((bb, o, 1, 1))?)? + r.as_tensor())?;
            assert_close(&what, &got, &want, CONV_FWD)?;
            let probe = randn(&mut rng, want.dims(), 1.0, 0.0)?;
            assert_grads(
                &what,
                &grads(&got, &probe)?,
                &grads(&want, &probe)?,
                &[
                    ("x", x.as_tensor()),
                    ("w", wt.as_tensor()),
                    ("bias", bias.as_tensor()),
                    ("residual", r.as_tensor()),
                ],
                CONV_GRAD,
            )?;
        }
    }
    Ok(())
}

/// An input that no variable reaches gets no gradient from the kernel (its transposed
/// convolution is skipped), and the kernel gradient still equals candle's.
#[test]
fn conv_skips_the_gradient_of_an_untracked_input() -> Result<()> {
    let mut rng = seeded(104);
    for (k, p, s) in [(3, 1, 1), (3, 1, 2), (1, 0, 1)] {
        let what = format!("untracked input, k{k} p{p} s{s}");
        let x = randn(&mut rng, &[3, 4, 8, 8], 1.0, 0.0)?;
        assert!(!x.track_op());
        let wt = var(&mut rng, &[5, 4, k, k], 1.0, 0.0)?;
        let conv = Conv {
            padding: p,
            stride: s,
        };
        let got = x.apply_op2(wt.as_tensor(), conv)?;
        let want = x.conv2d(&wt, p, s, 1, 1)?;
        let probe = randn(&mut rng, want.dims(), 1.0, 0.0)?;
        let (gk, gr) = (grads(&got, &probe)?, grads(&want, &probe)?);
        assert!(gk.get(&x).is_none(), "{what}: a gradient for the input");
        assert_grads(&what, &gk, &gr, &[("w", wt.as_tensor())], CONV_GRAD)?;
    }
    Ok(())
}

/// Shapes that do not fit are errors, not wrong values.
#[test]
fn conv_rejects_shapes_that_do_not_fit() -> Result<()> {
    let mut rng = seeded(105);
    let x = randn(&mut rng, &[3, 4, 8, 8], 1.0, 0.0)?;
    let wt = randn(&mut rng, &[5, 4, 3, 3], 1.0, 0.0)?;
    let same = Conv {
        padding: 1,
        stride: 1,
    };
    // Kernel channels, padding not below the kernel size, stride 0.
    let other = randn(&mut rng, &[5, 3, 3, 3], 1.0, 0.0)?;
    assert!(x.apply_op2(&other, same).is_err());
    let wide = Conv {
        padding: 3,
        stride: 1,
    };
    assert!(x.apply_op2(&wt, wide).is_err());
    let still = Conv {
        padding: 1,
        stride: 0,
    };
    assert!(x.apply_op2(&wt, still).is_err());
    // A bias of neither 1 nor B rows, or of the wrong width.
    for dims in [[2, 5], [1, 4]] {
        let bias = randn(&mut rng, &dims, 1.0, 0.0)?;
        assert!(x.apply_op3(&wt, &bias, ConvBias(same)).is_err(), "{dims:?}");
    }
    // A residual of the wrong shape, or packed parameters of the wrong length.
    let op = ConvResidual {
        conv: same,
        kernel: [5, 4, 3, 3],
    };
    let packed = Tensor::cat(
        &[
            wt.flatten_all()?,
            Tensor::zeros(5, DType::F32, &Device::Cpu)?,
        ],
        0,
    )?;
    let good = randn(&mut rng, &[3, 5, 8, 8], 1.0, 0.0)?;
    assert_eq!(x.apply_op3(&packed, &good, op)?.dims(), [3, 5, 8, 8]);
    let wrong = randn(&mut rng, &[3, 5, 8, 7], 1.0, 0.0)?;
    assert!(x.apply_op3(&packed, &wrong, op).is_err());
    let short = packed.narrow(0, 0, packed.elem_count() - 2)?;
    assert!(x.apply_op3(&short, &good, op).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Group norm
// ---------------------------------------------------------------------------------------------

/// `act((x − μ_g)/√(σ²_g + eps) · a + b)` in plain tensor ops: statistics over each sample's
/// groups of channels (biased variance), `a` and `b` `[B, C]`.
fn group_norm_reference(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let dims = x.dims();
    let (n, c) = (dims[0], dims[1]);
    let s = x.elem_count() / (n * c);
    let xg = x.reshape((n, groups, c / groups * s))?;
    let mean = xg.mean_keepdim(2)?;
    let centered = xg.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(2)?;
    let xhat = centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape((n, c, s))?;
    let y = xhat
        .broadcast_mul(&a.reshape((n, c, 1))?)?
        .broadcast_add(&b.reshape((n, c, 1))?)?;
    let y = if silu { y.silu()? } else { y };
    Ok(y.reshape(dims)?)
}

/// [`GroupNorm`] with and without SiLU against the tensor-op form: values, the gradients
/// of `x`, `a` and `b`, and [`GroupNorm::input_grad`], for 2-D, 3-D and 4-D inputs, one group, one channel per group, and
/// large inputs of many parts.
#[test]
fn group_norm_matches_tensor_ops() -> Result<()> {
    let mut rng = seeded(201);
    let eps = 1e-5;
    let cases: [(&[usize], usize); 7] = [
        (&[3, 8, 5, 4], 4),
        (&[2, 6, 7], 3),
        (&[1, 4, 3, 3], 1),
        (&[2, 6], 3),
        (&[3, 5, 2, 3], 5),
        (&[2, 64, 16, 16], 32),
        (&[4, 32, 24, 20], 8),
    ];
    for (dims, groups) in cases {
        let (n, c) = (dims[0], dims[1]);
        for silu in [false, true] {
            let what = format!("group norm {dims:?}, {groups} groups, silu {silu}");
            // Off zero and off unit scale, so that the statistics matter.
            let x = var(&mut rng, dims, 2.0, 3.0)?;
            let a = var(&mut rng, &[n, c], 0.5, 1.0)?;
            let b = var(&mut rng, &[n, c], 0.5, 0.0)?;
            let op = GroupNorm { groups, eps, silu };
            let got = x.apply_op3(a.as_tensor(), b.as_tensor(), op)?;
            let want = group_norm_reference(&x, &a, &b, groups, eps, silu)?;
            assert_close(&what, &got, &want, 1e-5)?;
            // With two values per group the input gradient is nearly zero, a difference of
            // terms of size 1/σ: both sides round there (up to ~1.4·10⁻⁵ seen).
            let probe = randn(&mut rng, dims, 1.0, 0.0)?;
            let reference = grads(&want, &probe)?;
            // The untracked input gradient equals autograd's on the reference.
            let dx = op.input_grad(x.as_tensor(), a.as_tensor(), b.as_tensor(), &probe)?;
            assert!(!dx.track_op(), "{what}: input_grad records no graph");
            let want_dx = reference.get(x.as_tensor()).expect("reference d/dx");
            assert_close(&format!("{what}, input_grad"), &dx, want_dx, 1e-4)?;
            assert_grads(
                &what,
                &grads(&got, &probe)?,
                &reference,
                &[
                    ("x", x.as_tensor()),
                    ("a", a.as_tensor()),
                    ("b", b.as_tensor()),
                ],
                1e-4,
            )?;
        }
    }
    // Groups that do not divide the channels, or an affine map of the wrong shape.
    let x = randn(&mut rng, &[2, 6, 3, 3], 1.0, 0.0)?;
    let ab = randn(&mut rng, &[2, 6], 1.0, 0.0)?;
    let op = |groups| GroupNorm {
        groups,
        eps,
        silu: false,
    };
    assert!(x.apply_op3(&ab, &ab, op(4)).is_err());
    assert!(x.apply_op3(&ab, &ab, op(0)).is_err());
    let short = randn(&mut rng, &[1, 6], 1.0, 0.0)?;
    assert!(x.apply_op3(&short, &ab, op(3)).is_err());
    Ok(())
}

/// [`channel_bias_grad`] against sums over the spatial dims (and the batch, for a shared
/// bias).
#[test]
fn channel_bias_grad_sums_over_pixels_and_shared_rows() -> Result<()> {
    let mut rng = seeded(202);
    for dims in [&[3usize, 5, 4, 7][..], &[2, 4, 9], &[2, 64, 33, 35]] {
        let (b, c) = (dims[0], dims[1]);
        let g = randn(&mut rng, dims, 1.0, 0.2)?;
        let per_sample = g.reshape((b, c, ()))?.sum(2)?;
        for bb in [1, b] {
            let bias = Tensor::zeros((bb, c), DType::F32, &Device::Cpu)?;
            let got = channel_bias_grad(&g, &bias)?;
            let want = if bb == 1 {
                per_sample.sum_keepdim(0)?
            } else {
                per_sample.clone()
            };
            assert_close(
                &format!("bias grad {dims:?}, [{bb}, {c}]"),
                &got,
                &want,
                1e-5,
            )?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// `v · softmax(qᵀk / √d)ᵀ` per head of `qkv` `[BH, 3d, L]` (q, k, v stacked along the
/// channels), `[BH, d, L]`, with candle's softmax.
fn attention_reference(qkv: &Tensor, d: usize) -> Result<Tensor> {
    let q = qkv.narrow(1, 0, d)?;
    let k = qkv.narrow(1, d, d)?;
    let v = qkv.narrow(1, 2 * d, d)?;
    let logits = (q.t()?.matmul(&k)? / (d as f64).sqrt())?;
    let weights = candle_nn::ops::softmax(&logits, D::Minus1)?;
    Ok(v.matmul(&weights.t()?)?)
}

/// [`Attention`] on `[BH, 3d, L]` against the tensor-op form, values and gradient.
#[test]
fn attention_matches_softmax_attention() -> Result<()> {
    let mut rng = seeded(301);
    // Odd sizes, one channel per head, and heads large enough for the products' blocking.
    for (bh, d, len) in [(3, 5, 11), (2, 1, 9), (1, 7, 1), (2, 16, 100), (4, 32, 256)] {
        let what = format!("attention [{bh}, 3·{d}, {len}]");
        let qkv = var(&mut rng, &[bh, 3 * d, len], 1.5, 0.0)?;
        let got = qkv.apply_op1(Attention { head_ch: d })?;
        let want = attention_reference(&qkv, d)?;
        assert_close(&what, &got, &want, 1e-5)?;
        let probe = randn(&mut rng, want.dims(), 1.0, 0.0)?;
        assert_grads(
            &what,
            &grads(&got, &probe)?,
            &grads(&want, &probe)?,
            &[("qkv", qkv.as_tensor())],
            1e-5,
        )?;
    }
    Ok(())
}

/// [`Attention`] on an image `[B, 3C, H, W]` with `C / d` heads, read as
/// `[B·3C/3d, 3d, H·W]`, against the tensor-op form: values (`[B, C, H, W]`) and gradient.
#[test]
fn attention_on_images_matches_softmax_attention() -> Result<()> {
    let mut rng = seeded(302);
    for (b, heads, d, h, w) in [
        (2, 2, 4, 5, 7),
        (1, 3, 8, 6, 6),
        (3, 1, 16, 8, 8),
        (2, 4, 8, 16, 16),
    ] {
        let what = format!("attention [{b}, 3·{heads}·{d}, {h}, {w}]");
        let c = heads * d;
        let qkv = var(&mut rng, &[b, 3 * c, h, w], 1.5, 0.0)?;
        let got = qkv.apply_op1(Attention { head_ch: d })?;
        let want = attention_reference(&qkv.reshape((b * heads, 3 * d, h * w))?, d)?
            .reshape((b, c, h, w))?;
        assert_close(&what, &got, &want, 1e-5)?;
        let probe = randn(&mut rng, want.dims(), 1.0, 0.0)?;
        assert_grads(
            &what,
            &grads(&got, &probe)?,
            &grads(&want, &probe)?,
            &[("qkv", qkv.as_tensor())],
            1e-5,
        )?;
    }
    // Channels that are not three heads' worth.
    let x = randn(&mut rng, &[2, 7, 5], 1.0, 0.0)?;
    assert!(x.apply_op1(Attention { head_ch: 2 }).is_err());
    let x = randn(&mut rng, &[1, 9, 2, 2], 1.0, 0.0)?;
    assert!(x.apply_op1(Attention { head_ch: 2 }).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Repeat
// ---------------------------------------------------------------------------------------------

/// `x` `[B, …]` with each row repeated `n` times in a row: `[B·n, …]`, by broadcasting.
fn repeat_reference(x: &Tensor, n: usize) -> Result<Tensor> {
    let dims = x.dims();
    let mut wide = dims.to_vec();
    wide.insert(1, n);
    let mut out = dims.to_vec();
    out[0] *= n;
    Ok(x.unsqueeze(1)?.broadcast_as(wide)?.reshape(out)?)
}

/// [`Repeat`] alone and with a bias (shared `[1, C]` and per output row `[B·n, C]`) against
/// broadcast tensor ops: values and the gradients of `x` and the bias.
#[test]
fn repeat_matches_broadcast_ops() -> Result<()> {
    let mut rng = seeded(401);
    // Planes smaller than a part (parts cross rows), rows larger than a part, 2-D and 3-D.
    let cases: [(&[usize], usize); 6] = [
        (&[3, 4, 5, 2], 1),
        (&[3, 4, 5, 2], 3),
        (&[2, 3, 40, 40], 2),
        (&[4, 6], 2),
        (&[2, 5, 7], 3),
        (&[5, 8, 33, 17], 4),
    ];
    for (dims, n) in cases {
        let (b, c) = (dims[0], dims[1]);
        let x = var(&mut rng, dims, 1.0, 0.0)?;
        let repeated = repeat_reference(&x, n)?;
        let probe = randn(&mut rng, repeated.dims(), 1.0, 0.0)?;
        let what = format!("repeat {dims:?} × {n}");
        let got = x.apply_op1(Repeat { n })?;
        assert_close(&what, &got, &repeated, 1e-6)?;
        assert_grads(
            &what,
            &grads(&got, &probe)?,
            &grads(&repeated, &probe)?,
            &[("x", x.as_tensor())],
            1e-6,
        )?;
        for bb in [1, b * n] {
            let what = format!("{what}, bias [{bb}, {c}]");
            let bias = var(&mut rng, &[bb, c], 1.0, 0.0)?;
            let mut bias_dims = vec![1; dims.len()];
            (bias_dims[0], bias_dims[1]) = (bb, c);
            let got = x.apply_op2(bias.as_tensor(), Repeat { n })?;
            let want = repeated.broadcast_add(&bias.reshape(bias_dims)?)?;
            assert_close(&what, &got, &want, 1e-6)?;
            // The bias gradient sums thousands of terms (candle's in f32).
            assert_grads(
                &what,
                &grads(&got, &probe)?,
                &grads(&want, &probe)?,
                &[("x", x.as_tensor()), ("bias", bias.as_tensor())],
                1e-5,
            )?;
        }
    }
    // A bias of neither 1 nor B·n rows, and zero repeats.
    let x = randn(&mut rng, &[3, 4, 2, 2], 1.0, 0.0)?;
    let bias = randn(&mut rng, &[3, 4], 1.0, 0.0)?;
    assert!(x.apply_op2(&bias, Repeat { n: 2 }).is_err());
    assert!(x.apply_op1(Repeat { n: 0 }).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ReLU
// ---------------------------------------------------------------------------------------------

/// [`Relu`] against `Tensor::relu`: the same values and, on inputs without zeros, the same
/// gradient (both exactly).
#[test]
fn relu_matches_candle_relu() -> Result<()> {
    let mut rng = seeded(501);
    for dims in [
        &[7usize][..],
        &[3, 5, 11],
        &[2, 3, 128, 129],
        &[3 * ELEMENTWISE_PART + 7],
    ] {
        let what = format!("relu {dims:?}");
        let x = var(&mut rng, dims, 1.0, 0.1)?;
        assert!(host(&x)?.iter().all(|&v| v != 0.0));
        let got = x.apply_op1(Relu)?;
        let want = x.relu()?;
        assert_close(&what, &got, &want, 0.0)?;
        let probe = randn(&mut rng, dims, 1.0, 0.0)?;
        assert_grads(
            &what,
            &grads(&got, &probe)?,
            &grads(&want, &probe)?,
            &[("x", x.as_tensor())],
            0.0,
        )?;
    }
    Ok(())
}

/// The gradient of [`Relu`] passes exactly where the output is positive: zero at `x = 0`
/// (as PyTorch; candle's own `relu` passes it there).
#[test]
fn relu_gradient_passes_where_the_output_is_positive() -> Result<()> {
    let mut rng = seeded(502);
    let n = 2 * ELEMENTWISE_PART + 3;
    let values: Vec<f32> = normal_vec(&mut rng, n)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i % 3 == 0 { 0.0 } else { v })
        .collect();
    let x = Var::from_tensor(&Tensor::from_vec(values, n, &Device::Cpu)?)?;
    let probe = randn(&mut rng, &[n], 1.0, 0.0)?;
    let out = x.apply_op1(Relu)?;
    let mask = x.gt(0.0)?.to_dtype(DType::F32)?;
    assert_close("relu with zeros", &out, &(x.as_tensor() * &mask)?, 0.0)?;
    let got = grads(&out, &probe)?;
    let got = got.get(&x).expect("gradient");
    assert_close("relu gradient with zeros", got, &(&probe * &mask)?, 0.0)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resampling
// ---------------------------------------------------------------------------------------------

/// Nearest 2× upsampling of `[B, C, H, W]` as a reshape and a broadcast.
fn upsample_reference(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    Ok(x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))?)
}

/// [`Resample2x::UP`] against `upsample_nearest2d` (values) and its reshape-and-broadcast form
/// (values and gradient).
#[test]
fn upsample_matches_nearest_upsampling() -> Result<()> {
    let mut rng = seeded(601);
    for dims in [
        [2, 3, 5, 7],
        [1, 1, 1, 1],
        [3, 4, 8, 6],
        [4, 8, 17, 9],
        [2, 16, 32, 32],
    ] {
        let what = format!("upsample {dims:?}");
        let [_, _, h, w] = dims;
        let x = var(&mut rng, &dims, 1.0, 0.0)?;
        let got = x.apply_op1(Resample2x::UP)?;
        let candle = x.upsample_nearest2d(2 * h, 2 * w)?;
        assert_close(&what, &got, &candle, 0.0)?;
        let want = upsample_reference(&x)?;
        assert_close(&what, &got, &want, 0.0)?;
        let probe = randn(&mut rng, want.dims(), 1.0, 0.0)?;
        assert_grads(
            &what,
            &grads(&got, &probe)?,
            &grads(&want, &probe)?,
            &[("x", x.as_tensor())],
            1e-6,
        )?;
    }
    let x = randn(&mut rng, &[2, 3, 4], 1.0, 0.0)?;
    assert!(x.apply_op1(Resample2x::UP).is_err());
    Ok(())
}

/// [`Resample2x::DOWN`] against `avg_pool2d(2)`: values and gradient; odd sizes are errors.
#[test]
fn downsample_matches_average_pooling() -> Result<()> {
    let mut rng = seeded(602);
    for dims in [
        [1, 2, 2, 2],
        [3, 4, 8, 6],
        [2, 3, 10, 14],
        [2, 16, 32, 32],
        [5, 7, 6, 22],
    ] {
        let what = format!("downsample {dims:?}");
        let x = var(&mut rng, &dims, 1.0, 0.0)?;
        let got = x.apply_op1(Resample2x::DOWN)?;
        let want = x.avg_pool2d(2)?;
        assert_close(&what, &got, &want, 1e-6)?;
        let probe = randn(&mut rng, want.dims(), 1.0, 0.0)?;
        assert_grads(
            &what,
            &grads(&got, &probe)?,
            &grads(&want, &probe)?,
            &[("x", x.as_tensor())],
            1e-6,
        )?;
    }
    for dims in [[2, 3, 5, 4], [2, 3, 4, 7]] {
        let x = randn(&mut rng, &dims, 1.0, 0.0)?;
        assert!(x.apply_op1(Resample2x::DOWN).is_err(), "{dims:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Batch norm
// ---------------------------------------------------------------------------------------------

/// Input shapes of the batch-norm tests: 2-D, 3-D, odd 4-D, and large.
const BATCH_NORM_CASES: [&[usize]; 5] = [
    &[6, 5],
    &[3, 4, 7],
    &[4, 3, 5, 5],
    &[2, 7, 9, 11],
    &[8, 16, 12, 12],
];

/// The per-channel mean and biased variance `[C, 1]` of `[B, C, …]`, in tensor ops.
fn channel_moments(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = x.dim(1)?;
    let flat = x.transpose(0, 1)?.reshape((c, ()))?;
    let mean = flat.mean_keepdim(1)?;
    let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
    Ok((mean, var))
}

/// [`Moments`] against the per-channel mean and biased variance (computed in `f64`).
#[test]
fn batch_norm_moments_match_channel_statistics() -> Result<()> {
    let mut rng = seeded(701);
    for dims in BATCH_NORM_CASES {
        let what = format!("moments {dims:?}");
        let x = randn(&mut rng, dims, 1.5, 0.3)?;
        let got = x.apply_op1_no_bwd(&Moments)?;
        assert_eq!(got.dims(), [2, dims[1]], "{what}");
        let (mean, var) = channel_moments(&x.to_dtype(DType::F64)?)?;
        assert_close(
            &format!("{what}: mean"),
            &got.get(0)?,
            &mean.flatten_all()?,
            1e-6,
        )?;
        assert_close(
            &format!("{what}: variance"),
            &got.get(1)?,
            &var.flatten_all()?,
            1e-6,
        )?;
    }
    Ok(())
}

/// [`Normalize`] against batch normalization with batch statistics written in tensor ops:
/// values and the gradients of `x`, `γ` and `β`.
#[test]
fn batch_norm_normalize_matches_tensor_ops() -> Result<()> {
    let mut rng = seeded(702);
    let eps = 1e-5;
    for dims in BATCH_NORM_CASES {
        let what = format!("batch norm {dims:?}");
        let c = dims[1];
        let x = var(&mut rng, dims, 1.5, 0.3)?;
        let gamma = var(&mut rng, &[c], 0.7, 0.5)?;
        let beta = var(&mut rng, &[c], 0.5, 0.0)?;
        let got = x.apply_op3(gamma.as_tensor(), beta.as_tensor(), Normalize { eps })?;
        let (mean, var_b) = channel_moments(&x)?;
        let mut shape = vec![1; dims.len()];
        shape[1] = c;
        let want = x
            .broadcast_sub(&mean.reshape(shape.as_slice())?)?
            .broadcast_div(&(var_b + eps)?.sqrt()?.reshape(shape.as_slice())?)?
            .broadcast_mul(&gamma.reshape(shape.as_slice())?)?
            .broadcast_add(&beta.reshape(shape.as_slice())?)?;
        assert_close(&what, &got, &want, 1e-5)?;
        let probe = randn(&mut rng, dims, 1.0, 0.0)?;
        assert_grads(
            &what,
            &grads(&got, &probe)?,
            &grads(&want, &probe)?,
            &[
                ("x", x.as_tensor()),
                ("gamma", gamma.as_tensor()),
                ("beta", beta.as_tensor()),
            ],
            1e-5,
        )?;
    }
    let x = randn(&mut rng, &[2, 3, 4], 1.0, 0.0)?;
    let short = randn(&mut rng, &[2], 1.0, 0.0)?;
    assert!(x.apply_op3(&short, &short, Normalize { eps }).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Optimization
// ---------------------------------------------------------------------------------------------

/// A CPU `f32` vector tensor of `values`.
fn vector(values: Vec<f32>) -> Result<Tensor> {
    let n = values.len();
    Ok(Tensor::from_vec(values, n, &Device::Cpu)?)
}

/// Asserts `max |got − want| ≤ rel · max(floor, max |want|)` for host vectors.
fn assert_close_f64(what: &str, got: &[f32], want: &[f64], rel: f64, floor: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    let d = got
        .iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).abs())
        .fold(
            0.0,
            |m: f64, v| if v.is_nan() { f64::INFINITY } else { m.max(v) },
        );
    assert!(
        d <= rel * scale,
        "{what}: max |diff| {d:e} over {rel:e} · {scale}"
    );
}

/// [`adamw_update`] over several steps (gradient scale, weight decay, changing learning rate)
/// against the AdamW formula in `f64` on the host, on a small tensor and one split into
/// several parts.
#[test]
fn adamw_update_follows_the_formula() -> Result<()> {
    let mut rng = seeded(801);
    let (beta1, beta2, eps, weight_decay, scale) = (0.9f64, 0.999f64, 1e-8f64, 0.1f64, 0.5f64);
    for n in [5, 3 * ELEMENTWISE_PART + 11] {
        let theta0 = normal_vec(&mut rng, n);
        let mut want_theta: Vec<f64> = theta0.iter().map(|&v| f64::from(v)).collect();
        let mut want_m = vec![0f64; n];
        let mut want_v = vec![0f64; n];
        let (mut theta, mut m, mut v) = (theta0, vec![0f32; n], vec![0f32; n]);
        for step in 1..=5 {
            let what = format!("adamw n = {n}, step {step}");
            let g = normal_vec(&mut rng, n);
            let lr = 0.01 * step as f64;
            let (bc1, bc2) = (1.0 - beta1.powi(step), 1.0 - beta2.powi(step));
            let k = AdamWCoefficients {
                scale: scale as f32,
                beta1: beta1 as f32,
                beta2: beta2 as f32,
                inv_bc1: (1.0 / bc1) as f32,
                inv_bc2: (1.0 / bc2) as f32,
                eps: eps as f32,
                lr: lr as f32,
                decay: (1.0 - lr * weight_decay) as f32,
            };
            // The formula in f64 with the coefficients as the kernel receives them (in f32:
            // 1 − β₂ from β₂ = 0.999 in f32 is off by 1.3·10⁻⁵ of itself, a property of the
            // inputs rather than of the kernel).
            let c = |v: f32| f64::from(v);
            let (b1, b2) = (c(k.beta1), c(k.beta2));
            let (t1, m1, v1) = adamw_update(
                &vector(theta)?,
                &vector(g.clone())?,
                &vector(m)?,
                &vector(v)?,
                k,
            )
            .expect("contiguous f32 CPU tensors");
            for (i, &gi) in g.iter().enumerate() {
                let gi = c(k.scale) * f64::from(gi);
                want_m[i] = b1 * want_m[i] + (1.0 - b1) * gi;
                want_v[i] = b2 * want_v[i] + (1.0 - b2) * gi * gi;
                let update =
                    (want_m[i] * c(k.inv_bc1)) / ((want_v[i] * c(k.inv_bc2)).sqrt() + c(k.eps));
                want_theta[i] = c(k.decay) * want_theta[i] - c(k.lr) * update;
            }
            assert_close_f64(&format!("{what}: m"), &m1, &want_m, 1e-6, 0.0);
            assert_close_f64(&format!("{what}: v"), &v1, &want_v, 1e-6, 0.0);
            assert_close_f64(&format!("{what}: theta"), &t1, &want_theta, 1e-6, 1.0);
            (theta, m, v) = (t1, m1, v1);
        }
    }
    Ok(())
}

/// [`adamw_update`] declines tensors that are not `f32`, differ in size or are strided views.
#[test]
fn adamw_update_declines_other_tensors() -> Result<()> {
    let mut rng = seeded(802);
    let k = AdamWCoefficients {
        scale: 1.0,
        beta1: 0.9,
        beta2: 0.999,
        inv_bc1: 10.0,
        inv_bc2: 1000.0,
        eps: 1e-8,
        lr: 0.1,
        decay: 1.0,
    };
    let t = randn(&mut rng, &[4, 6], 1.0, 0.0)?;
    assert!(adamw_update(&t, &t, &t, &t, k).is_some());
    let t64 = t.to_dtype(DType::F64)?;
    assert!(adamw_update(&t64, &t, &t, &t, k).is_none());
    assert!(adamw_update(&t, &t, &t, &t64, k).is_none());
    let other = randn(&mut rng, &[4, 5], 1.0, 0.0)?;
    assert!(adamw_update(&t, &other, &t, &t, k).is_none());
    let strided = randn(&mut rng, &[6, 4], 1.0, 0.0)?.t()?;
    assert!(!strided.is_contiguous());
    assert!(adamw_update(&t, &t, &strided, &t, k).is_none());
    Ok(())
}

/// [`sum_of_squares`] against `sqr().sum_all()` (in `f32` and in `f64`), empty to several
/// parts; `None` for `f64` and strided tensors.
#[test]
fn sum_of_squares_matches_tensor_ops() -> Result<()> {
    let mut rng = seeded(803);
    for n in [0, 1, 1000, ELEMENTWISE_PART, 3 * ELEMENTWISE_PART + 5] {
        let x = randn(&mut rng, &[n], 1.0, 0.5)?;
        let got = sum_of_squares(&x).expect("contiguous f32 CPU tensor");
        let exact = x
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
        assert!(
            (got - exact).abs() <= 1e-12 * exact.max(1.0),
            "n = {n}: {got} vs {exact}"
        );
        let single = f64::from(x.sqr()?.sum_all()?.to_scalar::<f32>()?);
        assert!(
            (got - single).abs() <= 1e-5 * exact.max(1.0),
            "n = {n}: {got} vs {single}"
        );
    }
    let x = randn(&mut rng, &[5, 3], 1.0, 0.0)?;
    assert!(sum_of_squares(&x.to_dtype(DType::F64)?).is_none());
    assert!(sum_of_squares(&x.t()?).is_none());
    Ok(())
}

/// [`blend`] against `d·s + (1 − d)·x` in tensor ops; `None` for `f64` or mismatched tensors.
#[test]
fn blend_matches_tensor_ops() -> Result<()> {
    let mut rng = seeded(804);
    for n in [3, 1000, 3 * ELEMENTWISE_PART + 1] {
        let s = randn(&mut rng, &[n], 1.0, 0.0)?;
        let x = randn(&mut rng, &[n], 1.0, 0.0)?;
        for d in [0.0f32, 0.25, 0.999] {
            let got = vector(blend(&s, &x, d).expect("contiguous f32 CPU tensors"))?;
            let want = ((&s * f64::from(d))? + (&x * f64::from(1.0 - d))?)?;
            assert_close(&format!("blend n = {n}, d = {d}"), &got, &want, 1e-6)?;
        }
    }
    let s = randn(&mut rng, &[7], 1.0, 0.0)?;
    let x = randn(&mut rng, &[8], 1.0, 0.0)?;
    assert!(blend(&s, &x, 0.5).is_none());
    let s64 = s.to_dtype(DType::F64)?;
    assert!(blend(&s64, &s64, 0.5).is_none());
    assert!(blend(&s, &s64, 0.5).is_none());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Matrix products
// ---------------------------------------------------------------------------------------------

/// Shapes `(m, in, out)` of the dense-product tests: degenerate, odd, and large enough for
/// the products' blocking.
const DENSE_CASES: [(usize, usize, usize); 5] = [
    (1, 1, 1),
    (3, 5, 7),
    (17, 33, 9),
    (64, 64, 64),
    (300, 257, 129),
];

/// [`dense_forward`] (overwriting and accumulating) against `x · wᵀ`, and [`dense_backward`]
/// against candle's gradient of `⟨x · wᵀ, probe⟩` with respect to `x`; the kernel gradient
/// `probeᵀ · x` through [`matmul`], [`gemm_host`] and [`dense_weight_grad`] (overwriting and
/// accumulating).
#[test]
fn dense_products_match_matmul() -> Result<()> {
    let mut rng = seeded(901);
    for (m, inp, out) in DENSE_CASES {
        let what = format!("dense {m}×{inp} → {out}");
        let x = var(&mut rng, &[m, inp], 1.0, 0.0)?;
        let w = var(&mut rng, &[out, inp], 1.0, 0.0)?;
        let (xs, ws) = (host(&x)?, host(&w)?);
        let want = x.matmul(&w.t()?)?;
        let mut y = vec![0f32; m * out];
        dense_forward(&xs, &ws, &mut y, (m, inp, out), false);
        assert_close(
            &what,
            &Tensor::from_vec(y, (m, out), &Device::Cpu)?,
            &want,
            1e-5,
        )?;
        let start = randn(&mut rng, &[m, out], 1.0, 0.0)?;
        let mut y = host(&start)?;
        dense_forward(&xs, &ws, &mut y, (m, inp, out), true);
        let accumulated = Tensor::from_vec(y, (m, out), &Device::Cpu)?;
        assert_close(
            &format!("{what}, accumulated"),
            &accumulated,
            &(&want + &start)?,
            1e-5,
        )?;

        let probe = randn(&mut rng, &[m, out], 1.0, 0.0)?;
        let reference = grads(&want, &probe)?;
        let mut gx = vec![0f32; m * inp];
        dense_backward(&host(&probe)?, &ws, &mut gx, (m, inp, out));
        let gx = Tensor::from_vec(gx, (m, inp), &Device::Cpu)?;
        assert_close(
            &format!("{what}, d/dx"),
            &gx,
            reference.get(&x).expect("dx"),
            1e-5,
        )?;
        let want_gw = reference.get(&w).expect("dw");
        let probe_t = probe.t()?.contiguous()?;
        let gw = matmul(&probe_t, x.as_tensor())?;
        assert_close(&format!("{what}, d/dw (matmul)"), &gw, want_gw, 1e-5)?;
        let gw = gemm_host(&host(&probe_t)?, &xs, out, m, inp);
        let gw = Tensor::from_vec(gw, (out, inp), &Device::Cpu)?;
        assert_close(&format!("{what}, d/dw (gemm_host)"), &gw, want_gw, 1e-5)?;
        let mut gw = vec![0f32; out * inp];
        dense_weight_grad(&host(&probe)?, &xs, &mut gw, (m, inp, out), false);
        let gw = Tensor::from_vec(gw, (out, inp), &Device::Cpu)?;
        assert_close(
            &format!("{what}, d/dw (dense_weight_grad)"),
            &gw,
            want_gw,
            1e-5,
        )?;
        let start = randn(&mut rng, &[out, inp], 1.0, 0.0)?;
        let mut gw = host(&start)?;
        dense_weight_grad(&host(&probe)?, &xs, &mut gw, (m, inp, out), true);
        let gw = Tensor::from_vec(gw, (out, inp), &Device::Cpu)?;
        assert_close(
            &format!("{what}, d/dw accumulated"),
            &gw,
            &(want_gw + &start)?,
            1e-5,
        )?;
    }
    let a = randn(&mut rng, &[3, 4], 1.0, 0.0)?;
    assert!(matmul(&a, &a).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------

/// [`fast_exp`] against `f64::exp`, [`sum_f64`] against a plain `f64` sum, and
/// [`elementwise`] / [`par_parts`] against plain loops (every element written once, by the
/// part that owns it).
#[test]
fn host_helpers_match_plain_loops() -> Result<()> {
    let mut rng = seeded(1001);
    for x in uniform_vec(&mut rng, 10_000, -80.0, 80.0) {
        let (got, want) = (f64::from(fast_exp(x)), f64::from(x).exp());
        assert!(
            (got - want).abs() <= 3e-7 * want,
            "exp({x}): {got} vs {want}"
        );
    }
    for n in [0, 1, 7, 8, 9, 1000, 100_003] {
        let xs = normal_vec(&mut rng, n);
        let want: f64 = xs.iter().map(|&v| f64::from(v)).sum();
        let got = sum_f64(&xs);
        assert!(
            (got - want).abs() <= 1e-12 * n.max(1) as f64,
            "n = {n}: {got} vs {want}"
        );
    }
    let xs = normal_vec(&mut rng, 3 * ELEMENTWISE_PART + 9);
    let got = elementwise(
        xs.len(),
        #[inline(always)]
        |at, dst| {
            for (d, &v) in dst.iter_mut().zip(&xs[at..]) {
                *d = 2.0 * v + 1.0;
            }
        },
    );
    let want: Vec<f32> = xs.iter().map(|&v| 2.0 * v + 1.0).collect();
    assert_eq!(got, want);
    for (len, part) in [(1000, 64), (1000, 1000), (5, 1), (4097, 4096)] {
        let mut data = vec![-1f32; len];
        par_parts(
            &mut data,
            part,
            #[inline(always)]
            |i, dst| {
                for v in dst.iter_mut() {
                    *v += (i + 1) as f32;
                }
            },
        );
        assert!(
            data.iter()
                .enumerate()
                .all(|(j, &v)| v == (j / part) as f32),
            "par_parts {len} in parts of {part}"
        );
    }
    Ok(())
}
