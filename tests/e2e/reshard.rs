//! `tally-server reshard`: the real binary moves the counts when the node list changes.
//!
//! 100,000 pages and 100,000 URLs, each with a count no other has, are written on the
//! nodes of one list; `reshard --apply` moves them to another (a node added, a node
//! removed). Afterwards every count is on its owner in the new ring and nowhere else
//! (checked for every key, in Redis), a server started on the new list answers the counts
//! over HTTP as before and ranks `/stats/` as before; a run killed with SIGKILL at several
//! points is finished exactly by the next; a plan without `--apply` changes nothing; and
//! no password shows in any output.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_ring::Ring;
use tally_testkit::{RedisCluster, RedisNode, assert_password_hidden, ring};

use crate::support::{Server, one_at_a_time};

/// The binary: `tally_server::cli::main`, which runs `reshard` when asked.
const BINARY: &str = env!("CARGO_BIN_EXE_tally-e2e-server");

/// Pages seeded, and as many URLs.
const KEYS: usize = 100_000;

/// Longest a reshard run may take in these tests (a debug build on a loaded machine).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// `/stats/` pages compared before and after: `(offset, limit)`.
const STATS_PAGES: [(usize, usize); 4] = [(0, 100), (777, 100), (50_000, 100), (99_900, 100)];

/// Pages whose count is read over HTTP after the reshard.
const SAMPLED: usize = 2_000;

fn page(i: usize) -> String {
    format!("page-{i}")
}

/// A count no other page has.
fn page_count(i: usize) -> u64 {
    3 * i as u64 + 1
}

fn url(i: usize) -> String {
    format!("/api/shop/{}/{i}/", ["items", "users", "orders"][i % 3])
}

/// A count no other URL has.
fn url_count(i: usize) -> u64 {
    5 * i as u64 + 2
}

/// Where a count is: a page (`v`) or a URL (`u`).
type Key = (char, String);

fn seeded(keys: usize) -> HashMap<Key, u64> {
    (0..keys)
        .flat_map(|i| {
            [
                (('v', page(i)), page_count(i)),
                (('u', url(i)), url_count(i)),
            ]
        })
        .collect()
}

/// The nodes' names, the ring a server over them builds, and their `REDIS_NODES` (with
/// `password` in every URL when given).
fn list(nodes: &[&RedisNode], password: Option<&str>) -> (Ring<String>, String) {
    let names: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| match password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", n.port()),
            None => n.url(),
        })
        .collect();
    (ring(&names), urls.join(","))
}

/// Writes the first `keys` pages and URLs on their owners among `nodes`, 10,000 commands
/// a pipeline.
fn seed(nodes: &[&RedisNode], keys: usize) {
    let (ring, _) = list(nodes, None);
    let mut by_node: Vec<Vec<(Key, u64)>> = vec![Vec::new(); nodes.len()];
    for (key, count) in seeded(keys) {
        by_node[ring.lookup_index(key.1.as_bytes())].push((key, count));
    }
    for (node, keys) in nodes.iter().zip(by_node) {
        let mut conn = node
            .client()
            .expect("a client")
            .get_connection()
            .expect("a connection to seed");
        for chunk in keys.chunks(10_000) {
            let mut pipe = redis::pipe();
            for ((kind, key), count) in chunk {
                if *kind == 'v' {
                    pipe.cmd("SET").arg(format!("tally:v:{key}")).arg(count);
                } else {
                    pipe.cmd("ZADD").arg("tally:urls").arg(count).arg(key);
                }
                pipe.ignore();
            }
            pipe.query::<()>(&mut conn).expect("seeded");
        }
    }
}

/// Every page and URL on every node: key → the (node index, count) holding it.
fn holdings(nodes: &[&RedisNode]) -> HashMap<Key, Vec<(usize, u64)>> {
    let mut all: HashMap<Key, Vec<(usize, u64)>> = HashMap::new();
    for (index, node) in nodes.iter().enumerate() {
        let keys = node.keys("tally:v:*").expect("KEYS");
        for chunk in keys.chunks(10_000) {
            let values: Vec<u64> = node.query(redis::cmd("MGET").arg(chunk)).expect("MGET");
            for (key, value) in chunk.iter().zip(values) {
                let page = key.trim_start_matches("tally:v:").to_owned();
                all.entry(('v', page)).or_default().push((index, value));
            }
        }
        let members: Vec<(String, u64)> = node.zrange_counts("tally:urls").expect("ZRANGE");
        for (url, count) in members {
            all.entry(('u', url)).or_default().push((index, count));
        }
    }
    all
}

