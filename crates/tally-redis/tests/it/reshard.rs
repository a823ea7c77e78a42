//! Resharding (`tally_redis::reshard`) over real nodes: every count reaches its owner in the
//! new ring exactly, nothing else is written, the plan writes nothing, a node failing
//! mid-run stops it with its name and a new run finishes it.
//!
//! What each node writes is recorded from its keyspace notifications, so "no other key is
//! touched" is checked key by key for the visit counters, not inferred from values.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tally_redis::reshard::{self, Plan};
use tally_redis::{Error, NODE_ID_KEY, RedisConfig};
use tally_ring::Ring;
use tally_testkit::{RedisCluster, RedisNode, ring};

use crate::support::{TestResult, everything_shown};

/// Counters seeded, and as many URLs.
const KEYS: usize = 3_000;

/// A count no other seeded key has: `page-{i}` counts `7i + 1`.
fn page_count(i: usize) -> u64 {
    7 * i as u64 + 1
}

/// `/api/item/{i}/` counts `3i + 2`.
fn url_count(i: usize) -> u64 {
    3 * i as u64 + 2
}

/// Where a count is: its page id (`v`) or URL (`u`).
type Key = (char, String);

/// Every seeded key with its count.
fn seeded() -> BTreeMap<Key, u64> {
    (0..KEYS)
        .flat_map(|i| {
            [
                (('v', format!("page-{i}")), page_count(i)),
                (('u', format!("/api/item/{i}/")), url_count(i)),
            ]
        })
        .collect()
}

/// The nodes' names and the ring a store over `nodes` builds.
fn names_and_ring(nodes: &[&RedisNode]) -> (Vec<String>, Ring<String>) {
    let names: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    let ring = ring(&names);
    (names, ring)
}

fn config(nodes: &[&RedisNode]) -> RedisConfig {
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    RedisConfig::from_urls(&urls.join(",")).expect("node URLs")
}

/// Writes every seeded key on its owner among `nodes`.
fn seed(nodes: &[&RedisNode]) -> TestResult {
    let (_, ring) = names_and_ring(nodes);
    let mut pipes: Vec<redis::Pipeline> = nodes.iter().map(|_| redis::pipe()).collect();
    for ((kind, key), count) in seeded() {
        let pipe = &mut pipes[ring.lookup_index(key.as_bytes())];
        if kind == 'v' {
            pipe.cmd("SET").arg(format!("tally:v:{key}")).arg(count);
        } else {
            pipe.cmd("ZADD").arg("tally:urls").arg(count).arg(key);
        }
        pipe.ignore();
    }
    for (node, pipe) in nodes.iter().zip(pipes) {
        let mut conn = node.client()?.get_connection()?;
        pipe.query::<()>(&mut conn)?;
    }
    Ok(())
}

/// Every counter and URL on every node: key → (node index, count).
fn holdings(nodes: &[&RedisNode]) -> Result<BTreeMap<Key, Vec<(usize, u64)>>, redis::RedisError> {
    let mut all: BTreeMap<Key, Vec<(usize, u64)>> = BTreeMap::new();
    for (index, node) in nodes.iter().enumerate() {
        let mut conn = node.client().expect("a client").get_connection()?;
        let keys: Vec<String> = redis::cmd("KEYS").arg("tally:v:*").query(&mut conn)?;
        if !keys.is_empty() {
            let values: Vec<u64> = redis::cmd("MGET").arg(&keys).query(&mut conn)?;
            for (key, value) in keys.into_iter().zip(values) {
                let page = key.trim_start_matches("tally:v:").to_owned();
                all.entry(('v', page)).or_default().push((index, value));
            }
        }
        let members: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg("tally:urls")
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)?;
        for (url, count) in members {
            all.entry(('u', url)).or_default().push((index, count));
        }
    }
    Ok(all)
}

