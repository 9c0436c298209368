//! What `deploy/` ships, checked against the code: the example configs parse with the real
//! config types and show every key with its default (and the README's tables name them all);
//! the systemd units pass `systemd-analyze verify`; the images `scripts/build-images.sh` builds
//! run a node exactly as cloud-init starts it, and the compose cluster runs tasks at both sites.
//!
//! The image tests need the images (`scripts/build-images.sh`, which `.ci/run` runs first): they
//! are skipped without them, except under `CI=true`, where that fails.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::process::{free_udp_port, rgrid, start_head, wait_for, wait_ready};
use rgrid_head::HeadConfig;
use rgrid_node::NodeConfig;
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `None` (the test is skipped) when `what` is missing outside CI.
fn required(what: &str, present: bool, hint: &str) -> Option<()> {
    match (present, under_ci()) {
        (true, _) => Some(()),
        (false, true) => panic!("{what} is required under CI=true: {hint}"),
        (false, false) => {
            eprintln!("skipping: {what} is missing ({hint})");
            None
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Example configuration files

/// The keys of each `[section]` of a TOML example (`""` is the top), each with whether it is
/// only shown commented out (`# key = …`, for keys unset by default).
fn example_keys(text: &str) -> BTreeMap<String, BTreeMap<String, bool>> {
    let mut sections: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
    let mut section = String::new();
    sections.insert(section.clone(), BTreeMap::new());
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_matches(|c| c == '[' || c == ']').to_owned();
            sections.entry(section.clone()).or_default();
            continue;
        }
        let (commented, rest) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line),
        };
        let Some((key, _)) = rest.split_once(" = ") else {
            continue;
        };
        if key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            let keys = sections.entry(section.clone()).or_default();
            let entry = keys.entry(key.to_owned()).or_insert(commented);
            *entry &= commented;
        }
    }
    sections
}

/// Every field of `value` (a config serialized as JSON) is in the example: set when it has a
/// value, commented out when it is unset; nested configs are sections of their own.
fn assert_every_key_shown(
    file: &str,
    sections: &BTreeMap<String, BTreeMap<String, bool>>,
    section: &str,
    value: &Value,
) {
    let keys = sections
        .get(section)
        .unwrap_or_else(|| panic!("{file} has no [{section}]"));
    let fields = value.as_object().expect("a config serializes as an object");
    for (key, field) in fields {
        let nested = if section.is_empty() {
            key.clone()
        } else {
            format!("{section}.{key}")
        };
        if sections.contains_key(&nested) {
            let field = match field {
                Value::Array(items) => items.first().expect("a non-empty list of tables"),
                other => other,
            };
            assert_every_key_shown(file, sections, &nested, field);
            continue;
        }
        match keys.get(key) {
            None => panic!("{file}: [{section}] does not show `{key}`"),
            Some(commented) => assert_eq!(
                *commented,
                field.is_null(),
                "{file}: [{section}] `{key}` should be {}",
                if field.is_null() {
                    "commented out (unset by default)"
                } else {
                    "set to its default"
                }
            ),
        }
    }
    for key in keys.keys() {
        assert!(
            fields.contains_key(key),
            "{file}: [{section}] shows `{key}`, which the config does not have"
        );
    }
}

