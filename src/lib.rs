//! nixoci: turn a Nix closure into a reproducible, cache-friendly OCI image.
//!
//! The module tree is the pipeline (see ARCHITECTURE.md): [`closure`] → [`layering`] →
//! [`tarball`] → [`blob`] → [`image`] → [`transport`], driven by [`build`]; [`copy`] moves
//! an image between transports; [`policy`] and [`smoke`] gate the result.

pub mod atomic;
pub mod base;
pub mod blob;
pub mod build;
pub mod cache;
pub mod chunked;
pub mod closure;
pub mod config_format;
pub mod copy;
pub mod diff;
pub mod image;
pub mod index;
pub mod inspect;
pub mod layering;
pub mod markup;
pub mod parallel;
pub mod platform;
pub mod policy;
pub mod progress;
pub mod referrers;
pub mod sbom;
pub mod size;
pub mod smoke;
pub mod table;
pub mod tarball;
pub mod transport;
