//! The autoscaler end to end: a real `rgrid-head` with `[autoscaler]` pointed at a fake Hetzner
//! Cloud API (the real reqwest client talks to it over HTTP). The fake is the cloud; this test
//! is the machines: for every server the head creates, it boots a real `rgrid-node` process
//! with the head address and join token from that server's user data, and it powers the machine
//! off when the server is deleted. The whole loop runs: demand → servers → join → tasks run in
//! Docker → idle → drain → delete, and no server is left behind — also across a head that is
//! SIGKILLed with creates and deletes in flight.

mod common;
#[path = "../rgrid-cloud/tests/fake_hetzner/mod.rs"]
mod fake_hetzner;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cloud_init::{boot_of, Boot};
use common::process::{binary, free_udp_port, rgrid, start_head_env, wait_for, Daemon};
use fake_hetzner::FakeHetzner;
use serde_json::Value;

/// One node type: two cpus, two GiB (what the node processes offer).
/// The head's config: up to two servers, from two locations.
fn config() -> String {
    common::autoscaler_toml(
        "",
        r#"cluster_name = "e2e"
locations = ["fsn1", "nbg1"]
max_nodes = 2
max_concurrent_provisioning = 2
min_idle = "1s"
drain_ahead = "0s""#,
    )
}

/// A machine: the node process booted for a server.
struct Machine {
    name: String,
    node: Daemon,
    token_file: PathBuf,
}

/// The machines behind the fake cloud's servers.
struct Machines {
    dir: PathBuf,
    running: BTreeMap<u64, Machine>,
    /// Servers whose machine never boots (a broken image).
    broken: BTreeSet<u64>,
    /// Servers that were deleted, with how their node process had ended by then.
    gone: Vec<(String, Option<std::process::ExitStatus>)>,
}

impl Machines {
    /// No machines yet; their state and logs go in `dir`.
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            running: BTreeMap::new(),
            broken: BTreeSet::new(),
            gone: Vec::new(),
        }
    }

    /// Boots a node for every new server; powers off the machines of deleted servers.
    fn sync(&mut self, fake: &FakeHetzner) {
        let servers = fake.servers();
        let creates = fake.requests("POST", "/v1/servers");
        for (id, name) in &servers {
            if self.running.contains_key(id) || self.broken.contains(id) {
                continue;
            }
            let body = creates
                .iter()
                .filter_map(|r| r.body.as_ref())
                .find(|b| b["name"].as_str() == Some(name))
                .expect("the create request of a server");
            let boot = boot_of(body["user_data"].as_str().expect("user_data"));
            self.running.insert(*id, self.boot(name, &boot));
        }
        let deleted: Vec<u64> = (self.running.keys())
            .filter(|id| !servers.iter().any(|(s, _)| s == *id))
            .copied()
            .collect();
        for id in deleted {
            if let Some(mut machine) = self.running.remove(&id) {
                // A node that drained exits on its own right after saying it leaves; give it
                // the moment a machine takes to power off.
                let deadline = std::time::Instant::now() + Duration::from_secs(3);
                let status = loop {
                    match machine.node.0.try_wait() {
                        Ok(None) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        other => break other.ok().flatten(),
                    }
                };
                self.gone.push((machine.name.clone(), status));
            }
        }
    }

    fn boot(&self, name: &str, boot: &Boot) -> Machine {
        let token_file = self.dir.join(format!("{name}.token"));
        std::fs::write(&token_file, &boot.token).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut command = Command::new(binary("rgrid-node"));
        command
            .args(["--head", &boot.head, "--token-file"])
            .arg(&token_file)
            .arg("--state-dir")
            .arg(self.dir.join(name))
            .args(["--name", name, "--cpu-millis", "2000", "--memory", "2G"]);
        for label in &boot.labels {
            command.args(["--label", label]);
        }
        command.envs(boot.env.iter().map(|(k, v)| (k, v)));
        let node = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Machine {
            name: name.to_owned(),
            node: Daemon(node),
            token_file,
        }
    }
}

fn tasks(client: &Path) -> Vec<Value> {
    let out = rgrid(client, &["tasks", "-o", "json"]);
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default()
}

