//! The book (`docs/`) and the README, held to the code:
//! * the generated reference pages are what the code writes now. `make docs`
//!   rewrites them (`CALMPLANE_UPDATE_DOCS=1`); here a page that differs
//!   fails, with the command that fixes it;
//! * every link and `#anchor` of the README and the book resolves, with
//!   anchors as mdBook 0.5 writes heading ids, and every page of the book is
//!   in its SUMMARY.md;
//! * the README stays short, and its prerequisites (and the book's) name
//!   every tool the Makefile, `.ci/run` and the tests call;
//! * every alert's runbook_url is a section of the runbook page, and each
//!   section starts with commands that the e2e suite can run;
//! * what the pages claim (policy counts, files, the drain, commits, Helm
//!   values) is what the code and the chart have.
//!
//! One module per concern; the Markdown reader (`markdown`) is shared.

use calmplane::reference;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

mod claims;
mod helm_values;
mod markdown;
mod prerequisites;
mod references;
mod runbook;

pub(crate) use markdown::*;
pub(crate) use prerequisites::*;
pub(crate) use references::*;
pub(crate) use runbook::*;
