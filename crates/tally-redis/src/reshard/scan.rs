//! Finding a node's keys: `SCAN` over the visit counters (or the visitor sketches), `ZSCAN`
//! over the request statistics, a page at a time.
//!
//! Only `tally:v:*` keys and the members of `tally:urls` are ever returned, so the guard's
//! keys (`tally:ring`, `tally:reshard`, `tally:leases`), the reshard markers
//! (`tally:reshard:in`), the high-water marks and the node id are never candidates: none of
//! them starts with `tally:v:`.

use crate::error::Result;
use crate::layout::{COUNTER_KEY_PREFIX, Layout, SKETCH_KEY_PREFIX, URLS_KEY};
use crate::node::Node;

use super::link::Link;

/// `COUNT` of each `SCAN` / `ZSCAN`: about this many keys a page.
const SCAN_COUNT: usize = 1000;

/// Pages a scan fetches ahead of their handling.
const AHEAD: usize = 4;

/// What a scan iterates over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scanned {
    /// The keys of a layout: `tally:v:*`, or the members of `tally:urls`.
    Layout(Layout),
    /// The visitor sketches, `tally:u:*`.
    Sketches,
}

impl From<Layout> for Scanned {
    fn from(layout: Layout) -> Self {
        Self::Layout(layout)
    }
}

/// One full iteration of `node`'s keys of `what` (see [`Scan`]), each page handed to
/// `handle` while the next pages are fetched, so that scanning and handling overlap.
///
/// # Errors
///
/// The first error of the scan or of `handle`; the iteration stops there.
pub(super) async fn each_page(
    node: &Node,
    what: impl Into<Scanned>,
    mut handle: impl AsyncFnMut(Vec<Vec<u8>>) -> Result<()>,
) -> Result<()> {
    let what = what.into();
    let (pages, mut arrived) = tokio::sync::mpsc::channel(AHEAD);
    let scan = async move {
        let mut scan = Scan::new(Link::open(node).await?, what);
        while let Some(page) = scan.next_page().await? {
            if pages.send(page).await.is_err() {
                break;
            }
        }
        Ok::<_, crate::Error>(())
    };
    let work = async {
        while let Some(page) = arrived.recv().await {
            handle(page).await?;
        }
        Ok(())
    };
    futures::try_join!(scan, work)?;
    Ok(())
}

/// One full iteration of a node's keys of one layout.
///
/// Redis guarantees that a full iteration returns every key present from its start to its
/// end, whatever is added or deleted meanwhile; a key may come twice (callers deduplicate)
/// and a key deleted during the iteration may or may not come.
pub(super) struct Scan<'a> {
    node: Link<'a>,
    what: Scanned,
    /// `None` once the iteration is complete.
    cursor: Option<u64>,
}

impl<'a> Scan<'a> {
    /// An iteration from the start, over `node`.
    pub(super) fn new(node: Link<'a>, what: Scanned) -> Self {
        Self {
            node,
            what,
            cursor: Some(0),
        }
    }

    /// The next page of keys (page ids without the `tally:v:` or `tally:u:` prefix, or
    /// URLs), or `None` once the iteration is complete. A page may be empty.
    pub(super) async fn next_page(&mut self) -> Result<Option<Vec<Vec<u8>>>> {
        let Some(cursor) = self.cursor else {
            return Ok(None);
        };
        let prefix = match self.what {
            Scanned::Sketches => SKETCH_KEY_PREFIX,
            Scanned::Layout(_) => COUNTER_KEY_PREFIX,
        };
        let (next, keys) = match self.what {
            Scanned::Layout(Layout::SortedSet) => {
                let mut zscan = redis::cmd("ZSCAN");
                zscan.arg(URLS_KEY).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
                let (next, flat): (u64, Vec<Vec<u8>>) =
                    self.node.run("reshard scan", &zscan).await?;
                // Member, score, member, score...: the scores are read again when moving.
                (next, flat.into_iter().step_by(2).collect())
            }
            _ => {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, keys): (u64, Vec<Vec<u8>>) =
                    self.node.run("reshard scan", &scan).await?;
                let keys = keys
                    .into_iter()
                    .filter_map(|key| key.strip_prefix(prefix.as_bytes()).map(<[u8]>::to_vec))
                    .collect();
                (next, keys)
            }
        };
        self.cursor = (next != 0).then_some(next);
        Ok(Some(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_guard_or_reshard_key_matches_the_counter_pattern() {
        for key in [
            crate::guard::RING_KEY,
            crate::guard::RESHARD_KEY,
            crate::guard::LEASES_KEY,
            super::super::MARKERS_KEY,
            crate::COUNTER_MARKS_KEY,
            crate::URLS_MARKS_KEY,
            crate::NODE_ID_KEY,
            URLS_KEY,
        ] {
            assert!(!key.starts_with(COUNTER_KEY_PREFIX), "{key}");
            assert!(!key.starts_with(SKETCH_KEY_PREFIX), "{key}");
        }
    }
}