/// Every key is named in one of the README's table rows: as `` `key` `` or `` `key = …` ``, and
/// a nested config as its section, `` `[autoscaler.api]` ``.
fn assert_in_readme_tables(value: &Value, what: &str) {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with('|')).collect();
    let named = |needle: String| rows.iter().any(|row| row.contains(&needle));
    let mut missing = Vec::new();
    let mut walk = vec![(String::new(), value)];
    while let Some((section, Value::Object(fields))) = walk.pop() {
        for (key, field) in fields {
            let path = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            let nested = match field {
                Value::Array(items) => items.first().filter(|item| item.is_object()),
                Value::Object(_)
                    if !["labels", "node_labels", "custom"].contains(&key.as_str()) =>
                {
                    Some(field)
                }
                _ => None,
            };
            let shown = named(format!("`{key}`"))
                || named(format!("`{key} ="))
                || (nested.is_some() && named(format!("`[{path}]`")));
            if !shown {
                missing.push(path.clone());
            }
            if let Some(nested) = nested {
                walk.push((path, nested));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README's {what} tables lack {missing:?}"
    );
}

#[test]
fn example_head_config_is_every_default() {
    let path = deploy("head.toml");
    let config = HeadConfig::from_file(&path).expect("deploy/head.toml parses");
    config.validate().expect("deploy/head.toml is valid");
    config
        .autoscaler
        .validate()
        .expect("its [autoscaler] is valid");
    assert_eq!(config, HeadConfig::default());
    let defaults = serde_json::to_value(HeadConfig::default()).expect("the config serializes");
    let text = std::fs::read_to_string(&path).expect("deploy/head.toml");
    assert_every_key_shown("head.toml", &example_keys(&text), "", &defaults);
    assert_in_readme_tables(&defaults, "head configuration");
}

#[test]
fn example_node_config_is_every_default() {
    let path = deploy("node.toml");
    let config = NodeConfig::from_file(&path).expect("deploy/node.toml parses");
    let expected = NodeConfig {
        head: "head.example.com:7070".into(),
        token_file: Some("/etc/rgrid/join-token".into()),
        ..NodeConfig::default()
    };
    assert_eq!(config, expected);
    let mut defaults = serde_json::to_value(&expected).expect("the config serializes");
    let text = std::fs::read_to_string(&path).expect("deploy/node.toml");
    assert_every_key_shown("node.toml", &example_keys(&text), "", &defaults);
    defaults["head"] = Value::Null;
    assert_in_readme_tables(&defaults, "node configuration");
}

#[test]
fn a_config_key_the_code_rejects_fails_the_example_check() {
    // The checker itself: an extra key and a missing one are both caught.
    let defaults = serde_json::json!({ "a": 1, "b": null });
    let sections = example_keys("a = 1\n# b = 2\n");
    assert_every_key_shown("t", &sections, "", &defaults);
    for bad in ["a = 1\n", "a = 1\nb = 2\n", "a = 1\n# b = 2\nc = 3\n"] {
        let sections = example_keys(bad);
        let caught = std::panic::catch_unwind(|| {
            assert_every_key_shown("t", &sections, "", &defaults);
        });
        assert!(caught.is_err(), "{bad:?} should fail the check");
    }
}

// ---------------------------------------------------------------------------------------------
// systemd units

#[test]
fn systemd_units_verify_and_drain_before_they_are_killed() {
    let analyze = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if required(
        "systemd-analyze",
        analyze,
        "apt-get install systemd (scripts/setup.sh does)",
    )
    .is_none()
    {
        return;
    }
    // A root holding the system's units, the executables the units start (verify checks they
    // exist) and ours.
    let root = tempfile::tempdir().expect("a temp dir");
    let units = root.path().join("etc/systemd/system");
    let bin = root.path().join("usr/local/bin");
    for dir in [&units, &bin, &root.path().join("usr/lib/systemd")] {
        std::fs::create_dir_all(dir).expect("a directory");
    }
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|dir| Path::new(dir).join("sysinit.target").exists())
        .expect("the system's units");
    run(Command::new("cp")
        .args(["-r", system_units])
        .arg(root.path().join("usr/lib/systemd/system")));
    let mut paths = Vec::new();
    for name in ["rgrid-head", "rgrid-node"] {
        let exe = bin.join(name);
        std::fs::write(&exe, "#!/bin/sh\n").expect("a stand-in executable");
        run(Command::new("chmod").arg("+x").arg(&exe));
        let unit = units.join(format!("{name}.service"));
        std::fs::copy(deploy(&format!("systemd/{name}.service")), &unit).expect("the unit");
        paths.push(unit);
    }
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(&paths));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warns:\n{said}"
    );

    for name in ["rgrid-head", "rgrid-node"] {
        let unit =
            std::fs::read_to_string(deploy(&format!("systemd/{name}.service"))).expect("a unit");
        for needed in [
            format!("StateDirectory={name}"),
            "Restart=on-failure".into(),
            "NoNewPrivileges=yes".into(),
            "ProtectSystem=strict".into(),
            "ProtectHome=yes".into(),
            "PrivateTmp=yes".into(),
        ] {
            assert!(unit.lines().any(|l| l == needed), "{name}: no {needed}");
        }
        let groups: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("SupplementaryGroups="))
            .collect();
        let expected: &[&str] = if name == "rgrid-node" {
            &["docker"]
        } else {
            &[]
        };
        assert_eq!(groups, expected, "{name}'s extra groups");
        if name == "rgrid-node" {
            let stop = unit
                .lines()
                .find_map(|l| l.strip_prefix("TimeoutStopSec="))
                .expect("a stop timeout");
            let stop = humantime::parse_duration(stop).expect("a duration");
            assert!(stop > NodeConfig::default().drain_deadline);
        }
    }

    // The users they run as.
    let sysusers = root.path().join("etc/sysusers.d");
    std::fs::create_dir_all(&sysusers).expect("a directory");
    std::fs::copy(
        deploy("systemd/rgrid.sysusers"),
        sysusers.join("rgrid.conf"),
    )
    .expect("the sysusers file");
    run(Command::new("systemd-sysusers").arg(format!("--root={}", root.path().display())));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let group = std::fs::read_to_string(root.path().join("etc/group")).expect("group");
    assert!(passwd.contains("rgrid-head:") && passwd.contains("rgrid-node:"));
    assert!(group
        .lines()
        .any(|l| l.starts_with("docker:") && l.ends_with(":rgrid-node")));
}

