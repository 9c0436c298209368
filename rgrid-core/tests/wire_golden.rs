//! Golden bytes: one sample of every variant of every wire message (and of the enums inside
//! them), encoded and compared with `tests/golden/wire.hex`, and decoded back from it.
//!
//! postcard is not self-describing, so a peer reads only what it was built to read: a change
//! here breaks every deployed peer. The rules: enum variants and struct fields are only ever
//! appended; a new variant gets a sample in [`samples`] (one line), then the file is re-blessed:
//!
//! ```sh
//! RGRID_BLESS=1 cargo test -p rgrid-core --test wire_golden -- --nocapture  # says what changed
//! ```
//!
//! The test fails, naming the variant, when an enum has a variant without a sample, a sample
//! without golden bytes, or golden bytes that differ from its encoding or do not decode to it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::PathBuf;

use rgrid_core::log::{Channel, LogEvent, LogFrame};
use rgrid_core::object::{NamedObject, ObjectInfo, ObjectPage, ObjectQuery};
use rgrid_core::protocol::*;
use rgrid_core::task::{
    Affinity, Constraints, Input, InputSource, LabelRequirement, NetworkMode, OutputSpec,
    RetryPolicy, Strategy,
};
use rgrid_core::{AttemptId, NodeId, ObjectRef, Resources, TaskId, TaskSpec, TaskState};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// Every sample, one line each; the first of each type names its type in the file.
fn samples() -> Vec<Sample> {
    let task = TaskId(Uuid::from_u128(1));
    let node = NodeId(Uuid::from_u128(2));
    let attempt = AttemptId { task, attempt: 2 };
    let object = ObjectRef {
        sha256: [0xab; 32],
        size: 300,
    };
    let resources = Resources {
        cpu_millis: 1500,
        memory_bytes: 256 << 20,
        gpus: 1,
        custom: BTreeMap::from([("fpga".to_owned(), 2)]),
    };
    let labels = BTreeMap::from([("site".to_owned(), "eu-1".to_owned())]);
    let report = AttemptReport {
        attempt,
        exit: ExitStatus::Exited(0),
        stdout: b"out".to_vec(),
        stderr: b"err".to_vec(),
        started_at_ms: 3,
        finished_at_ms: 4,
        outputs: vec![NamedObject {
            name: "out".into(),
            object,
        }],
    };
    let outcome = TaskOutcome {
        task,
        state: TaskState::Failed,
        exit_code: Some(1),
        reason: Some("exited with code 1".into()),
        stdout: b"o".to_vec(),
        stderr: Vec::new(),
        attempts: vec![AttemptInfo {
            attempt: 1,
            node,
            node_name: "n1".into(),
            started_at_ms: 5,
            ended_at_ms: Some(6),
            outcome: Some("node lost".into()),
        }],
        outputs: vec![NamedObject {
            name: "out".into(),
            object,
        }],
    };
    let cost = CostGroup {
        key: "site=eu-1".into(),
        tasks: 2,
        node_seconds: 1.5,
        cost: 0.25,
        provisional: 0.125,
    };
    vec![
        // The handshake: both versions must read these.
        sample(HelloReply::Accepted { version: 3 }),
        sample(HelloReply::Refused {
            message: "protocol 2 is not 3".into(),
        }),
        sample(Hello {
            version: 3,
            agent: "rgrid-node 0.1.0".into(),
        }),
        // Requests.
        sample(Request::Join(JoinRequest {
            token: "id.secret.cahash".into(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            name: "n1".into(),
        })),
        sample(Request::NodeSession(NodeHello {
            name: "n1".into(),
            resources: resources.clone(),
            labels: labels.clone(),
            capabilities: vec!["docker".into()],
            running: vec![attempt],
            finished: vec![AttemptId { task, attempt: 1 }],
            disconnect_grace_ms: Some(300),
        })),
        sample(Request::ReportResult(report.clone())),
        sample(Request::Submit(vec![full_spec(task, node, object)])),
        sample(Request::Get { task }),
        sample(Request::ListNodes),
        sample(Request::ListTasks(TaskQuery {
            state: Some(TaskState::Queued),
            after: Some(task),
            limit: 100,
        })),
        sample(Request::Cancel {
            task,
            recursive: true,
        }),
        sample(Request::DrainNode {
            node: "n1".into(),
            deadline_secs: 60,
        }),
        sample(Request::Wait {
            tasks: vec![task],
            outputs: true,
        }),
        sample(Request::Status),
        sample(Request::PutObject(object)),
        sample(Request::GetObject(object)),
        sample(Request::ListObjects(ObjectQuery {
            after: Some(object),
            limit: 5,
        })),
        sample(Request::RemoveNode { node: "n1".into() }),
        sample(Request::Cost(CostQuery {
            since_ms: Some(1),
            by: CostBy::Label,
            task: Some(task),
        })),
        sample(Request::Renew {
            csr_pem: "CSR".into(),
        }),
        sample(Request::AttemptLog { attempt }),
        sample(Request::Logs {
            task,
            attempt: Some(1),
            follow: true,
        }),
        sample(Request::PinObject {
            object,
            pinned: true,
        }),
        // Responses.
        sample(Response::Error(ErrorReply {
            kind: ErrorKind::NotFound,
            message: "no such task".into(),
        })),
        sample(Response::Joined(JoinReply {
            node_id: node,
            cert_pem: "cert".into(),
            ca_pem: "ca".into(),
        })),
        sample(Response::ResultAccepted),
        sample(Response::Submitted(vec![
            SubmitAnswer::Accepted,
            SubmitAnswer::Known {
                state: TaskState::Running,
            },
            SubmitAnswer::Rejected("no image".into()),
        ])),
        sample(Response::Task(outcome.clone())),
        sample(Response::Nodes(vec![NodeInfo {
            id: node,
            name: "n1".into(),
            state: "ready".into(),
            total: resources.clone(),
            free: Resources::new(500, 1 << 20),
            labels,
            capabilities: vec!["docker".into()],
            running: 1,
            unhealthy: Some("disk full".into()),
            declared_labels: vec!["site".into()],
        }])),
        sample(Response::Tasks(TaskPage {
            tasks: vec![TaskInfo {
                task,
                image: "img".into(),
                state: TaskState::Assigned,
                attempt: 1,
                node: Some(node),
                submitted_at_ms: 7,
                detail: Some("waiting".into()),
            }],
            next: Some(task),
        })),
        sample(Response::Cancelled {
            state: TaskState::Cancelled,
        }),
        sample(Response::Draining { node }),
        sample(Response::Outcomes(vec![outcome])),
        sample(Response::Status(ClusterStatus {
            tasks: vec![(TaskState::Queued, 3)],
            nodes: vec![("ready".into(), 1)],
            waiting: vec![WaitingShape {
                resources: resources.clone(),
                constraints: "gpu".into(),
                tasks: 3,
                reason: Some("no node fits".into()),
            }],
            servers: vec![("provisioning".into(), 2)],
        })),
        sample(Response::ObjectWanted),
        sample(Response::ObjectStored(object)),
        sample(Response::Object(object)),
        sample(Response::Objects(ObjectPage {
            objects: vec![ObjectInfo {
                object,
                used_at_ms: 1,
                tasks: 4,
                pinned: true,
            }],
            next: Some(object),
            stored_bytes: 2,
            quota_bytes: 3,
        })),
        sample(Response::Removed { nodes: vec![node] }),
        sample(Response::Cost(CostReport {
            groups: vec![cost.clone()],
            total: cost,
            truncated: true,
        })),
        sample(Response::Renewed {
            cert_pem: "CERT".into(),
        }),
        sample(Response::LogOffsets {
            stdout: 5,
            stderr: 70_000,
        }),
        sample(Response::Log(LogEvent::Chunk {
            attempt: 1,
            channel: Channel::Stdout,
            offset: 70_000,
            bytes: b"line".to_vec(),
        })),
        sample(Response::Pinned {
            object,
            pinned: true,
        }),
        // Head → node.
        sample(HeadMessage::Welcome {
            node_id: node,
            heartbeat_interval_ms: 1000,
            superseded: vec![attempt],
        }),
        sample(HeadMessage::Assign(vec![Assignment {
            attempt,
            spec: vec![7, 8],
        }])),
        sample(HeadMessage::Kill { attempt }),
        sample(HeadMessage::Refused {
            message: "unknown node".into(),
        }),
        sample(HeadMessage::Drain { deadline_ms: 500 }),
        sample(HeadMessage::ResultsAccepted(vec![attempt])),
        sample(HeadMessage::Renewed {
            cert_pem: "CERT".into(),
        }),
        // Node → head.
        sample(NodeMessage::Heartbeat),
        sample(NodeMessage::Started { attempt }),
        sample(NodeMessage::Draining),
        sample(NodeMessage::Leaving {
            unfinished: vec![attempt],
        }),
        sample(NodeMessage::Results(vec![report])),
        sample(NodeMessage::Health(NodeHealth {
            problem: Some("x".into()),
            engine_reachable: Some(false),
            docker_root_free_bytes: None,
            state_dir_free_bytes: Some(1),
        })),
        sample(NodeMessage::Pulling { attempt }),
        sample(NodeMessage::Renew {
            csr_pem: "CSR".into(),
        }),
        // The enums inside the messages.
        sample(ExitStatus::Exited(-1)),
        sample(ExitStatus::OutOfMemory),
        sample(ExitStatus::TimedOut),
        sample(ExitStatus::StartFailed("no such image".into())),
        sample(ExitStatus::Killed),
        sample(ExitStatus::HandedBack("engine down".into())),
        sample(ExitStatus::Signalled {
            signal: 9,
            name: "SIGKILL".into(),
        }),
        sample(ExitStatus::OutputFailed("output out is missing".into())),
        sample(ErrorKind::Unauthorized),
        sample(ErrorKind::BadRequest),
        sample(ErrorKind::NotFound),
        sample(ErrorKind::Internal),
        sample(ErrorKind::TooLarge),
        sample(ErrorKind::QuotaExceeded),
        sample(ErrorKind::Forbidden),
        sample(SubmitAnswer::Accepted),
        sample(SubmitAnswer::Known {
            state: TaskState::Queued,
        }),
        sample(SubmitAnswer::Rejected("x".into())),
        sample(CostBy::Total),
        sample(CostBy::Label),
        sample(CostBy::Shape),
        sample(CostBy::Client),
        sample(TaskState::Pending),
        sample(TaskState::Queued),
        sample(TaskState::Assigned),
        sample(TaskState::Running),
        sample(TaskState::Succeeded),
        sample(TaskState::Failed),
        sample(TaskState::Cancelled),
        sample(TaskState::Unschedulable),
        sample(TaskState::Lost),
        sample(TaskState::DependencyFailed),
        sample(LabelRequirement::Equals {
            key: "k".into(),
            value: "v".into(),
        }),
        sample(LabelRequirement::NotEquals {
            key: "k".into(),
            value: "v".into(),
        }),
        sample(LabelRequirement::In {
            key: "k".into(),
            values: vec!["a".into(), "b".into()],
        }),
        sample(LabelRequirement::Exists { key: "k".into() }),
        sample(Affinity::Hard(node)),
        sample(Affinity::Soft(node)),
        sample(Strategy::Pack),
        sample(Strategy::Spread),
        sample(NetworkMode::None),
        sample(NetworkMode::Bridge),
        sample(NetworkMode::Host),
        sample(LogEvent::Chunk {
            attempt: 2,
            channel: Channel::Stderr,
            offset: 0,
            bytes: b"e".to_vec(),
        }),
        sample(LogEvent::Dropped {
            attempt: 1,
            channel: Channel::Stderr,
            bytes: 9,
        }),
        sample(LogEvent::End {
            state: Some(TaskState::Succeeded),
        }),
        sample(LogFrame::Chunk {
            channel: Channel::Stderr,
            offset: 3,
            bytes: b"err".to_vec(),
        }),
        sample(LogFrame::Written {
            channel: Channel::Stdout,
            total: 1 << 30,
        }),
        sample(Channel::Stdout),
        sample(Channel::Stderr),
        sample(InputSource::Object(object)),
        sample(InputSource::TaskOutput {
            task,
            name: "out".into(),
        }),
        sample(InputSource::TaskStdout { task }),
    ]
}

/// A task spec with every field set to something other than its default.
fn full_spec(task: TaskId, node: NodeId, object: ObjectRef) -> TaskSpec {
    TaskSpec {
        id: task,
        image: "img:1".into(),
        command: vec!["echo".into(), "hi".into()],
        env: vec![("A".into(), "B".into())],
        workdir: Some("/w".into()),
        resources: Resources::new(250, 64 << 20),
        constraints: Constraints {
            selector: vec![LabelRequirement::Exists { key: "gpu".into() }],
            capabilities: vec!["docker".into()],
            affinity: Some(Affinity::Soft(node)),
        },
        strategy: Strategy::Spread,
        timeout_ms: Some(10_000),
        retry: RetryPolicy {
            node_loss: 1,
            on_failure: 2,
            backoff_ms: 3,
        },
        network: NetworkMode::Bridge,
        priority: -4,
        read_only_rootfs: true,
        inputs: vec![Input {
            path: "/in".into(),
            source: InputSource::Object(object),
        }],
        outputs: vec![OutputSpec {
            name: "out".into(),
            path: "/out".into(),
        }],
    }
}

const GOLDEN: &str = "tests/golden/wire.hex";
const BLESS: &str = "RGRID_BLESS=1 cargo test -p rgrid-core --test wire_golden";

/// Decodes golden bytes (the whole of them) and says whether they give the sample back.
type DecodesBack = Box<dyn Fn(&[u8]) -> Result<(), String>>;

struct Sample {
    /// `Type` for a struct, `Type::Variant` for an enum (`#2`, … for further samples of one).
    name: String,
    type_name: &'static str,
    /// The type's variants, when it is an enum.
    variants: Option<&'static [&'static str]>,
    bytes: Vec<u8>,
    decodes_back: DecodesBack,
}

