//! Moving visitor sketches (`tally:u:*`, see [`crate::sketch`]) to their new owners.
//!
//! A sketch is a HyperLogLog, and merging one into another (`PFMERGE`, each register the
//! larger of the two) is idempotent: merging the same sketch twice leaves the destination
//! as once. So a sketch moves in three steps and no marker, exact when killed at any point:
//!
//! 1. **read** the sketch and its time to live on the source (`GET`, `PTTL`);
//! 2. **merge**, one script on the destination: `PFMERGE` it into the destination's sketch
//!    of the key (created when absent), which keeps the time to live it read when it has
//!    none of its own (a day's sketch still expires);
//! 3. **release**, one script on the source: delete each sketch still holding what was
//!    read. One that changed meanwhile stays, and moves with the next pass.
//!
//! A kill between steps 2 and 3 leaves the sketch on both nodes; the next run merges it
//! again, which changes nothing, and deletes it from the source.

use super::link::Link;
use crate::error::{Error, Result};
use crate::layout::SKETCH_KEY_PREFIX;

/// Most sketches one chunk moves (a dense sketch is 12 KiB).
pub(super) const CHUNK_SKETCHES: usize = 200;

/// Key the merge script writes each sketch read to before merging it, and deletes.
const SCRATCH_KEY: &str = "tally:reshard:sketch";

/// Step 2, on the destination.
const MERGE_SCRIPT: &str = r"
-- KEYS[1] the scratch key; KEYS[2..1+n] the sketches. ARGV[1..n] each sketch as read on
-- the source, ARGV[n+1..2n] its milliseconds to live there (negative: none).
local n = #KEYS - 1
for i = 1, n do
  redis.call('SET', KEYS[1], ARGV[i])
  redis.call('PFMERGE', KEYS[1 + i], KEYS[1])
  local ttl = tonumber(ARGV[n + i])
  if ttl > 0 and redis.call('PTTL', KEYS[1 + i]) == -1 then
    redis.call('PEXPIRE', KEYS[1 + i], ttl)
  end
end
redis.call('DEL', KEYS[1])
return n
";

/// Step 3, on the source.
const RELEASE_SCRIPT: &str = r"
-- KEYS[1..n] the sketches; ARGV[1..n] each as read. Reply: how many changed since (kept).
local changed = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
  else
    changed = changed + 1
  end
end
return changed
";

/// The two scripts, loaded once per run.
pub(super) struct SketchScripts {
    merge: redis::Script,
    release: redis::Script,
}

impl SketchScripts {
    pub(super) fn new() -> Self {
        Self {
            merge: redis::Script::new(MERGE_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
        }
    }
}

/// Moves the sketches of `keys` (page ids and days, without the `tally:u:` prefix) from
/// `from` to `to`: how many moved (a sketch gone from the source since the scan is not
/// counted).
pub(super) async fn move_sketches(
    scripts: &SketchScripts,
    from: &mut Link<'_>,
    to: &mut Link<'_>,
    keys: &[Vec<u8>],
) -> Result<u64> {
    let names: Vec<Vec<u8>> = keys
        .iter()
        .map(|key| [SKETCH_KEY_PREFIX.as_bytes(), key].concat())
        .collect();
    let mut read = redis::pipe();
    for name in &names {
        read.cmd("GET").arg(name).cmd("PTTL").arg(name);
    }
    let replies: Vec<redis::Value> = from.run("reshard read sketches", &read).await?;
    let mut found: Vec<(&[u8], Vec<u8>, i64)> = Vec::with_capacity(names.len());
    for (name, pair) in names.iter().zip(replies.chunks(2)) {
        match pair {
            [redis::Value::BulkString(sketch), redis::Value::Int(ttl)] => {
                found.push((name, sketch.clone(), *ttl));
            }
            [redis::Value::Nil, _] => {}
            other => {
                return Err(Error::Protocol {
                    node: from.name().to_owned(),
                    op: "reshard read sketches",
                    detail: format!("GET and PTTL answered {other:?}"),
                });
            }
        }
    }
    if found.is_empty() {
        return Ok(0);
    }
    let mut merge = scripts.merge.prepare_invoke();
    merge.key(SCRATCH_KEY);
    for (name, _, _) in &found {
        merge.key(*name);
    }
    for (_, sketch, _) in &found {
        merge.arg(sketch.as_slice());
    }
    for (_, _, ttl) in &found {
        merge.arg(*ttl);
    }
    let _: i64 = to.run("reshard merge sketches", &merge).await?;
    let mut release = scripts.release.prepare_invoke();
    for (name, sketch, _) in &found {
        release.key(*name);
        release.arg(sketch.as_slice());
    }
    let changed: u64 = from.run("reshard release sketches", &release).await?;
    Ok(found.len() as u64 - changed.min(found.len() as u64))
}
