//! What a client submits ([`TaskSpec`]) and the life of a task ([`TaskState`], a checked state
//! machine): `Pending → Queued → Assigned → Running → Succeeded | Failed | Cancelled |
//! Unschedulable | Lost`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::TaskId;
use crate::object::ObjectRef;
use crate::resources::Resources;

/// Docker refuses memory limits below 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 << 20;

/// A containerized task with its resource requirements.
///
/// Wire type: fields are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Chosen by the client so that a resubmission is idempotent.
    pub id: TaskId,
    /// Container image, e.g. `rgrid-busybox:latest` or `python:3.12-slim`.
    pub image: String,
    /// Command and arguments; empty runs the image's default command.
    pub command: Vec<String>,
    /// Environment variables given to the container.
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    pub workdir: Option<String>,
    /// What the task needs reserved on its node.
    pub resources: Resources,
    /// Where it may run.
    pub constraints: Constraints,
    /// How the scheduler picks among the nodes that fit.
    pub strategy: Strategy,
    /// Wall-clock limit for one attempt, in milliseconds; `None` = no limit.
    pub timeout_ms: Option<u64>,
    /// How often to rerun it after a node loss or a failure.
    pub retry: RetryPolicy,
    /// Container networking; none by default.
    pub network: NetworkMode,
    /// Higher runs first among tasks of the same shape.
    pub priority: i32,
    /// Run on a read-only root file system (with a writable tmpfs `/tmp`), even where the node
    /// does not make that its default.
    pub read_only_rootfs: bool,
    /// Files staged into the container, read-only, before it starts.
    pub inputs: Vec<Input>,
    /// Files (or directories, as a tar) collected from the container after it exits 0 and
    /// stored as objects, by name.
    pub outputs: Vec<OutputSpec>,
}

/// Most outputs one task may declare.
pub const MAX_OUTPUTS: usize = 100;

/// A declared output: the file or directory at `path` in the container, stored as an object
/// under `name` once the task exits 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// `[A-Za-z0-9_.-]`, at most 64 characters, unique in the task.
    pub name: String,
    /// Absolute path inside the container.
    pub path: String,
}

/// Most inputs one task may have.
pub const MAX_INPUTS: usize = 1000;

/// A file staged into the container before it starts, read-only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// Absolute path inside the container.
    pub path: String,
    pub source: InputSource,
}

/// Where an input's content comes from. Wire type: variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputSource {
    /// An object uploaded to the head.
    Object(ObjectRef),
    /// The output `name` of another task: the task waits (`Pending`) until that one has
    /// succeeded.
    TaskOutput { task: TaskId, name: String },
    /// The stdout of another task, as the head kept it (at most its `max_output_bytes`): the
    /// task waits (`Pending`) until that one has succeeded and the head has stored its stdout
    /// as an object.
    TaskStdout { task: TaskId },
}

/// What `TASK_ID:stdout` names: a task's stdout, never an output (no output may be so named).
pub const STDOUT: &str = "stdout";

impl From<ObjectRef> for InputSource {
    fn from(object: ObjectRef) -> Self {
        Self::Object(object)
    }
}

impl fmt::Display for InputSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Object(object) => write!(f, "{object}"),
            Self::TaskOutput { task, name } => write!(f, "{task}:{name}"),
            Self::TaskStdout { task } => write!(f, "{task}:{STDOUT}"),
        }
    }
}

impl std::str::FromStr for InputSource {
    type Err = String;

    /// `OBJECT_ID` (as `rgrid put` prints it), `TASK_ID:NAME` (an output of another task) or
    /// `TASK_ID:stdout` (its stdout).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((task, name)) = s.split_once(':') {
            let task = task.parse().map_err(|_| {
                format!("{s:?} is not an input source: expected OBJECT_ID, TASK_ID:NAME or TASK_ID:stdout")
            })?;
            if name == STDOUT {
                return Ok(Self::TaskStdout { task });
            }
            return Ok(Self::TaskOutput {
                task,
                name: name.to_owned(),
            });
        }
        s.parse().map(Self::Object)
    }
}

