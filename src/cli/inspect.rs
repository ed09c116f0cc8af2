//! `nixoci inspect IMAGE`.

use std::process::ExitCode;

use anyhow::Result;

use super::reporter::CliReporter;
use nixoci::index::{self, IndexInspection, PlatformInspection};
use nixoci::inspect::{self, InspectOptions};
use nixoci::platform::Platform;
use nixoci::transport::ImageRef;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "IMAGE: oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF] or docker://HOST/REPO[:TAG|@DIGEST].

Store paths come from nixoci's layer annotations when nixoci built the image (no layer is read),
otherwise from each layer's tar headers (streamed, never extracted). An image index (multi-arch
image) shows each platform's image, one section each, unless --platform picks one."
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
    /// From an image index, only this platform's image (OS/ARCH[/VARIANT], e.g. linux/arm64).
    #[arg(long, value_name = "OS/ARCH", value_parser = Platform::parse)]
    pub platform: Option<Platform>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let r = args.image.clone().with_registry_options(&args.registry.options()?);
    let opened = index::open_platforms(&r, args.platform.as_ref())?;
    let reporter = CliReporter::new(false);
    let opts = InspectOptions { read_layers: args.read_layers };
    if let Some((digest, media_type)) = opened.index {
        let platforms = opened
            .images
            .iter()
            .map(|(p, img)| {
                Ok(PlatformInspection { platform: p.to_string(), image: inspect::inspect(img, &opts, &reporter)? })
            })
            .collect::<Result<Vec<_>>>()?;
        reporter.finish();
        let ins = IndexInspection { reference: r.to_string(), index_digest: digest, media_type, platforms };
        if args.json {
            super::print_json(&ins)?;
        } else {
            index::write_index_text(&ins, &mut std::io::stdout().lock())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some((_, img)) = opened.images.first() else { anyhow::bail!("internal error: {r} opened as no image") };
    let ins = inspect::inspect(img, &opts, &reporter)?;
    reporter.finish();
    if args.json {
        super::print_json(&ins)?;
    } else {
        inspect::write_text(&ins, &mut std::io::stdout().lock())?;
    }
    Ok(ExitCode::SUCCESS)
}
