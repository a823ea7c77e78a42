//! One chunk of keys moved from a source node to a destination node, in the four steps the
//! module docs describe: [`read`] on the source, [`receive`] on the destination,
//! [`release`] on the source, [`forget`] on the destination.

use super::MARKERS_KEY;
use super::link::Link;
use super::plan::Counts;
use crate::error::{Error, Result};
use crate::layout::{COUNTER_KEY_PREFIX, Layout, MAX_TOTAL, URLS_KEY, parse_count_text};

/// Step 2, on the destination: adds each count unless its marker says this reshard added
/// it already.
///
/// Reading every marker first (`HMGET`) and then writing the markers and counts of the
/// keys without one (`HSET`, `MSET` / `ZADD`) is `HSETNX` per key followed by its add,
/// since nothing runs between the commands of a script; a few commands per chunk instead
/// of two per key keep the destination's work small. Commands take at most `CHUNK` keys
/// (Lua's `unpack` has a stack limit).
const RECEIVE_SCRIPT: &str = r"
-- KEYS[1] the markers hash; layout 'c': KEYS[2..1+n] the counter keys; layout 'z': KEYS[2]
-- the sorted set.
-- ARGV[1] 'c' or 'z', ARGV[2] n, ARGV[3..2+n] the marker fields, ARGV[3+n..2+2n] the
-- counts; layout 'z' then ARGV[3+2n..2+3n] the members.
-- Reply: {1, keys added}, or {0, position, what is there} when a value here is not a count
-- (then nothing was written).
local CHUNK = 500
local LIMIT = 9007199254740991
local zset = ARGV[1] == 'z'
local n = tonumber(ARGV[2])
local F, C, M = 2, 2 + n, 2 + 2 * n
if zset then
  local kind = redis.call('TYPE', KEYS[2]).ok
  if kind ~= 'zset' and kind ~= 'none' then return {0, 0, 'a ' .. kind} end
end
local marked, current = {}, {}
for first = 1, n, CHUNK do
  local last = math.min(first + CHUNK - 1, n)
  local m = redis.call('HMGET', KEYS[1], unpack(ARGV, F + first, F + last))
  local c
  if zset then c = redis.call('ZMSCORE', KEYS[2], unpack(ARGV, M + first, M + last))
  else c = redis.call('MGET', unpack(KEYS, 1 + first, 1 + last)) end
  for i = first, last do
    marked[i] = m[i - first + 1]
    current[i] = c[i - first + 1]
  end
