//! The shipped example (`examples/hello`).

use std::path::PathBuf;

use super::repo;

pub fn example_dir() -> PathBuf {
    repo().join("examples/hello")
}

/// `--closure … --store-root … --image …` of examples/hello.
pub fn example_args() -> Vec<String> {
    let e = example_dir();
    vec![
        "--closure".into(),
        e.join("closure.json").display().to_string(),
        "--store-root".into(),
        e.join("store").display().to_string(),
        "--image".into(),
        e.join("image.toml").display().to_string(),
    ]
}
