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
    let referrers = referrers(&r, img);
    if args.json {
        let mut v = serde_json::to_value(&ins)?;
        if let (Some(obj), Some(r)) = (v.as_object_mut(), &referrers) {
            obj.insert("referrers".into(), serde_json::to_value(r)?);
        }
        super::print_json(&v)?;
    } else {
        let mut out = std::io::stdout().lock();
        inspect::write_text(&ins, &mut out)?;
        if let Some(r) = &referrers {
            use std::io::Write;
            writeln!(out, "\nreferrers:{}", if r.is_empty() { " none" } else { "" })?;
            for r in r {
                writeln!(out, "  {}  {}  {} bytes", r.digest, r.artifact_type.as_deref().unwrap_or("-"), r.size)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The image's OCI 1.1 referrers (SBOMs…) where its transport keeps them; a failure to list
/// them is a warning, not an error of inspect.
fn referrers(
    image: &ImageRef,
    img: &nixoci::transport::source::SourceImage,
) -> Option<Vec<nixoci::referrers::Referrer>> {
    let listed =
        nixoci::referrers::Store::open(image, false).and_then(|s| s.map(|s| s.list(&img.manifest_digest)).transpose());
    match listed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warning: listing the referrers of {image}: {e:#}");
            None
        }
    }
}
