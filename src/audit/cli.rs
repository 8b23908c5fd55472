//! `calmplane audit` on the command line: its options, reading the input
//! (a file, stdin or the live cluster), and printing the report.

use super::input::Inventory;
use super::{audit, hot, live, render, AuditError, Options};
use crate::config::Config;
use crate::pipeline::Clock as _;
use std::path::PathBuf;
use std::time::Duration;

/// `calmplane audit` options.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// The output of `kubectl get pods,deployments,replicasets,leases,namespaces,poddisruptionbudgets -A -o json` (a v1 List, JSON or YAML); `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        env = "CALMPLANE_AUDIT_FILE",
        required_unless_present = "live",
        conflicts_with = "live"
    )]
    pub file: Option<String>,
    /// Read the same lists from the current kubeconfig context (get and list only).
    #[arg(long, env = "CALMPLANE_AUDIT_LIVE")]
    pub live: bool,
    /// With --live: watch Leases this long and count real writes instead of estimating them.
    #[arg(long, value_name = "DURATION", env = "CALMPLANE_AUDIT_SAMPLE", value_parser = humantime::parse_duration)]
    pub sample: Option<Duration>,
    /// Policy file (YAML), as given to `calmplane serve`. Built-in defaults apply without one.
    #[arg(long, env = "CALMPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Audit every namespace as if it were opted in (the webhook's exclusions still apply).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        env = "CALMPLANE_AUDIT_OUTPUT"
    )]
    pub output: Output,
    /// The time to judge "the last hour" from (unix seconds or RFC 3339); default: now.
    #[arg(long, env = "CALMPLANE_AUDIT_NOW")]
    pub now: Option<String>,
}

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table per namespace, then lease totals and warnings.
    Table,
    /// The stable JSON documented in docs/src/adoption/audit.md.
    Json,
}

/// Run `calmplane audit` and return what it prints.
pub fn run(args: &AuditArgs) -> Result<String, AuditError> {
    // Checked here: clap's `requires` counts a flag's `false` default as present.
    if args.sample.is_some() && !args.live {
        return Err(AuditError::Other(
            "--sample watches the cluster's Leases: it needs --live".into(),
        ));
    }
    let config = Config::load_or_default(args.config.as_deref())?;
    let now = match &args.now {
        Some(s) => parse_now(s)?,
        None => crate::pipeline::SystemClock.now_unix(),
    };
    let (inventory, sample) = if args.live {
        live::collect(args.sample)?
    } else {
        let path = args.file.as_deref().unwrap_or("-");
        let body = read_input(path)?;
        (Inventory::from_bytes(&body)?, None)
    };
    let opts = Options {
        all_namespaces: args.all_namespaces,
        now,
        sample,
    };
    let report = audit(inventory, &config, &opts)?;
    match args.output {
        Output::Table => Ok(render::table(&report)),
        Output::Json => render::json(&report),
    }
}

fn read_input(path: &str) -> Result<Vec<u8>, AuditError> {
    use std::io::Read;
    let mut body = Vec::new();
    let result = if path == "-" {
        std::io::stdin().read_to_end(&mut body).map(|_| ())
    } else {
        std::fs::read(path).map(|b| body = b)
    };
    result.map_err(|source| AuditError::Read {
        path: path.to_string(),
        source,
    })?;
    Ok(body)
}

/// Unix seconds, or an RFC 3339 time.
pub fn parse_now(s: &str) -> Result<i64, AuditError> {
    s.trim()
        .parse::<i64>()
        .ok()
        .or_else(|| hot::unix_seconds(s.trim()))
        .ok_or_else(|| AuditError::Now(s.to_string()))
}
