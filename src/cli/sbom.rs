//! `nixoci sbom`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::reporter::CliReporter;
use nixoci::closure::{self, StorePath};
use nixoci::image::ANNOTATION_STORE_PATHS;
use nixoci::referrers::Store;
use nixoci::sbom::{self, CollectOptions, Format, Sbom};
use nixoci::transport::ImageRef;
use nixoci::transport::source::SourceImage;

#[derive(Debug, clap::Args)]
#[command(after_help = "WHAT IT DOES:
  nixoci sbom IMAGE                  the SBOM attached to IMAGE (an OCI 1.1 referrer, e.g. from
                                     `build --sbom`), fetched from the oci: layout or registry
  nixoci sbom --closure FILE         computed from a closure (store paths, NAR hashes, references;
                                     Python dist-info read under --store-root)
  nixoci sbom IMAGE --closure FILE   computed, with the layer of each store path from IMAGE's
                                     layer annotations; --attach adds it to IMAGE as a referrer

Store paths are packages with pkg:nix purls; Python distributions (dist-info METADATA) inside
them are packages with pkg:pypi purls. Output is deterministic (SOURCE_DATE_EPOCH or 1 as the
creation time).

EXAMPLES:
  nixoci sbom --closure closure.json --store-root store --format cyclonedx -o sbom.cdx.json
  nixoci sbom docker://registry.example.com/acme/app:1.4 --format spdx")]
pub struct Args {
    /// The image (oci:DIR[:TAG], docker://HOST/REPO[:TAG], oci-archive:, docker-archive:).
    #[arg(value_name = "IMAGE", value_parser = ImageRef::parse)]
    pub image: Option<ImageRef>,
    /// A closure file (`nix path-info --json --recursive`, exportReferencesGraph): compute the SBOM.
    #[arg(long, value_name = "FILE", conflicts_with = "closure_info")]
    pub closure: Option<PathBuf>,
    /// A closureInfo output directory: compute the SBOM.
    #[arg(long, value_name = "DIR")]
    pub closure_info: Option<PathBuf>,
    /// Directory holding the store path directories, to read Python dist-info [default:
    /// /nix/store when it holds the closure, else no Python packages are looked for].
    #[arg(long, value_name = "DIR")]
    pub store_root: Option<PathBuf>,
    /// spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.6 JSON).
    #[arg(long, value_name = "FORMAT", default_value = "spdx")]
    pub format: Format,
    /// Write the SBOM to FILE [default: stdout].
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Attach the computed SBOM to IMAGE (oci: or docker://) as an OCI 1.1 referrer.
    #[arg(long, requires = "image")]
    pub attach: bool,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let options = args.registry.options()?;
    let image = args.image.clone().map(|i| i.with_registry_options(&options));
    let computing = args.closure.is_some() || args.closure_info.is_some();
    let doc = match (&image, computing) {
        (Some(img), false) => attached(img, args.format)?,
        (_, true) => {
            let closure = match (&args.closure, &args.closure_info) {
                (Some(f), _) => closure::read::closure_file(f)?,
                (None, Some(d)) => closure::read::closure_info(d)?,
                (None, None) => unreachable!("computing needs a closure"),
            };
            let mut opts = CollectOptions { store_root: None, layers: Default::default() };
            let default_root = Path::new(closure::STORE_DIR);
            opts.store_root = match &args.store_root {
                Some(r) => Some(r.as_path()),
                None if closure.iter().all(|i| default_root.join(i.path.base_name()).exists()) => Some(default_root),
                None => {
                    eprintln!(
                        "note: the closure's store paths are not in {}: no Python packages looked for (give --store-root)",
                        closure::STORE_DIR
                    );
                    None
                }
            };
            let mut subject = None;
            if let Some(img) = &image {
                {
                    let src = SourceImage::open(img)?;
                    opts.layers = sbom::layers_by_path(
                        src.layers
                            .iter()
                            .filter_map(|l| {
                                let paths = l.annotations.get(ANNOTATION_STORE_PATHS)?;
                                let paths: Vec<StorePath> =
                                    paths.lines().filter_map(|p| StorePath::parse(p).ok()).collect();
                                Some((&l.digest, paths))
                            })
                            .collect::<Vec<_>>()
                            .iter()
                            .map(|(d, p)| (*d, p.as_slice())),
                    );
                    subject = Some(src.manifest_digest.clone());
                }
            }
            let sbom =
                Sbom::collect(&sbom::document_name(&closure), &closure, super::build::source_date_epoch()?, &opts)?;
            if args.attach {
                let (Some(img), Some(subject)) = (&image, &subject) else { unreachable!("--attach requires IMAGE") };
                let reporter = CliReporter::new(true);
                let digests = sbom::attach(&sbom, &[args.format], img, subject, &reporter)?;
                for d in digests {
                    eprintln!("attached the {} SBOM to {img} as {d}", args.format);
                }
            }
            sbom.render(args.format)?
        }
        (None, false) => {
            bail!("nothing to describe: give IMAGE (its attached SBOM) or --closure FILE / --closure-info DIR")
        }
    };
    match &args.output {
        Some(f) => nixoci::atomic::atomic_write_bytes(f, &doc)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&doc)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `format` SBOM attached to `image`.
fn attached(image: &ImageRef, format: Format) -> Result<Vec<u8>> {
    let src = SourceImage::open(image)?;
    let Some(store) = Store::open(image, false)? else {
        bail!("{image}: archives hold no referrers; give --closure FILE to compute the SBOM")
    };
    let referrers = store.list(&src.manifest_digest).with_context(|| format!("listing the referrers of {image}"))?;
    let Some(r) = referrers.iter().find(|r| r.artifact_type.as_deref() == Some(format.media_type())) else {
        let types: Vec<&str> = referrers.iter().filter_map(|r| r.artifact_type.as_deref()).collect();
        bail!(
            "{image} ({}) has no {format} SBOM attached (referrers: {}); compute one with --closure FILE, or build with --sbom {format}",
            src.manifest_digest,
            if types.is_empty() { "none".to_owned() } else { types.join(", ") }
        );
    };
    let artifact = store.fetch(r)?;
    let layer = artifact.parsed.layers().iter().position(|l| l.media_type().to_string() == format.media_type());
    match layer.and_then(|i| artifact.blobs.get(i + 1)) {
        Some((_, bytes)) => Ok(bytes.clone()),
        None => bail!("referrer {} of {image} holds no {} layer", r.digest, format.media_type()),
    }
}
