//! The command line: `serve`, `migrate`, `simulate` and `healthcheck`. Each returns an exit
//! code; errors are printed as one line naming what to fix, never as a panic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "ctwa-leads",
    version,
    about = "Capture leads from WhatsApp Click-to-WhatsApp ads"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (applies migrations first).
    Serve {
        /// The TOML settings file (see config.example.toml); CTWA_<SECTION>__<KEY> variables
        /// override it.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// The TOML settings file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Rebuild leads from the stored raw deliveries (idempotent), e.g. after a parser fix.
    Reextract {
        /// The TOML settings file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only deliveries received at or after this time (RFC 3339 or unix seconds).
        #[arg(long)]
        since: Option<String>,
    },
    /// Send a signed Click-to-WhatsApp delivery to a running instance and print the answer.
    Simulate {
        /// The TOML settings file (its first app secret signs the delivery).
        #[arg(long, short)]
        config: PathBuf,
        /// The webhook URL; defaults to http://<server.listen>/webhook.
        #[arg(long)]
        url: Option<String>,
    },
    /// Exit 0 if the server answers /healthz (for Docker's HEALTHCHECK).
    Healthcheck {
        /// The settings `serve` runs with (file plus CTWA_ variables): the probe goes to its
        /// `server.listen`, a wildcard address mapped to loopback.
        #[arg(long, short, required_unless_present = "url")]
        config: Option<PathBuf>,
        /// Probe this URL instead.
        #[arg(long)]
        url: Option<String>,
    },
}

fn load(path: &std::path::Path) -> Result<Settings, ExitCode> {
    Settings::load(path).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(2)
    })
}

/// The async runtime: one worker thread more than the machine has cores, unless the operator
/// set `TOKIO_WORKER_THREADS`. The acknowledgement path shares the cores with threads of its
/// own (the log writer, its flush threads, the projector); in eight side-by-side pairs of
/// `bench/side_by_side.sh A B 32 20` (production-shaped `--mix real` on 2 cores, positions
/// swapped every other pair) a third worker spent 0.93–0.98 of the CPU per delivery of two
/// (mean 0.955) and took more deliveries/s in every pair.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores + 1);
    }
    builder.enable_all().build().map_err(|err| {
        eprintln!("error: cannot start the async runtime: {err}");
        ExitCode::FAILURE
    })
}

pub fn run(cli: Cli) -> ExitCode {
    match run_inner(cli) {
        Ok(code) | Err(code) => code,
    }
}

fn run_inner(cli: Cli) -> Result<ExitCode, ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let settings = load(&config)?;
            crate::telemetry::init(settings.log.format);
            runtime()?.block_on(serve(settings))
        }
        Command::Migrate { config } => {
            let settings = load(&config)?;
            crate::telemetry::init(settings.log.format);
            runtime()?.block_on(async {
                crate::store::migrate(&settings.database)
                    .await
                    .map_err(|err| {
                        eprintln!("error: {err}");
                        ExitCode::FAILURE
                    })?;
                println!("migrations applied to {}", settings.database.url);
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Reextract { config, since } => {
            let settings = load(&config)?;
            crate::telemetry::init(settings.log.format);
            let since_ms = match since.as_deref().map(crate::leads::parse_time).transpose() {
                Ok(v) => v,
                Err(why) => {
                    eprintln!("error: --since: {why}");
                    return Err(ExitCode::from(2));
                }
            };
            runtime()?.block_on(async {
                let report = crate::store::maintenance::reextract(
                    &settings.database,
                    crate::store::outbox::Routes::new(
                        &settings.forwarding,
                        settings.capi.auto_lead_submitted,
                    ),
                    since_ms,
                )
                .await
                .map_err(|err| {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                })?;
                println!(
                    "re-extracted {} raw deliveries: {} new leads, {} re-flagged",
                    report.events, report.new_leads, report.restatused
                );
                if report.unreadable > 0 {
                    eprintln!(
                        "warning: {} stored deliveries could not be read and were skipped; \
                         their log ids are in the error lines above",
                        report.unreadable
                    );
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Simulate { config, url } => {
            let settings = load(&config)?;
            runtime()?.block_on(simulate(settings, url))
        }
        Command::Healthcheck { config, url } => {
            let url = match (url, config) {
                (Some(url), _) => url,
                (None, Some(config)) => health_url(load(&config)?.server.listen),
                (None, None) => {
                    eprintln!("error: healthcheck needs --config or --url");
                    return Err(ExitCode::from(2));
                }
            };
            runtime()?.block_on(healthcheck(url))
        }
    }
}

/// The `/healthz` URL of a server listening on `listen`; `0.0.0.0` and `[::]` mean loopback.
pub fn health_url(listen: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!(
        "http://{}/healthz",
        std::net::SocketAddr::new(ip, listen.port())
    )
}

async fn serve(settings: Settings) -> Result<ExitCode, ExitCode> {
    for name in &settings.ignored_env {
        tracing::debug!(%name, "ignoring an environment variable that is not CTWA_<SECTION>__<KEY>");
    }
    let examples = settings.example_keys();
    if !examples.is_empty() {
        tracing::warn!(keys = ?examples, "running with the example file's placeholder secrets: set real ones before registering with Meta");
    }
    if settings.ingest.ceiling_mode {
        tracing::warn!(
            "ingest.ceiling_mode is on: deliveries are verified and parsed but NOT stored"
        );
    }
    let app = crate::Application::build(settings).await.map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::FAILURE
    })?;
    tracing::info!(addr = %app.local_addr(), metrics = ?app.metrics_addr(), "listening");
    app.run_until(crate::app::shutdown_signal())
        .await
        .map_err(|err| {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        })?;
    Ok(ExitCode::SUCCESS)
}

async fn simulate(settings: Settings, url: Option<String>) -> Result<ExitCode, ExitCode> {
    let url = url.unwrap_or_else(|| format!("http://{}/webhook", settings.server.listen));
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let delivery = crate::simulate::sample_delivery(&settings.graph.waba_id, &unique);
    let body = crate::simulate::meta_json(&delivery);
    let Some(secret) = settings.webhook.app_secrets.first() else {
        eprintln!("error: config: webhook.app_secrets is missing or empty");
        return Err(ExitCode::from(2));
    };
    let signature = crate::webhook::verify::sign(secret.expose_secret(), &body);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|err| {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        })?;
    println!(
        "POST {url}  (wamid.SIM{unique}, {} bytes, signed)",
        body.len()
    );
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .header(crate::webhook::verify::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map_err(|err| {
            eprintln!("error: cannot reach {url}: {err}");
            ExitCode::FAILURE
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{status}");
    println!("{text}");
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(ExitCode::FAILURE)
    }
}

async fn healthcheck(url: String) -> Result<ExitCode, ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|_| ExitCode::FAILURE)?;
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            Err(ExitCode::FAILURE)
        }
        Err(err) => {
            eprintln!("unhealthy: {url}: {err}");
            Err(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_url_follows_the_listen_address() {
        assert_eq!(
            health_url("0.0.0.0:9090".parse().unwrap()),
            "http://127.0.0.1:9090/healthz"
        );
        assert_eq!(
            health_url("[::]:8081".parse().unwrap()),
            "http://[::1]:8081/healthz"
        );
        assert_eq!(
            health_url("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80/healthz"
        );
    }

    #[test]
    fn serve_help_describes_config() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").expect("serve exists");
        let help = serve.render_help().to_string();
        assert!(help.contains("TOML settings file"), "{help}");
    }
}
