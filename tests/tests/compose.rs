//! `docker-compose.yml`, the fallback for a machine without Kubernetes, checked without a Docker
//! engine:
//!
//! - `dclint` (the npm package, path in `TEST_DCLINT`) finds nothing: the Compose
//!   specification's schema and the linter's conventions;
//! - the file is interpolated as Compose does with the `.env` that `.env.example` describes, and
//!   each service's real `Config::from_env` parses its environment while recording every name it
//!   asks for: every variable set is one the service reads, the service accepts the values and
//!   has what its `main` needs (servers, not dev mode); a missing secret stops Compose with a
//!   message naming it;
//! - its URLs reach the compose services with the stores' own credentials, its images are the
//!   operator's and the Dockerfile's targets;
//! - the monitoring profile's Prometheus scrapes exactly these services, RabbitMQ and itself,
//!   and Grafana's provisioning names the compose Prometheus and the chart's dashboard.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use chat_common::{
    config::{ConfigError, Recorded, Vars},
    telemetry,
};
use serde_yaml::Value;

type Env = BTreeMap<String, String>;
type Source = Recorded<Vec<(String, String)>>;

/// The services built from this repository (their Dockerfile targets and image names).
const SERVICES: [&str; 3] = ["auth-service", "chat-service", "websocket-service"];
/// The seed's published ports: the three services, AMQP and the management UI.
const SEED_PORTS: [u16; 5] = [5001, 5002, 5003, 5672, 15672];
/// rabbitmq_prometheus's port (enabled by the official image, and by the operator).
const RABBITMQ_METRICS_PORT: u16 = 15692;
/// Where Grafana's provisioning is mounted, and so where Grafana looks for it.
const GRAFANA_PROVISIONING: &str = "/etc/grafana/provisioning";

fn repo() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path))
        .unwrap_or_else(|e| panic!("cannot read {path} in the repository: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The `.env` file and Compose's interpolation.

/// `.env.example`: the values it sets (`KEY=value`, possibly empty) and every name it documents
/// (also `# KEY=default`, an optional value left at its default).
fn env_example() -> (Env, BTreeSet<String>) {
    let mut values = Env::new();
    let mut documented = BTreeSet::new();
    for line in read(".env.example").lines() {
        let (commented, line) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line.trim()),
        };
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        documented.insert(key.to_owned());
        if !commented {
            values.insert(key.to_owned(), value.to_owned());
        }
    }
    (values, documented)
}

/// The `.env` a user makes from `.env.example`: every empty value filled with a URL-safe secret
/// (as `openssl rand -hex` makes), distinct per variable.
fn user_env() -> Env {
    let (mut env, _) = env_example();
    for (key, value) in &mut env {
        if value.is_empty() {
            *value = format!(
                "{}0123456789abcdef",
                key.to_ascii_lowercase().replace('_', "")
            );
        }
    }
    env
}

/// Compose's interpolation of one string: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`,
/// `${NAME-default}`, `${NAME:?message}` and `${NAME?message}` (with `:`, an empty value counts
/// as unset). Stricter than Compose in one way: a reference with neither a default nor a
/// message is an error here (Compose would quietly substitute an empty string).
fn interpolate(text: &str, env: &Env) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let mut depth = 1;
            let end = body
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            out.push_str(&expand(&body[..end], env)?);
            rest = &body[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                return Err(format!("invalid interpolation format in {text:?}"));
            }
            out.push_str(&expand(&after[..len], env)?);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn expand(body: &str, env: &Env) -> Result<String, String> {
    let len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let (name, op) = body.split_at(len);
    let set = |empty_is_unset: bool| {
        env.get(name)
            .filter(|v| !(empty_is_unset && v.is_empty()))
            .cloned()
    };
    let (value, fallback) = if let Some(default) = op.strip_prefix(":-") {
        (set(true), Ok(default))
    } else if let Some(default) = op.strip_prefix('-') {
        (set(false), Ok(default))
    } else if let Some(message) = op.strip_prefix(":?") {
        (set(true), Err(message))
    } else if let Some(message) = op.strip_prefix('?') {
        (set(false), Err(message))
    } else if op.is_empty() {
        (set(false), Err(""))
    } else {
        return Err(format!("unsupported interpolation ${{{body}}}"));
    };
    match (value, fallback) {
        (Some(v), _) => Ok(v),
        (None, Ok(default)) => interpolate(default, env),
        (None, Err("")) => Err(format!(
            "{name} is used without a default or a required message"
        )),
        (None, Err(message)) => Err(format!(
            "required variable {name} is missing a value: {message}"
        )),
    }
}

