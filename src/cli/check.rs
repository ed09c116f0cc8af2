//! `nixoci check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use nixoci::policy::{self, Policy};
use nixoci::transport::ImageRef;
use nixoci::transport::source::SourceImage;

#[derive(Debug, clap::Args)]
#[command(after_help = "POLICY FILE (TOML, or the same as JSON; every rule optional, unknown keys are errors):
  max_layers = 100                 max_layer_size = \"10GiB\"      max_total_size = \"40GiB\"
  forbid = [\"gcc-*\", \"*-dev\"]      require = [\"python3-*\"]       (globs on store path names)
  non_root_user = true             no_setuid = true              no_world_writable = true

Sizes are of the layer blobs as stored and pulled. Exit status: 0 when every rule passes, 1 when
one fails or the image cannot be read.

EXAMPLE:
  nixoci check oci-archive:comfyui.tar --policy policies/comfyui.toml")]
pub struct Args {
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF] or docker://HOST/REPO[:TAG|@DIGEST].
    #[arg(value_name = "IMAGE", value_parser = ImageRef::parse)]
    pub image: ImageRef,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
    /// The policy file (TOML or JSON).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Print the verdict as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let policy = Policy::load(&args.policy)?;
    let img = SourceImage::open(&args.image.clone().with_registry_options(&args.registry.options()?))?;
    let verdict = policy::check(&img, &policy)?;
    if args.json {
        super::print_json(&verdict)?;
    } else {
        eprint!("{}", verdict.render(20));
    }
    Ok(if verdict.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
