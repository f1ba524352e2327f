//! The README's table of environment variables ("Configuration: every environment variable") is
//! what the code reads: each service's configuration is parsed over a recording source, and the
//! names it asks for are compared, service by service, with the table's rows.

use std::collections::{BTreeMap, BTreeSet};

use chat_common::{
    config::{ConfigError, Recorded, Vars},
    telemetry,
};

type Source = Recorded<Vec<(String, String)>>;

/// Every name `from_env` asks for, over a development environment (so nothing is missing).
fn read_by<C>(from_env: impl FnOnce(&Vars<Source>) -> Result<C, ConfigError>) -> BTreeSet<String> {
    let vars = Vars(Recorded::new(vec![
        ("CHAT_DEV_MODE".to_owned(), "true".to_owned()),
        ("JWT_SECRET".to_owned(), "s".repeat(40)),
    ]));
    from_env(&vars).expect("a development configuration");
    let mut names = vars.0.names();
    // Logging reads its variables straight from the process environment.
    names.extend(telemetry::VARS.iter().map(|n| (*n).to_owned()));
    names
}

/// Read only in a mode the recording environment does not enable (Ed25519 tokens).
const CONDITIONAL: [&str; 1] = ["JWT_KEY_ID"];

/// The repository's top folder (this crate is `tests/`).
fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("..")
}

/// The table: for each service column word, the variables whose row names it.
fn table() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Configuration: every environment variable\n")
        .nth(1)
        .expect("the README has the section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut by_service: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let names: Vec<&str> = cells[1].split('`').skip(1).step_by(2).collect();
        for service in cells[2].split_whitespace() {
            by_service
                .entry(service.to_owned())
                .or_default()
                .extend(names.iter().map(|n| (*n).to_owned()));
        }
    }
    by_service
}

fn same(service: &str, read: &BTreeSet<String>, listed: &BTreeSet<String>) {
    let unlisted: Vec<&String> = read.difference(listed).collect();
    let unread: Vec<&String> = listed
        .difference(read)
        .filter(|n| !CONDITIONAL.contains(&n.as_str()))
        .collect();
    assert!(
        unlisted.is_empty() && unread.is_empty(),
        "README table vs {service}'s code: read but not in the table {unlisted:?}; in the table but never read {unread:?}"
    );
}

#[test]
fn the_readme_lists_exactly_the_variables_each_service_reads() {
    let table = table();
    let auth = read_by(auth_service::Config::from_env);
    let chat = read_by(chat_service::Config::from_env);
    let ws = read_by(websocket_service::Config::from_env);
    same("auth-service", &auth, &table["auth"]);
    same("chat-service", &chat, &table["chat"]);
    same("websocket-service", &ws, &table["websocket"]);
    // The stack reads what its three services read, except what it sets for them, plus its own.
    let mut stack: BTreeSet<String> = auth.iter().chain(&chat).chain(&ws).cloned().collect();
    for set in chat_stack::SETS_FOR_ITS_SERVICES {
        stack.remove(set);
    }
    stack.extend(chat_stack::OWN_VARS.iter().map(|n| (*n).to_owned()));
    same("chat-stack", &stack, &table["stack"]);
}

