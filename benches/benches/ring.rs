//! Ring lookup and build speed: tally-ring against the `hashring` and `conhash` crates and
//! jump hash, at 3, 10 and 100 nodes with 160 points each.
//!
//! `cargo bench -p tally-benches --bench ring`. Each `lookup` iteration routes 10,000
//! prebuilt `page{i}` keys, hashing each inside the call; throughput is per lookup.

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use tally_benches::ring::{
    ConHashCrate, HashRingCrate, Jump, NODE_COUNTS, Router, TallyRing, keys, node_names,
};
use tally_ring::key_hash;

const KEYS: usize = 10_000;

fn lookup_with<R: Router>(group: &mut BenchmarkGroup<'_, WallTime>, keys: &[String], n: usize) {
    let router = R::build(&node_names(n));
    group.bench_with_input(BenchmarkId::new(R::NAME, n), &router, |b, router| {
        b.iter(|| {
            for key in keys {
                black_box(router.route(black_box(key)));
            }
        });
    });
}

fn lookup(c: &mut Criterion) {
    let keys = keys(KEYS);
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(KEYS as u64));
    for n in NODE_COUNTS {
        lookup_with::<TallyRing>(&mut group, &keys, n);
        lookup_with::<HashRingCrate>(&mut group, &keys, n);
        lookup_with::<ConHashCrate>(&mut group, &keys, n);
        lookup_with::<Jump>(&mut group, &keys, n);
    }
    group.finish();
}

/// The key hash alone, the floor under every xxh3-based lookup above (tally-ring and jump):
/// what a lookup costs beyond it is the ring's own work.
fn hash(c: &mut Criterion) {
    let keys = keys(KEYS);
    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Elements(KEYS as u64));
    group.bench_function("xxh3", |b| {
        b.iter(|| {
            for key in &keys {
                black_box(key_hash(black_box(key).as_bytes()));
            }
        });
    });
    group.finish();
}

fn build_with<R: Router>(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    let names = node_names(n);
    group.bench_with_input(BenchmarkId::new(R::NAME, n), &names, |b, names| {
        b.iter(|| R::build(black_box(names)));
    });
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    for n in NODE_COUNTS {
        build_with::<TallyRing>(&mut group, n);
        build_with::<HashRingCrate>(&mut group, n);
        build_with::<ConHashCrate>(&mut group, n);
        build_with::<Jump>(&mut group, n);
    }
    group.finish();
}

criterion_group!(benches, lookup, hash, build);
criterion_main!(benches);
