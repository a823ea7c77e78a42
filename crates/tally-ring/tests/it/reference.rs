//! A naive ring written straight from the documented formula, sharing no code with the
//! crate, so the frozen vectors and the properties do not rest on the crate being right.

use xxhash_rust::xxh3::xxh3_64;

/// Every point of every node, unsorted, with its owner's name.
#[derive(Debug)]
pub struct NaiveRing {
    points: Vec<(u64, String)>,
}

impl NaiveRing {
    pub fn new<S: AsRef<str>>(vnodes: u32, nodes: &[(S, u32)]) -> Self {
        let mut points = Vec::new();
        for (name, weight) in nodes {
            let name = name.as_ref();
            for i in 0..u64::from(vnodes) * u64::from(*weight) {
                points.push((xxh3_64(format!("{name}-{i}").as_bytes()), name.to_owned()));
            }
        }
        Self { points }
    }

    /// The owner of the smallest (hash, name) point at or after the key's hash, else of the
    /// smallest point overall: a linear scan, no sorting, no table.
    pub fn owner(&self, key: &[u8]) -> &str {
        let hash = xxh3_64(key);
        let at_or_after = self.points.iter().filter(|(p, _)| *p >= hash).min();
        let (_, name) = at_or_after
            .or_else(|| self.points.iter().min())
            .expect("a naive ring has points");
        name
    }
}
