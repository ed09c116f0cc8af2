//! Harness of the end-to-end tests (`tests/e2e.rs`): running the built `nixoci`, the real Nix test
//! closure (`scripts/nix-test-closure`, built once per run), private podman settings, and our own
//! checks of OCI layouts and layer tars (digests, sizes, diff_ids, DESIGN.md §6 rules).
//!
//! Tools: a test that needs an external tool calls [`have_tools`] (through [`require_tools!`]). With
//! `CI` set, a missing tool is a failure; elsewhere the test prints a SKIP note and passes.
//!
//! One file per topic, all re-exported here (`use common::*`): `paths` (repository, binary,
//! `target/`, temp dirs, CI), `tools` (PATH lookups, `require_tools!`), `cmd` (running nixoci and
//! tools), `built` (`nixoci build --json`), `digest`, `nix` (the Nix test closure), `example`
//! (examples/hello), `layout` (OCI layouts read back and checked), `layer_tar` (layer tars and the
//! §6 rules), `store_layers` (store paths per layer vs annotations and `--json`), `podman` (a
//! private podman), `store` (store paths on disk: copies, snapshots, comparisons); and, used by
//! name (`common::registry::…`), `registry` (a real docker-registry on 127.0.0.1 and its
//! certificates), `proxy` (counting, fault-injecting and CONNECT proxies), `tokens` (a bearer
//! token server).
// Each test crate uses a part of the harness: what it leaves unused is no warning.
#![allow(dead_code, unused_imports)]

pub mod proxy;
pub mod registry;
pub mod tokens;

mod built;
mod cmd;
mod digest;
mod example;
mod layer_tar;
mod layout;
mod nix;
mod paths;
mod podman;
mod store;
mod store_layers;
mod tools;

pub use built::*;
pub use cmd::*;
pub use digest::*;
pub use example::*;
pub use layer_tar::*;
pub use layout::*;
pub use nix::*;
pub use paths::*;
pub use podman::*;
pub use store::*;
pub use store_layers::*;
pub use tools::*;
