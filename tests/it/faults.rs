//! Storage faults on a real filesystem: the database lives on a tiny tmpfs that fills up.
//! Deliveries get 503 (never 200, never a crash), `/readyz` says not ready, and once space is
//! freed service resumes without a restart, with every acknowledged lead present. (A
//! read-only remount is refused by the kernel while the database files are open, so the
//! read-only case is not exercised here.) Needs permission to mount (root, as on CI); without it the test
//! says so and returns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .ok()?
            .success();
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn remount(&self, opts: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "remount {opts} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn big_lead(wamid: &str) -> Vec<u8> {
    let mut msg = referral_message(wamid, "4911", "AD1");
    msg["text"]["body"] = json!("z".repeat(100_000));
    delivery(value("PN1", json!([]), json!([msg])))
}

async fn ready(app: &TestApp) -> u16 {
    app.client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_full_disk_gets_503_and_service_resumes_when_space_is_freed() {
    let outer = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&outer.path().join("mnt"), "3m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); storage faults not exercised");
        return;
    };
    let db = fs.0.join("leads.db");
    let mut app = spawn_with(|s| s.database.url = format!("sqlite://{}", db.display())).await;

    // Fill the disk.
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..200 {
        let wamid = format!("wamid.fill{i}");
        // The projector fails on the full disk too: wait for it only once space is back.
        match app
            .deliver_no_wait(&big_lead(&wamid))
            .await
            .status()
            .as_u16()
        {
            200 => acked.push(wamid),
            503 => {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("unexpected status {other} on a full disk"),
        }
    }
    assert!(refused > 0, "the disk never filled");
    assert_eq!(
        ready(&app).await,
        503,
        "/readyz must say not ready while commits fail"
    );

    // The fault clears: more room, no restart.
    fs.remount("size=64m");
    let mut resumed = false;
    for _ in 0..50 {
        if app.deliver(&one_lead("wamid.after-full")).await.status() == 200 {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "service did not resume after space was freed");
    assert_eq!(ready(&app).await, 200);
    app.settle().await;
    for wamid in &acked {
        assert!(
            app.lead(wamid).await.is_some(),
            "{wamid} was acknowledged but is missing"
        );
    }

    app.stop().await;
}
