//! The command-line contract with real processes: `rgrid-head` and `rgrid-node` started as
//! separate programs, the `rgrid` CLI against them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A daemon process, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rgrid-head` and `rgrid-node` are built next to `rgrid` by `cargo test --workspace`.
fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_rgrid")).with_file_name(name);
    assert!(path.exists(), "{} is missing: run the suite with `cargo test --workspace`", path.display());
    path
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rgrid(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rgrid"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn head_node_and_cli_as_separate_processes() {
    let image = common::demo_image();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("head");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let _head = Daemon(
        Command::new(binary("rgrid-head"))
            .args(["--state-dir", state.to_str().unwrap(), "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(log("head.log"))
            .spawn()
            .unwrap(),
    );
    let client_toml = state.join("client.toml");
    wait_for("client.toml", || client_toml.exists());
    let _node = Daemon(
        Command::new(binary("rgrid-node"))
            .args(["--head", &listen, "--token-file"])
            .arg(state.join("join-token"))
            .args(["--state-dir"])
            .arg(dir.path().join("node"))
            .args(["--name", "worker-1", "--label", "site=test", "--cpu-millis", "2000", "--memory", "1G"])
            .stdout(Stdio::null())
            .stderr(log("node.log"))
            .spawn()
            .unwrap(),
    );
    wait_for("the node to register", || {
        let out = rgrid(&client_toml, &["nodes", "-o", "json"]);
        let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        nodes
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["name"] == "worker-1" && n["state"] == "ready"))
    });

    // submit --wait behaves like get: stdout, and the task's exit code.
    let out = rgrid(
        &client_toml,
        &["submit", "--image", image, "--cpus", "0.5", "--memory", "64M", "--selector", "site=test", "--wait", "--", "sh", "-c", "echo from-cli; exit 4"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    assert_eq!(out.status.code(), Some(4));

    // submit prints the id; get waits for it.
    let out = rgrid(&client_toml, &["submit", "--image", image, "--", "echo", "by-id"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = rgrid(&client_toml, &["get", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "by-id\n");
    assert_eq!(out.status.code(), Some(0));

    // A selector no node satisfies: unschedulable, and get says why.
    let out = rgrid(&client_toml, &["submit", "--image", image, "--selector", "site=mars", "--wait", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("site=mars"));

    let out = rgrid(&client_toml, &["tasks", "-o", "json"]);
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["failed", "succeeded", "unschedulable"]);

    let out = rgrid(&client_toml, &["get", "not-an-id"]);
    assert_eq!(out.status.code(), Some(2));
    let out = rgrid(&client_toml, &["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 ready"));
}
