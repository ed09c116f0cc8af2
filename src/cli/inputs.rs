//! Inputs shared by `build` and `plan`: where the closure comes from and how to layer it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use nixoci::closure::{self, Closure};
use nixoci::image::ImageSpec;
use nixoci::layering::{self, Budget, Plan};

#[derive(Debug, Clone, Args)]
pub struct Inputs {
    /// Store paths whose closure to image (asks `nix path-info --json --recursive`; needs Nix).
    #[arg(value_name = "ROOT")]
    pub roots: Vec<String>,
    /// A closure file: `nix path-info --json --recursive` output (any Nix version) or an
    /// exportReferencesGraph file (text or structured-attrs JSON). The shape is detected.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["roots", "closure_info"])]
    pub closure: Option<PathBuf>,
    /// A closureInfo output directory (`store-paths` + `registration`).
    #[arg(long, value_name = "DIR", conflicts_with = "roots")]
    pub closure_info: Option<PathBuf>,
    /// Directory holding the store path directories (`DIR/<hash>-<name>`) when they are not in
    /// /nix/store. The image still puts them at /nix/store.
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    pub store_root: PathBuf,
    /// Image spec TOML: entrypoint, env, user, users/groups, extra dirs/files/symlinks.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Most layers in the image, the customisation layer included.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub max_layers: u32,
}

impl Inputs {
    pub fn closure(&self) -> Result<Closure> {
        let closure = match (&self.closure, &self.closure_info) {
            (Some(file), _) => closure::read::closure_file(file)?,
            (None, Some(dir)) => closure::read::closure_info(dir)?,
            (None, None) if !self.roots.is_empty() => closure::read::from_nix(&self.roots)?,
            (None, None) => {
                bail!("no closure: give store paths (ROOT…), --closure FILE or --closure-info DIR")
            }
        };
        if closure.is_empty() {
            bail!("the closure is empty");
        }
        Ok(closure)
    }

    pub fn spec(&self) -> Result<ImageSpec> {
        match &self.image {
            Some(f) => ImageSpec::load(f),
            None => Ok(ImageSpec {
                architecture: "amd64".into(),
                ..Default::default()
            }),
        }
    }

    pub fn plan(&self, closure: &Closure, spec: &ImageSpec) -> Result<Plan> {
        let custom = usize::from(spec.has_layer());
        let max = self.max_layers as usize;
        if max <= custom {
            bail!(
                "--max-layers {max} leaves no layer for the store paths (the customisation layer takes one)"
            );
        }
        Ok(layering::plan(
            closure,
            Budget {
                store_layers: max - custom,
            },
        ))
    }
}
