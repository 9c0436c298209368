//! The Prometheus endpoints during a real run: a head with `metrics_listen` auto-scaling against
//! the fake Hetzner API (its first listing answered 503), a node booted from the server's user
//! data with `--metrics-listen`, a container task running on it. Both endpoints are scraped
//! over HTTP while the server provisions and while the task runs; names, types and values are
//! checked, and `promtool check metrics` (Debian's `prometheus` package) accepts both outputs.

mod common;
#[path = "../rgrid-cloud/tests/fake_hetzner/mod.rs"]
mod fake_hetzner;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cloud_init::boot_of;
use common::process::{
    binary, free_tcp_port, free_udp_port, rgrid, start_head_env, wait_for, Daemon,
};
use fake_hetzner::{FakeHetzner, Scripted};
use serde_json::json;

/// `GET /metrics`: the body, or `None` while the endpoint does not answer.
fn scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Some(body.to_owned())
}

/// A scrape, parsed: each sample (`name{labels}`) with its value, and each metric's type.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn of(addr: &str) -> Self {
        let text = scrape(addr).unwrap_or_default();
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (sample, value) = line.rsplit_once(' ').expect("name value");
                samples.insert(sample.to_owned(), value.parse().expect("a number"));
            }
        }
        Self {
            text,
            samples,
            types,
        }
    }

    fn value(&self, sample: &str) -> Option<f64> {
        self.samples.get(sample).copied()
    }

    /// The metric exists with this type and a HELP line.
    fn assert_typed(&self, name: &str, kind: &str) {
        assert_eq!(
            self.types.get(name).map(String::as_str),
            Some(kind),
            "{name} in\n{}",
            self.text
        );
        assert!(
            self.text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
}

/// Waits until a scrape of `addr` satisfies `ok`; returns it.
fn scrape_until(addr: &str, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = None;
    wait_for(what, || {
        let scrape = Scrape::of(addr);
        let done = ok(&scrape);
        last = Some(scrape);
        done
    });
    last.expect("scraped at least once")
}

/// `promtool check metrics` accepts `text` (skipped without promtool, except under CI).
fn promtool_accepts(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("promtool is required under CI=true ({err}): apt-get install prometheus (scripts/setup.sh does)")
        }
        Err(err) => {
            eprintln!("skipping promtool: {err}; apt-get install prometheus");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("promtool reads the metrics");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn head_and_node_metrics_during_a_run() {
    let demo = common::demo_image();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let fake = runtime.block_on(FakeHetzner::start());
    fake.state().script.push_back(Scripted {
        method: "GET",
        path_prefix: "/v1/servers",
        status: 503,
        headers: Vec::new(),
        body: json!({"error": {"code": "unavailable", "message": "try again", "details": {}}}),
    });

    let dir = tempfile::tempdir().expect("a temp dir");
    let head_metrics = format!("127.0.0.1:{}", free_tcp_port());
    let node_metrics = format!("127.0.0.1:{}", free_tcp_port());
    let config = dir.path().join("head.toml");
    std::fs::write(
        &config,
        common::autoscaler_toml(
            r#"metrics_listen = "METRICS""#,
            r#"cluster_name = "metrics"
locations = ["fsn1"]
max_nodes = 1"#,
        )
        .replace("API_URL", &fake.url())
        .replace("METRICS", &head_metrics),
    )
    .expect("the config is written");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let _head = start_head_env(
        dir.path(),
        &listen,
        &["--config", config.to_str().expect("a UTF-8 path")],
        &[("HCLOUD_TOKEN", fake_hetzner::TOKEN)],
    );
    let client = dir.path().join("head").join("client.toml");
    wait_for("the head's client.toml", || client.exists());

    // A task no node can run yet: the autoscaler buys a server for it.
    let out = rgrid(
        &client,
        &[
            "submit",
            "--image",
            demo,
            "--cpus",
            "1",
            "--memory",
            "64M",
            "--",
            "sh",
            "-c",
            "sleep 3; echo done",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let task = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let provisioning = scrape_until(&head_metrics, "a server provisioning", |s| {
        s.value(r#"rgrid_autoscaler_servers{state="provisioning"}"#) == Some(1.0)
            && s.value(r#"rgrid_autoscaler_provisioning_eta_seconds{node_type="cx23"}"#)
                .is_some_and(|eta| eta > 0.0 && eta <= 90.0)
    });
    provisioning.assert_typed("rgrid_autoscaler_servers", "gauge");
    provisioning.assert_typed("rgrid_autoscaler_provisioning_eta_seconds", "gauge");
    provisioning.assert_typed("rgrid_autoscaler_actions_total", "counter");
    provisioning.assert_typed("rgrid_hetzner_requests_total", "counter");
    provisioning.assert_typed("rgrid_hetzner_errors_total", "counter");
    provisioning.assert_typed("rgrid_hetzner_ratelimit_remaining", "gauge");
    assert_eq!(
        provisioning.value(r#"rgrid_autoscaler_actions_total{action="create"}"#),
        Some(1.0)
    );
    assert_eq!(
        provisioning.value(r#"rgrid_hetzner_errors_total{code="unavailable"}"#),
        Some(1.0)
    );
    assert_eq!(
        provisioning.value(r#"rgrid_hetzner_requests_total{method="GET",status="503"}"#),
        Some(1.0)
    );
    assert_eq!(
        provisioning.value(r#"rgrid_hetzner_requests_total{method="POST",status="201"}"#),
        Some(1.0)
    );
    assert!(provisioning
        .value("rgrid_hetzner_ratelimit_remaining")
        .is_some_and(|left| left > 0.0));
    promtool_accepts(&provisioning.text);

    // The machine boots: a node from the server's user data, with its own endpoint.
    let creates = fake.requests("POST", "/v1/servers");
    let body = creates[0].body.as_ref().expect("a create body");
    let name = body["name"].as_str().expect("a server name");
    let boot = boot_of(body["user_data"].as_str().expect("user data"));
    let token_file = dir.path().join("server.token");
    std::fs::write(&token_file, &boot.token).expect("the token is written");
    let mut command = Command::new(binary("rgrid-node"));
    command
        .args(["--head", &boot.head, "--token-file"])
        .arg(&token_file)
        .arg("--state-dir")
        .arg(dir.path().join("server"))
        .args(["--name", name, "--cpu-millis", "2000", "--memory", "2G"])
        .args(["--metrics-listen", &node_metrics]);
    for label in &boot.labels {
        command.args(["--label", label]);
    }
    let log = std::fs::File::create(dir.path().join("node.log")).expect("a log");
    let _node = Daemon(
        command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("rgrid-node starts"),
    );

    // While the task runs.
    let node = scrape_until(&node_metrics, "the node running the task", |s| {
        s.value("rgrid_node_attempts") == Some(1.0) && s.value("rgrid_node_connected") == Some(1.0)
    });
    node.assert_typed("rgrid_node_attempts", "gauge");
    node.assert_typed("rgrid_node_connected", "gauge");
    node.assert_typed("rgrid_node_draining", "gauge");
    assert_eq!(node.value("rgrid_node_draining"), Some(0.0));
    // The Docker executor's call latencies: a histogram with the duration buckets.
    node.assert_typed("rgrid_node_docker_call_seconds", "histogram");
    assert!(
        node.samples
            .keys()
            .any(|s| s.starts_with("rgrid_node_docker_call_seconds_bucket{")
                && s.contains(r#"le="0.001""#)),
        "{}",
        node.text
    );
    node.assert_typed("rgrid_node_healthy", "gauge");
    assert_eq!(node.value("rgrid_node_healthy"), Some(1.0));
    node.assert_typed("rgrid_node_spool_results", "gauge");
    node.assert_typed("rgrid_node_spool_bytes", "gauge");
    promtool_accepts(&node.text);
    let head = scrape_until(&head_metrics, "the server ready", |s| {
        s.value(r#"rgrid_autoscaler_servers{state="ready"}"#) == Some(1.0)
            && s.value(r#"rgrid_autoscaler_servers{state="provisioning"}"#) == Some(0.0)
            && s.value(r#"rgrid_autoscaler_provisioning_eta_seconds{node_type="cx23"}"#)
                == Some(0.0)
    });
    promtool_accepts(&head.text);

    // An object of 12 bytes in the object store.
    let object = dir.path().join("object.txt");
    std::fs::write(&object, b"twelve bytes").expect("the object file is written");
    let out = rgrid(&client, &["put", object.to_str().expect("a UTF-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Once it has ended (its result acknowledged: out of the spool).
    let out = rgrid(&client, &["get", &task]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    scrape_until(&node_metrics, "the node idle", |s| {
        s.value("rgrid_node_attempts") == Some(0.0)
            && s.value("rgrid_node_spool_results") == Some(0.0)
            && s.value("rgrid_node_spool_bytes") == Some(0.0)
    });
    // The task path: one task submitted, placed after its wait for the server, ended.
    let head = scrape_until(&head_metrics, "the task counted as ended", |s| {
        s.value(r#"rgrid_tasks_ended_total{state="succeeded"}"#) == Some(1.0)
            && s.value(r#"rgrid_tasks{state="queued"}"#) == Some(0.0)
            && s.value(r#"rgrid_nodes{state="ready"}"#) == Some(1.0)
            && s.value("rgrid_objects") == Some(1.0)
            && s.value("rgrid_object_store_bytes") == Some(12.0)
    });
    for (name, kind) in [
        ("rgrid_tasks", "gauge"),
        ("rgrid_tasks_submitted_total", "counter"),
        ("rgrid_tasks_ended_total", "counter"),
        ("rgrid_task_queue_wait_seconds", "histogram"),
        ("rgrid_task_run_seconds", "histogram"),
        ("rgrid_placement_round_seconds", "histogram"),
        ("rgrid_nodes", "gauge"),
        ("rgrid_heartbeat_lag_seconds", "gauge"),
        ("rgrid_store_commit_rows", "histogram"),
        ("rgrid_store_commit_seconds", "histogram"),
        ("rgrid_objects", "gauge"),
        ("rgrid_object_store_bytes", "gauge"),
    ] {
        head.assert_typed(name, kind);
    }
    assert_eq!(head.value("rgrid_tasks_submitted_total"), Some(1.0));
    let shape = r#"shape="cpu=1000m mem=64M"#;
    let count = |name: &str| {
        head.samples
            .iter()
            .find(|(k, _)| k.starts_with(name) && k.contains(shape))
            .map(|(_, v)| *v)
    };
    assert_eq!(
        count("rgrid_task_queue_wait_seconds_count"),
        Some(1.0),
        "{}",
        head.text
    );
    assert_eq!(
        count("rgrid_task_run_seconds_count"),
        Some(1.0),
        "{}",
        head.text
    );
    // It waited for the server to boot: seconds, not milliseconds.
    let waited = count("rgrid_task_queue_wait_seconds_sum").unwrap_or_default();
    assert!(waited > 0.5, "queue wait {waited} s\n{}", head.text);
    assert!(head
        .value("rgrid_heartbeat_lag_seconds")
        .is_some_and(|lag| lag < 5.0));
    promtool_accepts(&head.text);
}
