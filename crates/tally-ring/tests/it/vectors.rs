//! The frozen key-to-node mapping: `tests/vectors.txt` must keep passing forever.
//!
//! Set `TALLY_REGENERATE_VECTORS=1` to rewrite the file from the naive reference (only when
//! first creating it: a different file is a breaking change of the data layout).

use std::path::PathBuf;

use tally_ring::Ring;

use crate::reference::NaiveRing;

const VNODES: u32 = 160;
const NODES: [(&str, u32); 5] = [
    ("redis1:6379", 1),
    ("redis2:6379", 1),
    ("redis3:6379", 2),
    ("redis4:6379", 1),
    ("redis5:6379", 3),
];
const KEY_COUNT: usize = 1_000;

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.txt")
}

/// Page ids, the Redis keys the server builds from them, URL paths, non-ASCII text and the
/// empty key: the shapes of key tally routes.
fn keys() -> Vec<String> {
    let mut keys = vec![String::new()];
    keys.extend((0..500).map(|i| format!("page{i}")));
    keys.extend((0..200).map(|i| format!("tally:v:page{i}")));
    keys.extend((0..200).map(|i| format!("/api/products/{i}/")));
    keys.extend((0..50).map(|i| format!("user:{}", i * 7919)));
    keys.extend((0..49).map(|i| format!("страница-{i}-ü")));
    keys
}

fn render(pairs: &[(String, String)]) -> String {
    let nodes: Vec<String> = NODES
        .iter()
        .map(|(name, weight)| format!("{name} weight {weight}"))
        .collect();
    let mut text = format!(
        "# tally-ring frozen key-to-node mapping, format 1.\n\
         # Changing any line of this file is a BREAKING CHANGE of the data layout: keys\n\
         # already stored would be looked for on another node. Never regenerate it to make\n\
         # a test pass; a new mapping needs a migration plan.\n\
         # Ring: vnodes {VNODES}; nodes {}.\n\
         # Each line: key, a tab, the owner's name. The first key is the empty string.\n",
        nodes.join(", ")
    );
    for (key, owner) in pairs {
        text.push_str(&format!("{key}\t{owner}\n"));
    }
    text
}

fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (key, owner) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("vector line without a tab: {line:?}"));
            (key.to_owned(), owner.to_owned())
        })
        .collect()
}

fn read_vectors() -> Vec<(String, String)> {
    if std::env::var("TALLY_REGENERATE_VECTORS").as_deref() == Ok("1") {
        let naive = NaiveRing::new(VNODES, &NODES);
        let pairs: Vec<(String, String)> = keys()
            .into_iter()
            .map(|key| {
                let owner = naive.owner(key.as_bytes()).to_owned();
                (key, owner)
            })
            .collect();
        std::fs::write(vectors_path(), render(&pairs)).expect("write tests/vectors.txt");
    }
    let text = std::fs::read_to_string(vectors_path()).expect("read tests/vectors.txt");
    assert!(text.contains("BREAKING CHANGE"), "the header must warn");
    let pairs = parse(&text);
    assert_eq!(pairs.len(), KEY_COUNT);
    let wanted: Vec<String> = keys();
    let found: Vec<&String> = pairs.iter().map(|(k, _)| k).collect();
    assert!(
        found.iter().zip(&wanted).all(|(f, w)| *f == w),
        "the vector file holds other keys than the test's key list"
    );
    pairs
}

#[test]
fn naive_reference_agrees_with_the_vector_file() {
    let naive = NaiveRing::new(VNODES, &NODES);
    for (key, owner) in read_vectors() {
        assert_eq!(naive.owner(key.as_bytes()), owner, "key {key:?}");
    }
}

#[test]
fn ring_agrees_with_the_vector_file_in_any_insertion_order() {
    let vectors = read_vectors();
    let forward = Ring::builder().vnodes(VNODES).nodes(NODES).build().unwrap();
    let backward = Ring::builder()
        .vnodes(VNODES)
        .nodes(NODES.iter().rev().copied())
        .build()
        .unwrap();
    for (key, owner) in &vectors {
        assert_eq!(*forward.lookup_str(key), owner, "key {key:?}");
        assert_eq!(
            *backward.lookup_str(key),
            owner,
            "key {key:?}, reversed order"
        );
    }
}

#[test]
fn vector_file_exercises_every_node() {
    for (name, _) in NODES {
        assert!(
            read_vectors().iter().any(|(_, owner)| owner == name),
            "{name} owns no vector"
        );
    }
}