fn sample<T>(value: T) -> Sample
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    let full = std::any::type_name::<T>();
    let type_name = full.rsplit("::").next().unwrap_or(full);
    let bytes = postcard::to_allocvec(&value).expect("a wire type encodes");
    let variants = variant_names::<T>();
    let name = match variants {
        Some(variants) => {
            // postcard writes an enum's variant index first, as a varint.
            let (index, _) = postcard::take_from_bytes::<u32>(&bytes).expect("a variant index");
            format!("{type_name}::{}", variants[index as usize])
        }
        None => type_name.to_owned(),
    };
    Sample {
        name,
        type_name,
        variants,
        bytes,
        decodes_back: Box::new(move |golden| {
            let back: T = rgrid_core::frame::decode(golden).map_err(|e| e.to_string())?;
            if back == value {
                Ok(())
            } else {
                Err(format!("decodes to {back:?}, not {value:?}"))
            }
        }),
    }
}

/// The variant names of an enum that derives `Deserialize` (serde hands them to the
/// deserializer), or `None` for other types.
fn variant_names<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut probe = VariantProbe(None);
    let _ = T::deserialize(&mut probe);
    probe.0
}

struct VariantProbe(Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe stops")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl<'de> serde::Deserializer<'de> for &mut VariantProbe {
    type Error = Stop;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.0 = Some(variants);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

/// Samples with unique names, in order.
fn named_samples() -> Vec<Sample> {
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut samples = samples();
    for sample in &mut samples {
        let count = seen.entry(sample.name.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            sample.name = format!("{}#{count}", sample.name);
        }
    }
    samples
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(GOLDEN)
}

/// `NAME HEX` lines; `#` starts a comment line.
fn read_golden() -> BTreeMap<String, Vec<u8>> {
    let text = std::fs::read_to_string(golden_path()).unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, digits) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("{GOLDEN}: {line:?} is not `NAME HEX`"));
            let bytes = hex::decode(digits.trim())
                .unwrap_or_else(|e| panic!("{GOLDEN}: {name}: not hex: {e}"));
            (name.to_owned(), bytes)
        })
        .collect()
}

