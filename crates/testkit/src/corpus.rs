//! The upstream fixtures committed in `tests/fixtures/upstream`, with their
//! sources and licences in its `SOURCES.md`. Nothing here reads outside the
//! repository, so a clone with nothing beside it runs every test.

use std::path::{Path, PathBuf};

/// The attribution file in [`corpus_dir`]: documentation, not a fixture.
pub const SOURCES: &str = "SOURCES.md";

/// The repository root: testkit lives in `crates/testkit`.
pub fn repo_root() -> PathBuf {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit
        .ancestors()
        .nth(2)
        .map_or_else(|| testkit.join("../.."), Path::to_path_buf)
}

/// The repository's `tests/fixtures/upstream` directory.
pub fn corpus_dir() -> PathBuf {
    repo_root().join("tests/fixtures/upstream")
}

/// One fixture of [`corpus_dir`] by file name.
pub fn corpus_file(name: &str) -> PathBuf {
    corpus_dir().join(name)
}

/// Every fixture file of [`corpus_dir`] (not [`SOURCES`]), sorted by name.
pub fn corpus_files() -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != SOURCES))
        .collect();
    files.sort();
    Ok(files)
}
