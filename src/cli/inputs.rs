//! Inputs shared by `build` and `plan`: where the closure comes from and how to layer it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use nixoci::base::{BASE_GROUP, Base};
use nixoci::closure::{self, Closure};
use nixoci::image::{ANNOTATION_GROUP, ANNOTATION_STORE_PATHS, ImageSpec};
use nixoci::layering::{self, Budget, LayersFile, Plan, Previous};
use nixoci::transport::ImageRef;
use nixoci::transport::source::SourceImage;

/// `--max-layers` when neither the flag nor the layers file gives one.
const DEFAULT_MAX_LAYERS: u32 = 100;

#[derive(Debug, Clone, Args)]
pub struct Inputs {
    /// Store paths whose closure to image (asks `nix path-info --json --recursive`; needs Nix).
    #[arg(value_name = "ROOT")]
    pub roots: Vec<String>,
    /// A closure file: `nix path-info --json --recursive` output (any Nix version) or an
    /// exportReferencesGraph file (text or structured-attrs JSON). The shape is detected.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["roots", "closure_info"])]
    pub closure: Option<PathBuf>,
    /// A closureInfo output directory (`store-paths` + `registration`).
    #[arg(long, value_name = "DIR", conflicts_with = "roots")]
    pub closure_info: Option<PathBuf>,
    /// Directory holding the store path directories (`DIR/<hash>-<name>`) when they are not in
    /// /nix/store. The image still puts them at /nix/store.
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    pub store_root: PathBuf,
    /// Image spec (TOML or JSON): entrypoint, env, user, users/groups, extra dirs/files/symlinks,
    /// nix_db (a Nix database of the closure in the image).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Layer groups, TOML or JSON (e.g. layers/comfyui.toml): ordered groups of store paths, bottom
    /// (most stable) first, plus default max_layers / max_layer_size.
    #[arg(long, value_name = "FILE")]
    pub layers: Option<PathBuf>,
    /// Most layers in the image, the customisation layer included [default: the layers file's
    /// max_layers, or 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=500))]
    pub max_layers: Option<u32>,
    /// Largest layer (uncompressed tar bytes), e.g. 4GiB or 500MB: a store path larger than this
    /// is split across layers by its files [default: the layers file's max_layer_size, or none].
    #[arg(long, value_name = "SIZE", value_parser = parse_layer_size)]
    pub max_layer_size: Option<u64>,
    /// The previous release, whose layers the plan keeps where their contents did not change: its
    /// image (oci:DIR[:TAG], oci-archive:FILE[:REF], docker://HOST/REPO:TAG, read from its layer
    /// annotations) or the JSON that `nixoci plan --json` or `nixoci build --json` printed for it.
    #[arg(long, value_name = "IMAGE|PLAN.json")]
    pub previous: Option<String>,
    /// Build on this image (any source transport, e.g. docker://HOST/REPO:TAG, oci:DIR:TAG): its
    /// layers come first, as they are, and count in --max-layers; its config (Env, Entrypoint,
    /// Cmd, User…) is inherited where the image spec gives none; its platform must match.
    #[arg(long, value_name = "IMAGE", value_parser = ImageRef::parse)]
    pub from: Option<ImageRef>,
    /// USER:PASSWORD for the --from registry (--creds are the destinations' and are never sent
    /// to it; without this flag the auth files are used, as for any registry).
    #[arg(long, value_name = "USER:PASS", requires = "from", value_parser = super::registry::secret)]
    pub from_creds: Option<nixoci::transport::registry::Secret<String>>,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
}

/// The smallest `--max-layer-size`: a few tar headers must fit beside any file.
const MIN_LAYER_SIZE: u64 = 64 * 1024;

fn parse_layer_size(s: &str) -> Result<u64> {
    let n = nixoci::size::parse_size(s)?;
    if n < MIN_LAYER_SIZE {
        bail!("{s:?} is below the smallest layer size cap, 64KiB");
    }
    Ok(n)
}

