//! `nixoci copy`.

use std::process::ExitCode;

use anyhow::Result;

use super::registry::RegistryArgs;
use super::reporter::CliReporter;
use nixoci::copy::{self, CopyOptions};
use nixoci::platform::Platform;
use nixoci::transport::ImageRef;

#[derive(Debug, clap::Args)]
#[command(after_help = "SOURCES: oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF], \
docker://HOST[:PORT]/REPO[:TAG|@DIGEST]
DESTINATIONS: oci:DIR[:TAG], oci-archive:FILE[:REF], docker://HOST[:PORT]/REPO[:TAG|@DIGEST]
The manifest is copied byte for byte: the image keeps its digest. An image index (multi-arch
image) is copied whole, every platform's image with it, unless --platform picks one. Registry
options apply to both sides.

EXAMPLES:
  nixoci copy oci:out:1.4 docker://registry.example.com/acme/app:1.4
  nixoci copy docker://registry.example.com/acme/app:1.4 oci:app:1.4
  nixoci copy --mount-from acme/app docker://r.example.com/acme/app:1.4 docker://r.example.com/acme/app-staging:1.4")]
pub struct Args {
    /// The image to copy.
    #[arg(value_name = "SRC", value_parser = ImageRef::parse)]
    pub src: ImageRef,
    /// Where to copy it.
    #[arg(value_name = "DEST", value_parser = ImageRef::parse)]
    pub dest: ImageRef,
    /// From an image index, copy only this platform's image (OS/ARCH[/VARIANT], e.g.
    /// linux/arm64); without it an index is copied whole.
    #[arg(long, value_name = "OS/ARCH", value_parser = Platform::parse)]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Blobs uploaded at once (default: 4).
    #[arg(short, long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// Print one JSON document (digests, bytes uploaded, blobs skipped/mounted) on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut refs = args.registry.apply(vec![args.src, args.dest])?.into_iter();
    let (Some(src), Some(dest)) = (refs.next(), refs.next()) else { unreachable!("two references in, two out") };
    let reporter = CliReporter::new(args.quiet);
    let opts =
        CopyOptions { jobs: args.jobs.max(1), epoch: super::build::source_date_epoch()?, platform: args.platform };
    let report = copy::copy(&src, &dest, &opts, &reporter)?;
    // OCI 1.1 referrers (SBOMs…) of the image go with it, between oci: and docker://.
    let referrers = nixoci::referrers::carry_between(&src, &dest, &report.manifest_digest, &reporter)?;
    reporter.finish();
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("referrers".into(), referrers.into());
        }
        super::print_json(&v)?;
    } else if !args.quiet {
        eprintln!(
            "copied {}{} layers, {} {} ({} uploaded, {} skipped, {} mounted, {}) in {:.2}s",
            if report.platforms.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = report.platforms.iter().map(|p| p.platform.as_str()).collect();
                format!("{} images ({}), ", names.len(), names.join(", "))
            },
            report.layers,
            if report.platforms.is_empty() { "manifest" } else { "index" },
            report.manifest_digest,
            report.upload.blobs_uploaded,
            report.upload.blobs_skipped,
            report.upload.blobs_mounted,
            super::reporter::human(report.upload.bytes_uploaded),
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
