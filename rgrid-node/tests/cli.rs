//! The `rgrid-node` binary's own contract: missing or bad inputs are clear errors.
//! (Building this test also makes `cargo test --workspace` build the binary the root package's
//! multi-process tests start.)

use std::process::Command;

fn node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rgrid-node"))
}

#[test]
fn the_head_address_is_required() {
    let out = node().output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--head"));
}

#[test]
fn a_first_start_without_a_token_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = node()
        .args([
            "--head",
            "127.0.0.1:9",
            "--executor",
            "process",
            "--state-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no --token-file"), "{stderr}");
}

#[test]
fn a_malformed_token_is_refused_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "not-a-token\n").unwrap();
    let out = node()
        .args([
            "--head",
            "127.0.0.1:9",
            "--executor",
            "process",
            "--token-file",
        ])
        .arg(&token)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("join token") && stderr.contains("malformed"),
        "{stderr}"
    );
}