#[test]
fn a_configuration_fails_naming_the_variable_and_never_shows_credentials() {
    let env = |pairs: &[(&str, &str)]| {
        Vars(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>(),
        )
    };
    let secret = "s".repeat(40);
    let err = auth_service::Config::from_env(&env(&[("JWT_SECRET", &secret)])).unwrap_err();
    assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    let err = websocket_service::Config::from_env(&env(&[("JWT_SECRET", &secret)])).unwrap_err();
    assert!(err.to_string().contains("RABBITMQ_URL"), "{err}");
    for (name, zero) in [
        ("WS_QUEUE", "0"),
        ("WS_PING_INTERVAL", "0s"),
        ("REQUEST_TIMEOUT", "0"),
    ] {
        let err = websocket_service::Config::from_env(&env(&[
            ("JWT_SECRET", &secret),
            ("RABBITMQ_URL", "amqp://mq:5672"),
            (name, zero),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
    let auth = auth_service::Config::from_env(&env(&[
        ("JWT_SECRET", &secret),
        ("DATABASE_URL", "mongodb://root:hunter2@db:27017/auth"),
    ]))
    .unwrap();
    let ws = websocket_service::Config::from_env(&env(&[
        ("JWT_SECRET", &secret),
        ("RABBITMQ_URL", "amqp://chat:hunter2@mq:5672/%2f"),
    ]))
    .unwrap();
    for shown in [format!("{auth:?}"), format!("{ws:?}")] {
        assert!(
            !shown.contains("hunter2") && !shown.contains(&secret),
            "{shown}"
        );
    }
}

/// One line of a service's `.env.example`: `NAME=value` is set for a production start,
/// `# NAME=value` documents the default the code uses when it is unset.
struct Example {
    set: Vec<(String, String)>,
    defaults: Vec<(String, String)>,
}

fn example(service_dir: &str) -> Example {
    let root = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let path = root
        .join("../services")
        .join(service_dir)
        .join(".env.example");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let assignment = |line: &str| {
        let (name, value) = line.split_once('=')?;
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        is_name.then(|| (name.to_owned(), value.to_owned()))
    };
    let mut example = Example {
        set: Vec::new(),
        defaults: Vec::new(),
    };
    for line in text.lines() {
        if let Some(commented) = line.strip_prefix("# ") {
            example.defaults.extend(assignment(commented));
        } else {
            example.set.extend(assignment(line));
        }
    }
    example
}

/// Each service's `.env.example` names exactly the variables it reads; with its required empty
/// values filled in it is a valid configuration; and every default it shows is the code's: setting
/// it changes nothing.
fn check_example<C: std::fmt::Debug>(
    service_dir: &str,
    from_env: impl Fn(&Vars<Vec<(String, String)>>) -> Result<C, ConfigError>,
    read: &BTreeSet<String>,
) {
    let example = example(service_dir);
    let listed: BTreeSet<String> = example
        .set
        .iter()
        .chain(&example.defaults)
        .map(|(n, _)| n.clone())
        .collect();
    same(
        &format!("services/{service_dir}/.env.example"),
        read,
        &listed,
    );
    let base: Vec<(String, String)> = example
        .set
        .iter()
        .map(|(n, v)| match (n.as_str(), v.is_empty()) {
            ("JWT_SECRET", true) => (n.clone(), "s".repeat(40)),
            (_, true) => panic!("{service_dir}: {n} is set empty and the test has no value for it"),
            _ => (n.clone(), v.clone()),
        })
        .collect();
    let start = from_env(&Vars(base.clone()))
        .unwrap_or_else(|e| panic!("services/{service_dir}/.env.example: {e}"));
    // RUST_LOG is read by the log filter from the process environment, not by `from_env`.
    for (name, value) in example
        .defaults
        .iter()
        .filter(|(n, v)| !v.is_empty() && n != "RUST_LOG")
    {
        let mut with = base.clone();
        with.push((name.clone(), value.clone()));
        let shown = from_env(&Vars(with))
            .unwrap_or_else(|e| panic!("services/{service_dir}/.env.example: {name}={value}: {e}"));
        assert_eq!(
            format!("{shown:?}"),
            format!("{start:?}"),
            "services/{service_dir}/.env.example shows {name}={value}, which is not the code's default"
        );
    }
}

#[test]
fn each_services_env_example_is_what_its_code_reads_with_its_defaults() {
    check_example(
        "auth",
        auth_service::Config::from_env,
        &read_by(auth_service::Config::from_env),
    );
    check_example(
        "chat",
        chat_service::Config::from_env,
        &read_by(chat_service::Config::from_env),
    );
    check_example(
        "websocket",
        websocket_service::Config::from_env,
        &read_by(websocket_service::Config::from_env),
    );
}

/// The benchmark lifts the same limits as the tests (the defaults protect a public deployment).
#[test]
fn the_benchmark_lifts_the_same_limits_as_the_tests() {
    let script = std::fs::read_to_string(repo_root().join("tests/bench/bench.sh")).unwrap();
    let line = script
        .lines()
        .find_map(|l| l.strip_prefix("LIMITS=("))
        .expect("bench.sh sets LIMITS=(...)")
        .trim_end_matches(')');
    let in_script: BTreeSet<String> = line.split_whitespace().map(str::to_owned).collect();
    let in_tests: BTreeSet<String> = chat_common::testing::LOAD_TEST_LIMITS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(in_script, in_tests);
}