// ---------------------------------------------------------------------------------------------
// Images

/// The tag `scripts/build-images.sh` gives image `name` (`rgrid-node`, `rgrid-head`), if it is
/// on the engine; `None` skips the test outside CI.
fn built_image(name: &str) -> Option<String> {
    let image = format!("ghcr.io/rgrid/{name}:{VERSION}");
    let present = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    required(&image, present, "run scripts/build-images.sh").map(|()| image)
}

/// A container removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `docker run` of the node from cloud-init's bootstrap script, with the server's paths, the
/// container name and the host name replaced by this test's.
fn cloud_init_docker_run(
    user_data: &str,
    token_file: &Path,
    state_dir: &Path,
    container: &str,
    node: &str,
) -> String {
    use rgrid_cloud::cloud_init::{BOOTSTRAP_PATH, STATE_DIR, TOKEN_PATH};
    let script = common::cloud_init::written_file(user_data, BOOTSTRAP_PATH);
    let mut command = Vec::new();
    for line in script.lines().skip_while(|l| !l.starts_with("docker run ")) {
        command.push(line);
        if !line.ends_with('\\') {
            break;
        }
    }
    let command = command.join("\n");
    assert!(command.contains("--name rgrid-node ") && command.contains("\"$(hostname)\""));
    command
        .replace(TOKEN_PATH, &token_file.display().to_string())
        .replace(STATE_DIR, &state_dir.display().to_string())
        .replace("--name rgrid-node ", &format!("--name {container} "))
        .replace("\"$(hostname)\"", node)
}

/// `rgrid submit` of a small task in the demo image, with `args` after the resources.
fn submit_small(client_toml: &Path, args: &[&str]) -> Output {
    let demo = common::demo_image();
    let base = [
        "submit", "--image", demo, "--cpus", "0.5", "--memory", "64M",
    ];
    rgrid(client_toml, &[&base[..], args].concat())
}

