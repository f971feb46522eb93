//! The energy U-Net in `f32`: on the CPU fast paths and on candle's ops alone (the code a GPU
//! runs) it agrees with the `f64` model. The reference-ops run switches a process-wide setting,
//! so it runs in a child process of this test binary (`RECOMPOSE_REFERENCE_OPS=1`), never beside
//! the other tests.

use std::collections::HashMap;
use std::process::Command;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use recompose_diffusion::nn::{EnergyForm, EnergyUNet, ParamStore, UNetConfig};
use recompose_diffusion::random::normal_tensor;
use recompose_diffusion::seeded;

fn tiny() -> UNetConfig {
    UNetConfig {
        image_size: 8,
        in_channels: 3,
        out_channels: 3,
        model_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_resolutions: vec![4],
        num_heads: 1,
        num_head_channels: Some(8),
        num_groups: 4,
        dropout: 0.0,
        resblock_updown: true,
        use_scale_shift_norm: true,
        time_embed_dim: 8,
        cond_dim: 4,
        coord_channels: false,
        context_dim: 0,
    }
}

/// max |a − b| / max |a|.
fn relative(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let scale = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    let diff = (&a - &b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-30))
}

/// E, ∇ₓE and the parameter gradients of L = mean((∇ₓE − ε)²) of one model in `dtype`.
fn run(
    store: &ParamStore,
    model: &EnergyUNet,
    dtype: DType,
) -> Result<(Tensor, Tensor, HashMap<String, Tensor>)> {
    let dev = Device::Cpu;
    let mut rng = seeded(31);
    let x = normal_tensor(&mut rng, &[3, 3, 8, 8], DType::F64, &dev)?.to_dtype(dtype)?;
    let eps = normal_tensor(&mut rng, &[3, 3, 8, 8], DType::F64, &dev)?.to_dtype(dtype)?;
    let cond = normal_tensor(&mut rng, &[3, 4], DType::F64, &dev)?.to_dtype(dtype)?;
    let t = Tensor::new(&[3f32, 400.0, 999.0], &dev)?;
    let (e, grad) = model.energy_and_grad(&x, &t, Some(&cond))?;
    let loss = (&grad - eps)?.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    let mut by_name = HashMap::new();
    for (name, var) in store.vars() {
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("{name} has no gradient"))?;
        by_name.insert(name, g.clone());
    }
    Ok((e, grad, by_name))
}

/// The `f32` model (on whatever ops this process uses) against the same weights in `f64`:
/// energies and ∇ₓE to 2e-5 and every parameter gradient of the training loss to 2e-4,
/// normwise relative errors (measured: at most 2.2e-6 and 1.9e-5; f32 rounding through the
/// forward pass, the hand-written backward pass and candle's backward pass of both).
#[test]
fn f32_agrees_with_f64() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = tiny();
    for form in [EnergyForm::SquaredResidual, EnergyForm::HalfNorm] {
        let wide = ParamStore::new(30);
        let m64 = EnergyUNet::new(&cfg, form, wide.var_builder(DType::F64, &dev))?;
        let mut rng = seeded(32);
        for (_, var) in wide.vars() {
            let noise = normal_tensor(&mut rng, var.dims(), DType::F64, &dev)?;
            var.set(&(var.as_tensor() + (noise * 0.15)?)?)?;
        }
        let narrow = ParamStore::new(30);
        let m32 = EnergyUNet::new(&cfg, form, narrow.var_builder(DType::F32, &dev))?;
        let values: HashMap<String, Tensor> = wide.tensors().into_iter().collect();
        narrow.assign(&values, "f64 model")?;
        let (e64, g64, p64) = run(&wide, &m64, DType::F64)?;
        let (e32, g32, p32) = run(&narrow, &m32, DType::F32)?;
        let e_err = relative(&e64, &e32)?;
        let g_err = relative(&g64, &g32)?;
        let mut p_err = 0f64;
        for (name, g) in &p64 {
            p_err = p_err.max(relative(g, &p32[name])?);
        }
        let path = if recompose_core::host::fast_paths_enabled() {
            "fast paths"
        } else {
            "reference ops"
        };
        println!(
            "f32 ({path}) vs f64, {form:?}: energy {e_err:.2e}, ∇ₓE {g_err:.2e}, \
             parameter gradients {p_err:.2e}"
        );
        assert!(e_err < 2e-5 && g_err < 2e-5, "{form:?}: {e_err} / {g_err}");
        assert!(p_err < 2e-4, "{form:?}: {p_err}");
    }
    Ok(())
}

/// [`f32_agrees_with_f64`] once more in a child process with every CPU fast path off.
#[test]
fn f32_on_reference_ops_agrees_with_f64() -> Result<()> {
    let exe = std::env::current_exe()?;
    let out = Command::new(&exe)
        .args([
            "energy_unet::f32_agrees_with_f64",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RECOMPOSE_REFERENCE_OPS", "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("f32 (reference ops) vs f64") && stdout.contains("1 passed"),
        "the child did not run the check on the reference ops: {stdout}"
    );
    for line in stdout
        .lines()
        .filter_map(|l| l.find("f32 (").map(|i| &l[i..]))
    {
        eprintln!("child: {line}");
    }
    Ok(())
}
