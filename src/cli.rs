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
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Rebuild leads from the stored raw deliveries (idempotent), e.g. after a parser fix.
    Reextract {
        #[arg(long, short)]
        config: PathBuf,
        /// Only deliveries received at or after this time (RFC 3339 or unix seconds).
        #[arg(long)]
        since: Option<String>,
    },
    /// Send a signed Click-to-WhatsApp delivery to a running instance and print the answer.
    Simulate {
        #[arg(long, short)]
        config: PathBuf,
        /// The webhook URL; defaults to http://<server.listen>/webhook.
        #[arg(long)]
        url: Option<String>,
    },
    /// Exit 0 if the server answers /healthz (for Docker's HEALTHCHECK).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

fn load(path: &std::path::Path) -> Result<Settings, ExitCode> {
    Settings::load(path).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(2)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| {
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
                let report = crate::store::maintenance::reextract(&settings.database, since_ms)
                    .await
                    .map_err(|err| {
                        eprintln!("error: {err}");
                        ExitCode::FAILURE
                    })?;
                println!(
                    "re-extracted {} raw deliveries: {} new leads, {} re-flagged",
                    report.events, report.new_leads, report.restatused
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Simulate { config, url } => {
            let settings = load(&config)?;
            runtime()?.block_on(simulate(settings, url))
        }
        Command::Healthcheck { url } => runtime()?.block_on(healthcheck(url)),
    }
}

async fn serve(settings: Settings) -> Result<ExitCode, ExitCode> {
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
    tracing::info!(addr = %app.local_addr(), "listening");
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
