//! The fault tests' harness: the three services as real processes (so they can be killed with
//! SIGKILL or stopped with SIGSTOP), servers of their own to break (a RabbitMQ node, a
//! MongoDB-compatible server with on-disk storage), and a steady load of sends to recipients
//! online by WebSocket who reconnect with `last_id` like a real client.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::SECRET;

/// The fault tests run one at a time: each breaks servers.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_port(port: u16, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {port} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scratch directory the RabbitMQ user can write too (the server drops root).
fn scratch(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(chat_common::testing::unique_name(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777));
    dir
}

/// Sends SIGSTOP or SIGCONT (through the shell's own `kill`, so no procps is needed).
fn signal(pid: u32, signal: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .status()
        .is_ok_and(|s| s.success())
}

/// SIGKILLs the process, if running, and reaps it.
fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }
}

/// The directory cargo put this test binary's workspace binaries in (`target/debug`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Builds the three service binaries (once per test binary; a no-op when up to date).
fn ensure_binaries() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "auth-service",
                "-p",
                "chat-service",
                "-p",
                "websocket-service",
                "--bins",
            ])
            .status()
            .expect("running cargo to build the service binaries");
        assert!(status.success(), "building the service binaries failed");
        bin_dir()
    })
}

/// The path of a service binary, built if need be.
pub fn service_binary(name: &str) -> PathBuf {
    ensure_binaries().join(name)
}

/// One service binary running as a process, restartable with the same settings.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Starts `name` with `env` (over `JWT_SECRET` = [`SECRET`] and `RUST_LOG=info`).
    pub async fn start(name: &'static str, env: &[(&str, String)]) -> Self {
        let mut service = Self {
            name,
            port: free_port(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            child: None,
            log: scratch("fault-log").join(format!("{name}.log")),
        };
        service.spawn().await;
        service
    }

    async fn spawn(&mut self) {
        let bin = ensure_binaries().join(self.name);
        assert!(bin.exists(), "{} missing", bin.display());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin)
            .envs(chat_common::testing::LOAD_TEST_LIMITS.iter().copied())
            .env("JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", self.port.to_string())
            .env("BIND_ADDR", "127.0.0.1")
            // The services log to stdout.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(self.port, self.name, Duration::from_secs(30)).await;
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// SIGKILL: no shutdown, nothing flushed.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// SIGSTOP / SIGCONT: the process is there, and answers nothing.
    pub fn pause(&self, paused: bool) {
        let child = self.child.as_ref().expect("running");
        let sent = signal(child.id(), if paused { "STOP" } else { "CONT" });
        assert!(sent, "cannot signal {}", self.name);
    }

    /// SIGTERM, then waits up to `within` for the process to exit; its exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take().expect("running");
        assert!(signal(child.id(), "TERM"), "cannot signal {}", self.name);
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the service has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The service's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A paused process cannot be reaped until it runs again.
        if let Some(child) = &self.child {
            signal(child.id(), "CONT");
        }
        self.kill();
    }
}

/// A RabbitMQ node of the test's own, on its own ports and files.
pub struct RabbitNode {
    pub node: String,
    pub url: String,
    dir: PathBuf,
}