fn bless(samples: &[Sample], golden: &BTreeMap<String, Vec<u8>>) {
    let mut text = String::from(
        "# Golden bytes of the wire messages (rgrid-core/tests/wire_golden.rs): NAME HEX.\n\
         # Written by the test in bless mode; a changed line is a changed encoding.\n",
    );
    for sample in samples {
        match golden.get(&sample.name) {
            None => eprintln!("bless: new {}", sample.name),
            Some(old) if *old != sample.bytes => eprintln!("bless: CHANGED {}", sample.name),
            Some(_) => {}
        }
        text.push_str(&format!("{} {}\n", sample.name, hex::encode(&sample.bytes)));
    }
    for name in golden.keys() {
        if !samples.iter().any(|s| s.name == *name) {
            eprintln!("bless: REMOVED {name}");
        }
    }
    std::fs::write(golden_path(), text).expect("the golden file is written");
}

#[test]
fn every_wire_message_matches_its_golden_bytes() {
    let samples = named_samples();
    let golden = read_golden();
    if std::env::var_os("RGRID_BLESS").is_some_and(|v| v == "1") {
        bless(&samples, &golden);
        return;
    }
    let mut problems = Vec::new();
    // Every variant of every enum sampled has a sample of its own.
    let mut sampled: BTreeMap<&str, (&[&str], BTreeSet<&str>)> = BTreeMap::new();
    for sample in &samples {
        if let Some(variants) = sample.variants {
            let variant = sample.name.split_once("::").map_or("", |(_, v)| v);
            let variant = variant.split('#').next().unwrap_or(variant);
            sampled
                .entry(sample.type_name)
                .or_insert((variants, BTreeSet::new()))
                .1
                .insert(variant);
        }
    }
    for (type_name, (variants, seen)) in &sampled {
        for variant in variants.iter().filter(|v| !seen.contains(*v)) {
            problems.push(format!(
                "{type_name}::{variant} has no sample: add one to samples() in \
                 rgrid-core/tests/wire_golden.rs, then run {BLESS}"
            ));
        }
    }
    for sample in &samples {
        match golden.get(&sample.name) {
            None => problems.push(format!(
                "{} has no golden bytes in {GOLDEN}: run {BLESS}",
                sample.name
            )),
            Some(bytes) if *bytes != sample.bytes => problems.push(format!(
                "{} encodes as {} but its golden bytes are {}: its encoding changed, which \
                 breaks deployed peers (append fields and variants only)",
                sample.name,
                hex::encode(&sample.bytes),
                hex::encode(bytes)
            )),
            Some(bytes) => {
                if let Err(e) = (sample.decodes_back)(bytes) {
                    problems.push(format!("{}: golden bytes {e}", sample.name));
                }
            }
        }
    }
    for name in golden.keys() {
        if !samples.iter().any(|s| s.name == *name) {
            problems.push(format!(
                "{name} is in {GOLDEN} but has no sample (a removed variant breaks peers)"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn golden_bytes_with_a_byte_more_are_refused() {
    for sample in named_samples() {
        let mut longer = sample.bytes.clone();
        longer.push(0);
        assert!(
            (sample.decodes_back)(&longer).is_err(),
            "{} decodes with a trailing byte",
            sample.name
        );
    }
}
