//! The container images: the root `Dockerfile`'s runtime targets, built daemonless with buildah
//! from release binaries compiled on the host (`--build-context builder=DIR` stands in for the
//! builder stage) on a local stand-in for the distroless base (no shell in it), then run inside
//! their images as the non-root user 65532 (`buildah run --isolation chroot`, host network).
//!
//! `tests/run.sh` prepares everything (`ensure_images` in `tests/servers.sh`) and sets:
//! `TEST_BUILDAH` (buildah with this run's storage flags), `TEST_IMAGE_BUILDER_DIR` (the binaries
//! laid out as the builder stage's `/out`), `TEST_HADOLINT`; the service images also use
//! `TEST_MONGODB_URL` and `TEST_RABBITMQ_URL`.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use e2e_tests::{Client, SECRET, read};
use serde_json::{Value, json};

/// Each runtime target, the binary it runs and the ports it exposes.
const TARGETS: [(&str, &[u16]); 5] = [
    ("auth-service", &[5001]),
    ("chat-service", &[5002]),
    ("websocket-service", &[5003]),
    ("chat-operator", &[8080]),
    ("chat-stack", &[5001, 5002, 5003]),
];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the image tests through `bash tests/run.sh`, which builds buildah's base and the binaries (ensure_images in tests/servers.sh)")
    })
}

fn root() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("..")
}

fn workspace_version() -> String {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = "))
        .expect("workspace version")
        .trim_matches('"')
        .to_owned()
}

