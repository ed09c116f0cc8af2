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
    let referrers = referrers(&args.image.clone().with_registry_options(&args.registry.options()?), &img);
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
fn referrers(image: &ImageRef, img: &SourceImage) -> Option<Vec<nixoci::referrers::Referrer>> {
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
