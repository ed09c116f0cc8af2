//! `nixoci plan`: the layer plan, from closure metadata alone (no store on disk needed).

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::inputs::Inputs;
use nixoci::closure::StorePath;
use nixoci::layering::{PreviousReport, Split};
use nixoci::size::human;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub inputs: Inputs,
    /// Print the plan as JSON on stdout (what `--previous` reads back next release).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PlanJson<'a> {
    layers: Vec<LayerJson<'a>>,
    total_nar_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_layer_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_update_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<&'a PreviousReport>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    warnings: &'a [String],
}

#[derive(Serialize)]
struct LayerJson<'a> {
    group: &'a str,
    paths: &'a [StorePath],
    nar_size: u64,
    /// Present when the layer is split at build time: the estimated number of parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<Split>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reused: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let closure = args.inputs.closure()?;
    let spec = args.inputs.spec()?;
    let base_layers = args.inputs.base(&spec)?.map_or(0, |b| b.layer_count());
    let plan = args.inputs.plan(&closure, &spec, base_layers)?;
    let size = |paths: &[StorePath]| paths.iter().map(|p| closure.nar_size(p)).sum::<u64>();
    let layers: Vec<LayerJson<'_>> = plan
        .layers
        .iter()
        .map(|l| LayerJson {
            group: &l.group,
            paths: &l.paths,
            nar_size: size(&l.paths),
            split: l.split,
            reused: l.reused,
        })
        .collect();
    let total_nar_size = layers.iter().map(|l| l.nar_size).sum();
    if args.json {
        let doc = PlanJson {
            layers,
            total_nar_size,
            max_layer_size: plan.max_layer_size,
            expected_update_ratio: plan.expected_update_ratio,
            previous: plan.previous.as_ref(),
            warnings: &plan.warnings,
        };
        super::print_json(&doc)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:>5}  {:<16} {:>6}  {:>10}  FIRST PATH", "LAYER", "GROUP", "PATHS", "NAR SIZE");
    let mut n = 0;
    for l in &layers {
        let start = n + 1;
        n += l.split.map_or(1, |s| s.parts);
        let index = if n > start { format!("{start}-{n}") } else { start.to_string() };
        let first = l.paths.first().map(|p| p.name()).unwrap_or("");
        let mut note = String::new();
        if l.reused {
            note.push_str("  (kept)");
        }
        if let (Some(split), Some(cap)) = (l.split, plan.max_layer_size) {
            note.push_str(&format!(
                "  [over the {} cap: split by its files at build time, ~{} layers]",
                human(cap),
                split.parts
            ));
        }
        println!("{index:>5}  {:<16} {:>6}  {:>10}  {first}{note}", l.group, l.paths.len(), human(l.nar_size));
    }
    if spec.has_layer() {
        println!("{:>5}  {:<16} {:>6}  {:>10}  (from the image spec)", n + 1, "customisation", 0, "-");
    }
    let mut summary = format!("{} store layers, {} NAR", plan.layer_count(), human(total_nar_size));
    if let Some(r) = &plan.previous {
        summary.push_str(&format!(
            "; previous release: {} layers kept ({}), {} to pull for {} changed ({})",
            r.reused_layers,
            human(r.reused_bytes),
            human(r.pull_bytes),
            human(r.changed_bytes),
            match r.strategy {
                nixoci::layering::Strategy::Sticky => "sticky layout",
                nixoci::layering::Strategy::Replanned => "re-planned: a fresh layout pays off",
            }
        ));
    }
    eprintln!("{summary}");
    Ok(ExitCode::SUCCESS)
}
