//! `nixoci diff OLD NEW`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

use super::reporter::CliReporter;
use nixoci::diff::{self, DiffOptions};
use nixoci::index;
use nixoci::platform::Platform;
use nixoci::transport::ImageRef;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "OLD, NEW: oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF] or docker://HOST/REPO[:TAG|@DIGEST].

Download bytes are the compressed sizes of NEW's layers that OLD lacks. Exits 0 whether or not
the images differ. Image indexes (multi-arch images) are compared per platform: the images of one
platform paired, then the platforms only one side has (--platform compares one platform only)."
)]
pub struct Args {
    /// The image a node holds.
    #[arg(value_name = "OLD", value_parser = ImageRef::parse)]
    pub old: ImageRef,
    /// The image it updates to.
    #[arg(value_name = "NEW", value_parser = ImageRef::parse)]
    pub new: ImageRef,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
    /// Also compare the files of changed store paths (reads only the layers that hold them).
    #[arg(long)]
    pub files: bool,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// From image indexes, compare only this platform's images (OS/ARCH[/VARIANT]).
    #[arg(long, value_name = "OS/ARCH", value_parser = Platform::parse)]
    pub platform: Option<Platform>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let old = index::open_platforms(
        &args.old.clone().with_registry_options(&args.registry.options()?),
        args.platform.as_ref(),
    )?;
    let new = index::open_platforms(
        &args.new.clone().with_registry_options(&args.registry.options()?),
        args.platform.as_ref(),
    )?;
    let reporter = CliReporter::new(false);
    let opts = DiffOptions { files: args.files };
    if old.index.is_some() || new.index.is_some() {
        if args.html.is_some() {
            bail!("--html compares two images: with image indexes, pick one platform with --platform");
        }
        let d = index::diff_platforms(&old, &new, &opts, &reporter)?;
        reporter.finish();
        if args.json {
            super::print_json(&d)?;
        } else {
            index::write_diff_text(&d, &mut std::io::stdout().lock())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some((_, old)), Some((_, new))) = (old.images.first(), new.images.first()) else {
        bail!("internal error: an image opened as no image")
    };
    let d = diff::diff(old, new, &opts, &reporter)?;
    reporter.finish();
    if let Some(path) = &args.html {
        diff::write_html(&d, path)?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        super::print_json(&d)?;
    } else {
        diff::write_text(&d, &mut std::io::stdout().lock())?;
    }
    Ok(ExitCode::SUCCESS)
}
