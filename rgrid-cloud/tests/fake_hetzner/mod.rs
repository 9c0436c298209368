//! A fake Hetzner Cloud API on 127.0.0.1 (port 0) that speaks the documented JSON: servers with
//! label selectors (`=`, `==`, `!=`, `k`, `!k`, `in`, `notin`; a bad one is `invalid_input`)
//! and `meta.pagination`, a status that goes from `initializing` through `starting` to
//! `running` over time, actions that go from `running` to `success` (or `error`) as they are
//! polled, error bodies `{"error": {"code", "message", "details"}}`, `RateLimit-*` headers on
//! every response with a budget that every request spends and that refills one a second, and
//! scripted failures (429s, 5xx) for the next requests. A tiny HTTP/1.1 server: one request
//! per connection.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rgrid_cloud::fake::parse_selector;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TOKEN: &str = "test-token-0123456789";
pub const TYPES: [&str; 4] = ["cx23", "cx33", "cx43", "cx53"];

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub body: Option<Value>,
    pub at: Instant,
}

/// A canned response for the next request matching `method` and `path` prefix.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub method: &'static str,
    pub path_prefix: &'static str,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

struct FakeAction {
    command: String,
    polls_left: u32,
    error: Option<(String, String)>,
    resource: u64,
}

#[derive(Default)]
pub struct State {
    servers: BTreeMap<u64, Value>,
    actions: HashMap<u64, FakeAction>,
    next_id: u64,
    pub log: Vec<Logged>,
    pub script: VecDeque<Scripted>,
    pub sold_out: BTreeSet<(String, String)>,
    pub quota: Option<usize>,
    /// The next create's `create_server` action ends in this error.
    pub fail_next_create_action: Option<(String, String)>,
    /// Polls an action stays `running`.
    pub action_polls: u32,
    /// Requests left in the budget (`RateLimit-Remaining`): every request spends one, and it
    /// refills one a second up to 3,600.
    pub remaining: u32,
    /// When the budget was last refilled.
    refilled: Option<Instant>,
    /// How long a new server reports `initializing`, then `starting`, before `running`.
    pub boot_phases: (Duration, Duration),
    /// Servers still booting, with when they were created.
    booting: HashMap<u64, Instant>,
    /// The next create fails with this 412 code (`placement_error`, `resource_unavailable`).
    pub refuse_next_create: Option<String>,
    /// New servers report a `created` time this long ago (to test billing-hour rules without
    /// waiting an hour).
    pub created_ago: Duration,
}

impl State {
    /// Refills the budget one request a second, then spends one.
    fn spend_budget(&mut self) {
        let now = Instant::now();
        let since = *self.refilled.get_or_insert(now);
        let secs = now.duration_since(since).as_secs();
        if secs > 0 {
            let refill = u32::try_from(secs).unwrap_or(u32::MAX);
            self.remaining = self.remaining.saturating_add(refill).min(3600);
            self.refilled = Some(since + Duration::from_secs(secs));
        }
        self.remaining = self.remaining.saturating_sub(1);
    }

    /// Moves booting servers along `initializing` → `starting` → `running`.
    fn refresh_statuses(&mut self) {
        let (init, start) = self.boot_phases;
        let mut done = Vec::new();
        for (id, since) in &self.booting {
            let age = since.elapsed();
            let status = if age < init {
                "initializing"
            } else if age < init + start {
                "starting"
            } else {
                done.push(*id);
                "running"
            };
            if let Some(server) = self.servers.get_mut(id) {
                server["status"] = json!(status);
            }
        }
        for id in done {
            self.booting.remove(&id);
        }
    }
}

