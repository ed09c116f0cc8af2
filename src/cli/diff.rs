//! `nixoci diff OLD NEW`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::reporter::CliReporter;
use nixoci::diff::{self, DiffOptions};
use nixoci::transport::ImageRef;
use nixoci::transport::source::SourceImage;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "OLD, NEW: oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF] or docker://HOST/REPO[:TAG|@DIGEST].

Download bytes are the compressed sizes of NEW's layers that OLD lacks. Exits 0 whether or not
the images differ."
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
}

pub fn run(args: Args) -> Result<ExitCode> {
    let old = SourceImage::open(&args.old.clone().with_registry_options(&args.registry.options()?))?;
    let new = SourceImage::open(&args.new.clone().with_registry_options(&args.registry.options()?))?;
    let reporter = CliReporter::new(false);
    let d = diff::diff(&old, &new, &DiffOptions { files: args.files }, &reporter)?;
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