/// Checks an output's name: what `rgrid get --output` and `TASK_ID:NAME` inputs spell.
fn check_output_name(name: &str) -> Result<(), String> {
    if name == STDOUT {
        return Err(format!(
            "{STDOUT:?} names a task's stdout (`TASK_ID:stdout`, `TaskRef::stdout`), not an output"
        ));
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "output name {name:?} must be 1 to 64 characters of A-Z, a-z, 0-9, `_`, `.` and `-`"
        ))
    }
}

/// Checks a path inside the container: absolute, not the root, no `..`, no empty parts.
fn check_container_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path in the container"));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(format!(
            "{path:?} must name a file without empty, `.` or `..` parts (it may not escape or be the container's root)"
        ));
    }
    Ok(())
}

impl TaskSpec {
    /// A task running `image` with its default command, 1 cpu and 256 MiB, a fresh id.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            id: TaskId::new(),
            image: image.into(),
            command: Vec::new(),
            env: Vec::new(),
            workdir: None,
            resources: Resources::new(1000, 256 << 20),
            constraints: Constraints::default(),
            strategy: Strategy::default(),
            timeout_ms: None,
            retry: RetryPolicy::default(),
            network: NetworkMode::default(),
            priority: 0,
            read_only_rootfs: false,
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// Stages `source` (an [`ObjectRef`], or an output of another task) at `path` (absolute) in
    /// the container, read-only, before it starts.
    pub fn input(mut self, path: impl Into<String>, source: impl Into<InputSource>) -> Self {
        self.inputs.push(Input {
            path: path.into(),
            source: source.into(),
        });
        self
    }

    /// Collects the file or directory (as a tar) at `path` (absolute) in the container after
    /// the task exits 0, stored as an object under `name`.
    pub fn output(mut self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.outputs.push(OutputSpec {
            name: name.into(),
            path: path.into(),
        });
        self
    }

    /// The tasks whose outputs or stdout this one takes as inputs, each once, in order.
    pub fn dependencies(&self) -> Vec<TaskId> {
        self.tasks_in_inputs(|source| match source {
            InputSource::TaskOutput { task, .. } | InputSource::TaskStdout { task } => Some(*task),
            InputSource::Object(_) => None,
        })
    }

    /// The tasks whose stdout this one takes as an input, each once, in order.
    pub fn stdout_dependencies(&self) -> Vec<TaskId> {
        self.tasks_in_inputs(|source| match source {
            InputSource::TaskStdout { task } => Some(*task),
            _ => None,
        })
    }

    fn tasks_in_inputs(&self, pick: impl Fn(&InputSource) -> Option<TaskId>) -> Vec<TaskId> {
        let mut tasks: Vec<TaskId> = Vec::new();
        // A set, not a scan of `tasks`: up to `MAX_INPUTS` of them.
        let mut seen = std::collections::HashSet::new();
        for task in self.inputs.iter().filter_map(|input| pick(&input.source)) {
            if seen.insert(task) {
                tasks.push(task);
            }
        }
        tasks
    }

    /// The objects this one takes as inputs directly (not other tasks' outputs).
    pub fn input_objects(&self) -> Vec<ObjectRef> {
        self.inputs
            .iter()
            .filter_map(|input| match &input.source {
                InputSource::Object(object) => Some(*object),
                InputSource::TaskOutput { .. } | InputSource::TaskStdout { .. } => None,
            })
            .collect()
    }

