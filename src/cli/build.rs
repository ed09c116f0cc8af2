//! `nixoci build`.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::inputs::Inputs;
use super::reporter::CliReporter;
use nixoci::blob::Compression;
use nixoci::build::{self, BuildOptions};
use nixoci::transport::ImageRef;

#[derive(Debug, clap::Args)]
#[command(after_help = "DESTINATIONS (skopeo's spelling; -o may repeat):
  oci:DIR[:TAG]                  an OCI layout directory (added to if it exists)
  oci-archive:FILE[:REF]         an OCI layout in a tar (podman load -i FILE)
  docker-archive:FILE[:REF]      docker save format, uncompressed layers
  -                              docker-archive on stdout: nixoci build … -o - | podman load
  docker://HOST[:PORT]/REPO[:TAG|@DIGEST]
                                 push to a registry; only blobs it lacks are uploaded. Give -o
                                 once per tag (docker://h/app:1.4 -o docker://h/app:latest): the
                                 second push sends the manifest only. Without :TAG, the image
                                 spec's name's tag, else latest.

EXAMPLE:
  nixoci build --closure examples/hello/closure.json --store-root examples/hello/store \\
      --image examples/hello/image.toml -o oci-archive:hello.tar")]
pub struct Args {
    #[command(flatten)]
    pub inputs: Inputs,
    /// Where to write the image (repeatable).
    #[arg(short = 'o', long = "output", value_name = "DEST", required = true, value_parser = ImageRef::parse)]
    pub outputs: Vec<ImageRef>,
    /// Layer compression for OCI outputs: gzip[:1-9] (default gzip:6), zstd[:1-19], zstd:chunked[:1-19] (partial pulls), none.
    /// docker-archive outputs always carry uncompressed layers.
    #[arg(long, value_name = "ALGO[:LEVEL]", default_value = "gzip")]
    pub compression: Compression,
    /// Layers built at once (default: the number of CPUs). Output is identical for any value.
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// The layer cache [default: $XDG_CACHE_HOME/nixoci, else ~/.cache/nixoci].
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// Neither read nor write the layer cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Check the assembled image against this policy (see `nixoci check --help`) before anything
    /// is written: a failing image is refused and no destination is touched.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
    /// A label in the image config (repeatable; podman build's spelling), over the image spec's
    /// `labels`, e.g. --label org.opencontainers.image.revision=$GITHUB_SHA.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    /// A manifest annotation (repeatable), over the image spec's `annotations`, e.g.
    /// --annotation org.opencontainers.image.source=https://github.com/acme/comfy.
    /// org.opencontainers.image.created (from SOURCE_DATE_EPOCH) and, with --from,
    /// org.opencontainers.image.base.name and .base.digest are set by default.
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = key_value)]
    pub annotations: Vec<(String, String)>,
    /// Attach SBOMs of the closure (spdx, cyclonedx; comma-separated) to every oci: and docker://
    /// output as OCI 1.1 referrers (see `nixoci sbom --help`).
    #[arg(long, value_name = "FORMAT,…", value_delimiter = ',')]
    pub sbom: Vec<nixoci::sbom::Format>,
    /// Print one JSON document (digests, layers, stats) on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.json && args.outputs.contains(&ImageRef::Stdout) {
        anyhow::bail!("--json and -o - both want stdout: pick one");
    }
    let started = std::time::Instant::now();
    let closure = args.inputs.closure()?;
    let closure_secs = started.elapsed().as_secs_f64();
    let mut spec = args.inputs.spec()?;
    spec.labels.extend(args.labels);
    spec.annotations.extend(args.annotations);
    let base = args.inputs.base(&spec)?;
    let plan = args.inputs.plan(&closure, &spec, base.as_ref().map_or(0, |b| b.layer_count()))?;
    let plan_secs = started.elapsed().as_secs_f64() - closure_secs;
    let opts = BuildOptions {
        store_root: args.inputs.store_root.clone(),
        spec,
        compression: args.compression,
        jobs: args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        epoch: source_date_epoch()?,
        outputs: nixoci::base::mount_from_base(args.inputs.registry.apply(args.outputs)?, args.inputs.from.as_ref()),
        cache_dir: if args.no_cache { None } else { args.cache_dir.or_else(nixoci::cache::Cache::default_dir) },
        policy: args.policy.as_deref().map(nixoci::policy::Policy::load).transpose()?,
        base: base.map(std::sync::Arc::new),
    };
    let reporter = CliReporter::new(args.quiet);
    let mut stdout_lock;
    let stdout: Option<&mut dyn std::io::Write> = if opts.outputs.contains(&ImageRef::Stdout) {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            anyhow::bail!(
                "refusing to write a docker-archive to a terminal: pipe it, e.g. `nixoci build … -o - | podman load`"
            );
        }
        stdout_lock = std::io::stdout().lock();
        Some(&mut stdout_lock)
    } else {
        None
    };
    let mut report = build::build(&closure, &plan, &opts, stdout, &reporter)?;
    report.stats.seconds.insert("closure".into(), closure_secs);
    report.stats.seconds.insert("plan".into(), plan_secs);
    report.stats.seconds.insert("total".into(), started.elapsed().as_secs_f64());
    let sboms = if args.sbom.is_empty() {
        Vec::new()
    } else {
        nixoci::sbom::attach_to_outputs(&closure, &report, &opts, &args.sbom, &reporter)?
    };
    reporter.finish();
    if args.json && !sboms.is_empty() {
        let mut v = serde_json::to_value(&report)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("sboms".into(), serde_json::to_value(&sboms)?);
        }
        super::print_json(&v)?;
    } else if args.json {
        super::print_json(&report)?;
    } else if !args.quiet {
        let s = &report.stats;
        eprintln!(
            "{} layers ({} built, {} from cache), manifest {} in {:.2}s",
            report.layers.len(),
            s.layers_built,
            s.cache_hits,
            report.manifest_digest,
            started.elapsed().as_secs_f64()
        );
        if s.upload != Default::default() {
            eprintln!(
                "registry: {} blobs uploaded ({}), {} already there, {} mounted",
                s.upload.blobs_uploaded,
                super::reporter::human(s.upload.bytes_uploaded),
                s.upload.blobs_skipped,
                s.upload.blobs_mounted
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `KEY=VALUE`, for --label and --annotation.
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `SOURCE_DATE_EPOCH`, or 1 (not 0: some tools treat a zero mtime as "unset").
pub(super) fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => {
            v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))
        }
        _ => Ok(1),
    }
}