/// Asserts that every seeded key is on its owner under `ring` (positions index `nodes`)
/// with its count, on no other node, and that nothing else is there.
fn assert_on_owners(nodes: &[&RedisNode], ring: &Ring<String>) -> TestResult {
    let held = holdings(nodes)?;
    let mut wrong = Vec::new();
    let expected = seeded();
    for ((kind, key), count) in &expected {
        let owner = ring.lookup_index(key.as_bytes());
        match held.get(&(*kind, key.clone())).map(Vec::as_slice) {
            Some([(node, got)]) if *node == owner && got == count => {}
            other => wrong.push(format!(
                "{kind} {key}: expected {count} on node {owner}, found {other:?}"
            )),
        }
    }
    for key in held.keys().filter(|key| !expected.contains_key(key)) {
        wrong.push(format!("{key:?}: never seeded, found {:?}", held[key]));
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    Ok(())
}

/// The commands each node ran on its keys while recording: `(event, key)` from its
/// keyspace notifications (`set`, `del`, `zadd`, `hset`, ...).
struct Recorder {
    threads: Vec<JoinHandle<Vec<(String, String)>>>,
}

/// Channel the recorder's own messages go on (sync, then stop).
const CONTROL: &str = "reshard-test-control";

impl Recorder {
    /// Starts recording on every node of `nodes`; returns once every subscription is in
    /// place.
    fn start(nodes: &[&RedisNode]) -> Self {
        let (ready, readies) = mpsc::channel();
        let threads = nodes
            .iter()
            .map(|node| {
                node.query::<()>(
                    redis::cmd("CONFIG")
                        .arg("SET")
                        .arg("notify-keyspace-events")
                        .arg("KEA"),
                )
                .expect("CONFIG SET");
                let client = node.client().expect("a client");
                let ready = ready.clone();
                std::thread::spawn(move || {
                    let mut conn = client.get_connection().expect("a connection");
                    let mut pubsub = conn.as_pubsub();
                    pubsub.psubscribe("__keyevent@0__:*").expect("PSUBSCRIBE");
                    pubsub.subscribe(CONTROL).expect("SUBSCRIBE");
                    let mut events = Vec::new();
                    let mut synced = false;
                    loop {
                        let message = pubsub.get_message().expect("a message");
                        let payload: String = message.get_payload().expect("a payload");
                        if message.get_channel_name() == CONTROL {
                            if payload == "stop" {
                                return events;
                            }
                            if !synced {
                                synced = true;
                                let _ = ready.send(());
                            }
                            continue;
                        }
                        let event = message
                            .get_channel_name()
                            .trim_start_matches("__keyevent@0__:")
                            .to_owned();
                        events.push((event, payload));
                    }
                })
            })
            .collect();
        let recorder = Self { threads };
        // Publish until every subscriber has seen one: then each is listening.
        let mut synced = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while synced < nodes.len() {
            for node in nodes {
                node.query::<u64>(redis::cmd("PUBLISH").arg(CONTROL).arg("sync"))
                    .expect("PUBLISH");
            }
            while readies.recv_timeout(Duration::from_millis(20)).is_ok() {
                synced += 1;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "subscriptions not ready"
            );
        }
        recorder
    }

    /// Stops recording; every node's events, in order.
    fn stop(self, nodes: &[&RedisNode]) -> Vec<Vec<(String, String)>> {
        for node in nodes {
            node.query::<u64>(redis::cmd("PUBLISH").arg(CONTROL).arg("stop"))
                .expect("PUBLISH");
        }
        self.threads
            .into_iter()
            .map(|thread| thread.join().expect("a recorder thread"))
            .collect()
    }
}

/// Checks what each node wrote during a reshard against `plan`: counter keys written are
/// only those that move, each once (set on its destination, deleted on its source), the
/// sorted set written only where URLs arrive or leave, the marks never touched. `names`
/// index the nodes.
fn assert_only_moving_keys_written(
    plan: &Plan,
    names: &[String],
    events: &[Vec<(String, String)>],
    moving: &BTreeMap<String, (usize, usize)>,
) {
    for (index, events) in events.iter().enumerate() {
        let name = &names[index];
        let routes_in: u64 = plan
            .routes()
            .iter()
            .filter(|r| &r.destination == name)
            .map(|r| r.counts.counters)
            .sum();
        let routes_out: u64 = plan
            .routes()
            .iter()
            .filter(|r| &r.source == name)
            .map(|r| r.counts.counters)
            .sum();
        let urls_in: u64 = plan
            .routes()
            .iter()
            .filter(|r| &r.destination == name)
            .map(|r| r.counts.urls)
            .sum();
        let urls_out: u64 = plan
            .routes()
            .iter()
            .filter(|r| &r.source == name)
            .map(|r| r.counts.urls)
            .sum();
        let mut set = 0;
        let mut deleted = 0;
        for (event, key) in events {
            if let Some(page) = key.strip_prefix("tally:v:") {
                let (from, to) = moving
                    .get(page)
                    .unwrap_or_else(|| panic!("{name}: {event} {key}, which does not move"));
                match event.as_str() {
                    "set" if *to == index => set += 1,
                    "del" if *from == index => deleted += 1,
                    _ => panic!("{name}: {event} {key}, moving from {from} to {to}"),
                }
            }
            assert!(
                !key.starts_with("tally:applied"),
                "{name}: {event} {key}: the marks must stay as they are"
            );
        }
        let count = |wanted: &str| {
            events
                .iter()
                .filter(|(event, key)| event == wanted && key == "tally:urls")
                .count() as u64
        };
        assert_eq!(
            (set, deleted),
            (routes_in, routes_out),
            "{name}: counters written"
        );
        // The URLs share one sorted set per node, written a chunk at a time: written on
        // a node exactly when URLs arrive there or leave it.
        assert_eq!(
            (count("zadd") > 0, count("zrem") > 0),
            (urls_in > 0, urls_out > 0),
            "{name}: URLs written"
        );
    }
}

/// Each seeded key that moves from `old` to `new` (positions in `nodes`): key → (from, to).
fn moving_counters(
    nodes_old: &[usize],
    old: &Ring<String>,
    nodes_new: &[usize],
    new: &Ring<String>,
) -> BTreeMap<String, (usize, usize)> {
    seeded()
        .into_keys()
        .filter(|(kind, _)| *kind == 'v')
        .map(|(_, page)| {
            let from = nodes_old[old.lookup_index(page.as_bytes())];
            let to = nodes_new[new.lookup_index(page.as_bytes())];
            (page, (from, to))
        })
        .filter(|(_, (from, to))| from != to)
        .collect()
}

/// Seeds the ring of `old` (indexes into the cluster), reshards to `new`, and checks the
/// outcome command by command.
async fn reshard_and_check(cluster: &RedisCluster, old: &[usize], new: &[usize]) -> TestResult {
    let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
    let pick = |indexes: &[usize]| {
        indexes
            .iter()
            .map(|&i| &all[i])
            .copied()
            .collect::<Vec<_>>()
    };
    let (old_nodes, new_nodes) = (pick(old), pick(new));
    seed(&old_nodes)?;
    let (_, old_ring) = names_and_ring(&old_nodes);
    let (_, new_ring) = names_and_ring(&new_nodes);
    let names: Vec<String> = all.iter().map(|n| n.addr().to_string()).collect();
    let moving = moving_counters(old, &old_ring, new, &new_ring);

    let plan = reshard::plan(&config(&old_nodes), &config(&new_nodes)).await?;
    let recorder = Recorder::start(&all);
    let mut reports = Vec::new();
    let moved = reshard::apply(&plan, |p| {
        reports.push((
            p.node.to_owned(),
            p.node_moved,
            p.node_planned,
            p.node_done,
            p.moved,
        ))
    })
    .await?;
    let events = recorder.stop(&all);

    // Every count on its new owner, nowhere else.
    assert_on_owners(&new_nodes, &new_ring)?;
    for (index, node) in all.iter().enumerate() {
        if !new.contains(&index) {
            assert_eq!(
                node.keys("tally:v:*")?,
                Vec::<String>::new(),
                "removed node {index}"
            );
            assert_eq!(node.query::<u64>(redis::cmd("ZCARD").arg("tally:urls"))?, 0);
        }
        assert_eq!(
            node.keys("tally:reshard:in")?,
            Vec::<String>::new(),
            "markers left"
        );
    }
    // What moved is what the plan said, and what the rings say.
    assert_eq!(moved.routes(), plan.routes());
    assert_eq!(moved.resumed(), 0);
    assert_eq!(plan.total().counters, moving.len() as u64);
    let expected_visits: u64 = (0..KEYS)
        .filter(|i| moving.contains_key(&format!("page-{i}")))
        .map(page_count)
        .sum();
    assert_eq!(plan.total().visits, expected_visits);
    assert!(plan.total().urls > 0 && plan.total().counters > 0, "{plan}");
    // Nothing else was written.
    assert_only_moving_keys_written(&plan, &names, &events, &moving);
    // Progress reached the plan's total, each source once done.
    let last = reports.last().expect("progress reported");
    assert_eq!(last.4, plan.total().keys());
    for name in old.iter().map(|&i| &names[i]) {
        let done: Vec<_> = reports.iter().filter(|r| &r.0 == name && r.3).collect();
        assert_eq!(done.len(), 1, "{name}: {reports:?}");
        assert_eq!(done[0].1, done[0].2, "{name}: moved all it planned");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_moves_to_it_exactly_the_keys_it_now_owns_and_writes_nothing_else()
-> TestResult {
    let cluster = RedisCluster::start(4)?;
    reshard_and_check(&cluster, &[0, 1, 2], &[0, 1, 2, 3]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_moves_its_keys_to_their_new_owners_exactly_and_writes_nothing_else()
-> TestResult {
    let cluster = RedisCluster::start(4)?;
    reshard_and_check(&cluster, &[0, 1, 2, 3], &[0, 2, 3]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_virtual_nodes_move_keys_between_the_same_nodes() -> TestResult {
    let cluster = RedisCluster::start(3)?;
    let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
    seed(&all)?;
    let mut to = config(&all);
    to.vnodes = 100;

    let plan = reshard::plan(&config(&all), &to).await?;
    let moved = reshard::apply(&plan, |_| {}).await?;

    let (names, _) = names_and_ring(&all);
    let ring = Ring::builder()
        .vnodes(100)
        .nodes(names.iter().map(|name| (name.clone(), 1)))
        .build()?;
    assert_on_owners(&all, &ring)?;
    assert!(moved.total().keys() > 0, "{plan}");
    assert_eq!(moved.total(), plan.total());
    Ok(())
}

/// Every key of every node with its type and value, for comparing two moments.
fn dump(node: &RedisNode) -> Result<BTreeMap<String, String>, tally_testkit::Error> {
    let mut all = BTreeMap::new();
    for key in node.keys("*")? {
        let kind: String = node.query(redis::cmd("TYPE").arg(&key))?;
        let value = match kind.as_str() {
            "string" => node.get(&key)?.unwrap_or_default(),
            "zset" => format!(
                "{:?}",
                node.query::<Vec<(String, String)>>(
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                )?
            ),
            "hash" => format!(
                "{:?}",
                node.query::<BTreeMap<String, String>>(redis::cmd("HGETALL").arg(&key))?
            ),
            other => other.to_owned(),
        };
        all.insert(key, value);
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_changes_nothing_on_any_node() -> TestResult {
    let cluster = RedisCluster::start(4)?;
    let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
    seed(&all[..3])?;
    all[0].query::<()>(redis::cmd("SET").arg(NODE_ID_KEY).arg("node-a"))?;
    let before: Vec<_> = all.iter().map(|n| dump(n)).collect::<Result<_, _>>()?;
    let recorder = Recorder::start(&all);

    let plan = reshard::plan(&config(&all[..3]), &config(&all)).await?;

    let events = recorder.stop(&all);
    let after: Vec<_> = all.iter().map(|n| dump(n)).collect::<Result<_, _>>()?;
    assert_eq!(before, after);
    assert!(events.iter().all(Vec::is_empty), "{events:?}");
    assert!(plan.total().keys() > 0, "{plan}");
    let shown = plan.to_string();
    assert!(shown.contains("added"), "{shown}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_failing_mid_run_stops_it_naming_the_node_and_a_new_run_finishes_it()
-> TestResult {
    let mut cluster = RedisCluster::start_with(4, &RedisNode::builder().aof(true))?;
    let names: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.addr().to_string())
        .collect();
    let (from, to) = {
        let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
        seed(&all[..3])?;
        let mut to = config(&all);
        to.retry_attempts = 1;
        to.timeout = Duration::from_secs(2);
        (config(&all[..3]), to)
    };
    let plan = reshard::plan(&from, &to).await?;

    // The new node (every count moves to it) dies once the first chunk moved.
    let mut killed = false;
    let mut moved_before = 0;
    let node = cluster.node_mut(3);
    let err = reshard::apply(&plan, |p| {
        if !killed && p.moved > 0 {
            killed = true;
            moved_before = p.moved;
            node.kill().expect("SIGKILL");
        }
    })
    .await
    .expect_err("a dead destination stops the run");

    let shown = everything_shown(&err);
    assert!(shown.contains(&names[3]), "{shown}");
    assert!(!err.is_config(), "{err:?}");
    assert!(moved_before > 0 && moved_before < plan.total().keys());
    cluster.node_mut(3).restart()?;
    let plan = reshard::plan(&from, &to).await?;
    let moved = reshard::apply(&plan, |_| {}).await?;
    let all: Vec<&RedisNode> = cluster.nodes().iter().collect();
    assert_on_owners(&all, &names_and_ring(&all).1)?;
    assert_eq!(moved.total(), plan.total());
    for node in &all {
        assert_eq!(node.keys("tally:reshard:in")?, Vec::<String>::new());
    }
    Ok(())
}

#[tokio::test]
async fn two_names_of_one_database_are_refused_before_anything_moves() -> TestResult {
    let node = RedisNode::start()?;
    let other = RedisNode::start()?;
    node.query::<()>(redis::cmd("SET").arg(NODE_ID_KEY).arg("the-one"))?;
    node.query::<()>(redis::cmd("SET").arg("tally:v:page").arg(5))?;
    let from = RedisConfig::from_urls(&format!("{},{}", node.url(), other.url()))?;
    let to = RedisConfig::from_urls(&format!(
        "redis://localhost:{},{}",
        node.port(),
        other.url()
    ))?;

    let err = reshard::plan(&from, &to).await.expect_err("an alias");

    assert!(matches!(err, Error::ReshardAlias { .. }), "{err:?}");
    assert!(err.is_config());
    assert!(
        err.to_string()
            .contains(&format!("localhost:{}", node.port())),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_key_that_is_not_a_count_stops_the_plan_naming_it() -> TestResult {
    let nodes = [RedisNode::start()?, RedisNode::start()?];
    let from = RedisConfig::from_urls(&nodes[0].url())?;
    let to = RedisConfig::from_urls(&nodes[1].url())?;
    nodes[0].query::<()>(redis::cmd("HSET").arg("tally:v:odd").arg("f").arg("v"))?;

    let err = reshard::plan(&from, &to)
        .await
        .expect_err("a hash is not a count");

    assert!(
        matches!(&err, Error::CorruptValue { stored_as, found, .. } if stored_as == "tally:v:odd" && found == "a hash"),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn the_seed_has_distinct_counts() {
    let counts: BTreeSet<u64> = (0..KEYS).map(page_count).collect();
    assert_eq!(counts.len(), KEYS);
}

/// Day counts (`page\u{1f}day`) move with their page, and a day moved to a node that did
/// not have it expires there after the new list's `subkey_ttl` (its TTL would otherwise be
/// lost with the move), while a day that stays keeps its own.
#[tokio::test]
async fn day_counts_move_with_their_page_and_keep_expiring() -> TestResult {
    let cluster = RedisCluster::start(2)?;
    let one = [cluster.node(0)];
    let both = [cluster.node(0), cluster.node(1)];
    for i in 0..200 {
        let day = format!("tally:v:page-{i}\u{1f}2026-12-01");
        cluster
            .node(0)
            .query::<()>(redis::cmd("SET").arg(&day).arg(i + 1).arg("EX").arg(50_000))?;
        cluster.node(0).query::<()>(
            redis::cmd("SET")
                .arg(format!("tally:v:page-{i}"))
                .arg(i + 1),
        )?;
    }
    let mut to = config(&both);
    to.subkey_ttl = Some(Duration::from_secs(90_000));
    let plan = reshard::plan(&config(&one), &to).await?;
    reshard::apply(&plan, |_| {}).await?;

    let (_, ring) = names_and_ring(&both);
    let mut moved = 0;
    for i in 0..200 {
        let owner = ring.lookup_index(format!("page-{i}").as_bytes());
        let node = cluster.node(owner);
        let day = format!("tally:v:page-{i}\u{1f}2026-12-01");
        let value: Option<u64> = node.query(redis::cmd("GET").arg(&day))?;
        let total: Option<u64> = node.query(redis::cmd("GET").arg(format!("tally:v:page-{i}")))?;
        assert_eq!(
            (value, total),
            (Some(i + 1), Some(i + 1)),
            "page-{i} on node {owner}"
        );
        let ttl: i64 = node.query(redis::cmd("TTL").arg(&day))?;
        if owner == 1 {
            moved += 1;
            assert!((89_000..=90_000).contains(&ttl), "{day} moved: TTL {ttl}");
        } else {
            assert!((49_000..=50_000).contains(&ttl), "{day} stayed: TTL {ttl}");
        }
        let total_ttl: i64 = node.query(redis::cmd("TTL").arg(format!("tally:v:page-{i}")))?;
        assert_eq!(total_ttl, -1, "a total never expires");
    }
    assert!(moved > 20, "{moved} days moved");
    Ok(())
}

#[tokio::test]
async fn visitor_sketches_merge_into_their_new_owners_and_keep_expiring() -> TestResult {
    let cluster = RedisCluster::start(2)?;
    let one = [cluster.node(0)];
    let both = [cluster.node(0), cluster.node(1)];
    let (_, ring) = names_and_ring(&both);
    let owner = |i: usize| ring.lookup_index(format!("page-{i}").as_bytes());
    let day = |i: usize| format!("tally:u:page-{i}\u{1f}2026-12-01");
    for i in 0..200 {
        let source = cluster.node(0);
        source.query::<()>(redis::cmd("PFADD").arg(format!("tally:u:page-{i}")).arg(&[
            format!("a-{i}"),
            format!("b-{i}"),
            "c".to_owned(),
        ]))?;
        source.query::<()>(redis::cmd("PFADD").arg(day(i)).arg(format!("a-{i}")))?;
        source.query::<()>(redis::cmd("EXPIRE").arg(day(i)).arg(50_000))?;
        // What an interrupted run (or a visitor counted there) left on the new owner: the
        // merge keeps it, and adds what the source holds once.
        if owner(i) == 1 {
            cluster.node(1).query::<()>(
                redis::cmd("PFADD").arg(format!("tally:u:page-{i}")).arg(&[
                    "c".to_owned(),
                    format!("d-{i}"),
                    format!("a-{i}"),
                ]),
            )?;
        }
    }
    let plan = reshard::plan(&config(&one), &config(&both)).await?;
    let moved = reshard::apply(&plan, |_| {}).await?;

    let mut moving = 0;
    for i in 0..200 {
        let node = cluster.node(owner(i));
        let total: u64 = node.query(redis::cmd("PFCOUNT").arg(format!("tally:u:page-{i}")))?;
        let days: u64 = node.query(redis::cmd("PFCOUNT").arg(day(i)))?;
        let ttl: i64 = node.query(redis::cmd("TTL").arg(day(i)))?;
        assert!((49_000..=50_000).contains(&ttl), "{} TTL {ttl}", day(i));
        if owner(i) == 1 {
            moving += 2;
            assert_eq!((total, days), (4, 1), "page-{i}: a, b, c and d, once each");
            let left: u64 = cluster.node(0).query(
                redis::cmd("EXISTS")
                    .arg(format!("tally:u:page-{i}"))
                    .arg(day(i)),
            )?;
            assert_eq!(left, 0, "page-{i}'s sketches left the source");
        } else {
            assert_eq!((total, days), (3, 1), "page-{i} stayed");
        }
    }
    assert!(moving > 40, "{moving} sketches moved");
    assert_eq!(moved.sketches(), moving);
    assert!(moved.to_string().contains("visitor sketches"), "{moved}");
    Ok(())
}