impl RabbitNode {
    pub async fn start() -> Self {
        let dir = scratch("fault-rabbit");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let node = chat_common::testing::unique_name("fault").replace(['-', '.'], "_");
        let port = free_port();
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .status()
            .expect("rabbitmq-server (tests/run.sh installs it)");
        assert!(status.success(), "rabbitmq-server -detached failed");
        wait_port(
            port,
            "a RabbitMQ node of the test's own",
            Duration::from_secs(60),
        )
        .await;
        Self {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            node,
            dir,
        }
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Closes every connection whose client named itself `client` (its `connection_name`).
    pub fn close_connections_of(&self, client: &str) -> usize {
        let listing = self.ctl(&[
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ]);
        let named = format!("\"{client}\"");
        let mut closed = 0;
        for line in listing.lines() {
            let Some((pid, properties)) = line.split_once('\t') else {
                continue;
            };
            if properties.contains("connection_name") && properties.contains(&named) {
                self.ctl(&["close_connection", pid.trim(), "fault test"]);
                closed += 1;
            }
        }
        closed
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Its data and logs (megabytes a node) go with it.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A MongoDB-compatible server of the test's own, keeping its data on disk across restarts.
pub struct MongoServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl MongoServer {
    pub async fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            dir: scratch("fault-mongo"),
            child: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let python = std::env::var("TEST_SECANTUS_PYTHON").expect(
            "TEST_SECANTUS_PYTHON names the Python that runs secantus (tests/servers.sh sets it)",
        );
        let child = Command::new(python)
            .args(["-m", "secantus", "--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--storage-path")
            .arg(self.dir.join("data"))
            .args(["--standalone", "--log-level", "WARNING"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(self.port, "secantus", Duration::from_secs(60)).await;
    }

    /// Its URL, without a database (each service names its own).
    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one recipient's client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Message id -> (content, first arrival).
    messages: HashMap<String, (String, Instant)>,
    /// Frames for an id this socket had already received (must stay 0).
    repeats_on_a_socket: usize,
    /// Frames for an id an earlier socket had received (a resume's margin; the client drops them).
    repeats_across_sockets: usize,
    connections: usize,
    closes: BTreeMap<u16, usize>,
}

/// A recipient online by WebSocket that reconnects with `last_id`, as a real client does.
pub struct Recipient {
    pub name: String,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recipient {
    /// Connects to the first of `replicas` that answers (a killed one is skipped).
    pub fn start(name: &str, token: String, replicas: Vec<SocketAddr>) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(run_recipient(token, replicas, seen.clone()));
        Self {
            name: name.to_owned(),
            seen,
            task,
        }
    }

    fn received(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().messages.keys().cloned().collect()
    }
}

impl Drop for Recipient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_recipient(token: String, replicas: Vec<SocketAddr>, seen: Arc<Mutex<Seen>>) {
    let mut last_id: Option<String> = None;
    let mut next = 0;
    loop {
        let addr = replicas[next % replicas.len()];
        let url = match &last_id {
            Some(id) => format!("ws://{addr}/?token={token}&last_id={id}"),
            None => format!("ws://{addr}/?token={token}"),
        };
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url).await else {
            next += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        seen.lock().unwrap().connections += 1;
        let mut on_this_socket = BTreeSet::new();
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Message::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    let id = frame["_id"].as_str().unwrap().to_owned();
                    let content = frame["content"].as_str().unwrap().to_owned();
                    let mut seen = seen.lock().unwrap();
                    if !on_this_socket.insert(id.clone()) {
                        seen.repeats_on_a_socket += 1;
                    } else if seen.messages.contains_key(&id) {
                        seen.repeats_across_sockets += 1;
                    } else {
                        seen.messages.insert(id.clone(), (content, Instant::now()));
                    }
                    last_id = Some(id);
                }
                Ok(Message::Close(frame)) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    *seen.lock().unwrap().closes.entry(code).or_default() += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // The server went away or closed the socket: reconnect, as a real client does.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One acknowledged send.
#[derive(Debug, Clone)]
pub struct Acked {
    pub id: String,
    pub recipient: String,
    pub content: String,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct SendLog {
    pub attempted: usize,
    pub acked: Vec<Acked>,
    /// Status codes of the sends that were not acknowledged (0: no answer).
    pub refused: BTreeMap<u16, usize>,
    /// The slowest answer that was not a 2xx.
    pub slowest_refusal: Duration,
}

/// Sends `rate` messages a second for `duration`, from `senders` to `recipients` in turn, each
/// with its own `Idempotency-Key`; each send is tried once (a refused one is not acknowledged,
/// so not counted).
pub async fn send_steadily(
    chat: SocketAddr,
    senders: &[(String, String)],
    recipients: &[String],
    rate: u32,
    duration: Duration,
    tag: &str,
) -> SendLog {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let log = Arc::new(Mutex::new(SendLog::default()));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while started.elapsed() < duration {
        tick.tick().await;
        let (sender, token) = senders[n % senders.len()].clone();
        let recipient = recipients[n % recipients.len()].clone();
        let content = format!("{tag} #{n} {sender}->{recipient}");
        let key = format!("{tag}-{n}");
        let (http, log) = (http.clone(), log.clone());
        n += 1;
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = http
                .post(format!("http://{chat}/chat/send"))
                .bearer_auth(&token)
                .header("Idempotency-Key", key)
                .json(&json!({"recipient": recipient, "content": content}))
                .send()
                .await;
            let acked = match response {
                Ok(r) if r.status().is_success() => {
                    let body: Value = r.json().await.unwrap();
                    Ok(Acked {
                        id: body["data"]["_id"].as_str().unwrap().to_owned(),
                        recipient,
                        content,
                        at: Instant::now(),
                    })
                }
                Ok(r) => Err(r.status().as_u16()),
                Err(_) => Err(0),
            };
            let mut log = log.lock().unwrap();
            log.attempted += 1;
            match acked {
                Ok(acked) => log.acked.push(acked),
                Err(status) => {
                    *log.refused.entry(status).or_default() += 1;
                    log.slowest_refusal = log.slowest_refusal.max(sent.elapsed());
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(log).unwrap().into_inner().unwrap()
}

/// How the acknowledged messages arrived: within a second of their acknowledgement (live) or
/// later (by a resume, a catch-up or a republish), and the repeats the clients saw.
#[derive(Debug, Default)]
struct Tally {
    live: usize,
    late: usize,
    repeats: usize,
    across: usize,
    connections: usize,
    closes: BTreeMap<u16, usize>,
}

/// Writes a fault test's figures to `target/debug/faults/<name>.json` (and to stderr).
pub fn write_report(name: &str, report: &Value) {
    let dir = bin_dir().join("faults");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.json")), report.to_string()).unwrap();
    eprintln!("fault test {name}: {report}");
}

/// Where the world's services find their servers.
pub struct Servers {
    /// A MongoDB URL without a database (each service gets its own).
    pub mongodb: String,
    pub rabbitmq: String,
}

/// auth-service, chat-service and websocket-service replicas as processes, two senders and two
/// recipients online (reconnecting with `last_id`).
pub struct World {
    pub auth: Service,
    pub chat: Service,
    pub ws: Vec<Service>,
    pub senders: Vec<(String, String)>,
    pub recipients: Vec<Recipient>,
    recipient_tokens: Vec<(String, String)>,
}

impl World {
    pub async fn start(servers: &Servers, ws_replicas: usize) -> Self {
        let db = |name: &str| {
            chat_common::testing::with_database(
                &servers.mongodb,
                &chat_common::testing::unique_name(name),
            )
        };
        let exchange = chat_common::testing::unique_name("fault_exchange");
        let auth = Service::start(
            "auth-service",
            &[
                ("DATABASE_URL", db("fault_auth")),
                ("DB_TIMEOUT", "2s".into()),
            ],
        )
        .await;
        let chat = Service::start(
            "chat-service",
            &[
                ("DATABASE_URL", db("fault_chat")),
                ("RABBITMQ_URL", servers.rabbitmq.clone()),
                ("AUTH_SERVICE_URL", format!("http://{}", auth.addr())),
                ("EXCHANGE_NAME", exchange.clone()),
                ("DB_TIMEOUT", "2s".into()),
                ("PUBLISH_TIMEOUT", "2s".into()),
                ("OUTBOX_INTERVAL", "2s".into()),
            ],
        )
        .await;
        let mut ws = Vec::new();
        for _ in 0..ws_replicas {
            ws.push(
                Service::start(
                    "websocket-service",
                    &[
                        ("RABBITMQ_URL", servers.rabbitmq.clone()),
                        ("CHAT_SERVICE_URL", format!("http://{}", chat.addr())),
                        ("EXCHANGE_NAME", exchange.clone()),
                    ],
                )
                .await,
            );
        }
        for service in std::iter::once(&auth).chain([&chat]).chain(&ws) {
            crate::wait_ready(service.addr()).await;
        }
        let http = reqwest::Client::new();
        let mut tokens = Vec::new();
        for name in ["sender1", "sender2", "recipient1", "recipient2"] {
            let (_, token) =
                chat_common::testing::register_and_login(&http, auth.addr(), name).await;
            tokens.push((name.to_owned(), token));
        }
        let recipient_tokens = tokens.split_off(2);
        let replicas: Vec<SocketAddr> = ws.iter().map(Service::addr).collect();
        let recipients = recipient_tokens
            .iter()
            .map(|(name, token)| Recipient::start(name, token.clone(), replicas.clone()))
            .collect();
        // Every recipient connected before the first send.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Self {
            auth,
            chat,
            ws,
            senders: tokens,
            recipients,
            recipient_tokens,
        }
    }

    /// Sends 40 messages a second for 12 s in the background.
    pub fn start_load(&self, tag: &str) -> tokio::task::JoinHandle<SendLog> {
        let chat = self.chat.addr();
        let senders = self.senders.clone();
        let recipients: Vec<String> = self.recipients.iter().map(|r| r.name.clone()).collect();
        let tag = tag.to_owned();
        tokio::spawn(async move {
            send_steadily(
                chat,
                &senders,
                &recipients,
                40,
                Duration::from_secs(12),
                &tag,
            )
            .await
        })
    }

    /// Waits (at most 40 s) until every acknowledged message reached its recipient, then checks
    /// history and the clients' counts, writes the report and returns it. Fails on any loss,
    /// duplicate in history, or repeat on a socket.
    pub async fn settle_and_check(&self, fault: &str, log: &SendLog) -> Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        let missing = loop {
            let missing: Vec<&Acked> = log
                .acked
                .iter()
                .filter(|a| {
                    let r = self
                        .recipients
                        .iter()
                        .find(|r| r.name == a.recipient)
                        .unwrap();
                    !r.received().contains(&a.id)
                })
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // History: every acknowledged message exactly once.
        let mut in_history: HashMap<String, usize> = HashMap::new();
        for (_, token) in &self.recipient_tokens {
            for m in self.all_messages(token).await {
                *in_history
                    .entry(m["content"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        let not_once: Vec<(&str, usize)> = log
            .acked
            .iter()
            .map(|a| {
                (
                    a.content.as_str(),
                    in_history.get(&a.content).copied().unwrap_or(0),
                )
            })
            .filter(|(_, n)| *n != 1)
            .collect();
        let t = self.tally(log);
        let (republished, catch_up, interruptions) = self.server_counts().await;
        let report = json!({
            "fault": fault,
            "sent": log.attempted,
            "acknowledged": log.acked.len(),
            "refused": log.refused.iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
            "slowest_refusal_ms": log.slowest_refusal.as_millis(),
            "delivered_live": t.live,
            "delivered_late (resume, catch-up or republish)": t.late,
            "lost": missing.len(),
            "not_exactly_once_in_history": not_once.len(),
            "repeats_on_one_socket": t.repeats,
            "repeats_across_reconnects (dropped by the client)": t.across,
            "connections": t.connections,
            "republished_by_the_outbox": republished,
            "read_by_socket_catch_ups": catch_up,
            "event_queue_interruptions": interruptions,
            "closes": t.closes.iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
        });
        write_report(fault, &report);
        let logs = || {
            std::iter::once(&self.chat)
                .chain(&self.ws)
                .map(|s| format!("--- {} ---\n{}", s.name, s.log_tail()))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            missing.is_empty(),
            "{fault}: {} acknowledged messages never reached their recipient, e.g. {:?}\n{report}\n{}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            logs()
        );
        assert!(
            not_once.is_empty(),
            "{fault}: not exactly once in history: {not_once:?}"
        );
        assert_eq!(
            t.repeats, 0,
            "{fault}: a socket got the same message twice\n{report}"
        );
        assert!(!log.acked.is_empty(), "{fault}: nothing was acknowledged");
        report
    }

    /// How the acknowledged messages arrived, over all recipients.
    fn tally(&self, log: &SendLog) -> Tally {
        let mut t = Tally::default();
        for r in &self.recipients {
            let seen = r.seen.lock().unwrap();
            for a in log.acked.iter().filter(|a| a.recipient == r.name) {
                if let Some((_, arrived)) = seen.messages.get(&a.id) {
                    if *arrived <= a.at + Duration::from_secs(1) {
                        t.live += 1;
                    } else {
                        t.late += 1;
                    }
                }
            }
            t.repeats += seen.repeats_on_a_socket;
            t.across += seen.repeats_across_sockets;
            t.connections += seen.connections;
            for (code, n) in &seen.closes {
                *t.closes.entry(*code).or_default() += n;
            }
        }
        t
    }

    /// From the services' own metrics (of the processes alive now): events the outbox
    /// republished, messages sockets read by catch-ups, and event-queue interruptions.
    async fn server_counts(&self) -> (f64, f64, f64) {
        let text = |addr: SocketAddr| async move {
            let response = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
            response.text().await.ok()
        };
        let sample = |text: &Option<String>, name: &str| {
            text.as_deref()
                .and_then(|t| chat_common::metrics::sample(t, name))
                .unwrap_or(0.0)
        };
        let chat = text(self.chat.addr()).await;
        let mut catch_up = 0.0;
        let mut interruptions = 0.0;
        for ws in &self.ws {
            let metrics = text(ws.addr()).await;
            catch_up += sample(&metrics, "ws_catch_up_messages_total");
            interruptions += sample(&metrics, "ws_event_interruptions_total");
        }
        (
            sample(&chat, "chat_events_republished_total"),
            catch_up,
            interruptions,
        )
    }

    /// Every message to or from the token's user, through `GET /chat/messages`.
    async fn all_messages(&self, token: &str) -> Vec<Value> {
        let http = reqwest::Client::new();
        let mut all: Vec<Value> = Vec::new();
        loop {
            let base = format!("http://{}/chat/messages?limit=200", self.chat.addr());
            let url = match all.last() {
                Some(last) => format!("{base}&after={}", last["_id"].as_str().unwrap()),
                None => base,
            };
            let page: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let data = page["data"].as_array().expect("a page").clone();
            let done = data.len() < 200;
            all.extend(data);
            if done {
                return all;
            }
        }
    }
}
