//! `nixoci smoke`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::reporter::CliReporter;
use nixoci::smoke::{self, Checks, GpuMode, Runtime, SmokeOptions, Timeout};
use nixoci::transport::ImageRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeArg {
    Podman,
    Docker,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "CHECKS FILE (TOML, or the same as JSON):
  [[check]]
  name = \"torch sees the GPU\"
  command = [\"python3\", \"-c\", \"import torch; print(torch.cuda.is_available())\"]
  expect_stdout = \"True\"     # optional substring of stdout
  timeout = \"60s\"            # optional (default 60s); the container is removed when it runs out
  gpu = true                 # optional (default false)
  env = [\"K=V\"]              # optional

GPU: podman reaches GPUs through CDI (--device nvidia.com/gpu=all; make the spec with
`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`), docker with --gpus all. Without --gpu or
--cpu, GPU checks run when a GPU can be reached and are reported skipped otherwise.

Exit status: 0 when no check failed or timed out, 1 otherwise.

EXAMPLE:
  nixoci smoke oci-archive:comfyui.tar --checks policies/smoke-comfyui.toml --gpu --junit smoke.xml")]
pub struct Args {
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF] or docker://HOST/REPO[:TAG|@DIGEST]. It is
    /// loaded into the runtime unless the runtime already has it.
    #[arg(value_name = "IMAGE", value_parser = ImageRef::parse)]
    pub image: ImageRef,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
    /// The checks file (TOML or JSON).
    #[arg(long, value_name = "FILE")]
    pub checks: PathBuf,
    /// The container runtime.
    #[arg(long, value_enum, default_value = "podman")]
    pub runtime: RuntimeArg,
    /// Run the GPU checks, failing when no GPU can be reached.
    #[arg(long, conflicts_with = "cpu")]
    pub gpu: bool,
    /// Run only the checks not marked gpu (the others are reported skipped).
    #[arg(long)]
    pub cpu: bool,
    /// Print the results as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// How long loading or pulling the image into the runtime may take before it is killed
    /// ("30s", "10m", "1h30m").
    #[arg(long, value_name = "DURATION", default_value_t = Timeout(smoke::DEFAULT_LOAD_TIMEOUT))]
    pub load_timeout: Timeout,
    /// Also write the results as JUnit XML to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let checks = Checks::load(&args.checks)?;
    let opts = SmokeOptions {
        runtime: match args.runtime {
            RuntimeArg::Podman => Runtime::Podman,
            RuntimeArg::Docker => Runtime::Docker,
        },
        gpu: match (args.gpu, args.cpu) {
            (true, _) => GpuMode::Require,
            (_, true) => GpuMode::Off,
            _ => GpuMode::Auto,
        },
        load_timeout: args.load_timeout.0,
    };
    let reporter = CliReporter::new(false);
    let image = args.image.clone().with_registry_options(&args.registry.options()?);
    let report = smoke::run(&image, &checks, &opts, &reporter)?;
    reporter.finish();
    if let Some(file) = &args.junit {
        std::fs::write(file, report.junit_xml()).with_context(|| format!("writing JUnit XML to {}", file.display()))?;
    }
    if args.json {
        super::print_json(&report)?;
    } else {
        eprint!("{}", report.render());
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
