//! The deployment files and the server's configuration must not drift apart: every variable
//! `docker/docker-compose.yml` and `docker/.env.example` set is one the server reads, with a
//! value it accepts, every other setting shows in `.env.example` at the default the server
//! declares ([`Config::SETTINGS`]), the container's stop grace period outlasts the shutdown
//! flush, and every Redis node persists as the README's guarantees require.

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

/// `# NAME=value` lines of an env file: settings shown at their default, not set.
fn commented_out(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix('#')?.trim().split_once('='))
        .filter(|(name, _)| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
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
fn every_other_setting_shows_in_the_env_example_at_its_declared_default() {
    let text = docker_file(".env.example");
    let (set, shown) = (env_file(&text), commented_out(&text));
    let (compose_env, _) = app_service(&docker_file("docker-compose.yml"));

    for setting in Config::SETTINGS {
        let name = setting.name;
        let places = [&set, &shown, &compose_env]
            .into_iter()
            .filter(|vars| vars.contains_key(name))
            .count();
        assert_eq!(
            places, 1,
            "{name}: set it in .env.example or docker-compose.yml, or show it commented out in .env.example at its default; once"
        );
        if let Some(value) = shown.get(name) {
            assert_eq!(
                *value,
                setting.default_value().unwrap_or_default(),
                "`# {name}=` in .env.example is not the server's default"
            );
        }
    }
    for name in shown.keys() {
        assert!(
            KNOWN_VARIABLES.contains(&name.as_str()),
            "`# {name}=` in .env.example is not a setting the server reads"
        );
    }
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

/// A top-level `x-*` block or a service of the compose file: what it sets itself, and the
/// anchor it merges (`<<: *name`) for the rest.
#[derive(Debug, Default)]
struct ComposeBlock {
    name: String,
    anchor: Option<String>,
    merges: Option<String>,
    image: Option<String>,
    command: Option<Vec<String>>,
}

/// The `x-*` blocks and the services of a compose file, in file order. Knows the subset
/// of YAML the file uses: two-space indents, `&anchor` and `<<: *anchor`, and `command:`
/// as a flow sequence, a string or a block sequence.
fn compose_blocks(text: &str) -> (Vec<ComposeBlock>, Vec<ComposeBlock>) {
    let mut extensions = Vec::new();
    let mut services: Vec<ComposeBlock> = Vec::new();
    // The block being read (a service, or else an `x-*` block) and the indent of its fields.
    let mut current: Option<(bool, usize)> = None;
    let mut in_services = false;
    let mut in_command_list = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let block = match current {
            Some((true, _)) => services.last_mut(),
            Some((false, _)) => extensions.last_mut(),
            None => None,
        };
        if in_command_list && let Some(item) = trimmed.strip_prefix("- ") {
            if let Some(block) = block {
                block
                    .command
                    .get_or_insert_with(Vec::new)
                    .push(unquote(item));
            }
            continue;
        }
        in_command_list = false;
        let (key, value) = trimmed.split_once(':').unwrap_or((trimmed, ""));
        let (key, value) = (key.trim(), value.trim());
        let new_block = |name: &str| ComposeBlock {
            name: name.to_owned(),
            anchor: value.strip_prefix('&').map(str::to_owned),
            ..ComposeBlock::default()
        };
        if indent == 0 {
            in_services = key == "services";
            current = None;
            if key.starts_with("x-") {
                extensions.push(new_block(key));
                current = Some((false, 2));
            }
            continue;
        }
        if in_services && indent == 2 {
            services.push(new_block(key));
            current = Some((true, 4));
            continue;
        }
        let (Some((_, fields)), Some(block)) = (current, block) else {
            continue;
        };
        if indent != fields {
            continue;
        }
        match key {
            "<<" => block.merges = value.strip_prefix('*').map(str::to_owned),
            "image" => block.image = Some(unquote(value)),
            "command" if value.is_empty() => in_command_list = true,
            "command" => {
                block.command = Some(match value.strip_prefix('[') {
                    Some(list) => list.trim_end_matches(']').split(',').map(unquote).collect(),
                    None => unquote(value)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                })
            }
            _ => {}
        }
    }
    (extensions, services)
}

fn unquote(value: &str) -> String {
    value.trim().trim_matches('"').trim_matches('\'').to_owned()
}

#[test]
fn every_redis_node_of_the_compose_deployment_runs_appendonly_with_appendfsync_always() {
    let text = docker_file("docker-compose.yml");
    let (extensions, services) = compose_blocks(&text);
    let (app_env, _) = app_service(&text);
    let node_hosts: Vec<String> = tally_redis::RedisConfig::from_urls(&app_env["REDIS_NODES"])
        .expect("the compose REDIS_NODES parses")
        .nodes
        .iter()
        .map(|node| node.host().to_owned())
        .collect();

    let mut checked = Vec::new();
    for service in &services {
        // A service's own settings win over those it merges from an anchor.
        let base = service.merges.as_deref().and_then(|anchor| {
            extensions
                .iter()
                .find(|block| block.anchor.as_deref() == Some(anchor))
        });
        let image = service
            .image
            .as_ref()
            .or_else(|| base.and_then(|b| b.image.as_ref()));
        let command = service
            .command
            .as_ref()
            .or_else(|| base.and_then(|b| b.command.as_ref()))
            .cloned()
            .unwrap_or_default();
        let is_redis = node_hosts.contains(&service.name)
            || image.is_some_and(|image| image.starts_with("redis"))
            || command
                .first()
                .is_some_and(|program| program == "redis-server");
        if !is_redis {
            continue;
        }
        let has = |option: &str, value: &str| {
            command
                .windows(2)
                .any(|pair| pair[0] == option && pair[1] == value)
        };
        assert!(
            has("--appendonly", "yes") && has("--appendfsync", "always"),
            "Redis service {} runs {command:?}; the README's guarantees need --appendonly yes --appendfsync always",
            service.name
        );
        checked.push(service.name.clone());
    }
    for host in &node_hosts {
        assert!(
            checked.contains(host),
            "REDIS_NODES names {host}, which is not a Redis service of the compose file ({checked:?})"
        );
    }
}