/// What the counts are once a reshard completes, from any state a kill leaves: the counts
/// on every node summed per key, less each marker (`tally:reshard:in`) whose key its
/// source still holds (that count is on the destination already). `nodes` are every node
/// of both lists.
fn effective(nodes: &[&RedisNode]) -> HashMap<Key, u64> {
    let held = holdings(nodes);
    let mut counts: HashMap<Key, u64> = held
        .iter()
        .map(|(key, on)| (key.clone(), on.iter().map(|(_, c)| c).sum()))
        .collect();
    let index_of: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.addr().to_string(), i))
        .collect();
    for node in nodes {
        let markers: Vec<(Vec<u8>, u64)> = node
            .query(redis::cmd("HGETALL").arg("tally:reshard:in"))
            .expect("HGETALL");
        for (field, count) in markers {
            let parts: Vec<&[u8]> = field.splitn(3, |b| *b == 0).collect();
            let [source, kind, key] = parts[..] else {
                panic!("a marker field {field:?}")
            };
            let source = index_of[&String::from_utf8_lossy(source).into_owned()];
            let key: Key = (
                if kind == b"v" { 'v' } else { 'u' },
                String::from_utf8_lossy(key).into_owned(),
            );
            let still_on_source = held
                .get(&key)
                .is_some_and(|on| on.iter().any(|(n, _)| *n == source));
            if still_on_source {
                *counts.get_mut(&key).expect("a marked key") -= count;
            }
        }
    }
    counts
}

/// Panics unless every seeded key is on its owner in `ring` (positions index `nodes`) with
/// its count and on no other node of `all`, no other key exists, and no marker is left.
fn assert_on_owners(all: &[&RedisNode], nodes: &[usize], ring: &Ring<String>, keys: usize) {
    let held = holdings(all);
    let expected = seeded(keys);
    let mut wrong: Vec<String> = expected
        .iter()
        .filter_map(|(key, count)| {
            let owner = nodes[ring.lookup_index(key.1.as_bytes())];
            match held.get(key).map(Vec::as_slice) {
                Some([(node, got)]) if *node == owner && got == count => None,
                other => Some(format!(
                    "{key:?}: expected {count} on node {owner}, found {other:?}"
                )),
            }
        })
        .collect();
    wrong.extend(
        held.iter()
            .filter(|(key, _)| !expected.contains_key(*key))
            .map(|(key, on)| format!("{key:?}: never seeded, found {on:?}")),
    );
    wrong.sort();
    assert!(
        wrong.is_empty(),
        "{} keys wrong, first ones:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    for node in all {
        assert_eq!(
            node.keys("tally:reshard:in").expect("KEYS"),
            Vec::<String>::new(),
            "markers left on {}",
            node.addr()
        );
    }
}

/// A `tally-server reshard` process: the binary with `args`, exactly `env` (and nothing
/// else of the test's environment), its output collected.
struct Reshard {
    child: Child,
    readers: Vec<JoinHandle<String>>,
    _dir: tempfile::TempDir,
}

