//! The deployment files and the server's configuration must not drift apart: every variable
//! `docker/docker-compose.yml` and `docker/.env.example` set is one the server reads, with a
//! value it accepts, and the container's stop grace period outlasts the shutdown flush.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tally_server::{Config, KNOWN_VARIABLES};

fn docker_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docker")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `KEY=VALUE` lines of an env file (comments and blanks skipped).
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// The `environment:` mapping of the `app` service, and its `stop_grace_period`.
fn app_service(text: &str) -> (BTreeMap<String, String>, Option<String>) {
    let mut in_app = false;
    let mut in_env = false;
    let mut env = BTreeMap::new();
    let mut grace = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent == 2 {
            in_app = trimmed == "app:";
            continue;
        }
        if !in_app || indent < 4 {
            in_env = false;
            continue;
        }
        if indent == 4 {
            in_env = trimmed == "environment:";
            if let Some(value) = trimmed.strip_prefix("stop_grace_period:") {
                grace = Some(value.trim().to_owned());
            }
            continue;
        }
        if in_env && indent == 6 {
            let (key, value) = trimmed
                .split_once(':')
                .unwrap_or_else(|| panic!("not KEY: VALUE: {line}"));
            env.insert(
                key.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            );
        }
    }
    (env, grace)
}

#[test]
fn every_variable_of_the_compose_deployment_is_read_and_valid() {
    let dotenv = env_file(&docker_file(".env.example"));
    let (compose_env, _) = app_service(&docker_file("docker-compose.yml"));
    assert!(
        compose_env.contains_key("REDIS_NODES"),
        "compose sets the nodes: {compose_env:?}"
    );

    for name in dotenv.keys().chain(compose_env.keys()) {
        assert!(
            KNOWN_VARIABLES.contains(&name.as_str()),
            "{name} is set for the container but the server does not read it"
        );
    }
    // The environment wins over the env file, as in compose.
    let merged: Vec<(String, String)> = dotenv.into_iter().chain(compose_env).collect();
    let config = Config::from_vars(merged)
        .unwrap_or_else(|e| panic!("the deployment's config is refused: {e}"));
    assert_eq!(config.redis_nodes.len(), 3);
}

#[test]
fn the_stop_grace_period_outlasts_the_shutdown_flush() {
    let dotenv = env_file(&docker_file(".env.example"));
    let (_, grace) = app_service(&docker_file("docker-compose.yml"));
    let grace = grace.expect("the app sets stop_grace_period");
    let grace_secs: f64 = grace
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("{grace}"));
    let shutdown: f64 = dotenv["SHUTDOWN_TIMEOUT_SECONDS"].parse().unwrap();

    assert!(
        grace_secs > shutdown,
        "stop_grace_period {grace} must exceed SHUTDOWN_TIMEOUT_SECONDS {shutdown}"
    );
}
