//! The command line: one file per subcommand, each an `Args` struct plus `run`.

mod build;
mod check;
mod copy;
mod diff;
mod index;
mod inputs;
mod inspect;
mod plan;
mod registry;
mod reporter;
mod sbom;
mod smoke;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Turn a Nix closure into a reproducible, cache-friendly OCI image — no daemon, no fakeroot.
#[derive(Debug, Parser)]
#[command(name = "nixoci", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More diagnostics on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a closure and write it to one or more destinations.
    Build(build::Args),
    /// Show how a closure would be split into layers, without reading any file.
    Plan(plan::Args),
    /// Check an image against a policy (size budgets, forbidden store paths, non-root user…).
    Check(check::Args),
    /// Run smoke-test commands in containers of an image (podman or docker, GPU or CPU).
    Smoke(smoke::Args),
    /// Show an image: manifest, platform, config, and each layer's sizes, group and store paths.
    Inspect(inspect::Args),
    /// Compare two images: layers, download bytes, store paths, config (and files with --files).
    Diff(diff::Args),
    /// Copy an image from any transport (oci:, oci-archive:, docker-archive:, docker://) to
    /// oci:, oci-archive: or docker://, keeping its digest.
    Copy(copy::Args),
    /// An SBOM (SPDX 2.3 or CycloneDX 1.6 JSON): the one attached to an image, or computed from
    /// a closure.
    Sbom(sbom::Args),
    /// Write an image index (multi-arch image) over per-platform images to oci:, oci-archive:
    /// or docker://.
    Index(index::Args),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Build(a) => build::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Check(a) => check::run(a),
        Command::Smoke(a) => smoke::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Copy(a) => copy::run(a),
        Command::Sbom(a) => sbom::run(a),
        Command::Index(a) => index::run(a),
    }
}

pub fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIXOCI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).without_time().try_init();
}

/// Prints `value` as the one JSON document on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