impl Reshard {
    fn spawn(env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a working directory");
        let mut child = Command::new(BINARY)
            .arg("reshard")
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BINARY}: {e}"));
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        let readers = streams
            .into_iter()
            .map(|mut stream| {
                std::thread::spawn(move || {
                    let mut text = String::new();
                    let _ = stream.read_to_string(&mut text);
                    text
                })
            })
            .collect();
        Self {
            child,
            readers,
            _dir: dir,
        }
    }

    /// Runs to completion (within [`RUN_TIMEOUT`]): status, stdout, stderr.
    fn run(env: &[(&str, &str)], args: &[&str]) -> (ExitStatus, String, String) {
        let mut process = Self::spawn(env, args);
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            if let Some(status) = process.child.try_wait().expect("the reshard can be polled") {
                let (stdout, stderr) = process.output();
                return (status, stdout, stderr);
            }
            if Instant::now() > deadline {
                let _ = process.child.kill();
                let _ = process.child.wait();
                let (stdout, stderr) = process.output();
                panic!("reshard {args:?} still running after {RUN_TIMEOUT:?}:\n{stdout}\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (or nothing, when it already ended): whether it was still running.
    fn kill(&mut self) -> bool {
        let running = self.child.try_wait().expect("pollable").is_none();
        let _ = self.child.kill();
        let _ = self.child.wait();
        running
    }

    fn output(self) -> (String, String) {
        let mut texts = self
            .readers
            .into_iter()
            .map(|reader| reader.join().expect("a reader thread"));
        (
            texts.next().unwrap_or_default(),
            texts.next().unwrap_or_default(),
        )
    }
}

/// Runs a reshard that must succeed; its stdout and stderr.
fn reshard_ok(env: &[(&str, &str)], args: &[&str]) -> (String, String) {
    let (status, stdout, stderr) = Reshard::run(env, args);
    assert_eq!(
        status.code(),
        Some(0),
        "reshard {args:?}:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// The `/stats/` pages of [`STATS_PAGES`].
async fn stats_pages(server: &Server) -> Vec<Value> {
    let mut pages = Vec::new();
    for (offset, limit) in STATS_PAGES {
        let page = server
            .get_json(&format!("/stats/?offset={offset}&limit={limit}"))
            .await;
        assert_eq!(page.as_array().map(Vec::len), Some(limit), "{page}");
        pages.push(page);
    }
    pages
}

/// Seeds the ring of `old` (indexes into a cluster of four), ranks `/stats/` with a server
/// on it, reshards to `new`, and checks every key in Redis, then the counts and the
/// ranking over HTTP from a server on the new list.
async fn move_and_serve(old: &[usize], new: &[usize]) {
    let _serial = one_at_a_time().await;
    let cluster = RedisCluster::start(4).expect("redis nodes");
    let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
    let pick = |indexes: &[usize]| indexes.iter().map(|&i| all[i]).collect::<Vec<_>>();
    let (old_ring, old_list) = list(&pick(old), None);
    let (new_ring, new_list) = list(&pick(new), None);
    seed(&pick(old), KEYS);
    let server = Server::start(&old_list, &[]);
    let ranked = stats_pages(&server).await;
    server.stop();
    let before = holdings(&all);

    let started = Instant::now();
    let (stdout, stderr) = reshard_ok(
        &[("REDIS_NODES", &old_list)],
        &["--to", &new_list, "--apply"],
    );
    let took = started.elapsed();

    assert!(stdout.contains("reshard complete"), "{stdout}\n{stderr}");
    // Not on a terminal: one progress line per node, when it is done.
    for node in old.iter().map(|&i| all[i]) {
        let line = format!("node {} done: moved ", node.addr());
        assert_eq!(stderr.matches(&line).count(), 1, "{line}: {stderr}");
    }
    assert_on_owners(&all, new, &new_ring, KEYS);
    // Only the keys whose owner changed left their node.
    let moved = before
        .iter()
        .filter(|(key, on)| {
            let old_owner = old[old_ring.lookup_index(key.1.as_bytes())];
            let new_owner = new[new_ring.lookup_index(key.1.as_bytes())];
            assert_eq!(on[0].0, old_owner);
            old_owner != new_owner
        })
        .count();
    let total_line = stdout
        .lines()
        .rfind(|line| line.trim_start().starts_with("total"))
        .unwrap_or_default()
        .to_owned();
    println!(
        "[reshard {old:?} -> {new:?}] {} keys, {moved} moved in {took:.1?}; {total_line}",
        2 * KEYS
    );
    assert!(moved > 2 * KEYS / 10, "{moved} moved");

    let server = Server::start(&new_list, &[]);
    assert_eq!(
        stats_pages(&server).await,
        ranked,
        "/stats/ ranks as before"
    );
    for i in (0..KEYS).step_by(KEYS / SAMPLED) {
        let (visits, _) = server.count(&page(i)).await;
        assert_eq!(visits, page_count(i), "{}", page(i));
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_moves_every_count_and_a_server_on_the_new_list_answers_them_as_before() {
    move_and_serve(&[0, 1, 2], &[0, 1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_moves_every_count_and_a_server_on_the_new_list_answers_them_as_before() {
    move_and_serve(&[0, 1, 2, 3], &[0, 1, 3]).await;
}

/// How far a reshard to the added node 3 has come: about the pages and URLs it holds
/// (its keys, the URLs' sorted set counted by members; the few keys of the guard and the
/// markers hash count too).
fn arrived(node: &RedisNode) -> u64 {
    let keys = node.dbsize().expect("DBSIZE");
    let urls: u64 = node
        .query(redis::cmd("ZCARD").arg("tally:urls"))
        .expect("ZCARD");
    keys + urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_a_reshard_killed_at_any_point_is_finished_exactly_by_the_next_run() {
    let _serial = one_at_a_time().await;
    let cluster = RedisCluster::start(4).expect("redis nodes");
    let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
    let (_, old_list) = list(&all[..3], None);
    let (new_ring, new_list) = list(&all, None);
    seed(&all[..3], KEYS);
    let expected = seeded(KEYS);
    let moving = expected
        .keys()
        .filter(|key| new_ring.lookup_index(key.1.as_bytes()) == 3)
        .count() as u64;
    let env = [("REDIS_NODES", old_list.as_str())];
    let args = ["--to", new_list.as_str(), "--apply"];

    // Kill points, as parts of the keys that move: before anything (at once), then when
    // that much has arrived on the new node.
    let mut interrupted = 0;
    let mut kills = Vec::new();
    for part in [0.0, 0.1, 0.35, 0.6, 0.85] {
        let mut run = Reshard::spawn(&env, &args);
        let target = (moving as f64 * part) as u64;
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut at = arrived(all[3]);
        while part > 0.0 && at < target {
            assert!(Instant::now() < deadline, "no progress to {target}: {at}");
            if run.child.try_wait().expect("pollable").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            at = arrived(all[3]);
        }
        let was_running = run.kill();
        let after = arrived(all[3]);
        let (stdout, stderr) = run.output();
        kills.push(format!(
            "{part}: {after} of {moving} arrived, running {was_running}"
        ));
        if was_running && after > 0 && after < moving {
            interrupted += 1;
        }
        // Whatever the kill left, no count is lost or doubled.
        assert_eq!(
            effective(&all),
            expected,
            "after a kill at {part}:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        interrupted >= 1,
        "no kill interrupted a run in progress: {kills:?}"
    );

    let (stdout, stderr) = reshard_ok(&env, &args);

    assert!(stdout.contains("reshard complete"), "{stdout}\n{stderr}");
    assert_on_owners(&all, &[0, 1, 2, 3], &new_ring, KEYS);
    println!(
        "[reshard killed] {kills:?}; last run: {}",
        stdout
            .lines()
            .find(|l| l.starts_with("moved"))
            .unwrap_or_default()
    );
}

/// Every key of `node` with its type and value.
fn dump(node: &RedisNode) -> BTreeMap<String, String> {
    node.keys("*")
        .expect("KEYS")
        .into_iter()
        .map(|key| {
            let value: Vec<u8> = node.query(redis::cmd("DUMP").arg(&key)).expect("DUMP");
            (key, format!("{value:?}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_without_apply_changes_nothing() {
    let _serial = one_at_a_time().await;
    let cluster = RedisCluster::start(4).expect("redis nodes");
    let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
    let (_, old_list) = list(&all[..3], None);
    let (_, new_list) = list(&all, None);
    seed(&all[..3], 10_000);
    let before: Vec<_> = all.iter().map(|n| dump(n)).collect();

    let (stdout, _) = reshard_ok(&[("REDIS_NODES", &old_list)], &["--to", &new_list]);

    assert!(stdout.contains("nothing was changed"), "{stdout}");
    assert!(stdout.contains("added"), "{stdout}");
    let after: Vec<_> = all.iter().map(|n| dump(n)).collect();
    assert!(before == after, "the plan changed the nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_on_the_nodes_never_shows_in_the_reshards_output() {
    const PASSWORD: &str = "Kq7vTr0ub4dor,Hx2zHorse";
    let _serial = one_at_a_time().await;
    let mut cluster =
        RedisCluster::start_with(4, &RedisNode::builder().password(PASSWORD)).expect("redis nodes");
    let mut shown = String::new();
    {
        let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
        seed(&all[..3], 5_000);
        let (_, old_in_urls) = list(&all[..3], Some(PASSWORD));
        let (_, new_in_urls) = list(&all, Some(PASSWORD));
        let (_, old_bare) = list(&all[..3], None);
        let (new_ring, new_bare) = list(&all, None);

        // The password in the URLs for the plan, in REDIS_PASSWORD for the move.
        let (stdout, stderr) =
            reshard_ok(&[("REDIS_NODES", &old_in_urls)], &["--to", &new_in_urls]);
        shown.push_str(&stdout);
        shown.push_str(&stderr);
        let (stdout, stderr) = reshard_ok(
            &[("REDIS_NODES", &old_bare), ("REDIS_PASSWORD", PASSWORD)],
            &["--to", &new_bare, "--apply"],
        );
        assert!(stdout.contains("reshard complete"), "{stdout}\n{stderr}");
        shown.push_str(&stdout);
        shown.push_str(&stderr);
        assert_on_owners(&all, &[0, 1, 2, 3], &new_ring, 5_000);
    }

    // A node down: the run stops naming it, exit 1, and says a new run resumes.
    let down = cluster.node(1).addr().to_string();
    cluster.node_mut(1).kill().expect("SIGKILL");
    let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
    let (_, four) = list(&all, Some(PASSWORD));
    let (_, three) = list(&[all[0], all[2], all[3]], Some(PASSWORD));
    let (status, stdout, stderr) = Reshard::run(
        &[("REDIS_NODES", &four), ("REDIS_TIMEOUT", "1")],
        &["--to", &three, "--apply"],
    );
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("redis node {down}")), "{stderr}");
    assert!(stderr.contains("run the command again"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    shown.push_str(&stdout);
    shown.push_str(&stderr);

    assert_password_hidden(PASSWORD, &shown);
    assert!(
        shown.contains("***") || !shown.contains("redis://:"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_is_refused_while_a_server_writes_and_the_old_list_is_refused_after_it() {
    let _serial = one_at_a_time().await;
    let cluster = RedisCluster::start(4).expect("redis nodes");
    let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
    let (_, old_list) = list(&all[..3], None);
    let (new_ring, new_list) = list(&all, None);
    let server = Server::start(&old_list, &[]);
    for page in 0..50 {
        let response = server
            .request("POST", &format!("/api/v1/counter/visit/page{page}"))
            .await;
        assert_eq!(response.status, 200);
    }
    server.wait_flushed(Duration::from_secs(30)).await;

    let (status, stdout, stderr) = Reshard::run(
        &[("REDIS_NODES", &old_list)],
        &["--to", &new_list, "--apply"],
    );

    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("a server is writing to redis node")
            && stderr.contains(&format!("tally process {} on ", server.pid())),
        "the refusal names the running server: {stderr}"
    );
    assert!(stderr.contains("stop it with SIGTERM"), "{stderr}");
    for node in &all {
        assert_eq!(node.get("tally:reshard").expect("GET"), None);
    }
    assert!(all[3].keys("tally:v:*").expect("KEYS").is_empty());
    // It is still writing.
    let response = server.request("POST", "/api/v1/counter/visit/page0").await;
    assert_eq!(response.status, 200);

    // Stopped with SIGTERM (its lease goes with it): the reshard runs.
    server.stop();
    reshard_ok(
        &[("REDIS_NODES", &old_list)],
        &["--to", &new_list, "--apply"],
    );
    let moved = all[3].keys("tally:v:*").expect("KEYS").len();
    assert!(moved > 0, "no page moved to the new node");
    for i in 0..50 {
        let page = format!("page{i}");
        let owner = new_ring.lookup_index(page.as_bytes());
        assert!(
            all[owner]
                .get(&format!("tally:v:{page}"))
                .expect("GET")
                .is_some()
        );
    }

    // The old list now exits 2 naming the change; the new list serves every count.
    let (status, stdout, stderr) = Server::run_to_exit(&[("REDIS_NODES", &old_list)]);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("removes {}", all[3].addr())),
        "{stderr}"
    );
    let server = Server::start(&new_list, &[]);
    assert_eq!(server.count("page0").await.0, 2);
    for i in 1..50 {
        assert_eq!(server.count(&format!("page{i}")).await.0, 1, "page{i}");
    }
    server.stop();
}
