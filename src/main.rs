//! The `calmplane` binary: command-line parsing and process setup only.
//! Everything it runs lives in the library.

use anyhow::{Context as _, Result};
use calmplane::config::Config;
use calmplane::manifests::ServiceArgs;
use calmplane::pipeline::{Pipeline, SystemClock};
use calmplane::process::{self, LogFormat};
use calmplane::server::ServeOptions;
use calmplane::{admission_policy, certs, manifests, preview, register};
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

// Every admission allocates many small objects (the view of the object, the
// patch, the response); mimalloc serves them for ~6 µs less CPU per request
// than glibc's malloc (`make load` at saturation, at f2afae0; jemalloc: the
// same, and a 2-minute C build instead of 30 s).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "calmplane",
    version,
    about = "A Kubernetes mutating admission webhook that keeps clusters calm at scale"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "CALMPLANE_LOG_FORMAT",
        default_value = "json"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve AdmissionReviews over TLS.
    Serve(Box<ServeOptions>),
    /// Write a dev CA (ca.crt) and a serving certificate and key (tls.crt, tls.key).
    Certs(CertsArgs),
    /// Print the patch calmplane would apply to a manifest, offline.
    Preview(PreviewArgs),
    /// Print the MutatingWebhookConfiguration (manifests/base/webhook.yaml) with the caBundle filled in.
    Manifests(WebhookArgs),
    /// Apply that MutatingWebhookConfiguration to the current cluster (server-side apply, field manager `calmplane`).
    Register(RegisterArgs),
    /// Print calmplane's policies in a form another engine runs.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Watch Leases and export lease write rate and lease age metrics.
    LeaseMonitor(calmplane::lease_monitor::LeaseMonitorArgs),
    /// Predict what calmplane would change in a cluster, and the Lease writes it would save.
    Audit(calmplane::audit::AuditArgs),
}

#[derive(Subcommand)]
enum ExportCommand {
    /// The policies the apiserver can run itself (Kubernetes 1.36+), as a
    /// MutatingAdmissionPolicy and a MutatingAdmissionPolicyBinding each, for
    /// namespaces labelled calmplane.dev/enabled=apiserver. The others, and
    /// why, on stderr.
    MutatingAdmissionPolicy(ExportArgs),
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Policy file (YAML), the same as `serve --config`. Built-in defaults apply without one.
    #[arg(long, env = "CALMPLANE_CONFIG")]
    config: Option<PathBuf>,
    /// Namespace calmplane is installed in (excluded, as the webhook excludes it).
    #[arg(long, env = "CALMPLANE_NAMESPACE", default_value = manifests::DEFAULT_NAMESPACE)]
    namespace: String,
}

#[derive(clap::Args)]
struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long, env = "CALMPLANE_CERTS_OUT", default_value = "certs")]
    out: PathBuf,
    #[command(flatten)]
    service: ServiceArgs,
    /// Extra DNS names or IP addresses for the serving certificate.
    #[arg(long = "san", env = "CALMPLANE_SANS", value_delimiter = ',')]
    sans: Vec<String>,
}

#[derive(clap::Args)]
struct PreviewArgs {
    /// Manifest to preview (JSON or YAML, several documents, a List or an AdmissionReview); `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        env = "CALMPLANE_PREVIEW_FILE",
        default_value = "-"
    )]
    file: String,
    /// Namespace for objects that have none.
    #[arg(short = 'n', long, env = "CALMPLANE_PREVIEW_NAMESPACE")]
    namespace: Option<String>,
    /// Policy file (YAML). Built-in defaults apply without one.
    #[arg(long, env = "CALMPLANE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct WebhookArgs {
    /// PEM CA certificate(s) the apiserver trusts calmplane's serving certificate with.
    #[arg(
        long,
        env = "CALMPLANE_CA_BUNDLE",
        default_value = "certs/ca.crt",
        conflicts_with = "no_ca_bundle"
    )]
    ca_bundle: PathBuf,
    /// Leave caBundle out, for cert-manager's cainjector to fill in.
    #[arg(long, env = "CALMPLANE_NO_CA_BUNDLE")]
    no_ca_bundle: bool,
    #[command(flatten)]
    service: ServiceArgs,
    /// Call calmplane at https://HOST[:PORT] instead of through the Service
    /// (a local process under kind, minikube or a test control plane).
    #[arg(long, env = "CALMPLANE_URL")]
    url: Option<String>,
    /// Also the MutatingAdmissionPolicies of `calmplane export
    /// mutating-admission-policy` (Kubernetes 1.36+), which run the policies
    /// the apiserver can run in namespaces labelled
    /// calmplane.dev/enabled=apiserver; the webhook runs the rest there.
    #[arg(long, env = "CALMPLANE_ADMISSION_POLICIES")]
    admission_policies: bool,
    /// Policy file for --admission-policies, the same as `serve --config`.
    #[arg(long, env = "CALMPLANE_CONFIG", requires = "admission_policies")]
    config: Option<PathBuf>,
}

impl WebhookArgs {
    fn configuration(&self) -> Result<serde_json::Value> {
        let pem = self.read_ca_bundle()?;
        Ok(manifests::webhook_configuration(
            &manifests::WebhookOptions {
                namespace: &self.service.namespace,
                service: &self.service.service,
                url: self.url.as_deref(),
                ca_bundle_pem: pem.as_deref(),
            },
        )?)
    }

