//! `nixoci inspect IMAGE`.

use std::process::ExitCode;

use anyhow::Result;

use super::reporter::CliReporter;
use nixoci::inspect::{self, InspectOptions};
use nixoci::transport::ImageRef;
use nixoci::transport::source::SourceImage;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "IMAGE: oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF] or docker://HOST/REPO[:TAG|@DIGEST].

Store paths come from nixoci's layer annotations when nixoci built the image (no layer is read),
otherwise from each layer's tar headers (streamed, never extracted)."
)]
pub struct Args {
    /// The image to inspect.
    #[arg(value_name = "IMAGE", value_parser = ImageRef::parse)]
    pub image: ImageRef,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Read every layer, also those nixoci annotated: verifies each blob and diff_id and gives
    /// uncompressed sizes.
    #[arg(long)]
    pub read_layers: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let img = SourceImage::open(&args.image.clone().with_registry_options(&args.registry.options()?))?;
    let reporter = CliReporter::new(false);
    let ins = inspect::inspect(&img, &InspectOptions { read_layers: args.read_layers }, &reporter)?;
    reporter.finish();
    if args.json {
        super::print_json(&ins)?;
    } else {
        inspect::write_text(&ins, &mut std::io::stdout().lock())?;
    }
    Ok(ExitCode::SUCCESS)
}
