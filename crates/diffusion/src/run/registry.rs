//! One registry of training runs for every model family of the workspace.
//!
//! A *run* is a complete, serializable description of a training job (model, data, schedule,
//! optimization) that can train itself ([`Run`]). A *family* is one kind of run with its
//! configuration format and named presets ([`RunFamily`]): this crate's denoisers
//! ([`RunConfig::FAMILY`], the 2-D MLPs and image UNets) and, registered by their own crates,
//! other models such as Decomp Diffusion. A [`Registry`] holds the families a program knows and
//! is the one place that resolves a preset name or a configuration file to a run.
//!
//! A configuration file belongs to the family whose marker table it has at the top level
//! (`[model]` for denoiser runs, `[decomp]` for Decomp Diffusion runs); the registry parses the
//! file once as TOML, finds the one family it belongs to, and hands the text to that family's
//! parser, whose errors name the line and field.

use std::path::Path;

use candle_core::Device;

use super::RunConfig;
use crate::nn::EnergyForm;
use crate::train::{TrainConfig, TrainOptions, TrainProgress, TrainReport};
use crate::{Error, Result};

/// A training run of some family: a configuration that can be adjusted, checked, saved and
/// trained.
pub trait Run: std::fmt::Debug {
    /// The name of the family the run belongs to ([`RunFamily::name`]).
    fn family(&self) -> &'static str;

    /// The optimization settings (steps, seed, learning rate, checkpoints, …).
    fn train_config(&self) -> &TrainConfig;

    /// The optimization settings, for overriding steps or seed before training.
    fn train_config_mut(&mut self) -> &mut TrainConfig;

    /// Switches the run to the energy parameterization `form`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for families without an energy parameterization (the default).
    fn set_energy(&mut self, form: EnergyForm) -> Result<()> {
        let _ = form;
        Err(Error::Config(format!(
            "the energy parameterization applies to denoiser runs, not to {} runs",
            self.family()
        )))
    }

    /// Checks that the parts of the run fit together.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] describing the first problem.
    fn validate(&self) -> Result<()>;

    /// The configuration as TOML, as written to `config.toml` in the run directory.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if it cannot be serialized.
    fn to_toml(&self) -> Result<String>;

    /// Peak bytes training the run allocates, estimated from its configuration before
    /// anything is built ([`crate::memory::train_estimate`] with the family's network and
    /// data), for the memory guard of `recompose_core::memory`.
    fn memory_estimate(&self) -> recompose_core::memory::Estimate;

    /// Trains the run into `opts.out_dir` (writing `config.toml` there too), calling `progress`
    /// after every step.
    ///
    /// # Errors
    ///
    /// As [`crate::train::train`], and the family's own errors (as [`Error::Run`]).
    fn train(
        &self,
        opts: &TrainOptions,
        device: &Device,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<TrainReport>;
}

/// One family of runs: its configuration format and its presets.
#[derive(Debug, Clone, Copy)]
pub struct RunFamily {
    /// Short name, used in messages (`"denoiser"`, `"decomp"`).
    pub name: &'static str,
    /// The top-level TOML table every configuration file of the family has.
    pub table: &'static str,
    /// The names of the built-in presets.
    pub presets: &'static [&'static str],
    /// The preset called by one of the names in `presets`.
    pub preset: fn(&str) -> Result<Box<dyn Run>>,
    /// Parses (and validates) a configuration file's text.
    pub from_toml: fn(&str) -> Result<Box<dyn Run>>,
}

/// The families a program knows; resolves preset names and configuration files to runs.
#[derive(Debug, Clone)]
pub struct Registry {
    families: Vec<RunFamily>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with this crate's denoiser runs ([`RunConfig::FAMILY`]).
    pub fn new() -> Self {
        Registry {
            families: vec![RunConfig::FAMILY],
        }
    }

    /// The registry with one more family.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the family's name, marker table or one of its preset names is
    /// already taken.
    pub fn with(mut self, family: RunFamily) -> Result<Self> {
        for known in &self.families {
            if known.name == family.name || known.table == family.table {
                return Err(Error::Config(format!(
                    "run family `{}` (table [{}]) clashes with `{}` (table [{}])",
                    family.name, family.table, known.name, known.table
                )));
            }
            if let Some(p) = family.presets.iter().find(|p| known.presets.contains(p)) {
                return Err(Error::Config(format!(
                    "preset `{p}` of run family `{}` is already a preset of `{}`",
                    family.name, known.name
                )));
            }
        }
        self.families.push(family);
        Ok(self)
    }

    /// The registered families, in registration order.
    pub fn families(&self) -> &[RunFamily] {
        &self.families
    }

