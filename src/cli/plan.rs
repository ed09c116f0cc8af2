//! `nixoci plan`: the layer plan, from closure metadata alone.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::inputs::Inputs;
use nixoci::closure::{Closure, StorePath};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub inputs: Inputs,
    /// Print the plan as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PlanJson<'a> {
    layers: Vec<LayerJson<'a>>,
    total_nar_size: u64,
}

#[derive(Serialize)]
struct LayerJson<'a> {
    group: &'a str,
    paths: &'a [StorePath],
    nar_size: u64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let closure = args.inputs.closure()?;
    let spec = args.inputs.spec()?;
    let plan = args.inputs.plan(&closure, &spec)?;
    let size = |paths: &[StorePath], c: &Closure| paths.iter().map(|p| c.nar_size(p)).sum::<u64>();
    let layers: Vec<LayerJson<'_>> = plan
        .layers
        .iter()
        .map(|l| LayerJson {
            group: &l.group,
            paths: &l.paths,
            nar_size: size(&l.paths, &closure),
        })
        .collect();
    if args.json {
        let total_nar_size = layers.iter().map(|l| l.nar_size).sum();
        super::print_json(&PlanJson {
            layers,
            total_nar_size,
        })?;
    } else {
        println!(
            "{:>5}  {:<16} {:>6}  {:>10}  FIRST PATH",
            "LAYER", "GROUP", "PATHS", "NAR SIZE"
        );
        for (i, l) in layers.iter().enumerate() {
            let first = l.paths.first().map(|p| p.name()).unwrap_or("");
            println!(
                "{:>5}  {:<16} {:>6}  {:>10}  {first}",
                i + 1,
                l.group,
                l.paths.len(),
                super::reporter::human(l.nar_size)
            );
        }
        if spec.has_layer() {
            println!(
                "{:>5}  {:<16} {:>6}  {:>10}  (from the image spec)",
                layers.len() + 1,
                "customisation",
                0,
                "-"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