impl Inputs {
    pub fn closure(&self) -> Result<Closure> {
        let closure = match (&self.closure, &self.closure_info) {
            (Some(file), _) => closure::read::closure_file(file)?,
            (None, Some(dir)) => closure::read::closure_info(dir)?,
            (None, None) if !self.roots.is_empty() => closure::read::from_nix(&self.roots)?,
            (None, None) => {
                bail!("no closure: give store paths (ROOT…), --closure FILE or --closure-info DIR")
            }
        };
        if closure.is_empty() {
            bail!("the closure is empty");
        }
        Ok(closure)
    }

    pub fn spec(&self) -> Result<ImageSpec> {
        match &self.image {
            Some(f) => ImageSpec::load(f),
            None => Ok(ImageSpec { architecture: "amd64".into(), ..Default::default() }),
        }
    }

    /// `--from`: the base image, opened (its manifest and config read) for `spec`'s platform.
    pub fn base(&self, spec: &ImageSpec) -> Result<Option<Base>> {
        let Some(r) = &self.from else { return Ok(None) };
        let r = r.clone().with_registry_options(&self.registry.base_options(self.from_creds.as_ref())?);
        Base::open(&r, &spec.platform()).map(Some).with_context(|| format!("--from {r}"))
    }

    /// Plans the layers, `base_layers` of the budget being taken by a base image's; warnings
    /// (unmatched globs, budget notes) go to stderr.
    pub fn plan(&self, closure: &Closure, spec: &ImageSpec, base_layers: usize) -> Result<Plan> {
        let file = match &self.layers {
            Some(f) => LayersFile::load(f)?,
            None => LayersFile::default(),
        };
        let mut warnings = match &self.layers {
            Some(f) => file.groups.warnings(closure, &f.display().to_string()),
            None => Vec::new(),
        };
        let custom = usize::from(spec.has_layer()) + base_layers;
        let max = self.max_layers.or(file.max_layers).unwrap_or(DEFAULT_MAX_LAYERS) as usize;
        if max <= custom {
            bail!(
                "--max-layers {max} leaves no layer for the store paths ({} taken by the customisation layer, {base_layers} by the base image's)",
                usize::from(spec.has_layer())
            );
        }
        let max_layer_size = self.max_layer_size.or(file.max_layer_size);
        if let Some(n) = max_layer_size.filter(|&n| n < MIN_LAYER_SIZE) {
            bail!("max_layer_size {n} is below the smallest layer size cap, 64KiB");
        }
        let previous = self.previous()?;
        let budget = Budget { store_layers: max - custom, max_layer_size };
        let plan = layering::plan(closure, &file.groups, budget, previous.as_ref());
        warnings.extend(plan.warnings.iter().cloned());
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        Ok(plan)
    }

    /// `--previous`: an image (any source transport) or a plan JSON file.
    fn previous(&self) -> Result<Option<Previous>> {
        let Some(arg) = &self.previous else {
            return Ok(None);
        };
        let is_image = ["oci:", "oci-archive:", "docker-archive:", "docker://"].iter().any(|t| arg.starts_with(t));
        if !is_image {
            return Previous::load(std::path::Path::new(arg)).map(Some);
        }
        let image = SourceImage::open(&ImageRef::parse(arg)?.with_registry_options(&self.registry.options()?))?;
        // A base's layers are not the previous release's to keep: they come from --from.
        let annotations = image
            .layers
            .iter()
            .filter(|l| l.annotations.get(ANNOTATION_GROUP).map(String::as_str) != Some(BASE_GROUP))
            .map(|l| {
                (
                    l.annotations.get(ANNOTATION_GROUP).map(String::as_str),
                    l.annotations.get(ANNOTATION_STORE_PATHS).map(String::as_str),
                )
            });
        let previous = Previous::from_annotations(annotations)
            .with_context(|| format!("reading the layer annotations of --previous {arg}"))?;
        if previous.layers.is_empty() {
            bail!(
                "--previous {arg}: no layer carries {ANNOTATION_STORE_PATHS} (a docker-archive keeps no \
                 annotations): give the oci: or oci-archive: copy, or the JSON `nixoci build --json` printed"
            );
        }
        Ok(Some(previous))
    }
}
