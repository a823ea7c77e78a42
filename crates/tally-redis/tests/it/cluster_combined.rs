//! Group commit on the Redis Cluster store: the batches of many buckets that one primary
//! serves go to it as one script call and one `WAIT`, each still applied exactly once; a
//! combined call that meets a slot the primary no longer serves sends each batch again on
//! its own, and the batches it had applied are answered as replays.

use std::time::Duration;

use tally_counter::Store as _;
use tally_redis::{ClusterStore, bucket_tag, cluster_slot};
use tally_testkit::{Cluster, ClusterNode};

use crate::cluster::config;
use crate::support::{TestResult, batch};

/// `calls=` of `INFO commandstats` field `cmdstat_{command}` on `node` (0 when absent).
fn calls(node: &ClusterNode, command: &str) -> u64 {
    stat(
        node,
        "commandstats",
        &format!("cmdstat_{command}"),
        "calls=",
    )
}

/// `count=` of `INFO errorstats` field `errorstat_{prefix}` on `node` (0 when absent).
fn errors(node: &ClusterNode, prefix: &str) -> u64 {
    stat(node, "errorstats", &format!("errorstat_{prefix}"), "count=")
}

/// Script calls that ran and failed on `node` (`failed_calls=` of `EVALSHA` and `EVAL`):
/// a call the node refused before running it (`MOVED`) is not one.
fn failed_scripts(node: &ClusterNode) -> u64 {
    ["evalsha", "eval"]
        .iter()
        .map(|c| {
            stat(
                node,
                "commandstats",
                &format!("cmdstat_{c}"),
                "failed_calls=",
            )
        })
        .sum()
}

/// The number after `value` in field `field` of `INFO {section}` on `node` (0 when absent).
fn stat(node: &ClusterNode, section: &str, field: &str, value: &str) -> u64 {
    node.info(section)
        .expect("INFO answers")
        .iter()
        .find(|(name, _)| name == field)
        .and_then(|(_, fields)| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(value))?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The slot of bucket `b`'s keys.
fn slot_of_bucket(b: usize) -> u16 {
    cluster_slot(bucket_tag(b).as_bytes())
}

/// Three pages of bucket `b`.
fn pages_of(store: &ClusterStore, b: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("page-{b}-{i}"))
        .filter(|page| store.shard_of(page) == b)
        .take(3)
        .collect()
}

