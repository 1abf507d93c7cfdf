//! The binary as an operator runs it, in Docker or Kubernetes: Kubernetes' service-link
//! variables do not stop it, `healthcheck` follows the configured port, text logs carry no
//! colour codes when piped, and start-up errors name what to fix without echoing a secret.

#[path = "it/helpers.rs"]
mod helpers;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use helpers::{binary_config, free_port, API_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_ctwa-leads");

/// Kubernetes injects these for a Service named `ctwa` (and one named `ctwa-leads`).
const SERVICE_LINKS: &[(&str, &str)] = &[
    ("CTWA_PORT", "tcp://10.0.0.1:8080"),
    ("CTWA_SERVICE_HOST", "10.0.0.1"),
    ("CTWA_SERVICE_PORT", "8080"),
    ("CTWA_PORT_8080_TCP_ADDR", "10.0.0.1"),
    ("CTWA_LEADS_PORT", "tcp://10.0.0.2:80"),
];

fn serve(config: &Path, port: u16) -> Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .envs(SERVICE_LINKS.iter().copied())
        .env("CTWA_SERVER__LISTEN", format!("0.0.0.0:{port}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server starts")
}

fn healthcheck(config: &Path, port: u16) -> Output {
    Command::new(BIN)
        .args(["healthcheck", "--config"])
        .arg(config)
        .envs(SERVICE_LINKS.iter().copied())
        .env("CTWA_SERVER__LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .expect("healthcheck runs")
}

#[test]
fn serve_starts_under_kubernetes_service_links_and_healthcheck_follows_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), 8080);
    // `free_port` only finds a port that was free a moment ago; if something else in the suite
    // takes it before the server binds, the server exits at once and is started on another.
    let child = 'start: {
        let mut exited = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = serve(&config, port);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let out = child.wait_with_output().unwrap();
                    exited = format!("{status}: {}", String::from_utf8_lossy(&out.stderr));
                    break;
                }
                if healthcheck(&config, port).status.success() {
                    break 'start child;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("healthcheck never passed");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(exited.contains("in use"), "serve exited with {exited}");
        }
        panic!("serve did not start on any of five ports: {exited}");
    };
    // The probe for another port (what a hard-coded 8080 would do) fails.
    let elsewhere = healthcheck(&config, free_port());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(!elsewhere.status.success());
    assert!(out.status.success(), "SIGTERM exits 0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("listening"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}'),
        "no colour codes when stdout is not a terminal: {stdout:?}"
    );
}

#[test]
fn an_unknown_key_in_a_config_variable_still_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), 8080);
    let out = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&config)
        .env("CTWA_SERVER__PORT", "8080")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key server.port"), "{err}");
}

#[test]
fn a_lone_app_secret_in_the_environment_works_and_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), 8080);
    let out = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&config)
        .env("CTWA_WEBHOOK__APP_SECRETS", "my-real-app-secret-123")
        .env("CTWA_API__TOKEN", "007")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A secret of the wrong shape in the file: named, never echoed.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&config).unwrap().replace(
            &format!("token = \"{API_TOKEN}\""),
            "token = { t = \"sekrit-value\" }",
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("api.token"), "{err}");
    assert!(!err.contains("sekrit-value"), "{err}");
}

#[test]
fn an_unusable_database_path_is_named_with_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    let config = binary_config(dir.path(), 8080);
    let out = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&config)
        .env(
            "CTWA_DATABASE__URL",
            format!("sqlite://{}/data/leads.db", blocker.display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&blocker.display().to_string()), "{err}");
    assert!(err.contains("uid"), "{err}");

    // A folder that exists but where SQLite cannot open the file: named too.
    let folder_db = dir.path().join("db-is-a-folder");
    std::fs::create_dir(&folder_db).unwrap();
    let out = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&config)
        .env(
            "CTWA_DATABASE__URL",
            format!("sqlite://{}", folder_db.display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&folder_db.display().to_string()), "{err}");
}

#[test]
fn serve_help_explains_config() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--config"), "{help}");
    assert!(help.contains("TOML settings file"), "{help}");
}