    /// Every preset name of every family, in registration order.
    pub fn preset_names(&self) -> Vec<&'static str> {
        self.families
            .iter()
            .flat_map(|f| f.presets.iter().copied())
            .collect()
    }

    /// The preset called `name`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] listing every preset if `name` is not one.
    pub fn preset(&self, name: &str) -> Result<Box<dyn Run>> {
        match self.families.iter().find(|f| f.presets.contains(&name)) {
            Some(f) => (f.preset)(name),
            None => Err(Error::Config(format!(
                "unknown preset `{name}`; the presets are {}",
                self.preset_names().join(", ")
            ))),
        }
    }

    /// The run a configuration text describes (see the [`run`](crate::run) module documentation).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the text is not TOML, has no family's marker table (or several), or
    /// the family's parser rejects it.
    pub fn from_toml(&self, text: &str) -> Result<Box<dyn Run>> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            Error::Config(format!("config: {}", e.message().trim()))
        })?;
        let owners: Vec<&RunFamily> = self
            .families
            .iter()
            .filter(|f| table.contains_key(f.table))
            .collect();
        match owners.as_slice() {
            [f] => (f.from_toml)(text),
            [] => Err(Error::Config(format!(
                "config: no run table; a configuration has one of {}",
                self.tables()
            ))),
            many => Err(Error::Config(format!(
                "config: tables of several run families ({}); a configuration has exactly one of {}",
                many.iter()
                    .map(|f| format!("[{}]", f.table))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.tables()
            ))),
        }
    }

    /// Reads a configuration file ([`Registry::from_toml`]).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if it cannot be read; otherwise as [`Registry::from_toml`], with the
    /// file's name in the message.
    pub fn from_file(&self, path: &Path) -> Result<Box<dyn Run>> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.from_toml(&text).map_err(|e| match e {
            Error::Config(m) if !m.starts_with(&path.display().to_string()) => {
                Error::Config(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }

    fn tables(&self) -> String {
        self.families
            .iter()
            .map(|f| format!("[{}] ({} runs)", f.table, f.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::PRESET_NAMES;

    /// A second family for the tests: the denoiser runs under another name, table and presets.
    const OTHER: RunFamily = RunFamily {
        name: "other",
        table: "other",
        presets: &["other-ring"],
        preset: |_| Ok(Box::new(RunConfig::preset("toy2d-ring")?)),
        from_toml: |_| Err(Error::Config("other: parsed".into())),
    };

    #[test]
    fn presets_resolve_across_families() -> Result<()> {
        let registry = Registry::new().with(OTHER)?;
        assert_eq!(registry.preset_names().len(), PRESET_NAMES.len() + 1);
        let run = registry.preset("toy2d-bar-energy")?;
        assert_eq!(run.family(), "denoiser");
        assert_eq!(
            run.to_toml()?,
            RunConfig::preset("toy2d-bar-energy")?.to_toml()?
        );
        assert_eq!(registry.preset("other-ring")?.family(), "denoiser");
        let err = registry.preset("nope").unwrap_err().to_string();
        assert!(err.contains("unknown preset `nope`"), "{err}");
        assert!(
            err.contains("toy2d-box-small-energy") && err.contains("other-ring"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn clashing_families_are_refused() {
        assert!(Registry::new().with(RunConfig::FAMILY).is_err());
        let same_table = RunFamily {
            name: "x",
            table: "model",
            ..OTHER
        };
        assert!(Registry::new().with(same_table).is_err());
        let same_preset = RunFamily {
            presets: &["toy2d-ring"],
            ..OTHER
        };
        let err = Registry::new().with(same_preset).unwrap_err().to_string();
        assert!(err.contains("`toy2d-ring`"), "{err}");
    }

    #[test]
    fn files_go_to_the_family_of_their_table() -> Result<()> {
        let registry = Registry::new().with(OTHER)?;
        let text = RunConfig::preset("toy2d-ring")?.to_toml()?;
        let run = registry.from_toml(&text)?;
        assert_eq!(run.family(), "denoiser");
        assert_eq!(run.to_toml()?, text);
        // The other family's parser receives its files.
        let err = registry.from_toml("[other]\n").unwrap_err().to_string();
        assert!(err.contains("other: parsed"), "{err}");
        for bad in ["[data]\nkind = \"toy2d\"\n", "[model]\n[other]\n", "[model"] {
            assert!(
                matches!(registry.from_toml(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
        let err = registry.from_toml("[data]\n").unwrap_err().to_string();
        assert!(
            err.contains("[model] (denoiser runs), [other] (other runs)"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn only_denoiser_runs_take_an_energy() -> Result<()> {
        let mut run = Registry::new().preset("toy2d-ring")?;
        run.set_energy(EnergyForm::HalfNorm)?;
        run.validate()?;
        assert!(run.to_toml()?.contains("half_norm"));
        Ok(())
    }
}