/// docker-compose.yml as Compose sees it with this `.env`: every string value interpolated
/// (YAML aliases are already resolved).
fn compose(env: &Env) -> Result<Value, String> {
    fn walk(value: &mut Value, env: &Env) -> Result<(), String> {
        match value {
            Value::String(s) => *s = interpolate(s, env)?,
            Value::Sequence(items) => {
                for item in items {
                    walk(item, env)?;
                }
            }
            Value::Mapping(map) => {
                for (_, item) in map.iter_mut() {
                    walk(item, env)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut doc = yaml("docker-compose.yml");
    walk(&mut doc, env)?;
    Ok(doc)
}

fn user_compose() -> Value {
    compose(&user_env()).unwrap_or_else(|e| {
        panic!(
            "docker-compose.yml does not interpolate with the .env that .env.example describes: {e}"
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Reading the compose file.

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

fn service_names(compose: &Value) -> BTreeSet<String> {
    compose["services"]
        .as_mapping()
        .expect("services is a mapping")
        .keys()
        .map(scalar)
        .collect()
}

/// A service's `environment`, in either of its two forms.
fn environment(svc: &Value) -> Env {
    match &svc["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => Env::new(),
        other => panic!("environment must be a mapping or a list, got {other:?}"),
    }
}

/// `ports` in the short syntax: (host address, published port, container port).
fn ports(svc: &Value) -> Vec<(String, u16, u16)> {
    let Some(items) = svc["ports"].as_sequence() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| {
            let text = scalar(item);
            let parts: Vec<&str> = text.split(':').collect();
            let [address, published, target] = parts[..] else {
                panic!("port {text:?} is not ADDRESS:PUBLISHED:TARGET");
            };
            let port = |p: &str| p.parse::<u16>().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            (address.to_owned(), port(published), port(target))
        })
        .collect()
}

/// `volumes` in the short syntax: (source, target, read-only).
fn mounts(svc: &Value) -> Vec<(String, String, bool)> {
    let Some(items) = svc["volumes"].as_sequence() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| {
            let text = scalar(item);
            let parts: Vec<&str> = text.split(':').collect();
            match parts[..] {
                [source, target] => (source.to_owned(), target.to_owned(), false),
                [source, target, mode] => (source.to_owned(), target.to_owned(), mode == "ro"),
                _ => panic!("volume {text:?} is not SOURCE:TARGET[:MODE]"),
            }
        })
        .collect()
}

/// The condition a service waits for before starting `on`, if it depends on it.
fn depends_on(svc: &Value, on: &str) -> Option<String> {
    match &svc["depends_on"] {
        Value::Mapping(map) => map.get(on).map(|d| scalar(&d["condition"])),
        Value::Sequence(items) => items
            .iter()
            .any(|i| scalar(i) == on)
            .then(|| "service_started".to_owned()),
        _ => None,
    }
}

/// Parses a service's environment with its real configuration code, recording what it reads,
/// and checks that it reads every variable the compose file sets.
fn parse<C>(
    name: &str,
    env: &Env,
    from_env: impl FnOnce(&Vars<&Source>) -> Result<C, ConfigError>,
) -> C {
    let source = Recorded::new(env.clone().into_iter().collect::<Vec<_>>());
    let config = from_env(&Vars(&source))
        .unwrap_or_else(|e| panic!("{name} refuses docker-compose.yml's environment: {e}"));
    let read = source.names();
    let unread: Vec<&String> = env
        .keys()
        .filter(|k| !read.contains(*k) && !telemetry::VARS.contains(&k.as_str()))
        .collect();
    assert!(
        unread.is_empty(),
        "docker-compose.yml sets {unread:?} for {name}, which never reads them \
         (its configuration reads {read:?}, its logging {:?})",
        telemetry::VARS
    );
    config
}

fn assert_serves_on(compose: &Value, name: &str, port: u16) {
    let published = ports(service(compose, name));
    assert_eq!(
        published,
        [("127.0.0.1".to_owned(), port, port)],
        "{name} listens on {port} (its PORT) and is published there on loopback"
    );
}

// ---------------------------------------------------------------------------------------------
// dclint.

fn dclint() -> PathBuf {
    let path = std::env::var_os("TEST_DCLINT").unwrap_or_else(|| {
        panic!(
            "TEST_DCLINT is not set: it names the dclint binary (npm package dclint) that \
             validates docker-compose.yml; `bash tests/run.sh` installs it into \
             ~/.cache/chat-backend and sets it"
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "TEST_DCLINT={} is not a file: install dclint (npm package dclint) there",
        path.display()
    );
    path
}

/// dclint's JSON report on one file: (rule, type, message) of each finding.
fn lint(file: &Path) -> Vec<(String, String, String)> {
    let out = Command::new(dclint())
        .arg("--config")
        .arg(repo().join(".dclintrc"))
        .args([
            "--formatter",
            "json",
            "--max-warnings",
            "0",
            "--color",
            "false",
        ])
        .arg(file)
        .current_dir(repo())
        .output()
        .expect("dclint runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "dclint printed no JSON report ({e}); stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings: Vec<_> = report
        .as_array()
        .expect("a report per file")
        .iter()
        .flat_map(|f| f["messages"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            let field = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
            (field("rule"), field("type"), field("message"))
        })
        .collect();
    assert_eq!(
        out.status.success(),
        findings.is_empty(),
        "dclint's exit status agrees with its report: {findings:?}"
    );
    findings
}

#[test]
fn dclint_finds_nothing() {
    let findings = lint(&repo().join("docker-compose.yml"));
    assert!(
        findings.is_empty(),
        "dclint on docker-compose.yml:\n{}",
        findings
            .iter()
            .map(|(rule, kind, message)| format!("  {kind} {rule}: {message}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn dclint_refuses_what_the_specification_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let original = read("docker-compose.yml");
    let cases = [
        // A misspelt key: the schema allows no unknown service keys.
        (
            original.replacen(
                "    restart: unless-stopped",
                "    restarts: unless-stopped",
                1,
            ),
            "invalid-schema",
        ),
        // A condition Compose does not know.
        (
            original.replacen("condition: service_healthy", "condition: healthy", 1),
            "invalid-schema",
        ),
        // The obsolete top-level version.
        (format!("version: '3.8'\n{original}"), "no-version-field"),
    ];
    for (i, (text, rule)) in cases.iter().enumerate() {
        assert_ne!(text, &original, "case {i} changes the file");
        let file = dir.path().join(format!("case{i}.yml"));
        std::fs::write(&file, text).unwrap();
        let findings = lint(&file);
        assert!(
            findings
                .iter()
                .any(|(r, kind, _)| r == rule && kind == "error"),
            "case {i}: dclint should report {rule}, got {findings:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The services' environments.

#[test]
fn every_variable_set_is_read_and_each_service_has_what_it_needs() {
    let compose = user_compose();
    let env = |name| environment(service(&compose, name));

    let auth = parse("auth-service", &env("auth-service"), |v| {
        auth_service::Config::from_env(v)
    });
    // The configuration requires a database unless CHAT_DEV_MODE (never in compose).
    assert!(auth.database_url.is_some() && !auth.common.dev_mode);
    assert_eq!(auth.database_name.as_deref(), Some("auth"));
    assert_serves_on(&compose, "auth-service", auth.common.bind.port());

    let chat = parse("chat-service", &env("chat-service"), |v| {
        chat_service::Config::from_env(v)
    });
    assert!(chat.database_url.is_some() && chat.rabbitmq_url.is_some() && !chat.common.dev_mode);
    assert_eq!(chat.database_name.as_deref(), Some("chat"));
    assert_serves_on(&compose, "chat-service", chat.common.bind.port());

    let ws = parse("websocket-service", &env("websocket-service"), |v| {
        websocket_service::Config::from_env(v)
    });
    assert!(ws.rabbitmq_url.is_some() && !ws.common.dev_mode);
    assert_serves_on(&compose, "websocket-service", ws.common.bind.port());

    // The defaults (localhost) would be wrong in a container: chat-service calls auth-service,
    // websocket-service calls chat-service, each by its compose name and port.
    let port_of = |url: &str| reqwest::Url::parse(url).unwrap().port_or_known_default();
    assert_eq!(
        port_of(&chat.auth_service_url),
        Some(auth.common.bind.port()),
        "AUTH_SERVICE_URL uses auth-service's port"
    );
    assert_eq!(
        port_of(&ws.chat_service_url),
        Some(chat.common.bind.port()),
        "CHAT_SERVICE_URL uses chat-service's port"
    );
    // One JWT secret for the three, the one from .env.
    let secret = user_env()["JWT_SECRET"].clone();
    for name in SERVICES {
        assert_eq!(env(name)["JWT_SECRET"], secret, "{name}'s JWT_SECRET");
    }
}

#[tokio::test]
async fn urls_reach_the_compose_services_with_the_stores_credentials() {
    let compose = user_compose();
    let services = service_names(&compose);
    let mongo = environment(service(&compose, "mongo"));
    let rabbitmq = environment(service(&compose, "rabbitmq"));
    for name in SERVICES {
        let svc = service(&compose, name);
        let env = environment(svc);
        let waits_for = |host: &str, condition: &str| {
            assert!(
                services.contains(host),
                "{name} calls {host}, not a compose service"
            );
            let found = depends_on(svc, host);
            assert!(
                found.as_deref() == Some(condition)
                    || (condition == "service_started" && found.is_some()),
                "{name} must wait for {host} ({condition}), has {found:?}"
            );
        };
        if let Some(url) = env.get("DATABASE_URL") {
            let options = mongodb::options::ClientOptions::parse(url)
                .await
                .unwrap_or_else(|e| panic!("{name}'s DATABASE_URL: {e}"));
            let hosts: Vec<String> = options.hosts.iter().map(ToString::to_string).collect();
            assert_eq!(hosts, ["mongo:27017"], "{name}'s DATABASE_URL");
            let credential = options
                .credential
                .expect("DATABASE_URL carries credentials");
            assert_eq!(
                credential.username,
                mongo.get("MONGO_INITDB_ROOT_USERNAME").cloned()
            );
            assert_eq!(
                credential.password,
                mongo.get("MONGO_INITDB_ROOT_PASSWORD").cloned()
            );
            assert_eq!(
                credential.source.as_deref(),
                Some("admin"),
                "the root user's database"
            );
            waits_for("mongo", "service_healthy");
        }
        if let Some(url) = env.get("RABBITMQ_URL") {
            let uri: lapin::uri::AMQPUri = url
                .parse()
                .unwrap_or_else(|e| panic!("{name}'s RABBITMQ_URL: {e}"));
            assert_eq!(
                (
                    uri.authority.host.as_str(),
                    uri.authority.port,
                    uri.vhost.as_str()
                ),
                ("rabbitmq", 5672, "/")
            );
            assert_eq!(
                Some(&uri.authority.userinfo.username),
                rabbitmq.get("RABBITMQ_DEFAULT_USER")
            );
            assert_eq!(
                Some(&uri.authority.userinfo.password),
                rabbitmq.get("RABBITMQ_DEFAULT_PASS")
            );
            assert_ne!(
                uri.authority.userinfo.username, "guest",
                "not RabbitMQ's guest"
            );
            waits_for("rabbitmq", "service_healthy");
        }
        for url in ["AUTH_SERVICE_URL", "CHAT_SERVICE_URL"]
            .iter()
            .filter_map(|name| env.get(*name))
        {
            let url = reqwest::Url::parse(url).unwrap();
            let host = url.host_str().unwrap();
            let port = environment(service(&compose, host))["PORT"].clone();
            assert_eq!(
                url.port_or_known_default().map(|p| p.to_string()),
                Some(port)
            );
            waits_for(host, "service_started");
        }
    }
}

#[test]
fn secrets_come_from_the_env_file_and_a_missing_one_stops_compose() {
    let text = read("docker-compose.yml");
    let (values, documented) = env_example();
    let mut referenced = BTreeSet::new();
    let mut required = BTreeSet::new();
    for (i, _) in text.match_indices("${") {
        let body = &text[i + 2..];
        let len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        referenced.insert(body[..len].to_owned());
        if body[len..].starts_with(":?") {
            required.insert(body[..len].to_owned());
        }
    }
    let undocumented: Vec<_> = referenced.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        ".env.example should document {undocumented:?}"
    );
    assert_eq!(
        required,
        ["JWT_SECRET", "MONGO_ROOT_PASSWORD", "RABBITMQ_PASSWORD"]
            .map(String::from)
            .into(),
        "the secrets Compose requires"
    );
    for name in &required {
        assert_eq!(
            values.get(name).map(String::as_str),
            Some(""),
            ".env.example leaves {name} empty (no secret committed)"
        );
        let mut unset = user_env();
        unset.remove(name);
        let mut empty = user_env();
        empty.insert(name.clone(), String::new());
        for env in [unset, empty] {
            let err = compose(&env).expect_err("Compose stops without the secret");
            assert!(
                err.contains(name.as_str()) && err.contains(".env"),
                "the message names {name} and .env: {err}"
            );
        }
    }
    assert!(
        compose(&values).is_err(),
        ".env.example as committed is refused"
    );
}

// ---------------------------------------------------------------------------------------------
// Images, stores, ports.

#[test]
fn images_are_the_operators_and_the_dockerfiles_targets() {
    use chat_operator::plan::{MONGODB_IMAGE, RABBITMQ_IMAGE, SERVICE_IMAGE_REGISTRY};

    let compose = user_compose();
    assert!(
        compose.get("version").is_none(),
        "no obsolete top-level version"
    );
    let image = |(name, tag): (&str, &str)| format!("{name}:{tag}");
    assert_eq!(
        scalar(&service(&compose, "mongo")["image"]),
        image(MONGODB_IMAGE)
    );
    assert_eq!(
        scalar(&service(&compose, "rabbitmq")["image"]),
        image(RABBITMQ_IMAGE)
    );

    let dockerfile = read("Dockerfile");
    for name in SERVICES {
        let svc = service(&compose, name);
        assert_eq!(
            scalar(&svc["image"]),
            format!(
                "{SERVICE_IMAGE_REGISTRY}/{name}:{}",
                env!("CARGO_PKG_VERSION")
            ),
            "{name}'s image: the operator's name, the workspace version by default"
        );
        assert_eq!(scalar(&svc["build"]["context"]), ".");
        assert_eq!(scalar(&svc["build"]["target"]), name);
        assert!(
            dockerfile
                .lines()
                .any(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {name}"))),
            "the Dockerfile has a target {name}"
        );
        assert_eq!(
            scalar(&svc["pull_policy"]),
            "build",
            "{name} is built from this checkout"
        );
        // Distroless: nothing could run a healthcheck command inside the image.
        assert!(
            svc.get("healthcheck").is_none(),
            "{name} has no healthcheck"
        );
    }
}

#[test]
fn stores_are_healthchecked_data_in_named_volumes_ports_on_loopback() {
    let compose = user_compose();
    let names = service_names(&compose);
    let declared: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .expect("named volumes")
        .keys()
        .map(scalar)
        .collect();
    let mut published = BTreeSet::new();
    for name in &names {
        let svc = service(&compose, name);
        assert_eq!(
            scalar(&svc["restart"]),
            "unless-stopped",
            "{name}'s restart policy"
        );
        for (address, port, _) in ports(svc) {
            assert_eq!(
                address, "127.0.0.1",
                "{name} publishes {port} on loopback only"
            );
            published.insert(port);
        }
        for (source, target, _) in mounts(svc) {
            if source.starts_with('.') {
                assert!(
                    repo().join(&source).exists(),
                    "{name} mounts {source}, which is missing"
                );
            } else {
                assert!(
                    declared.contains(&source),
                    "{name} mounts {source} at {target}: undeclared"
                );
            }
        }
    }
    for port in SEED_PORTS {
        assert!(published.contains(&port), "port {port} is published");
    }
    for store in ["mongo", "rabbitmq"] {
        let svc = service(&compose, store);
        let test = svc["healthcheck"]["test"]
            .as_sequence()
            .expect("a healthcheck");
        assert_eq!(
            scalar(&test[0]),
            "CMD",
            "{store}'s healthcheck runs a command of the image"
        );
        assert!(
            mounts(svc)
                .iter()
                .any(|(source, _, _)| declared.contains(source)),
            "{store} keeps its data in a named volume"
        );
        assert!(svc.get("profiles").is_none(), "{store} always runs");
    }
}

// ---------------------------------------------------------------------------------------------
// The monitoring profile.

fn in_monitoring_profile(compose: &Value, name: &str) -> bool {
    service(compose, name)["profiles"]
        .as_sequence()
        .is_some_and(|p| p.iter().any(|p| scalar(p) == "monitoring"))
}

#[test]
fn prometheus_scrapes_every_service_rabbitmq_and_itself() {
    let compose = user_compose();
    assert!(in_monitoring_profile(&compose, "prometheus"));
    let prometheus = service(&compose, "prometheus");
    assert!(
        mounts(prometheus).contains(&(
            "./monitoring/prometheus.yml".into(),
            "/etc/prometheus/prometheus.yml".into(),
            true
        )),
        "Prometheus reads monitoring/prometheus.yml, read-only"
    );
    let own_port = ports(prometheus)[0].2;

    let config = yaml("monitoring/prometheus.yml");
    let interval = scalar(&config["global"]["scrape_interval"]);
    assert!(
        chat_common::config::parse_duration(&interval).is_some(),
        "global.scrape_interval {interval:?} is a duration"
    );
    let mut jobs = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs is a list")
    {
        let name = scalar(&job["job_name"]);
        assert!(jobs.insert(name.clone()), "job_name {name} is unique");
        for group in job["static_configs"].as_sequence().expect("static_configs") {
            for target in group["targets"].as_sequence().expect("targets") {
                targets.insert(scalar(target));
            }
        }
    }

    let mut expected: BTreeSet<String> = SERVICES
        .iter()
        .map(|name| {
            // Each service serves /metrics on its METRICS_PORT (its API port otherwise).
            let env = environment(service(&compose, name));
            let port = env.get("METRICS_PORT").unwrap_or(&env["PORT"]);
            format!("{name}:{port}")
        })
        .collect();
    expected.insert(format!("rabbitmq:{RABBITMQ_METRICS_PORT}"));
    expected.insert(format!("localhost:{own_port}"));
    assert_eq!(targets, expected, "Prometheus's targets");
    let names = service_names(&compose);
    for target in &targets {
        let host = target.split(':').next().unwrap();
        assert!(
            host == "localhost" || names.contains(host),
            "{target} is a compose service"
        );
    }
}

/// Grafana's provisioning files of one kind (`datasources`, `dashboards`), parsed.
fn provisioning(kind: &str) -> Vec<Value> {
    let dir = repo().join("monitoring/grafana/provisioning").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let doc: Value = serde_yaml::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", f.display()));
            assert_eq!(
                doc["apiVersion"].as_u64(),
                Some(1),
                "{}: apiVersion 1",
                f.display()
            );
            doc
        })
        .collect()
}

/// The provisioned Prometheus datasource's uid.
fn datasource_uid(compose: &Value) -> String {
    let datasources: Vec<Value> = provisioning("datasources")
        .iter()
        .flat_map(|d| d["datasources"].as_sequence().cloned().unwrap_or_default())
        .collect();
    assert_eq!(datasources.len(), 1, "one datasource: {datasources:?}");
    let ds = &datasources[0];
    assert_eq!(scalar(&ds["type"]), "prometheus");
    let url = reqwest::Url::parse(&scalar(&ds["url"])).unwrap();
    let host = url.host_str().unwrap();
    assert_eq!(host, "prometheus", "the compose Prometheus");
    assert_eq!(
        url.port_or_known_default(),
        Some(ports(service(compose, host))[0].2),
        "Prometheus's port"
    );
    scalar(&ds["uid"])
}

#[test]
fn grafana_is_provisioned_with_prometheus_and_the_charts_dashboard() {
    let compose = user_compose();
    assert!(in_monitoring_profile(&compose, "grafana"));
    let grafana = service(&compose, "grafana");
    assert_eq!(
        depends_on(grafana, "prometheus").as_deref(),
        Some("service_healthy")
    );
    let mounts = mounts(grafana);
    assert!(
        mounts.contains(&(
            "./monitoring/grafana/provisioning".into(),
            GRAFANA_PROVISIONING.into(),
            true
        )),
        "Grafana reads monitoring/grafana/provisioning, read-only: {mounts:?}"
    );
    datasource_uid(&compose);

    let providers: Vec<Value> = provisioning("dashboards")
        .iter()
        .flat_map(|d| d["providers"].as_sequence().cloned().unwrap_or_default())
        .collect();
    assert_eq!(providers.len(), 1, "one dashboard provider: {providers:?}");
    assert_eq!(scalar(&providers[0]["type"]), "file");
    let folder = scalar(&providers[0]["options"]["path"]);
    assert!(
        mounts.contains(&(
            "./charts/chat/dashboards/chat-backend.json".into(),
            format!("{folder}/chat-backend.json"),
            true
        )),
        "the chart's dashboard is mounted read-only into the provider's folder {folder}: {mounts:?}"
    );
}

#[test]
fn the_mounted_dashboard_uses_the_provisioned_datasource() {
    fn uids(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(uid) = map.get("datasource").and_then(|d| d.get("uid")) {
                    out.push(uid.as_str().unwrap_or_default().to_owned());
                }
                map.values().for_each(|v| uids(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| uids(v, out)),
            _ => {}
        }
    }
    let compose = user_compose();
    let path = "charts/chat/dashboards/chat-backend.json";
    assert!(
        repo().join(path).is_file(),
        "{path} is missing: docker-compose.yml mounts it into Grafana"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{path} has panels"
    );
    let provisioned = datasource_uid(&compose);
    let mut found = Vec::new();
    uids(&dashboard, &mut found);
    // "-- Grafana --" is Grafana's built-in source of the dashboard's own annotations.
    for uid in found {
        assert!(
            uid.starts_with('$') || uid == provisioned || uid == "-- Grafana --",
            "{path} queries datasource {uid:?}: neither a variable nor the provisioned {provisioned:?}"
        );
    }
}
