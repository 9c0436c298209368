//! The `rgrid-head` binary's own contract: bad configuration is a clear error and creates nothing.
//! (Building this test also makes `cargo test --workspace` build the binary the root package's
//! multi-process tests start.)

use std::process::Command;

fn head() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rgrid-head"))
}

#[test]
fn a_bad_config_file_is_a_clear_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("head.toml");
    std::fs::write(&config, "heartbeat = \"1s\"\n").unwrap();
    let state = dir.path().join("state");
    let out = head()
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `heartbeat`"), "{stderr}");
    assert!(!state.exists(), "nothing was created");
}

#[test]
fn an_impossible_liveness_setting_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("head.toml");
    std::fs::write(
        &config,
        "heartbeat_interval = \"5s\"\nheartbeat_timeout = \"1s\"\n",
    )
    .unwrap();
    let out = head()
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be longer than heartbeat_interval"));
}

#[test]
fn cloud_init_prints_what_a_node_boots_with() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("head.toml");
    std::fs::write(&config, "advertise = \"203.0.113.7:7070\"\n[autoscaler]\n").unwrap();
    let out = head()
        .args(["cloud-init", "--config"])
        .arg(&config)
        .args(["--node-type", "cx33"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user_data = String::from_utf8(out.stdout).unwrap();
    assert!(user_data.starts_with("#cloud-config"), "{user_data}");
    assert!(user_data.contains("rgrid-node"));
    assert!(user_data.contains("203.0.113.7:7070"));
    assert!(
        !user_data.to_lowercase().contains("database"),
        "never database credentials"
    );

    let out = head()
        .args(["cloud-init", "--config"])
        .arg(&config)
        .args(["--node-type", "no-such-type"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-type"));
}
