//! Which node owns a key: the ring a tally server builds over its nodes, so a test can
//! read a count where the server wrote it, or pick keys that land on a given node.

use tally_ring::{DEFAULT_VNODES, Ring};

/// The ring a tally server builds over nodes named `names` (`host:port`, in `REDIS_NODES`
/// order): weight 1 each, [`DEFAULT_VNODES`] points per node (its `VIRTUAL_NODES`
/// default).
///
/// # Panics
///
/// When `names` is empty or holds a name twice (no ring can be built).
pub fn ring(names: &[String]) -> Ring<String> {
    Ring::builder()
        .vnodes(DEFAULT_VNODES)
        .nodes(names.iter().map(|name| (name.clone(), 1)))
        .build()
        .expect("a ring over distinct node names")
}

/// The keys `{prefix}0`, `{prefix}1`, ... that `ring` gives to node `index`, in that order
/// (endless: take what you need).
pub fn keys_on<'a>(
    ring: &'a Ring<String>,
    index: usize,
    prefix: &'a str,
) -> impl Iterator<Item = String> + 'a {
    (0..)
        .map(move |i| format!("{prefix}{i}"))
        .filter(move |key| ring.lookup_index(key.as_bytes()) == index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_on_a_node_are_the_ones_the_ring_gives_it() {
        let names: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", 7000 + i)).collect();
        let ring = ring(&names);
        assert_eq!(ring.vnodes(), DEFAULT_VNODES);
        for index in 0..names.len() {
            let keys: Vec<String> = keys_on(&ring, index, "k").take(5).collect();
            assert_eq!(keys.len(), 5);
            assert!(
                keys.iter()
                    .all(|k| ring.lookup_index(k.as_bytes()) == index)
            );
            assert!(keys.windows(2).all(|w| w[0] != w[1]));
        }
    }
}