/// Applies one batch (instance 5, `seq`) of `delta` per page to every bucket of
/// `buckets`, all at once; returns each bucket's totals.
async fn apply_all(
    store: &ClusterStore,
    buckets: &[usize],
    seq: u64,
    delta: u64,
) -> Result<Vec<Vec<u64>>, tally_redis::Error> {
    let pages: Vec<Vec<String>> = buckets.iter().map(|&b| pages_of(store, b)).collect();
    let batches: Vec<_> = pages
        .iter()
        .map(|pages| {
            let deltas: Vec<(&str, u64)> = pages.iter().map(|p| (p.as_str(), delta)).collect();
            batch(5, seq, &deltas)
        })
        .collect();
    futures::future::join_all(
        buckets
            .iter()
            .zip(&batches)
            .map(|(&b, batch)| store.apply(b, batch)),
    )
    .await
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batches_of_sixty_buckets_go_to_each_primary_as_one_call_and_one_wait() -> TestResult {
    let cluster = Cluster::start()?;
    let store = ClusterStore::connect(config(&cluster, Duration::from_secs(60))).await?;
    assert_eq!(store.wait_replicas(), Some(1));
    let primaries = cluster.primaries()?;
    let scripts = |cluster: &Cluster| -> u64 {
        primaries
            .iter()
            .map(|&p| calls(cluster.node(p), "evalsha") + calls(cluster.node(p), "eval"))
            .sum()
    };
    let waits = |cluster: &Cluster| -> u64 {
        primaries
            .iter()
            .map(|&p| calls(cluster.node(p), "wait"))
            .sum()
    };
    let buckets: Vec<usize> = (0..60).map(|i| i * 17).collect();

    let (scripts_before, waits_before) = (scripts(&cluster), waits(&cluster));
    let totals = apply_all(&store, &buckets, 1, 2).await?;
    let (scripts_first, waits_first) = (scripts(&cluster), waits(&cluster));

    assert!(totals.iter().all(|t| t == &[2, 2, 2]), "{totals:?}");
    // Alone, 60 script calls and 60 WAITs. Together, one call per primary, and one more
    // per primary when it did not have the script yet (EVALSHA answered NOSCRIPT, then
    // EVAL), whichever primaries the buckets' slots fall on. The bound allows each
    // primary's batches to be split in two, which a machine that stalls this test for
    // the 10 ms a primary's write waits for more batches can cause.
    let (sent, waited) = (scripts_first - scripts_before, waits_first - waits_before);
    assert!(
        sent <= 2 * 2 * 3,
        "{sent} script calls for 60 buckets' batches"
    );
    assert!(waited <= 2 * 3, "{waited} WAITs for 60 buckets' batches");

    // Each batch was replicated before it was reported applied: its replica has it.
    for (&b, _) in buckets.iter().zip(&totals) {
        let slot = slot_of_bucket(b);
        let primary = cluster.owner_of(slot)?;
        let replica = cluster.replicas_of(primary)?[0];
        let key = store.stored_as(&pages_of(&store, b)[0]);
        let mut pipe = redis::pipe();
        pipe.cmd("READONLY").ignore().cmd("GET").arg(&key);
        let (value,): (Option<u64>,) = cluster.node(replica).query_pipeline(&pipe)?;
        assert_eq!(value, Some(2), "{key} on the replica of bucket {b}");
    }

    // The same batches again (a retry after lost replies): each is a replay, and still
    // one call per primary.
    let again = apply_all(&store, &buckets, 1, 2).await?;
    assert_eq!(again, totals, "a replayed batch counts once");
    assert!(scripts(&cluster) - scripts_first <= 2 * 3);

    // A new batch of each: applied once more.
    let next = apply_all(&store, &buckets, 2, 3).await?;
    assert!(next.iter().all(|t| t == &[5, 5, 5]), "{next:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combined_call_that_meets_a_moved_slot_sends_each_batch_alone_and_counts_once()
-> TestResult {
    let cluster = Cluster::start()?;
    // A health round a minute away: the store keeps the slot map it read at first.
    let store = ClusterStore::connect(config(&cluster, Duration::from_secs(60))).await?;
    let primaries = cluster.primaries()?;
    let (source, target) = (primaries[0], primaries[1]);
    let slot_count = |i: usize| -> Result<u32, tally_testkit::Error> {
        Ok(cluster
            .view()?
            .iter()
            .find(|n| n.port == cluster.node(i).port())
            .map_or(0, |n| n.slot_count()))
    };
    let served_before = slot_count(source)?;
    // Buckets of the source primary, in slot order: the lowest slots are the ones a
    // reshard moves.
    let mut mine: Vec<usize> = (0..store.bucket_count())
        .filter(|&b| cluster.owner_of(slot_of_bucket(b)).ok() == Some(source))
        .collect();
    mine.sort_by_key(|&b| slot_of_bucket(b));
    assert!(mine.len() > 100, "{} buckets on the source", mine.len());
    let moved: Vec<usize> = mine[..3].to_vec();
    let stayed: Vec<usize> = mine[mine.len() - 3..].to_vec();
    let last_moved_slot = slot_of_bucket(moved[2]);
    // Move the source's lowest slots, through the last of `moved`, to the target.
    let first_slot = cluster
        .view()?
        .iter()
        .find(|n| n.port == cluster.node(source).port())
        .and_then(|n| n.slots.first().map(|(a, _)| *a))
        .ok_or("the source serves slots")?;
    // A first batch of each before the move: the source has both scripts loaded, and the
    // moved buckets' counts and marks move with their slots.
    let mut all = moved.clone();
    all.extend(&stayed);
    let first = apply_all(&store, &all, 1, 1).await?;
    assert!(first.iter().all(|t| t == &[1, 1, 1]), "{first:?}");
    let count = u32::from(last_moved_slot - first_slot) + 1;
    cluster.reshard(source, target, count)?;
    cluster.wait_until_settled()?;
    assert_eq!(slot_count(source)?, served_before - count);
    for &b in &moved {
        assert_eq!(
            cluster.owner_of(slot_of_bucket(b))?,
            target,
            "bucket {b} moved"
        );
    }
    for &b in &stayed {
        assert_eq!(
            store.primary_of(b),
            Some(cluster.node(source).addr().to_string())
        );
    }
    assert_eq!(
        store.primary_of(moved[0]),
        Some(cluster.node(source).addr().to_string()),
        "the store's slot map is stale"
    );

    // The stayed buckets first: the combined call (sent to the source, which the stale map
    // names) applies them, then stops at the first moved bucket's key; every batch is then
    // sent alone, the moved ones follow MOVED, and the stayed ones are replays.
    let failed_before = failed_scripts(cluster.node(source));
    let mut order = stayed.clone();
    order.extend(&moved);
    let totals = apply_all(&store, &order, 2, 4).await?;
    assert!(totals.iter().all(|t| t == &[5, 5, 5]), "{totals:?}");
    assert!(
        failed_scripts(cluster.node(source)) > failed_before,
        "the combined call ran on the source and met a key it does not serve"
    );

    // The moved buckets first: the source answers MOVED for the declared key; all alone.
    let moved_before = errors(cluster.node(source), "MOVED");
    let mut order = moved.clone();
    order.extend(&stayed);
    let totals = apply_all(&store, &order, 3, 1).await?;
    assert!(totals.iter().all(|t| t == &[6, 6, 6]), "{totals:?}");
    assert!(errors(cluster.node(source), "MOVED") > moved_before);

    // What is stored is what was acknowledged: no batch counted twice.
    for &b in moved.iter().chain(&stayed) {
        for page in pages_of(&store, b) {
            let owner = cluster.owner_of(slot_of_bucket(b))?;
            let value: Option<u64> = cluster
                .node(owner)
                .query(redis::cmd("GET").arg(store.stored_as(&page)))?;
            assert_eq!(value, Some(6), "{page} of bucket {b}");
        }
    }
    Ok(())
}