#[derive(Clone)]
pub struct FakeHetzner {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl FakeHetzner {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            next_id: 1,
            action_polls: 2,
            remaining: 3600,
            ..State::default()
        }));
        let fake = Self { addr, state };
        let served = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let fake = served.clone();
                tokio::spawn(async move {
                    let _ = fake.serve(stream).await;
                });
            }
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn requests(&self, method: &str, path_prefix: &str) -> Vec<Logged> {
        self.state()
            .log
            .iter()
            .filter(|l| l.method == method && l.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    pub fn server_count(&self) -> usize {
        self.state().servers.len()
    }

    /// Adds a server directly (no request).
    pub fn add_server(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut s = self.state();
        let id = s.next_id;
        s.next_id += 1;
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let server = server_json(id, name, "cx23", "fsn1", "running", &labels, s.created_ago);
        s.servers.insert(id, server);
        id
    }

    /// Makes every server, existing and new, report being created `ago` ago.
    pub fn set_created_ago(&self, ago: Duration) {
        let mut s = self.state();
        s.created_ago = ago;
        for server in s.servers.values_mut() {
            server["created"] = json!(rfc3339(SystemTime::now() - ago));
        }
    }

    /// Servers as `(id, name)`.
    pub fn servers(&self) -> Vec<(u64, String)> {
        self.state()
            .servers
            .iter()
            .map(|(id, v)| (*id, v["name"].as_str().unwrap_or_default().to_owned()))
            .collect()
    }

    async fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let header_end = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut headers = HashMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = &buf[header_end..(header_end + length).min(buf.len())];
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), parse_query(q)),
            None => (target.clone(), BTreeMap::new()),
        };
        let json_body: Option<Value> = serde_json::from_slice(body).ok();
        let (status, extra, value) = self.handle(
            &method,
            &path,
            &query,
            json_body,
            headers.get("authorization").cloned(),
        );
        let text = value.to_string();
        let remaining = self.state().remaining;
        let reset = unix_now() + 3600 - u64::from(remaining);
        let mut response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            reason(status),
            text.len()
        );
        let has = |name: &str| extra.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !has("ratelimit-limit") {
            response += "RateLimit-Limit: 3600\r\n";
        }
        if !has("ratelimit-remaining") {
            response += &format!("RateLimit-Remaining: {remaining}\r\n");
        }
        if !has("ratelimit-reset") {
            response += &format!("RateLimit-Reset: {reset}\r\n");
        }
        for (k, v) in &extra {
            response += &format!("{k}: {v}\r\n");
        }
        response += "\r\n";
        response += &text;
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    }

    fn handle(
        &self,
        method: &str,
        path: &str,
        query: &BTreeMap<String, String>,
        body: Option<Value>,
        auth: Option<String>,
    ) -> (u16, Vec<(String, String)>, Value) {
        let mut s = self.state();
        s.spend_budget();
        s.refresh_statuses();
        s.log.push(Logged {
            method: method.into(),
            path: path.into(),
            query: query.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
            return error(
                401,
                "unauthorized",
                "Request was made with an invalid or unknown token",
                None,
            );
        }
        if let Some(pos) = s
            .script
            .iter()
            .position(|x| x.method == method && path.starts_with(x.path_prefix))
        {
            let x = s.script.remove(pos).unwrap();
            return (x.status, x.headers, x.body);
        }
        let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["servers"]) => list_servers(&s, query),
            ("POST", ["servers"]) => create_server(&mut s, body.unwrap_or(Value::Null)),
            ("GET", ["servers", id]) => {
                match id.parse::<u64>().ok().and_then(|id| s.servers.get(&id)) {
                    Some(server) => (200, vec![], json!({ "server": server })),
                    None => not_found("server"),
                }
            }
            ("DELETE", ["servers", id]) => {
                let Some(id) = id
                    .parse::<u64>()
                    .ok()
                    .filter(|id| s.servers.contains_key(id))
                else {
                    return not_found("server");
                };
                s.servers.remove(&id);
                let action = new_action(&mut s, "delete_server", id, None);
                (200, vec![], json!({ "action": action }))
            }
            ("GET", ["actions", id]) => {
                let Some(id) = id.parse::<u64>().ok() else {
                    return not_found("action");
                };
                let Some(a) = s.actions.get_mut(&id) else {
                    return not_found("action");
                };
                a.polls_left = a.polls_left.saturating_sub(1);
                let value = action_json(id, a);
                (200, vec![], json!({ "action": value }))
            }
            _ => not_found("route"),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn error(
    status: u16,
    code: &str,
    message: &str,
    details: Option<Value>,
) -> (u16, Vec<(String, String)>, Value) {
    (
        status,
        vec![],
        json!({ "error": { "code": code, "message": message, "details": details.unwrap_or(Value::Null) } }),
    )
}

fn not_found(what: &str) -> (u16, Vec<(String, String)>, Value) {
    error(404, "not_found", &format!("{what} not found"), None)
}

fn server_json(
    id: u64,
    name: &str,
    ty: &str,
    location: &str,
    status: &str,
    labels: &BTreeMap<String, String>,
    created_ago: Duration,
) -> Value {
    json!({
        "id": id,
        "name": name,
        "status": status,
        "created": rfc3339(SystemTime::now() - created_ago),
        "labels": labels,
        "server_type": { "id": 1, "name": ty, "cores": 2, "memory": 4.0 },
        "location": { "id": 1, "name": location, "city": "Falkenstein" },
        "public_net": { "ipv4": { "ip": format!("198.51.100.{}", id % 250), "blocked": false }, "ipv6": null, "floating_ips": [] },
        "private_net": [],
        "volumes": [],
        "protection": { "delete": false, "rebuild": false }
    })
}

fn new_action(
    s: &mut State,
    command: &str,
    resource: u64,
    error: Option<(String, String)>,
) -> Value {
    let id = s.next_id;
    s.next_id += 1;
    let a = FakeAction {
        command: command.into(),
        polls_left: s.action_polls,
        error,
        resource,
    };
    let value = action_json(id, &a);
    s.actions.insert(id, a);
    value
}

fn action_json(id: u64, a: &FakeAction) -> Value {
    let done = a.polls_left == 0;
    let (status, error) = match (&a.error, done) {
        (_, false) => ("running", Value::Null),
        (Some((code, message)), true) => ("error", json!({ "code": code, "message": message })),
        (None, true) => ("success", Value::Null),
    };
    json!({
        "id": id,
        "command": a.command,
        "status": status,
        "progress": if done { 100 } else { 50 },
        "started": "2026-03-01T10:00:00+00:00",
        "finished": if done { json!("2026-03-01T10:00:30+00:00") } else { Value::Null },
        "resources": [{ "id": a.resource, "type": "server" }],
        "error": error
    })
}

fn list_servers(s: &State, q: &BTreeMap<String, String>) -> (u16, Vec<(String, String)>, Value) {
    let per_page: usize = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(25);
    if per_page > 50 {
        return error(
            400,
            "invalid_input",
            "invalid input in field 'per_page'",
            Some(json!({"fields": [{"name": "per_page", "messages": ["must be at most 50"]}]})),
        );
    }
    let page: usize = q
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let terms = match q.get("label_selector").map(|sel| parse_selector(sel)) {
        Some(Err(problem)) => {
            return error(
                400,
                "invalid_input",
                &format!("invalid label_selector: {problem}"),
                None,
            )
        }
        Some(Ok(terms)) => terms,
        None => Vec::new(),
    };
    let all: Vec<&Value> = s
        .servers
        .values()
        .filter(|v| {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(v["labels"].clone()).unwrap_or_default();
            terms.iter().all(|t| t.matches(&labels))
        })
        .filter(|v| q.get("name").is_none_or(|n| v["name"].as_str() == Some(n)))
        .collect();
    let last = all.len().div_ceil(per_page).max(1);
    let servers: Vec<&Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .copied()
        .collect();
    (
        200,
        vec![],
        json!({
            "servers": servers,
            "meta": { "pagination": {
                "page": page,
                "per_page": per_page,
                "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
                "next_page": if page < last { json!(page + 1) } else { Value::Null },
                "last_page": last,
                "total_entries": all.len()
            }}
        }),
    )
}

fn create_server(s: &mut State, body: Value) -> (u16, Vec<(String, String)>, Value) {
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let ty = body["server_type"].as_str().unwrap_or_default().to_string();
    let location = body["location"].as_str().unwrap_or_default().to_string();
    let mut fields = Vec::new();
    if name.is_empty() || name.len() > 63 {
        fields.push(json!({"name": "name", "messages": ["must be a valid hostname"]}));
    }
    if !TYPES.contains(&ty.as_str()) {
        fields.push(
            json!({"name": "server_type", "messages": [format!("server type {ty:?} not found")]}),
        );
    }
    if body.get("datacenter").is_some() {
        fields.push(
            json!({"name": "datacenter", "messages": ["datacenter was removed; use location"]}),
        );
    }
    if body["user_data"]
        .as_str()
        .is_some_and(|u| u.len() > 32 * 1024)
    {
        fields.push(json!({"name": "user_data", "messages": ["too long"]}));
    }
    if !fields.is_empty() {
        return error(
            400,
            "invalid_input",
            "invalid input in fields",
            Some(json!({ "fields": fields })),
        );
    }
    if s.servers.values().any(|v| v["name"] == json!(name)) {
        return error(409, "uniqueness_error", "server name is already used", None);
    }
    if s.quota.is_some_and(|q| s.servers.len() >= q) {
        return error(
            403,
            "resource_limit_exceeded",
            "server limit exceeded",
            None,
        );
    }
    if let Some(code) = s.refuse_next_create.take() {
        return error(
            412,
            &code,
            &format!("{code}: cannot place server type {ty} in {location}"),
            None,
        );
    }
    if s.sold_out.contains(&(ty.clone(), location.clone())) {
        return error(
            412,
            "resource_unavailable",
            &format!("server type {ty} is unavailable in {location}"),
            None,
        );
    }
    let id = s.next_id;
    s.next_id += 1;
    let labels: BTreeMap<String, String> =
        serde_json::from_value(body["labels"].clone()).unwrap_or_default();
    let server = server_json(
        id,
        &name,
        &ty,
        &location,
        "initializing",
        &labels,
        s.created_ago,
    );
    s.servers.insert(id, server.clone());
    let fail = s.fail_next_create_action.take();
    let action = new_action(s, "create_server", id, fail);
    let start = new_action(s, "start_server", id, None);
    s.booting.insert(id, Instant::now());
    (
        201,
        vec![],
        json!({ "server": server, "action": action, "next_actions": [start], "root_password": null }),
    )
}

/// A 429 as the API sends it.
pub fn too_many(retry_after: Option<u64>, reset_in: u64) -> Scripted {
    let mut headers = vec![
        ("RateLimit-Limit".to_string(), "3600".to_string()),
        ("RateLimit-Remaining".to_string(), "0".to_string()),
        (
            "RateLimit-Reset".to_string(),
            (unix_now() + reset_in).to_string(),
        ),
    ];
    if let Some(s) = retry_after {
        headers.push(("Retry-After".to_string(), s.to_string()));
    }
    Scripted {
        method: "GET",
        path_prefix: "/v1/servers",
        status: 429,
        headers,
        body: json!({"error": {"code": "rate_limit_exceeded", "message": "limit of 3600 requests per hour reached", "details": {}}}),
    }
}

/// `2026-03-01T10:00:00+00:00`, as the API writes times (UTC; days to civil date after
/// Howard Hinnant's `civil_from_days`).
pub fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

pub fn elapsed_between(a: &Logged, b: &Logged) -> Duration {
    b.at.duration_since(a.at)
}