    /// The admission policies, when asked for, with their notes on stderr.
    fn admission_policies(&self) -> Result<Option<admission_policy::Export>> {
        if !self.admission_policies {
            return Ok(None);
        }
        export(self.config.as_deref(), &self.service.namespace).map(Some)
    }

    fn read_ca_bundle(&self) -> Result<Option<Vec<u8>>> {
        if self.no_ca_bundle {
            return Ok(None);
        }
        let pem = std::fs::read(&self.ca_bundle).with_context(|| {
            format!(
                "reading the CA bundle {} (generate one with `calmplane certs`, or pass --no-ca-bundle when cert-manager injects it)",
                self.ca_bundle.display()
            )
        })?;
        Ok(Some(pem))
    }
}

#[derive(clap::Args)]
struct RegisterArgs {
    #[command(flatten)]
    webhook: WebhookArgs,
    /// Take over fields that another field manager owns with different values.
    #[arg(long, env = "CALMPLANE_REGISTER_FORCE")]
    force: bool,
    /// Have the apiserver validate and admit the change without storing it.
    #[arg(long, env = "CALMPLANE_REGISTER_DRY_RUN")]
    dry_run: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let _guard = process::init_logging(cli.log_format)?;
            process::check_allocator_env();
            serve(*args)
        }
        Command::Certs(args) => {
            let mut names = certs::serving_names(&args.service.service, &args.service.namespace);
            names.extend(args.sans);
            let generated = certs::generate(&names)?;
            certs::write(&args.out, &generated)?;
            eprintln!(
                "wrote {0}/ca.crt, {0}/tls.crt, {0}/tls.key for {1}",
                args.out.display(),
                names.join(", ")
            );
            Ok(())
        }
        Command::Preview(args) => run_preview(args),
        Command::Manifests(args) => {
            let config = args.configuration()?;
            match args.admission_policies()? {
                None => print!("{}", calmplane::yaml::to_string(&config)?),
                Some(export) => {
                    let mut objects = vec![config];
                    objects.extend(export.objects);
                    print!("{}", admission_policy::yaml_stream(&objects)?);
                }
            }
            Ok(())
        }
        Command::Export(ExportCommand::MutatingAdmissionPolicy(args)) => {
            let export = export(args.config.as_deref(), &args.namespace)?;
            print!("{}", export.to_yaml()?);
            Ok(())
        }
        Command::Register(args) => run_register(args),
        Command::LeaseMonitor(args) => {
            let _guard = process::init_logging(cli.log_format)?;
            process::check_allocator_env();
            Ok(calmplane::lease_monitor::main(args)?)
        }
        Command::Audit(args) => {
            print!("{}", calmplane::audit::run(&args)?);
            Ok(())
        }
    }
}

/// Export the policies of the file at `config` and say on stderr which
/// stay in the webhook, and why.
fn export(config: Option<&std::path::Path>, namespace: &str) -> Result<admission_policy::Export> {
    let config = Config::load_or_default(config)?;
    let export = admission_policy::export(&config, namespace)?;
    for left in &export.left_out {
        eprintln!("not exported: {}: {}", left.policy, left.why);
    }
    Ok(export)
}

fn run_register(args: RegisterArgs) -> Result<()> {
    let config = args.webhook.configuration()?;
    let policies = args.webhook.admission_policies()?;
    let opts = register::RegisterOptions {
        force: args.force,
        dry_run: args.dry_run,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stored = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the cluster (kubeconfig or in-cluster service account)")?;
        let applied = match &policies {
            Some(export) => {
                Some(register::register_admission_policies(client.clone(), export, opts).await?)
            }
            None => None,
        };
        anyhow::Ok((register::register(client, &config, opts).await?, applied))
    })?;
    let (stored, applied) = stored;
    let name = stored.metadata.name.as_deref().unwrap_or("?");
    let webhooks = stored.webhooks.as_ref().map_or(0, Vec::len);
    let version = stored.metadata.resource_version.as_deref().unwrap_or("?");
    let dry_run = if args.dry_run { " (dry run)" } else { "" };
    if let Some(applied) = applied {
        for object in &applied.applied {
            eprintln!("applied {object}{dry_run}");
        }
        for object in &applied.deleted {
            eprintln!("deleted {object}{dry_run}: no longer exported by this policy file");
        }
    }
    eprintln!(
        "applied MutatingWebhookConfiguration {name}{dry_run}: {webhooks} webhooks, resourceVersion {version}"
    );
    Ok(())
}

fn serve(opts: ServeOptions) -> Result<()> {
    let files = process::raise_fd_limit();
    tracing::debug!(open_files = files, "file-descriptor limit");
    let runtime = process::runtime().context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = opts.bind().await?;
        let drained = server.run(process::shutdown_signal()).await;
        if !drained {
            tracing::warn!("exited before every in-flight request finished");
        }
        Ok(())
    })
}

fn run_preview(args: PreviewArgs) -> Result<()> {
    let config = Config::load_or_default(args.config.as_deref())?;
    let mut body = Vec::new();
    if args.file == "-" {
        std::io::stdin()
            .read_to_end(&mut body)
            .context("reading stdin")?;
    } else {
        body = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file))?;
    }
    let pipeline = Pipeline::new(&config, Arc::new(SystemClock))?;
    let bounds = preview::Bounds::NONE;
    let result = preview::preview(&pipeline, &body, args.namespace.as_deref(), &bounds)?;
    print!("{}", preview::render(&result, &bounds)?);
    Ok(())
}