    /// Sets the command and its arguments.
    pub fn command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = command.into_iter().map(Into::into).collect();
        self
    }

    /// Requests `millis` millicores of cpu.
    pub fn cpu_millis(mut self, millis: u64) -> Self {
        self.resources.cpu_millis = millis;
        self
    }

    /// Requests `bytes` of memory; the container's memory limit.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.resources.memory_bytes = bytes;
        self
    }

    /// Requests whole GPUs.
    pub fn gpus(mut self, gpus: u32) -> Self {
        self.resources.gpus = gpus;
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Requires a node label (`key=value`).
    pub fn selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.constraints.selector.push(LabelRequirement::Equals {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Limits each attempt to `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Sets how many times the task is rerun after losing its node.
    pub fn node_loss_retries(mut self, retries: u32) -> Self {
        self.retry.node_loss = retries;
        self
    }

    /// Reruns the task up to `retries` times after a non-zero exit, OOM or timeout, waiting
    /// `backoff` before the first rerun and twice as long before each next one.
    pub fn retry_on_failure(mut self, retries: u32, backoff: Duration) -> Self {
        self.retry.on_failure = retries;
        self.retry.backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Sets the task's priority among tasks of the same shape.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Asks for a network mode (the node must allow it: `allowed_networks`).
    pub fn network(mut self, network: NetworkMode) -> Self {
        self.network = network;
        self
    }

    /// Runs the task on a read-only root file system with a writable tmpfs `/tmp`.
    pub fn read_only_rootfs(mut self) -> Self {
        self.read_only_rootfs = true;
        self
    }

    /// Checks what can be checked without a cluster. Returns a message a person can act on.
    pub fn validate(&self) -> Result<(), String> {
        if self.image.trim().is_empty() {
            return Err("task has no image".into());
        }
        if self.resources.cpu_millis == 0 {
            return Err("task requests no cpu: ask for at least 1 millicore".into());
        }
        if self.resources.memory_bytes < MIN_MEMORY_BYTES {
            return Err(format!(
                "task requests {} bytes of memory; containers need at least 6M",
                self.resources.memory_bytes
            ));
        }
        if self.timeout_ms == Some(0) {
            return Err("a timeout of 0 would kill the task at once".into());
        }
        if self.inputs.len() > MAX_INPUTS {
            return Err(format!(
                "task has {} inputs; at most {MAX_INPUTS}",
                self.inputs.len()
            ));
        }
        let mut paths = std::collections::HashSet::new();
        for input in &self.inputs {
            check_container_path(&input.path).map_err(|e| format!("input {e}"))?;
            if !paths.insert(input.path.as_str()) {
                return Err(format!("two inputs at {:?}", input.path));
            }
            let task = match &input.source {
                InputSource::TaskOutput { task, name } => {
                    check_output_name(name).map_err(|e| format!("input {}: {e}", input.path))?;
                    Some(task)
                }
                InputSource::TaskStdout { task } => Some(task),
                InputSource::Object(_) => None,
            };
            if let Some(task) = task {
                if *task == self.id {
                    return Err(format!(
                        "input {}: a task cannot take its own output",
                        input.path
                    ));
                }
            }
        }
        if self.outputs.len() > MAX_OUTPUTS {
            return Err(format!(
                "task has {} outputs; at most {MAX_OUTPUTS}",
                self.outputs.len()
            ));
        }
        let mut names = std::collections::HashSet::new();
        for output in &self.outputs {
            check_output_name(&output.name)?;
            check_container_path(&output.path)
                .map_err(|e| format!("output {}: {e}", output.name))?;
            if !names.insert(output.name.as_str()) {
                return Err(format!("two outputs named {:?}", output.name));
            }
        }
        Ok(())
    }
}

/// Where a task may run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Constraints {
    /// Every requirement must hold on the node's labels.
    pub selector: Vec<LabelRequirement>,
    /// Capabilities the node must have (`docker`, `gpu`, …).
    pub capabilities: Vec<String>,
    /// Node affinity: hard (only that node) or soft (prefer it).
    pub affinity: Option<Affinity>,
}

/// One requirement on a node label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LabelRequirement {
    /// `key=value`
    Equals { key: String, value: String },
    /// `key!=value` (holds when the label is absent)
    NotEquals { key: String, value: String },
    /// `key in (a,b)`
    In { key: String, values: Vec<String> },
    /// `key` (the label exists, any value)
    Exists { key: String },
}

impl LabelRequirement {
    /// Does a node with these labels satisfy the requirement?
    pub fn matches<'a>(&self, mut label: impl FnMut(&str) -> Option<&'a str>) -> bool {
        match self {
            Self::Equals { key, value } => label(key) == Some(value.as_str()),
            Self::NotEquals { key, value } => label(key) != Some(value.as_str()),
            Self::In { key, values } => label(key).is_some_and(|v| values.iter().any(|x| x == v)),
            Self::Exists { key } => label(key).is_some(),
        }
    }
}

/// Is `part` a valid label key (also the rule for provisioned nodes' label values and custom
/// resource names): 1–63 ASCII letters, digits or `. _ - /`.
pub fn is_label_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 63
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
}

impl std::str::FromStr for LabelRequirement {
    type Err = String;

    /// Parses `k=v`, `k!=v`, `k in (a,b)` and `k`; the key must be a label key
    /// ([`is_label_part`]), so that what is parsed prints back as the same selector.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a label selector: use k=v, k!=v, 'k in (a,b)' or k");
        let key = |key: &str| {
            let key = key.trim();
            if is_label_part(key) {
                Ok(key.to_owned())
            } else {
                Err(format!(
                    "{s:?} is not a label selector: its key {key:?} is not a label key (1–63 letters, digits or . _ - /)"
                ))
            }
        };
        if let Some((k, value)) = s.split_once("!=") {
            return Ok(Self::NotEquals {
                key: key(k)?,
                value: value.trim().to_owned(),
            });
        }
        if let Some((k, value)) = s.split_once('=') {
            return Ok(Self::Equals {
                key: key(k)?,
                value: value.trim().to_owned(),
            });
        }
        if let Some((k, rest)) = s.split_once(" in ") {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(bad)?;
            return Ok(Self::In {
                key: key(k)?,
                values: inner.split(',').map(|v| v.trim().to_owned()).collect(),
            });
        }
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Self::Exists { key: key(s)? })
    }
}

impl fmt::Display for LabelRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Equals { key, value } => write!(f, "{key}={value}"),
            Self::NotEquals { key, value } => write!(f, "{key}!={value}"),
            Self::In { key, values } => write!(f, "{key} in ({})", values.join(",")),
            Self::Exists { key } => write!(f, "{key}"),
        }
    }
}

/// Node affinity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Affinity {
    /// Run only on this node.
    Hard(crate::id::NodeId),
    /// Prefer this node when it fits.
    Soft(crate::id::NodeId),
}

/// How the scheduler picks among the nodes that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// Fill nodes up to a utilisation threshold, then spread (like Ray's hybrid policy).
    #[default]
    Pack,
    /// Prefer the least loaded node.
    Spread,
}

/// How often a task is rerun.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Reruns after the node running it was lost (default 3, like Ray).
    pub node_loss: u32,
    /// Reruns after a non-zero exit, OOM or timeout (default 0: off).
    pub on_failure: u32,
    /// Delay before an exit-code retry, in milliseconds.
    pub backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            node_loss: 3,
            on_failure: 0,
            backoff_ms: 1000,
        }
    }
}

/// Container networking.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// No network at all (the default).
    #[default]
    None,
    /// Docker's default bridge.
    Bridge,
    /// The host's network.
    Host,
}

/// The life of a task. (Names are lower-case in JSON; postcard encodes the variant index.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for dependencies.
    Pending,
    /// Ready; waiting for resources (or for a node being provisioned).
    Queued,
    /// Placed on a node; the node has not confirmed the start yet.
    Assigned,
    /// The node started it.
    Running,
    /// Exited with code 0.
    Succeeded,
    /// Non-zero exit, OOM, timeout or a start error (the reason is kept).
    Failed,
    /// Cancelled by a client.
    Cancelled,
    /// No node that exists or could be provisioned can ever fit it.
    Unschedulable,
    /// Node-loss retries exhausted.
    Lost,
    /// A task whose output it takes as an input ended other than `Succeeded`: it never ran.
    DependencyFailed,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a task cannot go from {from:?} to {to:?}")]
pub struct IllegalTransition {
    pub from: TaskState,
    pub to: TaskState,
}

impl TaskState {
    /// Every state, in declaration order.
    pub const ALL: [TaskState; 10] = [
        Self::Pending,
        Self::Queued,
        Self::Assigned,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Unschedulable,
        Self::Lost,
        Self::DependencyFailed,
    ];

    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded
                | Self::Failed
                | Self::Cancelled
                | Self::Unschedulable
                | Self::Lost
                | Self::DependencyFailed
        )
    }

    /// Is `self → to` allowed?
    pub fn can_become(self, to: TaskState) -> bool {
        use TaskState::*;
        match (self, to) {
            (Pending, Queued | Cancelled | Unschedulable | DependencyFailed) => true,
            (Queued, Assigned | Cancelled | Unschedulable) => true,
            // Assigned → Succeeded/Failed: the node reported the result before its start event
            // reached the head. → Queued: the node was lost (orphaned attempt).
            (Assigned, Running | Queued | Succeeded | Failed | Cancelled | Lost) => true,
            (Running, Queued | Succeeded | Failed | Cancelled | Lost) => true,
            _ => false,
        }
    }

    /// `self → to`, or an error when the state machine does not allow it.
    pub fn transition(self, to: TaskState) -> Result<TaskState, IllegalTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }

    /// Lower-case name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Unschedulable => "unschedulable",
            Self::Lost => "lost",
            Self::DependencyFailed => "dependency_failed",
        }
    }

    /// Inverse of [`TaskState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_state() -> impl proptest::strategy::Strategy<Value = TaskState> {
        proptest::sample::select(TaskState::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn terminal_states_never_change(from in any_state(), to in any_state()) {
            if from.is_terminal() {
                prop_assert!(from.transition(to).is_err());
            }
        }

        #[test]
        fn transition_agrees_with_can_become(from in any_state(), to in any_state()) {
            prop_assert_eq!(from.transition(to).is_ok(), from.can_become(to));
            prop_assert!(from.transition(from).is_err(), "no self-loops");
        }

        #[test]
        fn every_walk_ends_terminal_or_stays_legal(walk in proptest::collection::vec(any_state(), 0..20)) {
            let mut state = TaskState::Pending;
            for next in walk {
                match state.transition(next) {
                    Ok(s) => state = s,
                    Err(e) => prop_assert_eq!(e, IllegalTransition { from: state, to: next }),
                }
            }
            prop_assert!(TaskState::parse(state.as_str()) == Some(state));
        }
    }

    #[test]
    fn a_task_cannot_skip_the_queue() {
        assert!(TaskState::Pending.transition(TaskState::Running).is_err());
        assert!(TaskState::Queued.transition(TaskState::Succeeded).is_err());
        assert!(TaskState::Succeeded.transition(TaskState::Queued).is_err());
        assert!(TaskState::Queued.transition(TaskState::Assigned).is_ok());
    }

    #[test]
    fn selectors_parse() {
        let eq: LabelRequirement = "site=eu-1".parse().expect("a valid label selector");
        let node = |k: &str| (k == "site").then_some("eu-1");
        assert!(eq.matches(node));
        let ne: LabelRequirement = "site!=eu-1".parse().expect("a valid label selector");
        assert!(!ne.matches(node));
        let inn: LabelRequirement = "site in (us-1, eu-1)"
            .parse()
            .expect("a valid label selector");
        assert!(inn.matches(node));
        assert_eq!(inn.to_string(), "site in (us-1,eu-1)");
        let ex: LabelRequirement = "gpu".parse().expect("a valid label selector");
        assert!(!ex.matches(node));
        assert!("a b".parse::<LabelRequirement>().is_err());
    }

    /// Found by fuzzing: keys that are not label keys were accepted, and some did not print
    /// back as the selector that was parsed (`k! =v` parsed as `k!` = `v`, printed `k!=v`).
    #[test]
    fn selector_keys_must_be_label_keys() {
        for bad in [
            "=v",
            "!=v",
            " in (a)",
            "k! =v",
            "a b=c",
            "k\u{e9}=v",
            "(k) in (a)",
        ] {
            let err = bad
                .parse::<LabelRequirement>()
                .expect_err("not a label key");
            assert!(err.contains("is not a label"), "{bad:?}: {err}");
        }
        let long = "k".repeat(64);
        assert!(long.parse::<LabelRequirement>().is_err());
        for good in [
            "k=v",
            "a.b/c-d_e!=x",
            "zone in (a,b)",
            "gpu",
            &"k".repeat(63),
        ] {
            let parsed: LabelRequirement = good.parse().expect("a valid label selector");
            assert_eq!(parsed.to_string().parse::<LabelRequirement>(), Ok(parsed));
        }
    }

    #[test]
    fn validation_rejects_impossible_requests() {
        assert!(TaskSpec::new("img").validate().is_ok());
        assert!(TaskSpec::new("").validate().is_err());
        assert!(TaskSpec::new("img").cpu_millis(0).validate().is_err());
        assert!(TaskSpec::new("img").memory_bytes(1).validate().is_err());
    }

    #[test]
    fn input_paths_stay_inside_the_container() {
        let object = ObjectRef::of(b"x");
        assert!(TaskSpec::new("img")
            .input("/data/in", object)
            .validate()
            .is_ok());
        for bad in [
            "data/in",
            "/",
            "/data/../etc/passwd",
            "/data//in",
            "/data/.",
        ] {
            let err = TaskSpec::new("img")
                .input(bad, object)
                .validate()
                .expect_err("refused");
            assert!(err.starts_with("input"), "{bad}: {err}");
        }
        let twice = TaskSpec::new("img")
            .input("/a", object)
            .input("/a", object)
            .validate();
        assert!(twice.is_err());
    }

    #[test]
    fn outputs_stay_inside_the_container_and_have_names() {
        assert!(TaskSpec::new("img")
            .output("out", "/out/x")
            .validate()
            .is_ok());
        for (name, path) in [
            ("out", "/out/../../etc"),
            ("out", "relative"),
            ("", "/x"),
            ("a b", "/x"),
        ] {
            let err = TaskSpec::new("img")
                .output(name, path)
                .validate()
                .expect_err("refused");
            assert!(err.contains("output"), "{name} {path}: {err}");
        }
        let twice = TaskSpec::new("img")
            .output("a", "/x")
            .output("a", "/y")
            .validate();
        assert!(twice.is_err());
        let dep = TaskId::new();
        let spec = TaskSpec::new("img")
            .input(
                "/a",
                InputSource::TaskOutput {
                    task: dep,
                    name: "out".into(),
                },
            )
            .input(
                "/b",
                InputSource::TaskOutput {
                    task: dep,
                    name: "log".into(),
                },
            );
        assert_eq!(spec.dependencies(), vec![dep]);
        let source: InputSource = format!("{dep}:out").parse().expect("a task output");
        assert_eq!(
            source,
            InputSource::TaskOutput {
                task: dep,
                name: "out".into()
            }
        );
        let stdout: InputSource = format!("{dep}:stdout").parse().expect("a task's stdout");
        assert_eq!(stdout, InputSource::TaskStdout { task: dep });
        assert_eq!(stdout.to_string(), format!("{dep}:stdout"));
        let other = TaskId::new();
        let spec = spec
            .input("/c", InputSource::TaskStdout { task: other })
            .input("/d", InputSource::TaskStdout { task: dep });
        assert_eq!(spec.dependencies(), vec![dep, other]);
        assert_eq!(spec.stdout_dependencies(), vec![other, dep]);
        assert!(spec.validate().is_ok());
        // `stdout` is a task's stdout: no output is so named, no output input asks for one.
        let err = TaskSpec::new("img")
            .output("stdout", "/x")
            .validate()
            .expect_err("refused");
        assert!(err.contains("stdout"), "{err}");
        let named = TaskSpec::new("img").input(
            "/a",
            InputSource::TaskOutput {
                task: dep,
                name: "stdout".into(),
            },
        );
        assert!(named.validate().is_err());
        let own = TaskSpec::new("img");
        let own = own
            .clone()
            .input("/a", InputSource::TaskStdout { task: own.id });
        assert!(own
            .validate()
            .expect_err("refused")
            .contains("its own output"));
    }
}
