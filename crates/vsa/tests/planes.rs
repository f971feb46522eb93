//! The planes form against the models it batches: binding, unbinding and similarities computed
//! on planes must equal the models' own operations (and, for FHRR, the complex inner product
//! written out on the host), and projection must invert one-hot similarities exactly.

use candle_core::{Device, Tensor};
use recompose_vsa::planes::{self, PlaneModel, Planes, PreparedCodebook, VsaKind};
use recompose_vsa::random::seeded;
use recompose_vsa::{Codebook, Error, Fhrr, Map, Vsa};

type R = anyhow::Result<()>;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn planes_close(a: &Planes, b: &Planes, tol: f32) -> R {
    assert_eq!(a.len(), b.len(), "plane counts differ");
    for (p, q) in a.iter().zip(b) {
        let d = max_abs_diff(p, q)?;
        assert!(d <= tol, "planes differ by {d} (tolerance {tol})");
    }
    Ok(())
}

/// Binding and unbinding on planes equal the models' own binding and unbinding.
fn check_bind_unbind<M: PlaneModel>(model: &M, seed: u64) -> R {
    let mut rng = seeded(seed);
    let a = model.random(&[7], &mut rng)?;
    let b = model.random(&[7], &mut rng)?;
    let kind = model.kind();
    let (pa, pb) = (model.to_planes(&a)?, model.to_planes(&b)?);
    planes_close(
        &planes::bind(kind, &pa, &pb)?,
        &model.to_planes(&model.bind(&a, &b)?)?,
        1e-5,
    )?;
    planes_close(
        &planes::unbind(kind, &pa, &pb)?,
        &model.to_planes(&model.unbind(&a, &b)?)?,
        1e-5,
    )?;
    // Unbinding the key from the binding gives the other vector back.
    let ab = planes::bind(kind, &pa, &pb)?;
    planes_close(&planes::unbind(kind, &ab, &pb)?, &pa, 1e-5)
}

#[test]
fn bind_and_unbind_match_the_models() -> R {
    check_bind_unbind(&Map::new(256, &Device::Cpu)?, 1)?;
    check_bind_unbind(&Fhrr::new(256, &Device::Cpu)?, 2)
}

#[test]
fn map_similarities_are_dot_products() -> R {
    let map = Map::new(300, &Device::Cpu)?;
    let mut rng = seeded(3);
    let book = Codebook::random_numbered(map.clone(), "c", 9, &mut rng)?;
    let queries = map.random(&[5], &mut rng)?;
    let cb = PreparedCodebook::new(map.to_planes(book.tensor())?)?;
    let sims = planes::similarities(VsaKind::Map, &map.to_planes(&queries)?, &cb)?;
    let dots = queries.matmul(&book.tensor().t()?)?;
    assert!(max_abs_diff(&sims[0], &dots)? < 1e-4);
    Ok(())
}

#[test]
fn fhrr_similarities_are_complex_inner_products() -> R {
    let (d, m, t) = (64, 6, 4);
    let fhrr = Fhrr::new(d, &Device::Cpu)?;
    let mut rng = seeded(4);
    let book = fhrr.random(&[m], &mut rng)?;
    let queries = fhrr.random(&[t], &mut rng)?;
    let cb = PreparedCodebook::new(fhrr.to_planes(&book)?)?;
    let sims = planes::similarities(VsaKind::Fhrr, &fhrr.to_planes(&queries)?, &cb)?;
    // a_tm = Σ_d conj(c_md) u_td, written out.
    let c = book.to_vec3::<f32>()?;
    let u = queries.to_vec3::<f32>()?;
    let (re, im) = (sims[0].to_vec2::<f32>()?, sims[1].to_vec2::<f32>()?);
    for ti in 0..t {
        for mi in 0..m {
            let (mut sr, mut si) = (0f64, 0f64);
            for di in 0..d {
                let (cr, ci) = (c[mi][0][di] as f64, c[mi][1][di] as f64);
                let (ur, ui) = (u[ti][0][di] as f64, u[ti][1][di] as f64);
                sr += cr * ur + ci * ui;
                si += cr * ui - ci * ur;
            }
            assert!(
                (re[ti][mi] as f64 - sr).abs() < 1e-4,
                "real part at ({ti}, {mi})"
            );
            assert!(
                (im[ti][mi] as f64 - si).abs() < 1e-4,
                "imaginary part at ({ti}, {mi})"
            );
        }
    }
    // The real part over D is the model's similarity.
    let model_sims = fhrr.similarity_matrix(&queries, &book)?;
    assert!(max_abs_diff(&(&sims[0] / d as f64)?, &model_sims)? < 1e-5);
    Ok(())
}