/// Runs buildah with this run's storage; panics with its output when it fails.
fn buildah(args: &[&str]) -> String {
    let out = Command::new(env("TEST_BUILDAH"))
        .args(args)
        .output()
        .expect("buildah runs");
    assert!(
        out.status.success(),
        "buildah {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Builds (once per test process) the runtime target and returns its image name.
fn image(target: &str) -> String {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // One build at a time: vfs copies every layer, and two builds would only share the disk.
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let name = format!("localhost/chat-test/{target}:ci");
    if !built.iter().any(|t| t == target) {
        let dockerfile = root().join("Dockerfile");
        let context = root();
        buildah(&[
            "build",
            "--isolation",
            "chroot",
            "--quiet",
            "-f",
            dockerfile.to_str().unwrap(),
            "--build-context",
            &format!("builder={}", env("TEST_IMAGE_BUILDER_DIR")),
            "--target",
            target,
            "-t",
            &name,
            context.to_str().unwrap(),
        ]);
        built.push(target.to_owned());
    }
    name
}

fn inspect(image: &str) -> Value {
    serde_json::from_str(&buildah(&["inspect", "--type", "image", image])).unwrap()
}

/// A working container of an image, removed when dropped.
struct Container {
    name: String,
    mount: Option<PathBuf>,
}

impl Container {
    fn new(image: &str) -> Self {
        let name = format!("chat-test-{}", rand_suffix());
        buildah(&["from", "--quiet", "--name", &name, image]);
        Self { name, mount: None }
    }

    /// The container's root filesystem on the host.
    fn rootfs(&mut self) -> &Path {
        if self.mount.is_none() {
            self.mount = Some(PathBuf::from(buildah(&["mount", &self.name]).trim()));
        }
        self.mount.as_deref().unwrap()
    }

    /// Starts the image's entrypoint inside the container as the image's user, with `env` on
    /// top of the image's environment and `volume` (host dir) mounted at `/data`.
    fn spawn(&self, config: &Value, env: &[(&str, String)], volume: Option<&Path>) -> Running {
        let mut cmd = Command::new(self::env("TEST_BUILDAH"));
        cmd.args(["run", "--isolation", "chroot"]);
        cmd.args(["--user", config["User"].as_str().unwrap()]);
        if let Some(dir) = volume {
            cmd.args(["-v", &format!("{}:/data", dir.display())]);
        }
        for (k, v) in env {
            cmd.args(["--env", &format!("{k}={v}")]);
        }
        cmd.arg(&self.name);
        let entrypoint: Vec<&str> = config["Entrypoint"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        cmd.args(&entrypoint);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Running {
            child: Some(child),
            entrypoint: entrypoint[0].to_owned(),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(env("TEST_BUILDAH"))
            .args(["rm", &self.name])
            .output();
    }
}

fn rand_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{nanos:x}-{n}", std::process::id())
}

/// A binary running inside its image.
struct Running {
    child: Option<std::process::Child>,
    entrypoint: String,
}

impl Running {
    /// The image's own process, below buildah and its chroot helper.
    fn inner_pid(&self) -> u32 {
        let buildah = self.child.as_ref().unwrap().id();
        let entrypoint = self.entrypoint.as_bytes();
        for _ in 0..50 {
            let found = descendants(buildah).into_iter().find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmd| cmd.split(|b| *b == 0).next() == Some(entrypoint))
            });
            if let Some(pid) = found {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not start under buildah run", self.entrypoint);
    }

    /// Sends SIGTERM to the binary itself (the image's STOPSIGNAL, what `docker stop` sends) and
    /// returns its exit status and its output.
    fn stop(mut self) -> (bool, String) {
        let pid = self.inner_pid();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait(Duration::from_secs(15))
    }

    /// Waits for the binary to exit; returns success and its output.
    fn wait(&mut self, limit: Duration) -> (bool, String) {
        let deadline = std::time::Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        while child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the binary did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            for pid in descendants(child.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every descendant of `pid`, parents before children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: BTreeMap<u32, u32> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            parents.insert(child, ppid);
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_http(url: &str, running: &mut Running) -> u16 {
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(resp) = http.get(url).send().await {
            return resp.status().as_u16();
        }
        if running
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_some()
        {
            let (_, output) = running.wait(Duration::from_secs(1));
            panic!("the binary exited before serving {url}:\n{output}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not answer within 10 s");
}

/// A host directory for `/data`, owned by the images' user as a fresh named volume would be.
fn data_volume() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("chown")
        .args(["65532:65532", dir.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "chown of the test volume");
    dir
}

#[test]
fn the_dockerfile_is_hadolint_clean() {
    let out = Command::new(env("TEST_HADOLINT"))
        .arg(root().join("Dockerfile"))
        .output()
        .expect("hadolint runs");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_build_context_leaves_out_build_output_git_and_secrets() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git/", ".env", "data/"] {
        assert!(
            patterns.contains(&needed),
            ".dockerignore lacks {needed}: {patterns:?}"
        );
    }
}

#[test]
fn every_runtime_image_builds_non_root_without_a_shell_and_labelled() {
    let version = workspace_version();
    let mut sizes = Vec::new();
    for (target, ports) in TARGETS {
        let name = image(target);
        let info = inspect(&name);
        let config = &info["OCIv1"]["config"];
        assert_eq!(
            config["User"], "65532:65532",
            "{target}: numeric non-root user"
        );
        assert_eq!(
            config["Entrypoint"],
            json!([format!("/usr/local/bin/{target}")]),
            "{target}: exec-form entrypoint"
        );
        assert_eq!(config["StopSignal"], "SIGTERM", "{target}");
        let exposed: Vec<String> = ports.iter().map(|p| format!("{p}/tcp")).collect();
        let mut actual: Vec<String> = config["ExposedPorts"]
            .as_object()
            .unwrap_or_else(|| panic!("{target}: no EXPOSE"))
            .keys()
            .cloned()
            .collect();
        actual.sort();
        assert_eq!(actual, exposed, "{target}: exposed ports");
        let labels = &config["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], target);
        assert_eq!(labels["org.opencontainers.image.version"], version.as_str());
        for key in ["source", "licenses", "description"] {
            assert!(
                labels[format!("org.opencontainers.image.{key}")].is_string(),
                "{target}: label {key}"
            );
        }

        let mut container = Container::new(&name);
        let rootfs = container.rootfs().to_owned();
        let binary = rootfs.join(format!("usr/local/bin/{target}"));
        assert!(binary.is_file(), "{target}: binary at {}", binary.display());
        for shell in [
            "bin/sh",
            "bin/bash",
            "bin/dash",
            "usr/bin/sh",
            "usr/bin/bash",
        ] {
            assert!(
                !rootfs.join(shell).exists(),
                "{target}: /{shell} exists, the runtime image must not need a shell"
            );
        }
        let size = buildah(&["images", "--format", "{{.Size}}", &name]);
        sizes.push(format!("{target} {}", size.trim()));
    }
    eprintln!("image sizes: {}", sizes.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_image_serves_the_seed_flow_from_a_volume_and_keeps_it_across_a_restart() {
    let name = image("chat-stack");
    let config = inspect(&name)["OCIv1"]["config"].clone();
    assert!(
        config["Volumes"]["/data"].is_object(),
        "the image declares /data"
    );
    assert!(
        config["Env"]
            .as_array()
            .unwrap()
            .contains(&json!("DATA_DIR=/data")),
        "the stack keeps its data in /data"
    );
    let volume = data_volume();
    let mut container = Container::new(&name);
    // `buildah run` (1.28) mounts its own anonymous volume over a declared VOLUME, hiding `-v`;
    // `docker run -v` mounts the named volume there. Drop the declaration from this working
    // container only, so the host directory is what the process writes to.
    buildah(&["config", "--volume", "/data-", &container.name]);
    let image_data = container.rootfs().join("data");
    let meta = std::fs::metadata(&image_data).expect("/data exists in the image");
    assert!(meta.is_dir());
    let ports = [free_port(), free_port(), free_port()];
    let env = [
        ("AUTH_PORT", ports[0].to_string()),
        ("CHAT_PORT", ports[1].to_string()),
        ("WS_PORT", ports[2].to_string()),
        ("BIND_ADDR", "127.0.0.1".to_owned()),
    ];
    let (auth, chat, ws) = (
        format!("http://127.0.0.1:{}", ports[0]),
        format!("http://127.0.0.1:{}", ports[1]),
        format!("ws://127.0.0.1:{}", ports[2]),
    );
    let http = reqwest::Client::new();

    let mut running = container.spawn(&config, &env, Some(volume.path()));
    assert_eq!(
        wait_http(&format!("{auth}/healthz"), &mut running).await,
        200
    );
    let mut tokens = Vec::new();
    for user in ["alice", "bob"] {
        let creds = json!({ "username": user, "password": "password1" });
        let resp = http.post(format!("{auth}/auth/register")).json(&creds);
        assert_eq!(read(resp.send().await.unwrap()).await.0, 201);
        let resp = http.post(format!("{auth}/auth/login")).json(&creds);
        let (status, body) = read(resp.send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    let mut bob = Client::connect(&format!("{ws}/?token={}", tokens[1])).await;
    let resp = http
        .post(format!("{chat}/chat/send"))
        .bearer_auth(&tokens[0])
        .json(&json!({ "sender": "alice", "recipient": "bob", "content": "from the image" }));
    let (status, sent) = read(resp.send().await.unwrap()).await;
    assert_eq!(status, 201, "{sent}");
    let frame = bob
        .next_json(Duration::from_secs(5))
        .await
        .expect("delivered over the WebSocket");
    assert_eq!(frame["content"], "from the image");
    bob.close().await;
    let (clean, output) = running.stop();
    assert!(clean, "SIGTERM drains and exits 0:\n{output}");

    // The data went to the volume, written by the non-root user.
    let files: Vec<String> = std::fs::read_dir(volume.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f == "jwt-secret"), "{files:?}");
    assert!(files.len() > 1, "stores in the volume: {files:?}");
    let owner = Command::new("stat")
        .args([
            "-c",
            "%u:%g",
            volume.path().join("jwt-secret").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), "65532:65532");

    // A new container from the same image on the same volume: everything is still there.
    let restarted = Container::new(&name);
    buildah(&["config", "--volume", "/data-", &restarted.name]);
    let mut running = restarted.spawn(&config, &env, Some(volume.path()));
    assert_eq!(
        wait_http(&format!("{auth}/healthz"), &mut running).await,
        200
    );
    let resp = http
        .get(format!("{chat}/chat/history?user1=alice&user2=bob"))
        .bearer_auth(&tokens[1]);
    let (status, body) = read(resp.send().await.unwrap()).await;
    assert_eq!(
        status, 200,
        "a token from before the restart is still valid: {body}"
    );
    assert_eq!(body["data"], json!([sent["data"]]));
    let creds = json!({ "username": "alice", "password": "password1" });
    let resp = http.post(format!("{auth}/auth/login")).json(&creds);
    assert_eq!(read(resp.send().await.unwrap()).await.0, 200);
    let (clean, output) = running.stop();
    assert!(clean, "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_image_starts_against_the_real_servers_and_answers_healthz() {
    let mongo = env("TEST_MONGODB_URL");
    let rabbit = env("TEST_RABBITMQ_URL");
    let database = format!("images_{}", rand_suffix());
    let exchange = format!("images_{}", rand_suffix());
    let auth_port = free_port();
    let common = |port: u16| {
        vec![
            ("PORT", port.to_string()),
            ("BIND_ADDR", "127.0.0.1".to_owned()),
            ("JWT_SECRET", SECRET.to_owned()),
            ("EXCHANGE_NAME", exchange.clone()),
            ("AUTH_SERVICE_URL", format!("http://127.0.0.1:{auth_port}")),
        ]
    };
    let mut auth_env = common(auth_port);
    auth_env.extend([
        ("DATABASE_URL", mongo.clone()),
        ("DATABASE_NAME", database.clone()),
    ]);
    let chat_port = free_port();
    let mut chat_env = common(chat_port);
    chat_env.extend([
        ("DATABASE_URL", mongo.clone()),
        ("DATABASE_NAME", database.clone()),
        ("RABBITMQ_URL", rabbit.clone()),
    ]);
    let ws_port = free_port();
    let mut ws_env = common(ws_port);
    ws_env.push(("RABBITMQ_URL", rabbit.clone()));

    let mut running = Vec::new();
    for (target, env, port) in [
        ("auth-service", auth_env, auth_port),
        ("chat-service", chat_env, chat_port),
        ("websocket-service", ws_env, ws_port),
    ] {
        let name = image(target);
        let config = inspect(&name)["OCIv1"]["config"].clone();
        let container = Container::new(&name);
        let mut process = container.spawn(&config, &env, None);
        let base = format!("http://127.0.0.1:{port}");
        assert_eq!(
            wait_http(&format!("{base}/healthz"), &mut process).await,
            200,
            "{target}"
        );
        // Ready once its MongoDB/RabbitMQ answer: the image reaches them from inside.
        let http = reqwest::Client::new();
        let mut ready = 0;
        for _ in 0..100 {
            ready = http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if ready == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(ready, 200, "{target} /readyz");
        running.push((target, container, process));
    }
    for (target, _container, process) in running.into_iter().rev() {
        let (clean, output) = process.stop();
        assert!(clean, "{target} exits 0 on SIGTERM:\n{output}");
    }
}

#[test]
fn the_operator_image_says_clearly_that_it_has_no_cluster() {
    let name = image("chat-operator");
    let config = inspect(&name)["OCIv1"]["config"].clone();
    let container = Container::new(&name);
    let port = free_port();
    let mut running = container.spawn(&config, &[("METRICS_PORT", port.to_string())], None);
    let (success, output) = running.wait(Duration::from_secs(15));
    assert!(!success, "exits non-zero without a cluster:\n{output}");
    assert!(
        output.contains("no Kubernetes cluster configured") && output.contains("KUBECONFIG"),
        "names the problem and the fix:\n{output}"
    );
}
