//! Every training run records the source revision of the program and the step it started from.

use std::fs;

use anyhow::Result;
use candle_core::Device;
use recompose_diffusion::data::Toy2d;
use recompose_diffusion::nn::MlpConfig;
use recompose_diffusion::run::{ModelConfig, RunConfig, train_run};
use recompose_diffusion::train::{ProvenanceRun, TrainOptions, read_provenance};

#[test]
fn runs_record_their_revision_and_first_step() -> Result<()> {
    let mut cfg = RunConfig::toy2d(Toy2d::Ring);
    cfg.model = ModelConfig::Mlp(MlpConfig {
        hidden: 8,
        block_hidden: 16,
        num_blocks: 1,
        time_embed_dim: 4,
        ..MlpConfig::default()
    });
    cfg.train.steps = 6;
    cfg.train.batch_size = 16;
    cfg.train.checkpoint_every = 2;
    let dir = std::env::temp_dir().join(format!("recompose-provenance-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let opts = |resume: bool, revision: Option<&str>, halt: Option<usize>| TrainOptions {
        out_dir: dir.clone(),
        resume,
        halt_after: halt,
        revision: revision.map(str::to_string),
        ..Default::default()
    };
    train_run(
        &cfg,
        &opts(false, Some("aaa111"), Some(3)),
        &Device::Cpu,
        &mut |_| {},
    )?;
    assert_eq!(
        read_provenance(&dir),
        vec![ProvenanceRun {
            revision: "aaa111".into(),
            from_step: 0
        }]
    );
    // Resumed from the checkpoint at step 2 by another program, then once more with none.
    train_run(
        &cfg,
        &opts(true, Some("bbb222"), Some(5)),
        &Device::Cpu,
        &mut |_| {},
    )?;
    train_run(&cfg, &opts(true, None, None), &Device::Cpu, &mut |_| {})?;
    let runs = read_provenance(&dir);
    let got: Vec<(&str, usize)> = runs
        .iter()
        .map(|r| (r.revision.as_str(), r.from_step))
        .collect();
    assert_eq!(got, vec![("aaa111", 0), ("bbb222", 2), ("unknown", 4)]);
    // A directory without the file (a model from before it existed) has no runs.
    fs::remove_file(dir.join("provenance.json"))?;
    assert!(read_provenance(&dir).is_empty());
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}