end
-- Every key is checked before the first write: a script is not rolled back, and a marker
-- written without its count would keep every later run from adding the count.
local todo, totals, absent = {}, {}, {}
for i = 1, n do
  if not marked[i] then
    local text = current[i]
    local value = 0
    if text then
      value = tonumber(text)
      if value == nil or value < 0 or value % 1 ~= 0 then
        return {0, i, 'the value ' .. string.sub(text, 1, 64)}
      end
    elseif not zset then
      absent[#absent + 1] = i
    end
    local total = value + tonumber(ARGV[C + i])
    if total > LIMIT then
      return {0, i, 'the value ' .. (text or '0') .. ', which +' .. ARGV[C + i] .. ' would take past 2^53-1'}
    end
    todo[#todo + 1] = i
    totals[i] = total
  end
end
-- MGET answers nil for a key of another type too: one EXISTS per chunk of the absent keys
-- (new keys are the common case), and TYPE only when one of them exists.
for first = 1, #absent, CHUNK do
  local last = math.min(first + CHUNK - 1, #absent)
  local names = {}
  for j = first, last do names[#names + 1] = KEYS[1 + absent[j]] end
  if redis.call('EXISTS', unpack(names)) > 0 then
    for j = first, last do
      local kind = redis.call('TYPE', KEYS[1 + absent[j]]).ok
      if kind ~= 'none' then return {0, absent[j], 'a ' .. kind} end
    end
  end
end
for first = 1, #todo, CHUNK do
  local last = math.min(first + CHUNK - 1, #todo)
  local fields, values = {}, {}
  for j = first, last do
    local i = todo[j]
    fields[#fields + 1] = ARGV[F + i]
    fields[#fields + 1] = ARGV[C + i]
    -- '%d' writes every integer below 2^53 exactly (tostring would use %.14g).
    if zset then
      values[#values + 1] = string.format('%d', totals[i])
      values[#values + 1] = ARGV[M + i]
    else
      values[#values + 1] = KEYS[1 + i]
      values[#values + 1] = string.format('%d', totals[i])
    end
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  if zset then redis.call('ZADD', KEYS[2], unpack(values))
  else redis.call('MSET', unpack(values)) end
end
-- Layout 'c', optionally ARGV[3+2n]: the seconds after which a sub-key ('{page}\31{day}')
-- this chunk creates here expires (a day count's DAILY_RETENTION_DAYS, in full again).
if not zset then
  local ttl = tonumber(ARGV[C + n + 1])
  if ttl then
    for _, i in ipairs(todo) do
      if not current[i] and string.find(KEYS[1 + i], '\31', 1, true) then
        redis.call('EXPIRE', KEYS[1 + i], ttl)
      end
    end
  end
end
return {1, #todo}
";

/// Step 3, on the source: removes each key that still holds the count read in step 1.
const RELEASE_SCRIPT: &str = r"
-- Layout 'c': KEYS[1..n] the counter keys; layout 'z': KEYS[1] the sorted set.
-- ARGV[1] 'c' or 'z', ARGV[2] n, ARGV[3..2+n] the counts read; layout 'z' then
-- ARGV[3+n..2+2n] the members.
-- Reply: {position, what is there, ...} for each key that changed since it was read.
local CHUNK = 500
local zset = ARGV[1] == 'z'
local n = tonumber(ARGV[2])
local C, M = 2, 2 + n
local current = {}
for first = 1, n, CHUNK do
  local last = math.min(first + CHUNK - 1, n)
  local part
  if zset then part = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, M + first, M + last))
  else part = redis.call('MGET', unpack(KEYS, first, last)) end
  for i = first, last do current[i] = part[i - first + 1] end
end
local gone, changed = {}, {}
for i = 1, n do
  local text = current[i]
  local moved = tonumber(ARGV[C + i])
  local value = text and tonumber(text)
  if value == moved then
    if zset then gone[#gone + 1] = ARGV[M + i] else gone[#gone + 1] = KEYS[i] end
  else
    -- Counted since the read: what was read is on the destination, the rest stays here
    -- and moves with the next pass.
    if value and value > moved and value % 1 == 0 then
      local rest = string.format('%d', value - moved)
      if zset then redis.call('ZADD', KEYS[1], rest, ARGV[M + i])
      else redis.call('SET', KEYS[i], rest, 'KEEPTTL') end
    end
    changed[#changed + 1] = i
    if text then
      changed[#changed + 1] = text
    else
      local kind = 'none'
      if not zset then kind = redis.call('TYPE', KEYS[i]).ok end
      if kind == 'none' then changed[#changed + 1] = 'nothing'
      else changed[#changed + 1] = 'a ' .. kind end
    end
  end
end
for first = 1, #gone, CHUNK do
  local last = math.min(first + CHUNK - 1, #gone)
  if zset then redis.call('ZREM', KEYS[1], unpack(gone, first, last))
  else redis.call('DEL', unpack(gone, first, last)) end
end
return changed
";

/// The two scripts, loaded once per run (`EVALSHA`, loading the script on a node that does
/// not have it).
pub(super) struct Scripts {
    receive: redis::Script,
    release: redis::Script,
    /// The new list's [`RedisConfig::subkey_ttl`](crate::RedisConfig::subkey_ttl): a day
    /// count moved to a node that did not have it expires this long after the move.
    subkey_ttl: Option<std::time::Duration>,
}

impl Scripts {
    pub(super) fn new(subkey_ttl: Option<std::time::Duration>) -> Self {
        Self {
            receive: redis::Script::new(RECEIVE_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            subkey_ttl,
        }
    }
}

/// A key of a chunk and the count read for it on the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// The page id (without `tally:v:`) or the URL.
    pub(super) key: Vec<u8>,
    pub(super) count: u64,
}

/// What one chunk moved.
#[derive(Debug, Default)]
pub(super) struct Chunk {
    pub(super) counts: Counts,
    /// Keys whose count an earlier run had already added to the destination.
    pub(super) resumed: u64,
}

/// Moves `keys` of `layout` from `source` to `dest`, their owner in the new ring: the four
/// steps in order. Keys no longer on the source are skipped.
///
/// # Errors
///
/// A node error, or [`Error::CorruptValue`], before anything was written or after a step
/// that leaves a state a new run repairs; [`Error::WrittenDuringReshard`] once the chunk
/// is complete, for a key that changed on the source since it was read.
pub(super) async fn move_chunk(
    scripts: &Scripts,
    source: &mut Link<'_>,
    dest: &mut Link<'_>,
    layout: Layout,
    mut keys: Vec<Vec<u8>>,
) -> Result<Chunk> {
    // A scan can return a key twice.
    keys.sort_unstable();
    keys.dedup();
    let entries = read(source, layout, &keys).await?;
    if entries.is_empty() {
        return Ok(Chunk::default());
    }
    let added = receive(scripts, dest, source.name(), layout, &entries).await?;
    let changed = release(scripts, source, layout, &entries).await?;
    forget(dest, source.name(), layout, &entries).await?;
    if let Some((index, found)) = changed.into_iter().next() {
        let entry = &entries[index];
        return Err(Error::WrittenDuringReshard {
            node: source.name().to_owned(),
            stored_as: stored_as(layout, &entry.key),
            read: entry.count,
            found,
        });
    }
    let mut counts = Counts::default();
    for entry in &entries {
        counts.add(layout, entry.count);
    }
    Ok(Chunk {
        counts,
        resumed: entries.len() as u64 - added,
    })
}

/// Step 1: the counts of `keys` on `node`, in order; keys it does not hold are left out.
///
/// # Errors
///
/// [`Error::CorruptValue`] for a key holding something that is not a count (another type,
/// text, more than [`MAX_TOTAL`]); a node error.
pub(super) async fn read(
    node: &mut Link<'_>,
    layout: Layout,
    keys: &[Vec<u8>],
) -> Result<Vec<Entry>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<Vec<u8>>> = match layout {
        Layout::SortedSet => {
            let mut zmscore = redis::cmd("ZMSCORE");
            zmscore.arg(URLS_KEY).arg(keys);
            node.run("reshard read", &zmscore).await?
        }
        _ => {
            let mut mget = redis::cmd("MGET");
            for key in keys {
                mget.arg(counter_key(key));
            }
            node.run("reshard read", &mget).await?
        }
    };
    if values.len() != keys.len() {
        return Err(Error::Protocol {
            node: node.name().to_owned(),
            op: "reshard read",
            detail: format!("{} values for {} keys", values.len(), keys.len()),
        });
    }
    let name = node.name();
    let corrupt = |key: &[u8], found: String| Error::CorruptValue {
        node: name.to_owned(),
        stored_as: stored_as(layout, key),
        found,
    };
    let mut entries = Vec::with_capacity(keys.len());
    let mut absent = Vec::new();
    for (key, value) in keys.iter().zip(values) {
        match value {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let count = parse_count_text(&text)
                    .ok()
                    .filter(|count| *count <= MAX_TOTAL)
                    .ok_or_else(|| corrupt(key, format!("the value {}", cut(&text))))?;
                entries.push(Entry {
                    key: key.clone(),
                    count,
                });
            }
            None => absent.push(key),
        }
    }
    // `MGET` answers nil for a key of another type too: such a key is neither moved nor
    // skipped in silence, since every pass would find it again.
    if layout == Layout::Counters && !absent.is_empty() {
        let mut types = redis::pipe();
        for key in &absent {
            types.cmd("TYPE").arg(counter_key(key));
        }
        let kinds: Vec<String> = node.run("reshard read", &types).await?;
        if let Some((key, kind)) = absent.iter().zip(kinds).find(|(_, kind)| kind != "none") {
            return Err(corrupt(key, format!("a {kind}")));
        }
    }
    Ok(entries)
}

/// Step 2: on `dest`, for each entry whose marker (from `source`) is absent, writes the
/// marker and adds the count, in one script; the keys added (the others an earlier run
/// added). Nothing is written when a value on `dest` is not a count.
///
/// # Errors
///
/// [`Error::CorruptValue`] naming the key on `dest`; a node error.
pub(super) async fn receive(
    scripts: &Scripts,
    dest: &mut Link<'_>,
    source: &str,
    layout: Layout,
    entries: &[Entry],
) -> Result<u64> {
    let mut invocation = scripts.receive.prepare_invoke();
    invocation.key(MARKERS_KEY);
    stored_keys(&mut invocation, layout, entries);
    invocation.arg(code(layout)).arg(entries.len());
    for entry in entries {
        invocation.arg(marker_field(source, layout, &entry.key));
    }
    for entry in entries {
        invocation.arg(entry.count);
    }
    match layout {
        Layout::SortedSet => {
            for entry in entries {
                invocation.arg(&entry.key);
            }
        }
        Layout::Counters => {
            if let Some(ttl) = scripts.subkey_ttl {
                invocation.arg(ttl.as_secs().max(1));
            }
        }
    }
    let reply: redis::Value = dest.run("reshard receive", &invocation).await?;
    let protocol = |detail: String| Error::Protocol {
        node: dest.name().to_owned(),
        op: "reshard receive",
        detail,
    };
    let redis::Value::Array(parts) = reply else {
        return Err(protocol(format!("expected an array, got {reply:?}")));
    };
    let number = |value: &redis::Value| match value {
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    match parts.as_slice() {
        [ok, added] if number(ok) == Some(1) => {
            number(added).ok_or_else(|| protocol(format!("expected a count, got {added:?}")))
        }
        [ok, position, found] if number(ok) == Some(0) => {
            let stored_as = match number(position).and_then(|p| p.checked_sub(1)) {
                Some(index) => entries
                    .get(index as usize)
                    .map_or_else(String::new, |entry| stored_as(layout, &entry.key)),
                None => URLS_KEY.to_owned(),
            };
            let found = match found {
                redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                other => format!("{other:?}"),
            };
            Err(Error::CorruptValue {
                node: dest.name().to_owned(),
                stored_as,
                found,
            })
        }
        other => Err(protocol(format!("unexpected reply {other:?}"))),
    }
}

/// Step 3: on `source`, removes each entry's key if it still holds the count read; a key
/// that grew keeps what it gained (it moves with the next pass). Returns the keys that
/// changed since step 1 (position in `entries`, what the node held).
///
/// # Errors
///
/// A node error.
pub(super) async fn release(
    scripts: &Scripts,
    source: &mut Link<'_>,
    layout: Layout,
    entries: &[Entry],
) -> Result<Vec<(usize, String)>> {
    let mut invocation = scripts.release.prepare_invoke();
    stored_keys(&mut invocation, layout, entries);
    invocation.arg(code(layout)).arg(entries.len());
    for entry in entries {
        invocation.arg(entry.count);
    }
    if layout == Layout::SortedSet {
        for entry in entries {
            invocation.arg(&entry.key);
        }
    }
    let flat: Vec<redis::Value> = source.run("reshard release", &invocation).await?;
    flat.chunks(2)
        .map(|pair| match pair {
            [redis::Value::Int(position), found] => {
                let index = usize::try_from(*position)
                    .ok()
                    .and_then(|p| p.checked_sub(1))
                    .filter(|index| *index < entries.len());
                let found = match found {
                    redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    other => format!("{other:?}"),
                };
                index.map(|index| (index, found))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Protocol {
            node: source.name().to_owned(),
            op: "reshard release",
            detail: format!("unexpected reply {flat:?}"),
        })
}

/// Step 4: on `dest`, removes the markers of `entries` (from `source`).
///
/// # Errors
///
/// A node error.
pub(super) async fn forget(
    dest: &mut Link<'_>,
    source: &str,
    layout: Layout,
    entries: &[Entry],
) -> Result<()> {
    let mut hdel = redis::cmd("HDEL");
    hdel.arg(MARKERS_KEY);
    for entry in entries {
        hdel.arg(marker_field(source, layout, &entry.key));
    }
    dest.run::<u64>("reshard forget", &hdel).await?;
    Ok(())
}

/// The marker field of `key` of `layout` moved from `source`: `{source}\0{v|u}\0{key}`.
/// The source is part of it because one key can move to one destination from two nodes
/// (a key a past mistake left on a node that did not own it).
pub(super) fn marker_field(source: &str, layout: Layout, key: &[u8]) -> Vec<u8> {
    let kind: &[u8] = if layout == Layout::SortedSet {
        b"u"
    } else {
        b"v"
    };
    [source.as_bytes(), b"\0", kind, b"\0", key].concat()
}

/// `tally:v:{key}`.
fn counter_key(key: &[u8]) -> Vec<u8> {
    [COUNTER_KEY_PREFIX.as_bytes(), key].concat()
}

/// The layout's code in the scripts.
fn code(layout: Layout) -> &'static str {
    if layout == Layout::SortedSet {
        "z"
    } else {
        "c"
    }
}

/// Where `key` is stored, for a message.
fn stored_as(layout: Layout, key: &[u8]) -> String {
    layout.stored_as(&String::from_utf8_lossy(key))
}

/// `text` cut to 64 bytes (on a character boundary), for a message.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The Redis keys of `entries` as a script's KEYS: `tally:urls` once for the request
/// statistics, each counter's key otherwise.
fn stored_keys(invocation: &mut redis::ScriptInvocation<'_>, layout: Layout, entries: &[Entry]) {
    match layout {
        Layout::SortedSet => {
            invocation.key(URLS_KEY);
        }
        _ => {
            for entry in entries {
                invocation.key(counter_key(&entry.key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_fields_name_source_layout_and_key() {
        assert_eq!(
            marker_field("a:1", Layout::Counters, b"page"),
            b"a:1\0v\0page".to_vec()
        );
        assert_eq!(
            marker_field("a:1", Layout::SortedSet, b"/x/"),
            b"a:1\0u\0/x/".to_vec()
        );
    }

    #[test]
    fn messages_cut_long_values_on_a_character_boundary() {
        let long = "é".repeat(40);
        assert_eq!(cut(&long).len(), 64);
        assert_eq!(cut("short"), "short");
    }
}