fn submit(client: &Path, args: &[&str]) -> String {
    let out = rgrid(
        client,
        &[&["submit", "--image", common::demo_image()], args].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn state_of(client: &Path, id: &str) -> String {
    tasks(client)
        .iter()
        .find(|t| t["task"] == id)
        .and_then(|t| t["state"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// A head process with [`config`] against the fake cloud.
struct Setup {
    dir: tempfile::TempDir,
    listen: String,
    client: PathBuf,
    head: Daemon,
}

/// Starts a head whose `HCLOUD_TOKEN` is `token` (none when `None`).
fn start(fake: &FakeHetzner, token: Option<&str>) -> Setup {
    start_with(fake, token, &config())
}

/// [`start`] with another config (`API_URL` is replaced by the fake's).
fn start_with(fake: &FakeHetzner, token: Option<&str>, config: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("head.toml"),
        config.replace("API_URL", &fake.url()),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let head = head(dir.path(), &listen, token);
    let client = dir.path().join("head").join("client.toml");
    Setup {
        dir,
        listen,
        client,
        head,
    }
}

/// A head process in `dir` (its state, config and log), listening on `listen`.
fn head(dir: &Path, listen: &str, token: Option<&str>) -> Daemon {
    let config = dir.join("head.toml");
    let mut env = vec![("RUST_LOG", "info")];
    env.extend(token.map(|t| ("HCLOUD_TOKEN", t)));
    start_head_env(dir, listen, &["--config", config.to_str().unwrap()], &env)
}

/// SIGKILLs a head and waits until it is gone.
fn kill(head: &mut Daemon) {
    head.signal("KILL");
    head.0.wait().unwrap();
}

#[test]
fn demand_becomes_servers_that_join_run_tasks_drain_and_are_deleted() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeHetzner::start());
    // The type is sold out in the first location: servers come from the second.
    (fake.state().sold_out).insert(("cx23".into(), "fsn1".into()));
    let Setup {
        dir,
        listen,
        client,
        head: _head,
    } = start(&fake, Some(fake_hetzner::TOKEN));
    wait_for("the head's client.toml", || client.exists());
    let mut machines = Machines::new(dir.path());

    // Tasks no node type can ever run fail at once and buy nothing.
    let mars = submit(&client, &["--selector", "site=mars", "--", "true"]);
    let huge = submit(&client, &["--cpus", "64", "--", "true"]);
    wait_for("impossible tasks to be unschedulable", || {
        state_of(&client, &mars) == "unschedulable" && state_of(&client, &huge) == "unschedulable"
    });
    assert_eq!(fake.requests("POST", "/v1/servers").len(), 0);

    // Three one-cpu tasks on an empty cluster: two two-cpu servers.
    let ids: Vec<String> = (0..3)
        .map(|i| {
            submit(
                &client,
                &["--", "sh", "-c", &format!("sleep 1; echo task-{i}")],
            )
        })
        .collect();
    wait_for("two servers to be created", || fake.server_count() == 2);
    // Before any machine boots, the waiting tasks say what they wait for, with an ETA.
    wait_for("an ETA in the task listing", || {
        tasks(&client).iter().any(|t| {
            t["detail"].as_str().is_some_and(|d| {
                d.starts_with("waiting for a node of type cx23 (provisioning, ~")
                    && d.ends_with(" s left)")
            })
        })
    });
    wait_for("rgrid status to count them as provisioning", || {
        let out = rgrid(&client, &["status", "-o", "json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|s| s["servers"] == serde_json::json!([["provisioning", 2]]))
    });
    let creates = fake.requests("POST", "/v1/servers");
    let locations: Vec<&str> = (creates.iter())
        .filter_map(|c| c.body.as_ref()?["location"].as_str())
        .collect();
    assert_eq!(locations.iter().filter(|l| **l == "nbg1").count(), 2);
    assert!(
        locations.contains(&"fsn1"),
        "fsn1 was tried first: {locations:?}"
    );
    for create in &creates {
        let body = create.body.as_ref().unwrap();
        assert_eq!(body["labels"]["rgrid-cluster"], "e2e");
        assert!(body.get("datacenter").is_none());
    }

    machines.sync(&fake);
    assert_eq!(machines.running.len(), 2);
    for (i, id) in ids.iter().enumerate() {
        let out = rgrid(&client, &["get", id]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("task-{i}\n"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        fake.server_count() + machines.gone.len(),
        2,
        "no server beyond the two the demand needed"
    );
    // Each ran on a node priced by its type: what it cost is known.
    for node in common::process::nodes(&client) {
        assert_eq!(node["labels"]["rgrid-hourly-price"], "0.0056", "{node}");
    }
    for id in &ids {
        let out = rgrid(&client, &["get", id, "-o", "json"]);
        let outcome: Value = serde_json::from_slice(&out.stdout).unwrap();
        let cost = outcome["cost"]["cost"].as_f64().unwrap_or_default();
        // Half a cx23 (1 of 2 cpus) for about a second at 0.0056 an hour.
        assert!(cost > 0.0 && cost < 0.0056, "{outcome}");
    }

    // A join token is single-use: a second machine booting with it is refused.
    let first = machines.running.values().next().unwrap();
    let reuse = Command::new(binary("rgrid-node"))
        .args(["--head", &listen, "--token-file"])
        .arg(&first.token_file)
        .arg("--state-dir")
        .arg(dir.path().join("intruder"))
        .args(["--name", "intruder"])
        .output()
        .unwrap();
    assert!(!reuse.status.success());
    assert!(
        String::from_utf8_lossy(&reuse.stderr).contains("single-use"),
        "{}",
        String::from_utf8_lossy(&reuse.stderr)
    );

    // A node dies while a task fills it and the other node is busy: its server is deleted and
    // a replacement is created, where the requeued task runs. (First attempts run long, the
    // second one at once.)
    let script = |i: usize| format!("[ \"$RGRID_ATTEMPT\" = 1 ] && sleep 60; echo big-{i}");
    let big: Vec<String> = (0..2)
        .map(|i| submit(&client, &["--cpus", "2", "--", "sh", "-c", &script(i)]))
        .collect();
    wait_for("both big tasks to run", || {
        big.iter().all(|id| state_of(&client, id) == "running")
    });
    let on_node = |id: &str| {
        let node = tasks(&client)
            .into_iter()
            .find(|t| t["task"] == id)
            .map(|t| t["node"].clone())
            .unwrap();
        let nodes = common::process::nodes(&client);
        let name = nodes
            .iter()
            .find(|n| n["id"] == node)
            .map(|n| n["name"].clone());
        name.and_then(|n| n.as_str().map(str::to_owned)).unwrap()
    };
    let victim = on_node(&big[0]);
    let machine = machines
        .running
        .values()
        .find(|m| m.name == victim)
        .unwrap();
    machine.node.signal("KILL");
    wait_for("the dead node's server to be replaced", || {
        machines.sync(&fake);
        machines.gone.iter().any(|(name, _)| *name == victim) && fake.server_count() == 2
    });
    let out = rgrid(&client, &["get", &big[0]]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "big-0\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("node lost"));
    assert_ne!(on_node(&big[0]), victim);
    assert!(rgrid(&client, &["cancel", &big[1]]).status.success());
    assert_eq!(
        fake.requests("POST", "/v1/servers").len(),
        creates.len() + 1
    );

    // An hour of billing goes by in the cloud: the idle nodes' next billed hour starts within
    // the scale-down window, so they are drained and their servers deleted.
    fake.set_created_ago(Duration::from_secs(58 * 60));
    wait_for("every server to be deleted", || {
        machines.sync(&fake);
        fake.server_count() == 0
    });
    // The last delete may have landed after the last look.
    machines.sync(&fake);
    assert_eq!(machines.gone.len(), 3);
    for (name, status) in &machines.gone {
        if *name == victim {
            continue; // killed: deleted as failed
        }
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} was deleted before its node drained and exited: {status:?}"
        );
    }
    assert_eq!(fake.requests("DELETE", "/v1/servers").len(), 3);
    // The node of every deleted server was removed and revoked: none is listed, none could
    // come back with the certificate its disk held.
    let nodes = common::process::nodes(&client);
    assert!(nodes.is_empty(), "{nodes:#?}");
    // A deleted server's disk brought back: its node cannot reconnect with what it holds.
    let (name, _) = machines
        .gone
        .iter()
        .find(|(name, _)| *name != victim)
        .unwrap();
    let log = dir.path().join("returned.log");
    let mut returned = Daemon(
        Command::new(binary("rgrid-node"))
            .args(["--head", &listen, "--state-dir"])
            .arg(dir.path().join(name))
            .args(["--name", name, "--cpu-millis", "2000", "--memory", "2G"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    wait_for("the returned node to be refused and stop", || {
        status = returned.0.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("removed from the cluster") || log.contains("revoked"),
        "{log}"
    );
    assert!(common::process::nodes(&client).is_empty());
}

#[test]
fn cloud_credentials_are_checked_and_their_failures_explained() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeHetzner::start());

    // No token: the head refuses to start and says where the token comes from.
    let mut setup = start(&fake, None);
    let status = setup.head.0.wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(setup.dir.path().join("head.log")).unwrap();
    assert!(log.contains("HCLOUD_TOKEN is not set"), "{log}");

    // A token the API rejects: the head serves, tasks wait and say why, nothing is created
    // (not even tried: the listing failed, so servers from before a restart would be unknown),
    // and the API is not hammered.
    let setup = start(&fake, Some("wrong-token"));
    wait_for("the head's client.toml", || setup.client.exists());
    let id = submit(&setup.client, &["--", "true"]);
    wait_for("the task to explain the failed create", || {
        tasks(&setup.client).iter().any(|t| {
            t["task"] == id.as_str()
                && t["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("cloud API failed"))
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state_of(&setup.client, &id), "queued");
    assert_eq!(fake.server_count(), 0);
    assert_eq!(
        fake.requests("POST", "/v1/servers").len(),
        0,
        "no create without a listing"
    );
    let log = std::fs::read_to_string(setup.dir.path().join("head.log")).unwrap();
    assert!(log.contains("rejected the API token"), "{log}");
    let lists = fake.requests("GET", "/v1/servers").len();
    assert!(lists <= 2, "{lists} listings with a rejected token");
    assert!(
        !log.contains("wrong-token"),
        "the token never appears in a log line"
    );
}

#[test]
fn a_head_killed_mid_flight_finds_its_servers_again_and_buys_nothing_twice() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeHetzner::start());
    // A slow cloud: create actions do not finish while the first head lives.
    fake.state().action_polls = 1_000_000;
    let config = config().replace("min_idle", "join_timeout = \"10s\"\nmin_idle");
    let Setup {
        dir,
        listen,
        client,
        head: mut first,
    } = start_with(&fake, Some(fake_hetzner::TOKEN), &config);
    wait_for("the head's client.toml", || client.exists());
    let mut machines = Machines::new(dir.path());

    // Two tasks that each fill a node, longer than join_timeout: two servers, both creates in
    // flight.
    let ids: Vec<String> = (0..2)
        .map(|i| {
            let script = format!("sleep 20; echo restart-{i}");
            submit(&client, &["--cpus", "2", "--", "sh", "-c", &script])
        })
        .collect();
    wait_for("two servers to be created", || fake.server_count() == 2);
    let servers = fake.servers();
    let (good, bad) = (servers[0].clone(), servers[1].clone());
    // The second server's machine never boots; the first joins and takes a task.
    machines.broken.insert(bad.0);
    machines.sync(&fake);
    wait_for("a task to run on the first server", || {
        ids.iter().any(|id| state_of(&client, id) == "running")
    });
    kill(&mut first);
    assert_eq!(fake.requests("POST", "/v1/servers").len(), 2);

    // A new head on the same state: it lists the cluster's servers, adopts the one whose node
    // comes back, and deletes the one that never joins (join_timeout) — only then does it buy
    // a server for the task that waited on it.
    fake.state().action_polls = 2;
    let posts_before = fake.requests("POST", "/v1/servers").len();
    let mut second = head(dir.path(), &listen, Some(fake_hetzner::TOKEN));
    wait_for("both tasks to succeed", || {
        machines.sync(&fake);
        ids.iter().all(|id| state_of(&client, id) == "succeeded")
    });
    for (i, id) in ids.iter().enumerate() {
        let out = rgrid(&client, &["get", id]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("restart-{i}\n")
        );
    }
    let deletes = fake.requests("DELETE", &format!("/v1/servers/{}", bad.0));
    assert_eq!(
        deletes.len(),
        1,
        "the server that never joined was deleted once"
    );
    assert!(
        fake.servers().contains(&good),
        "the adopted server was kept"
    );
    let posts = fake.requests("POST", "/v1/servers");
    assert_eq!(
        posts.len(),
        posts_before + 1,
        "one replacement, nothing twice"
    );
    assert!(
        posts[posts_before].at > deletes[0].at,
        "the replacement was bought only once the broken server was gone"
    );

    // An hour of billing goes by: the idle servers are drained and deleted. The head dies
    // right after its first delete; the next one finishes the job and buys nothing.
    fake.set_created_ago(Duration::from_secs(58 * 60));
    wait_for("a first delete", || {
        machines.sync(&fake);
        fake.requests("DELETE", "/v1/servers").len() > deletes.len()
    });
    kill(&mut second);
    let _third = head(dir.path(), &listen, Some(fake_hetzner::TOKEN));
    wait_for("every server to be deleted", || {
        machines.sync(&fake);
        fake.server_count() == 0
    });
    // The last delete may have landed after the last look.
    machines.sync(&fake);
    assert_eq!(fake.requests("POST", "/v1/servers").len(), posts_before + 1);
    assert!(machines.running.is_empty(), "no machine left running");
}