fn docker_inspect(container: &str, format: &str) -> String {
    let out = run(Command::new("docker").args(["inspect", "-f", format, container]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_node_image_joins_a_head_as_cloud_init_runs_it() {
    // The autoscaler's default node image is the one the script builds.
    let config = rgrid_cloud::AutoscalerConfig::default();
    assert_eq!(
        config.node_image,
        format!("ghcr.io/rgrid/rgrid-node:{VERSION}")
    );
    let Some(_image) = built_image("rgrid-node") else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let _head = start_head(dir.path(), &listen);
    let state = dir.path().join("head");
    let client_toml = state.join("client.toml");
    wait_for("client.toml", || client_toml.exists());

    let node_type = &config.node_types[0].name;
    let token = std::fs::read_to_string(state.join("join-token")).expect("the join token");
    let user_data = rgrid_cloud::cloud_init::render(&config, node_type, &listen, token.trim())
        .expect("the user data renders");
    let token_file = dir.path().join("server/join-token");
    let state_dir = dir.path().join("server/state");
    std::fs::create_dir_all(&state_dir).expect("the server's state dir");
    std::fs::write(&token_file, token.trim()).expect("the server's token");
    let container = Container(format!("rgrid-test-node-{}", uuid::Uuid::new_v4().simple()));
    let node = "image-node";
    let command = cloud_init_docker_run(&user_data, &token_file, &state_dir, &container.0, node);
    run(Command::new("sh").args(["-c", &command]));
    wait_ready(&client_toml, node);
    assert_eq!(
        docker_inspect(&container.0, "{{.Config.StopTimeout}}"),
        "90"
    );
    assert_eq!(
        docker_inspect(&container.0, "{{.HostConfig.NetworkMode}}"),
        "host"
    );

    // A container task through the mounted Docker socket.
    let out = submit_small(
        &client_toml,
        &["--wait", "--", "sh", "-c", "echo from-a-task"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from-a-task\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    // Its identity is in the state volume.
    assert!(state_dir.join("node-id").exists());

    // docker stop (SIGTERM) drains the node: it leaves and exits 0, within the stop timeout.
    run(Command::new("docker").args(["stop", &container.0]));
    assert_eq!(docker_inspect(&container.0, "{{.State.ExitCode}}"), "0");
    let nodes = common::process::nodes(&client_toml);
    let ours = nodes
        .iter()
        .find(|n| n["name"] == node)
        .expect("the node is listed");
    assert_ne!(ours["state"], "ready");
}

// ---------------------------------------------------------------------------------------------
// Compose

/// `docker compose` (v2) or `docker-compose` (v1), whichever is installed.
fn compose_command() -> Option<Vec<&'static str>> {
    let works = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    [vec!["docker", "compose"], vec!["docker-compose"]]
        .into_iter()
        .find(|cmd| works(cmd))
}

/// A compose project, taken down (volumes too) when dropped.
struct Project {
    compose: Vec<&'static str>,
    name: String,
    port: u16,
}

impl Project {
    fn command(&self) -> Command {
        let mut cmd = Command::new(self.compose[0]);
        cmd.args(&self.compose[1..])
            .arg("-f")
            .arg(deploy("compose.yaml"))
            .args(["-p", &self.name])
            .env("RGRID_PORT", self.port.to_string());
        cmd
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["down", "-v", "--timeout", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn the_compose_file_is_a_head_and_three_nodes_at_two_sites() {
    let text = std::fs::read_to_string(deploy("compose.yaml")).expect("deploy/compose.yaml");
    let mut doc: serde_norway::Value = serde_norway::from_str(&text).expect("compose.yaml is YAML");
    doc.apply_merge().expect("the node template merges");
    let services = doc["services"].as_mapping().expect("services");
    let mut sites = BTreeMap::new();
    let mut offers = Vec::new();
    let mut volumes = Vec::new();
    for (name, service) in services {
        let image = service["image"].as_str().expect("an image");
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .expect("a command")
            .iter()
            .map(|a| a.as_str().expect("a string"))
            .collect();
        let after = |flag: &str| {
            command
                .iter()
                .position(|a| *a == flag)
                .map(|i| command[i + 1])
        };
        if name.as_str() == Some("head") {
            assert_eq!(
                image,
                format!("ghcr.io/rgrid/rgrid-head:${{RGRID_VERSION:-{VERSION}}}")
            );
            continue;
        }
        assert_eq!(
            image,
            format!("ghcr.io/rgrid/rgrid-node:${{RGRID_VERSION:-{VERSION}}}")
        );
        let site = after("--label").expect("a site label");
        *sites.entry(site.to_owned()).or_insert(0) += 1;
        offers.push((
            after("--cpu-millis").expect("its own cpu"),
            after("--memory").expect("its own memory"),
        ));
        let state = service["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .filter_map(|v| v.as_str())
            .find(|v| v.ends_with(":/var/lib/rgrid"))
            .expect("a state volume");
        volumes.push(state.to_owned());
    }
    assert_eq!(
        sites,
        BTreeMap::from([("site=a".into(), 2), ("site=b".into(), 1)])
    );
    assert_eq!(offers.len(), 3);
    volumes.sort();
    volumes.dedup();
    assert_eq!(volumes.len(), 3, "each node has its own state volume");
}

#[test]
fn a_compose_cluster_runs_a_task_at_each_site() {
    let Some(compose) = compose_command() else {
        required(
            "docker compose",
            false,
            "apt-get install docker-compose (scripts/setup.sh does)",
        );
        return;
    };
    if built_image("rgrid-node").is_none() || built_image("rgrid-head").is_none() {
        return;
    }
    let project = Project {
        compose,
        name: format!("rgrid-test-{}", std::process::id()),
        port: free_udp_port(),
    };
    run(project.command().args(["up", "-d"]));
    let out = run(project.command().args(["ps", "-q", "head"]));
    let head = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dir = tempfile::tempdir().expect("a temp dir");
    let client_toml = dir.path().join("client.toml");
    wait_for("the head's client.toml", || {
        Command::new("docker")
            .args(["cp", &format!("{head}:/var/lib/rgrid-head/client.toml")])
            .arg(&client_toml)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    for node in ["a1", "a2", "b1"] {
        wait_ready(&client_toml, node);
    }
    for (site, nodes) in [("a", &["a1", "a2"][..]), ("b", &["b1"][..])] {
        let selector = format!("site={site}");
        let out = submit_small(
            &client_toml,
            &[
                "--selector",
                &selector,
                "-o",
                "json",
                "--",
                "sh",
                "-c",
                "echo at-$0",
                site,
            ],
        );
        let submitted: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "submit -o json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let id = submitted["task"].as_str().expect("the task id");
        let out = rgrid(&client_toml, &["get", id, "-o", "json"]);
        assert_eq!(out.status.code(), Some(0));
        let got: Value = serde_json::from_slice(&out.stdout).expect("get -o json");
        assert_eq!(got["state"], "succeeded");
        assert_eq!(got["stdout"], format!("at-{site}\n"));
        let ran_on = got["attempts"][0]["node_name"].as_str().expect("a node");
        assert!(nodes.contains(&ran_on), "site {site} ran on {ran_on}");
    }
}
