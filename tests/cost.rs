//! What each task cost, end to end with real processes: a head, a node joined by hand with an
//! `hourly_price`, tasks run on it, and `rgrid get` / `rgrid cost` showing their costs.

mod common;

use common::process::{
    binary, free_udp_port, rgrid, start_head_with, wait_for, wait_ready, Daemon, Logs,
};

/// The node's price: 3.6 an hour, so a whole node for one second costs 0.001.
const PRICE: &str = "3.6";

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "rgrid failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 + 1e-6 * a.abs().max(b.abs())
}

#[test]
fn a_priced_node_charges_its_tasks_and_cost_sums_them() {
    priced_node_scenario(&[]);
}

/// The same on PostgreSQL (the cost query is written for each backend).
#[test]
fn the_same_on_postgres() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = runtime.block_on(common::postgres_database()) else {
        return;
    };
    priced_node_scenario(&["--database-url", &url]);
}

/// A head (started with `head_args`), a node with a price, two tasks on it: their costs.
fn priced_node_scenario(head_args: &[&str]) {
    let logs = Logs(tempfile::tempdir().unwrap());
    let dir = &logs.0;
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let _head = start_head_with(dir.path(), &listen, head_args);
    let client_toml = dir.path().join("head").join("client.toml");
    wait_for("client.toml", || client_toml.exists());
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let _node = Daemon(
        std::process::Command::new(binary("rgrid-node"))
            .args(["--head", &listen, "--token-file"])
            .arg(dir.path().join("head").join("join-token"))
            .arg("--state-dir")
            .arg(dir.path().join("node"))
            .args(["--name", "priced", "--executor", "process"])
            .args([
                "--cpu-millis",
                "2000",
                "--memory",
                "1G",
                "--label",
                "site=test",
            ])
            .env("RGRID_NODE_HOURLY_PRICE", PRICE)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_ready(&client_toml, "priced");
    let node = &common::process::nodes(&client_toml)[0];
    assert_eq!(node["labels"]["rgrid-hourly-price"], PRICE, "advertised");

    // Half the node (1 of 2 cpus) with a selector; a quarter of it (0.5 cpu) without.
    let submit = |args: &[&str]| {
        let mut all = vec!["submit", "-o", "json", "--memory", "64M"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "sh", "-c", "sleep 1"]);
        let out = json(&rgrid(&client_toml, &all));
        out["task"].as_str().expect("a task id").to_owned()
    };
    let half = submit(&["--cpus", "1", "--selector", "site=test"]);
    let quarter = submit(&["--cpus", "0.5"]);

    let mut costs = Vec::new();
    for (task, share) in [(&half, 0.5), (&quarter, 0.25)] {
        let out = json(&rgrid(&client_toml, &["get", task, "-o", "json"]));
        assert_eq!(out["state"], "succeeded", "{out}");
        let cost = &out["cost"];
        let node_seconds = cost["node_seconds"].as_f64().expect("node-seconds");
        let amount = cost["cost"].as_f64().expect("a cost");
        // It ran about a second (sleep 1, plus starting it) at its share of the node.
        assert!(
            node_seconds >= share * 0.9 && node_seconds <= share * 10.0,
            "{task}: {node_seconds} node-seconds at share {share}"
        );
        // Its billed hour is still open: node-seconds at the hourly price, all provisional.
        assert!(close(amount, node_seconds * 3.6 / 3600.0), "{cost}");
        assert!(
            close(cost["provisional"].as_f64().unwrap(), amount),
            "{cost}"
        );
        costs.push((amount, node_seconds));
        // The table form says it on stderr, and stdout stays the task's own.
        let out = rgrid(&client_toml, &["get", task]);
        assert!(out.status.success());
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cost: "), "{stderr}");
    }
    let total: f64 = costs.iter().map(|c| c.0).sum();

    let report = json(&rgrid(&client_toml, &["cost", "-o", "json"]));
    assert_eq!(report["total"]["tasks"], 2, "{report}");
    assert!(
        close(report["total"]["cost"].as_f64().unwrap(), total),
        "{report}"
    );
    let recent = json(&rgrid(
        &client_toml,
        &["cost", "--since", "1h", "-o", "json"],
    ));
    assert!(
        close(recent["total"]["cost"].as_f64().unwrap(), total),
        "{recent}"
    );

    let group = |by: &str| {
        let report = json(&rgrid(&client_toml, &["cost", "--by", by, "-o", "json"]));
        assert!(
            close(report["total"]["cost"].as_f64().unwrap(), total),
            "{report}"
        );
        assert_eq!(report["truncated"], false);
        report["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .map(|g| {
                (
                    g["key"].as_str().unwrap().to_owned(),
                    g["tasks"].as_u64().unwrap(),
                    g["cost"].as_f64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    // The costliest first: the half-node task.
    let by_label = group("label");
    assert_eq!(by_label.len(), 2, "{by_label:?}");
    assert_eq!((by_label[0].0.as_str(), by_label[0].1), ("site=test", 1));
    assert!(close(by_label[0].2, costs[0].0), "{by_label:?}");
    assert_eq!((by_label[1].0.as_str(), by_label[1].1), ("", 1));
    let by_shape = group("shape");
    let shapes: Vec<&str> = by_shape.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(shapes, ["cpu=1000m mem=64M", "cpu=500m mem=64M"]);
    let by_client = group("client");
    assert_eq!(
        by_client.len(),
        1,
        "one client submitted both: {by_client:?}"
    );
    assert!(!by_client[0].0.is_empty());
    assert_eq!(by_client[0].1, 2);

    // The table form, and bad input: a clear error, exit 125.
    let out = rgrid(&client_toml, &["cost", "--by", "shape"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table.contains("cpu=1000m mem=64M") && table.contains("total"),
        "{table}"
    );
    for bad in [
        &["cost", "--by", "colour"][..],
        &["cost", "--since", "soon"],
    ] {
        let out = rgrid(&client_toml, bad);
        assert_eq!(out.status.code(), Some(125), "{bad:?}");
        assert!(!out.stderr.is_empty());
    }
}