#[test]
fn projecting_one_hot_coefficients_gives_the_codeword() -> R {
    let fhrr = Fhrr::new(32, &Device::Cpu)?;
    let mut rng = seeded(5);
    let book = fhrr.random(&[5], &mut rng)?;
    let cb = PreparedCodebook::new(fhrr.to_planes(&book)?)?;
    let mut one_hot = vec![0f32; 5];
    one_hot[3] = 1.0;
    let a = Tensor::from_vec(one_hot, (1, 5), &Device::Cpu)?;
    let zero = a.zeros_like()?;
    let want = fhrr.to_planes(&book.narrow(0, 3, 1)?)?;
    // Complex coefficients (3 + 0i) and real-only coefficients take different paths.
    planes_close(
        &planes::project(VsaKind::Fhrr, &vec![a.clone(), zero], &cb)?,
        &want,
        1e-6,
    )?;
    planes_close(&planes::project(VsaKind::Fhrr, &vec![a], &cb)?, &want, 1e-6)
}

#[test]
fn unbinding_the_other_factors_isolates_one() -> R {
    for (kind, seed) in [(VsaKind::Map, 6u64), (VsaKind::Fhrr, 7)] {
        let mut rng = seeded(seed);
        let factors: Vec<Planes> = match kind {
            VsaKind::Map => {
                let map = Map::new(128, &Device::Cpu)?;
                (0..4)
                    .map(|_| map.to_planes(&map.random(&[3], &mut rng)?))
                    .collect::<Result<_, _>>()?
            }
            VsaKind::Fhrr => {
                let fhrr = Fhrr::new(128, &Device::Cpu)?;
                (0..4)
                    .map(|_| fhrr.to_planes(&fhrr.random(&[3], &mut rng)?))
                    .collect::<Result<_, _>>()?
            }
        };
        let s = planes::product_except(kind, &factors, None)?.expect("four factors");
        for f in 0..4 {
            planes_close(
                &planes::unbind_others(kind, &s, &factors, f)?,
                &factors[f],
                1e-4,
            )?;
        }
    }
    Ok(())
}

#[test]
fn normalizations_never_make_nan() -> R {
    let zeros = Tensor::zeros((2, 8), candle_core::DType::F32, &Device::Cpu)?;
    let l2 = planes::l2_normalize(&vec![zeros.clone()])?;
    assert_eq!(l2[0].abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    let ph = planes::phase_normalize(&vec![zeros.clone(), zeros])?;
    assert_eq!(ph[0].sum_all()?.to_scalar::<f32>()?, 16.0);
    assert_eq!(ph[1].abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    Ok(())
}

#[test]
fn to_planes_rejects_anything_but_one_batch_axis() -> R {
    let map = Map::new(16, &Device::Cpu)?;
    let fhrr = Fhrr::new(16, &Device::Cpu)?;
    let mut rng = seeded(8);
    let one = map.random(&[], &mut rng)?;
    assert!(matches!(map.to_planes(&one), Err(Error::Shape { .. })));
    let nested = fhrr.random(&[2, 3], &mut rng)?;
    assert!(matches!(fhrr.to_planes(&nested), Err(Error::Shape { .. })));
    let wrong_dim = Fhrr::new(8, &Device::Cpu)?.random(&[2], &mut rng)?;
    assert!(fhrr.to_planes(&wrong_dim).is_err());
    Ok(())
}

#[test]
fn vsa_kind_names_parse_and_serialize() -> R {
    for kind in [VsaKind::Map, VsaKind::Fhrr] {
        assert_eq!(kind.name().parse::<VsaKind>()?, kind);
        assert_eq!(
            serde_json::to_string(&kind)?,
            format!("\"{}\"", kind.name())
        );
    }
    assert_eq!(VsaKind::Fhrr.planes(), 2);
    let err = "hrr".parse::<VsaKind>().unwrap_err().to_string();
    assert!(err.contains("unknown VSA model 'hrr'"), "{err}");
    Ok(())
}
