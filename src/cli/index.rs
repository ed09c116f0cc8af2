//! `nixoci index`.

use std::process::ExitCode;

use anyhow::Result;

use super::registry::RegistryArgs;
use super::reporter::CliReporter;
use nixoci::index::{self, IndexOptions};
use nixoci::transport::ImageRef;

#[derive(Debug, clap::Args)]
#[command(after_help = "IMAGES: oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF], \
docker://HOST[:PORT]/REPO[:TAG|@DIGEST] (an image index brings all its images)
DESTINATIONS: oci:DIR[:TAG], oci-archive:FILE[:REF], docker://HOST[:PORT]/REPO[:TAG]
Each image's platform is its config's os/architecture/variant (checked against its ELF files by
`nixoci build`); one image per platform. The index lists them sorted by platform, so its digest
does not depend on the order of IMAGEs. Every blob is carried; to a registry, each manifest is
pushed by digest, then the index at the tag.

EXAMPLES:
  nixoci build -c amd64.json -s image-amd64.toml -o oci:amd64:1.0
  nixoci build -c arm64.json -s image-arm64.toml -o oci:arm64:1.0
  nixoci index docker://registry.example.com/acme/app:1.0 oci:amd64:1.0 oci:arm64:1.0")]
pub struct Args {
    /// Where to write the index.
    #[arg(value_name = "DEST", value_parser = ImageRef::parse)]
    pub dest: ImageRef,
    /// The per-platform images.
    #[arg(value_name = "IMAGE", value_parser = ImageRef::parse, required = true)]
    pub images: Vec<ImageRef>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Blobs uploaded at once (default: 4).
    #[arg(short, long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// Print one JSON document (index digest, platforms, bytes uploaded) on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut refs = args.registry.apply(std::iter::once(args.dest).chain(args.images).collect())?;
    let dest = refs.remove(0);
    let reporter = CliReporter::new(args.quiet);
    let opts = IndexOptions { jobs: args.jobs.max(1), epoch: super::build::source_date_epoch()? };
    let report = index::index(&dest, &refs, &opts, &reporter)?;
    reporter.finish();
    if args.json {
        super::print_json(&report)?;
    } else if !args.quiet {
        for p in &report.platforms {
            eprintln!("  {:<16} {}  {} layers  from {}", p.platform, p.manifest_digest, p.layers, p.source);
        }
        eprintln!(
            "wrote index {} of {} images to {} ({} uploaded, {} skipped, {}) in {:.2}s",
            report.index_digest,
            report.platforms.len(),
            report.destination,
            report.upload.blobs_uploaded,
            report.upload.blobs_skipped,
            super::reporter::human(report.upload.bytes_uploaded),
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
