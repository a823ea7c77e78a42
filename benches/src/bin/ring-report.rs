//! ring-report: load balance and key movement of each ring implementation, as a markdown
//! table. `cargo run -p tally-benches --release --bin ring-report`.
//!
//! Load is measured over 1,000,000 `page{i}` keys. Movement is the fraction of those keys
//! whose owner changes when one node is added (ideal 1/(N+1), the new node's fair share) or
//! removed (ideal 1/N, the removed node's fair share), averaged over several trials so one
//! node's luck of the draw does not decide the figure: 10 different added names, and 10
//! removed nodes spread over the ring (every node when N < 10). Jump hash can only remove
//! its last bucket and adds the same bucket whatever the name, so its trials repeat.
//! "Unneeded" counts moved keys that did not have to move: on add, keys that moved between
//! old nodes; on remove, keys that were not on the removed node.

use std::time::Instant;

use tally_benches::ring::{
    ConHashCrate, HashRingCrate, Jump, NODE_COUNTS, Router, TallyRing, extra_node_name, keys,
    node_names,
};

const KEYS: usize = 1_000_000;
const TRIALS: usize = 10;

#[derive(Debug)]
struct Row {
    name: &'static str,
    nodes: usize,
    max_over_mean: f64,
    cv: f64,
    added_moved: f64,
    added_unneeded: f64,
    removed_moved: f64,
    removed_unneeded: f64,
}

fn measure<R: Router>(keys: &[String], n: usize) -> Row {
    let names = node_names(n);
    let router = R::build(&names);
    let owners: Vec<usize> = keys.iter().map(|k| router.route(k)).collect();

    let mut load = vec![0u64; n];
    for &owner in &owners {
        load[owner] += 1;
    }
    let mean = keys.len() as f64 / n as f64;
    let max = *load.iter().max().expect("n > 0") as f64;
    let variance = load.iter().map(|&l| (l as f64 - mean).powi(2)).sum::<f64>() / n as f64;

    let (mut moved, mut unneeded) = (0u64, 0u64);
    for trial in 0..TRIALS {
        let mut grown = names.clone();
        grown.push(extra_node_name(trial));
        let grown = R::build(&grown);
        for (key, &before) in keys.iter().zip(&owners) {
            let after = grown.route(key);
            if after != before {
                moved += 1;
                // Positions of the old nodes are unchanged; the new node is at `n`.
                if after != n {
                    unneeded += 1;
                }
            }
        }
    }
    let samples = (TRIALS * keys.len()) as f64;
    let (added_moved, added_unneeded) = (moved as f64 / samples, unneeded as f64 / samples);

    let removals: Vec<usize> = if R::REMOVES_ANY_NODE {
        let trials = TRIALS.min(n);
        (0..trials).map(|t| t * n / trials).collect()
    } else {
        vec![n - 1]
    };
    let (mut moved, mut unneeded) = (0u64, 0u64);
    for &gone in &removals {
        let mut shrunk = names.clone();
        shrunk.remove(gone);
        let shrunk = R::build(&shrunk);
        for (key, &before) in keys.iter().zip(&owners) {
            let after = shrunk.route(key);
            // Back to positions in the full list: everything after `gone` shifted down one.
            let after = if after >= gone { after + 1 } else { after };
            if after != before {
                moved += 1;
                if before != gone {
                    unneeded += 1;
                }
            }
        }
    }
    let samples = (removals.len() * keys.len()) as f64;

    Row {
        name: R::NAME,
        nodes: n,
        max_over_mean: max / mean,
        cv: variance.sqrt() / mean,
        added_moved,
        added_unneeded,
        removed_moved: moved as f64 / samples,
        removed_unneeded: unneeded as f64 / samples,
    }
}

fn main() {
    let keys = keys(KEYS);
    let started = Instant::now();
    let mut rows = Vec::new();
    for n in NODE_COUNTS {
        rows.push(measure::<TallyRing>(&keys, n));
        rows.push(measure::<HashRingCrate>(&keys, n));
        rows.push(measure::<ConHashCrate>(&keys, n));
        rows.push(measure::<Jump>(&keys, n));
        eprintln!("n={n} done after {:.1?}", started.elapsed());
    }

    println!(
        "Load over {KEYS} keys; moves averaged over up to {TRIALS} trials; 160 points per node.\n"
    );
    println!(
        "| impl | N | max/mean | CV | moved on add | ideal 1/(N+1) | add / ideal | unneeded on add \
         | moved on remove | ideal 1/N | remove / ideal | unneeded on remove |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let ideal_add = 1.0 / (row.nodes + 1) as f64;
        let ideal_remove = 1.0 / row.nodes as f64;
        println!(
            "| {} | {} | {:.3} | {:.4} | {:.4} | {:.4} | {:.3} | {:.4} | {:.4} | {:.4} | {:.3} | {:.4} |",
            row.name,
            row.nodes,
            row.max_over_mean,
            row.cv,
            row.added_moved,
            ideal_add,
            row.added_moved / ideal_add,
            row.added_unneeded,
            row.removed_moved,
            ideal_remove,
            row.removed_moved / ideal_remove,
            row.removed_unneeded,
        );
    }
}
