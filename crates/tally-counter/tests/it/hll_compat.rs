//! `tally_counter::hll` against a real `redis-server`: for the same members, our estimate
//! is Redis's `PFCOUNT` exactly, and our registers are the registers of Redis's dense
//! encoding, so the embedded stores and the Redis store answer alike.

use tally_counter::hll::{HyperLogLog, REGISTERS};
use tally_testkit::RedisNode;

/// Members per `PFADD`.
const CHUNK: usize = 1_000;

/// The member sets compared: kinds of visitor ids and sizes from empty to 100,000.
fn member_sets() -> Vec<(String, Vec<Vec<u8>>)> {
    let mut sets = Vec::new();
    for n in [0u64, 1, 50, 5_000, 100_000] {
        sets.push((
            format!("{n} text ids"),
            (0..n)
                .map(|i| format!("visitor-{i}").into_bytes())
                .collect(),
        ));
    }
    for n in [50u64, 5_000] {
        // Binary ids of every tail length, 1 to 24 bytes.
        sets.push((
            format!("{n} binary ids"),
            (0..n)
                .map(|i| {
                    let len = 1 + (i % 24) as usize;
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        .to_le_bytes()
                        .iter()
                        .cycle()
                        .take(len)
                        .copied()
                        .collect()
                })
                .collect(),
        ));
    }
    sets
}

/// Adds `members` to `key` in Redis and to a new sketch; returns the sketch.
fn add_to_both(node: &RedisNode, key: &str, members: &[Vec<u8>]) -> HyperLogLog {
    let mut sketch = HyperLogLog::new();
    node.query::<i64>(redis::cmd("PFADD").arg(key))
        .expect("PFADD of no members creates the key");
    for chunk in members.chunks(CHUNK) {
        let mut pfadd = redis::cmd("PFADD");
        pfadd.arg(key);
        for member in chunk {
            pfadd.arg(member.as_slice());
            sketch.insert(member);
        }
        node.query::<i64>(&pfadd).expect("PFADD");
    }
    sketch
}

fn pfcount(node: &RedisNode, key: &str) -> u64 {
    node.query(redis::cmd("PFCOUNT").arg(key)).expect("PFCOUNT")
}

/// The registers of a Redis HyperLogLog in its dense encoding: a 16-byte header (`HYLL`,
/// encoding 0 for dense, three unused bytes, the cached cardinality), then 16,384
/// registers of 6 bits, register `i` at bit `6 i`, low bits first.
fn redis_registers(value: &[u8]) -> Vec<u8> {
    assert_eq!(&value[..5], b"HYLL\0", "a dense Redis HyperLogLog");
    let body = &value[16..];
    assert_eq!(body.len(), REGISTERS * 6 / 8);
    (0..REGISTERS)
        .map(|i| {
            let (byte, shift) = (i * 6 / 8, i * 6 % 8);
            let low = u16::from(body[byte]);
            let high = u16::from(body.get(byte + 1).copied().unwrap_or(0));
            (((low | high << 8) >> shift) & 63) as u8
        })
        .collect()
}

#[test]
fn estimates_equal_pfcount_for_the_same_members() {
    let node = RedisNode::start().expect("redis-server starts");
    for (name, members) in member_sets() {
        let key = format!("sparse:{name}");

        let sketch = add_to_both(&node, &key, &members);

        assert_eq!(sketch.estimate(), pfcount(&node, &key), "{name}");
    }
}

#[test]
fn registers_equal_redis_dense_registers() {
    let node = RedisNode::start().expect("redis-server starts");
    // Redis keeps a small HyperLogLog sparse; with no sparse bytes allowed its first
    // register set makes it dense, and GET shows every register.
    node.query::<()>(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("hll-sparse-max-bytes")
            .arg(0),
    )
    .expect("CONFIG SET");
    for (name, members) in member_sets().into_iter().filter(|(_, m)| !m.is_empty()) {
        let key = format!("dense:{name}");

        let sketch = add_to_both(&node, &key, &members);
        let value: Vec<u8> = node.query(redis::cmd("GET").arg(&key)).expect("GET");

        let redis = redis_registers(&value);
        let ours = sketch.registers();
        let differing = (0..REGISTERS).filter(|&i| ours[i] != redis[i]).count();
        assert_eq!(differing, 0, "{name}: registers differing from Redis's");
        assert_eq!(sketch.estimate(), pfcount(&node, &key), "{name}");
    }
}
