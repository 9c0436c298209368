//! The command-line contract with real processes: `rgrid-head` and `rgrid-node` started as
//! separate programs, the `rgrid` CLI against them.

mod common;

use std::process::{Command, Stdio};

use common::process::{binary, free_udp_port, rgrid, start_head, wait_for, wait_ready, Daemon};

#[test]
fn head_node_and_cli_as_separate_processes() {
    let image = common::demo_image();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("head");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let node_toml = dir.path().join("node.toml");
    std::fs::write(
        &node_toml,
        "labels = { site = \"file\", rack = \"r1\" }\ncapabilities = [\"from-file\"]\n",
    )
    .unwrap();
    let _head = start_head(dir.path(), &listen);
    let client_toml = state.join("client.toml");
    wait_for("client.toml", || client_toml.exists());
    let _node = Daemon(
        Command::new(binary("rgrid-node"))
            .args(["--head", &listen, "--token-file"])
            .arg(state.join("join-token"))
            .args(["--state-dir"])
            .arg(dir.path().join("node"))
            .args([
                "--name",
                "worker-1",
                "--label",
                "site=test",
                "--cpu-millis",
                "2000",
                "--memory",
                "1G",
                "--config",
            ])
            .arg(&node_toml)
            // Flags over variables over the file over detection.
            .env("RGRID_NODE_LABELS", "zone=z1,rack=r2")
            .env("RGRID_NODE_CAPABILITIES", "docker,special")
            .stdout(Stdio::null())
            .stderr(log("node.log"))
            .spawn()
            .unwrap(),
    );
    wait_ready(&client_toml, "worker-1");
    let node = &common::process::nodes(&client_toml)[0];
    assert_eq!(node["labels"]["site"], "test", "the flag over the file");
    assert_eq!(node["labels"]["rack"], "r2", "the variable over the file");
    assert_eq!(node["labels"]["zone"], "z1");
    assert_eq!(node["labels"]["arch"], std::env::consts::ARCH, "detected");
    assert_eq!(
        node["capabilities"],
        serde_json::json!(["docker", "special"]),
        "the variable over the file over detection"
    );

    // submit --wait behaves like get: stdout, and the task's exit code.
    let out = rgrid(
        &client_toml,
        &[
            "submit",
            "--image",
            image,
            "--cpus",
            "0.5",
            "--memory",
            "64M",
            "--selector",
            "site=test",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo from-cli; exit 4",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    assert_eq!(out.status.code(), Some(4));

    // submit prints the id; get waits for it.
    let out = rgrid(
        &client_toml,
        &["submit", "--image", image, "--", "echo", "by-id"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = rgrid(&client_toml, &["get", &id]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "by-id\n");
    assert_eq!(out.status.code(), Some(0));

    // A selector no node satisfies: unschedulable, and get says why.
    let out = rgrid(
        &client_toml,
        &[
            "submit",
            "--image",
            image,
            "--selector",
            "site=mars",
            "--wait",
            "--",
            "true",
        ],
    );
    // Ended without an exit code of its own: 124.
    assert_eq!(out.status.code(), Some(124));
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

    // The outcome as JSON, with the task's exit code.
    let first = tasks[0]["task"].as_str().unwrap();
    let out = rgrid(&client_toml, &["get", first, "-o", "json"]);
    assert_eq!(out.status.code(), Some(4));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["state"], "failed");
    assert_eq!(outcome["exit_code"], 4);
    assert_eq!(outcome["stdout"], "from-cli\n");
    assert_eq!(outcome["attempts"][0]["node_name"], "worker-1");

    // The CLI's own errors exit 125, whatever the cause.
    let out = rgrid(&client_toml, &["get", "not-an-id"]);
    assert_eq!(out.status.code(), Some(125));
    let out = rgrid(&dir.path().join("missing.toml"), &["nodes"]);
    assert_eq!(out.status.code(), Some(125));
    let out = rgrid(&client_toml, &["status"]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("1 ready"), "{status}");
    assert!(
        status.contains("tasks: 3 (1 succeeded, 1 failed, 1 unschedulable)"),
        "{status}"
    );
    // Listings are paged on the head: one task per page, then the next.
    let out = rgrid(&client_toml, &["tasks", "--limit", "1", "-o", "json"]);
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page.as_array().map(Vec::len), Some(1));
    let out = rgrid(
        &client_toml,
        &["tasks", "--state", "succeeded", "-o", "json"],
    );
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page[0]["task"].as_str(), Some(id.as_str()));
    let out = rgrid(&client_toml, &["tasks", "--state", "bogus"]);
    assert_eq!(out.status.code(), Some(125));

    // wait: the ended ones, and exit 3 when the timeout leaves some running.
    let out = rgrid(
        &client_toml,
        &["submit", "--image", image, "--", "sleep", "30"],
    );
    let sleeper = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = rgrid(&client_toml, &["wait", &id, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let waited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(waited["ended"][0]["task"], id.as_str(), "{waited}");
    assert_eq!(waited["ended"][0]["state"], "succeeded", "{waited}");
    assert_eq!(waited["not_ended"], serde_json::json!([]), "{waited}");
    let out = rgrid(
        &client_toml,
        &["wait", &id, &sleeper, "--timeout", "0.5", "-o", "json"],
    );
    assert_eq!(out.status.code(), Some(3));
    let waited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        waited["not_ended"],
        serde_json::json!([sleeper]),
        "{waited}"
    );
    let out = rgrid(
        &client_toml,
        &["wait", &sleeper, "--any", "--timeout", "0.5"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{sleeper} not ended\n")
    );
    assert!(rgrid(&client_toml, &["cancel", &sleeper]).status.success());

    // submit -o json prints the id as JSON.
    let out = rgrid(
        &client_toml,
        &["submit", "--image", image, "-o", "json", "--", "true"],
    );
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(submitted["task"].as_str().is_some_and(|id| id.len() == 36));

    // Objects: put prints the id, submit --input stages it read-only, objects lists it.
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "a b c\n").unwrap();
    let out = rgrid(&client_toml, &["put", input.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let object = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let staged = format!("/in/words={object}");
    let out = rgrid(
        &client_toml,
        &[
            "submit",
            "--image",
            image,
            "--input",
            &staged,
            "--wait",
            "--",
            "wc",
            "-w",
            "/in/words",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.split_whitespace().next(), Some("3"), "{stdout}");
    let out = rgrid(&client_toml, &["objects", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["objects"][0]["object"].as_str(),
        Some(object.as_str())
    );
    assert_eq!(listed["objects"][0]["size"], 6);
    assert_eq!(listed["objects"][0]["tasks"], 0, "its task ended");
    assert_eq!(listed["objects"][0]["pinned"], false);
    // pin keeps it (the table says so), unpin lets it go; an unknown object is an error.
    assert!(rgrid(&client_toml, &["pin", &object]).status.success());
    let out = rgrid(&client_toml, &["objects"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("KEPT BY")
            && table
                .lines()
                .any(|l| l.contains(&object) && l.ends_with("pin")),
        "{table}"
    );
    assert!(rgrid(&client_toml, &["unpin", &object]).status.success());
    let out = rgrid(&client_toml, &["objects", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["objects"][0]["pinned"], false);
    let unknown = format!("{}-1", "0".repeat(64));
    let out = rgrid(&client_toml, &["pin", &unknown]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no object"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = rgrid(
        &client_toml,
        &["submit", "--input", "/x=nonsense", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an object id"));
}

/// `rgrid-head token …` and `client create` against the state dir of a running head, then of
/// the same head stopped.
#[test]
fn credentials_from_the_command_line() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let state = dir.path().join("head");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let head = start_head(dir.path(), &listen);
    let client_toml = state.join("client.toml");
    wait_for("client.toml", || client_toml.exists());
    let admin = |args: &[&str]| {
        let out = Command::new(binary("rgrid-head"))
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .expect("rgrid-head runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let tokens = || {
        let (code, out, err) = admin(&["token", "list", "-o", "json"]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("token list is JSON")
    };

    // A single-use token, labelled: one node joins with it, a second is refused.
    let (code, out, err) = admin(&[
        "token",
        "create",
        "--ttl",
        "1h",
        "--single-use",
        "--label",
        "site=b",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let token = out.trim().to_owned();
    let id = token
        .split('.')
        .next()
        .expect("ID.SECRET.CAHASH")
        .to_owned();
    let token_file = dir.path().join("site-b-token");
    std::fs::write(&token_file, &token).expect("the token is written");
    let join = |name: &str, token_file: &std::path::Path| {
        Daemon(
            Command::new(binary("rgrid-node"))
                .args(["--head", &listen, "--token-file"])
                .arg(token_file)
                .arg("--state-dir")
                .arg(dir.path().join(name))
                .args(["--name", name, "--executor", "process"])
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("a log"),
                )
                .spawn()
                .expect("rgrid-node starts"),
        )
    };
    let _first = join("first", &token_file);
    wait_ready(&client_toml, "first");
    let refused = |mut node: Daemon, name: &str, why: &str| {
        wait_for(&format!("{name} to be refused"), || {
            node.0
                .try_wait()
                .expect("the node can be waited for")
                .is_some()
        });
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log")))
            .expect("the node's log");
        assert!(log.contains(why), "{name} should be refused ({why}): {log}");
    };
    refused(join("second", &token_file), "second", "single-use");
    let listed = tokens();
    let ours = listed
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("the new token is listed");
    assert_eq!(ours["state"], "used");
    assert_eq!(ours["labels"]["site"], "b");
    assert!(!serde_json::to_string(&listed)
        .expect("JSON")
        .contains(token.split('.').nth(1).expect("a secret")));

    // Revoking the head's own join token keeps nodes from joining with it.
    let own = std::fs::read_to_string(state.join("join-token")).expect("the join-token file");
    let own_id = own.split('.').next().expect("ID.SECRET.CAHASH");
    let (code, _, err) = admin(&["token", "revoke", own_id]);
    assert_eq!(code, Some(0), "{err}");
    refused(join("third", &state.join("join-token")), "third", "revoked");
    let (code, _, err) = admin(&["token", "revoke", "feedbeef"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("token list"), "{err}");

    // A read-only client's credentials connect.
    let read_toml = dir.path().join("reader.toml");
    let (code, _, err) = admin(&[
        "client",
        "create",
        "reader",
        "--role",
        "read",
        "--out",
        read_toml.to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let out = rgrid(&read_toml, &["nodes", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _, err) = admin(&["client", "create", "bad name"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a client name"), "{err}");

    // The same state, the head stopped.
    drop(head);
    let listed = tokens();
    let states: Vec<&str> = listed
        .iter()
        .map(|t| t["state"].as_str().expect("a state"))
        .collect();
    assert_eq!(states, ["revoked", "used"]);
}

#[test]
fn shell_completions_and_usage_exit_codes() {
    let rgrid = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rgrid"))
            .args(args)
            .output()
            .expect("rgrid runs")
    };
    for (shell, marker) in [
        ("bash", "complete -F _rgrid"),
        ("zsh", "#compdef rgrid"),
        ("fish", "complete -c rgrid"),
    ] {
        let out = rgrid(&["completions", shell]);
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("submit"), "{shell} completes subcommands");
    }
    assert_eq!(rgrid(&["--help"]).status.code(), Some(0));
    assert_eq!(rgrid(&["--version"]).status.code(), Some(0));
    assert_eq!(rgrid(&["no-such-command"]).status.code(), Some(125));
    assert_eq!(rgrid(&["completions", "tcsh"]).status.code(), Some(125));
}

#[test]
fn a_waiting_get_shows_a_live_line_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("head");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let _head = start_head(dir.path(), &listen);
    let client_toml = state.join("client.toml");
    wait_for("client.toml", || client_toml.exists());
    // No node: the task stays queued.
    let out = rgrid(&client_toml, &["submit", "--", "true"]);
    assert!(out.status.success(), "{out:?}");
    let task = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let get = format!(
        "timeout 3 {} --config {} get {task}",
        env!("CARGO_BIN_EXE_rgrid"),
        client_toml.display()
    );

    // On a terminal (script gives the CLI a pseudo-terminal): one live line says why it waits.
    let on_terminal = Command::new("script")
        .args(["-qec", &get, "/dev/null"])
        .output()
        .expect("script runs");
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(shown.contains("queued"), "terminal output: {shown:?}");
    assert_eq!(on_terminal.status.code(), Some(124), "timeout ended it");

    // Piped: nothing extra.
    let piped = Command::new("sh")
        .args(["-c", &get])
        .output()
        .expect("sh runs");
    assert_eq!(piped.status.code(), Some(124), "timeout ended it");
    assert!(piped.stdout.is_empty(), "{piped:?}");
    assert!(piped.stderr.is_empty(), "{piped:?}");
}
