//! The key layouts and the one Lua script that applies, replays and reads batches in both.
//!
//! Both layouts go through the same script and the same Rust code; a layout only decides
//! which Redis keys a counter key maps to and which hash holds the high-water marks.

use std::fmt;

use tally_counter::{InstanceId, ShardId, StoredValues};

use crate::error::Error;

/// Prefix of the plain counters of [`Layout::Counters`]: page `p` lives at `tally:v:p`.
pub const COUNTER_KEY_PREFIX: &str = "tally:v:";
/// Prefix of the visitor sketches of [`Layout::Counters`]: page `p`'s HyperLogLog lives at
/// `tally:u:p` (see [`crate::sketch`]).
pub const SKETCH_KEY_PREFIX: &str = "tally:u:";
/// The sorted set of [`Layout::SortedSet`] on every node (member = key, score = count).
pub const URLS_KEY: &str = "tally:urls";
/// Hash of high-water marks for [`Layout::Counters`]: field [`mark_field`]
/// (`{instance}:{shard}`), value `{seq}:{unix ms}` (see the crate docs' *High-water marks*).
pub const COUNTER_MARKS_KEY: &str = "tally:applied";
/// Hash of high-water marks for [`Layout::SortedSet`], fields and values as in
/// [`COUNTER_MARKS_KEY`].
pub const URLS_MARKS_KEY: &str = "tally:applied:urls";

/// The field of `instance`'s high-water mark for `shard` in a marks hash:
/// `{instance}:{shard}`, the instance as 16 hex digits and the shard as its position in
/// `REDIS_NODES`.
///
/// Keyed by shard too, not by instance alone: two shards that turn out to reach one Redis
/// database (two addresses of one server, a DNS alias, a proxy) then keep two marks, and
/// one shard's sequence can never make the other's batches look already applied.
///
/// ```
/// use tally_counter::InstanceId;
///
/// assert_eq!(tally_redis::mark_field(InstanceId::from_u64(42), 3), "000000000000002a:3");
/// ```
pub fn mark_field(instance: InstanceId, shard: ShardId) -> String {
    format!("{instance}:{shard}")
}

/// Largest total the store accepts: 2^53 - 1. Lua numbers and sorted-set scores are
/// doubles, exact up to here; the script leaves a key whose total would pass it as it is,
/// and reports it, rather than count inexactly.
pub const MAX_TOTAL: u64 = (1 << 53) - 1;

/// Where a store keeps its counts on each node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// One string per key, `tally:v:{key}`, incremented with `INCRBY` (visit counters).
    /// High-water marks in the hash `tally:applied`.
    #[default]
    Counters,
    /// One sorted set per node, `tally:urls`, member `{key}`, incremented with `ZINCRBY`
    /// (request statistics, readable ranked with [`crate::RedisStore::top`]). High-water
    /// marks in the hash `tally:applied:urls`, apart from the counters' marks, so the two
    /// layouts never share a sequence even if two instance ids collided.
    SortedSet,
}

impl Layout {
    /// Where `key` is stored, for an operator: `tally:v:{key}`, or `tally:urls member
    /// {key}` for the sorted-set layout.
    pub fn stored_as(self, key: &str) -> String {
        match self {
            Self::Counters => self.redis_key(key),
            Self::SortedSet => format!("{URLS_KEY} member {key}"),
        }
    }

    /// The Redis key holding `key`'s count: `tally:v:{key}`, or `tally:urls` (where `key` is
    /// the member) for the sorted-set layout.
    pub fn redis_key(self, key: &str) -> String {
        match self {
            Self::Counters => format!("{COUNTER_KEY_PREFIX}{key}"),
            Self::SortedSet => URLS_KEY.to_owned(),
        }
    }

    /// `Ok` when this is `needed`, else [`Error::WrongLayout`] for the operation `op`.
    pub(crate) fn require(self, needed: Layout, op: &'static str) -> crate::Result<()> {
        if self == needed {
            Ok(())
        } else {
            Err(Error::WrongLayout {
                op,
                needed,
                actual: self,
            })
        }
    }

    /// The hash holding this layout's high-water marks.
    pub fn marks_key(self) -> &'static str {
        match self {
            Self::Counters => COUNTER_MARKS_KEY,
            Self::SortedSet => URLS_MARKS_KEY,
        }
    }

    fn script_code(self) -> &'static str {
        match self {
            Self::Counters => "c",
            Self::SortedSet => "z",
        }
    }

    /// The command that sets `key` back to zero.
    pub(crate) fn reset_cmd(self, key: &str) -> redis::Cmd {
        match self {
            Self::Counters => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(self.redis_key(key)).arg(Standalone.sketch_key(key));
                cmd
            }
            Self::SortedSet => {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(URLS_KEY).arg(key);
                cmd
            }
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Counters => "counters",
            Self::SortedSet => "sorted-set",
        })
    }
}

/// The ranking script: the `limit` highest members of a sorted set, with the members tied
/// at the cut-off chosen smallest first. Returns `member, score` pairs (flat) for the caller
/// to sort by (score descending, member ascending).
pub(crate) const TOP_SCRIPT: &str = r"
-- KEYS[1] the sorted set, ARGV[1] limit (at least 1)
local limit = tonumber(ARGV[1])
local head = redis.call('ZREVRANGE', KEYS[1], 0, limit - 1, 'WITHSCORES')
if #head < 2 * limit then return head end
local boundary = head[#head]
local out = {}
local above = 0
for i = 1, #head, 2 do
  if tonumber(head[i + 1]) > tonumber(boundary) then
    out[#out + 1] = head[i]
    out[#out + 1] = head[i + 1]
    above = above + 1
  end
end
local ties = redis.call('ZRANGEBYSCORE', KEYS[1], boundary, boundary, 'WITHSCORES', 'LIMIT', 0, limit - above)
for i = 1, #ties do out[#out + 1] = ties[i] end
return out
";

/// The body of the batch scripts: the Lua function `batch(KEYS, ARGV)`, which applies (or
/// reads) one shard's batch, and the `now` it stamps marks with, read once per script call.
/// A macro, so `concat!` can build both scripts from it.
macro_rules! batch_function {
    () => {
        r"
-- The node's time ('TIME'), read by the first batch of a call that writes a mark.
local now
-- KEYS[1]  hash of high-water marks (field '{instance}:{shard}', value '{seq}:{unix ms}')
-- KEYS[2..] layout 'c': the n counter keys; layout 'z': the sorted set
-- ARGV[1]  mark field, ARGV[2] batch seq (0 = read only), ARGV[3] layout 'c' or 'z',
-- ARGV[4]  n; layout 'z' then has n members; then n deltas (absent when reading); then,
--          optionally, the seconds after which new sub-keys expire (layout 'c').
-- Keys are distinct within a batch (checked by the caller).
local function batch(KEYS, ARGV)
  local CHUNK = 500
  local LIMIT = 9007199254740991
  -- The sequence is the value's leading digits: '{seq}:{unix ms}', or a bare '{seq}' as
  -- written before marks carried their time.
  local stored = redis.call('HGET', KEYS[1], ARGV[1])
  local mark = tonumber(string.match(stored or '0', '^%d+'))
  local seq = tonumber(ARGV[2])
  local zset = ARGV[3] == 'z'
  local n = tonumber(ARGV[4])
  -- ARGV index before the first delta.
  local d = 4
  if zset then d = 4 + n end

  -- The request statistics' sorted set of another type fails the whole batch, naming it:
  -- no member can be counted until it is repaired.
  if zset then
    local kind = redis.call('TYPE', KEYS[2]).ok
    if kind ~= 'zset' and kind ~= 'none' then
      return redis.error_reply('WRONGTYPE tally: ' .. KEYS[2] .. ' is a ' .. kind .. ', not a sorted set')
    end
  end

  -- Current values (false when absent). Layout 'c' also lists the positions of the keys
  -- MGET found absent: MGET answers nil for keys of another type too.
  local current = {}
  local absent = {}
  for first = 1, n, CHUNK do
    local last = math.min(first + CHUNK - 1, n)
    local part
    if zset then part = redis.call('ZMSCORE', KEYS[2], unpack(ARGV, 4 + first, 4 + last))
    else part = redis.call('MGET', unpack(KEYS, 1 + first, 1 + last)) end
    for i = first, last do
      current[i] = part[i - first + 1]
      if not zset and not current[i] then absent[#absent + 1] = i end
    end
  end

  -- Keys whose stored value is not a count are rejected, not applied, and reported (flat:
  -- position, what was found) so the caller can hold them apart; every other key goes on.
  -- Absent keys are checked with one EXISTS per chunk (new keys are the common case); only
  -- when one of them exists, as another type, does TYPE find which.
  local rejected = {}
  local bad = {}
  local function reject(i, found)
    bad[i] = true
    rejected[#rejected + 1] = i
    rejected[#rejected + 1] = found
  end
  for first = 1, #absent, CHUNK do
    local last = math.min(first + CHUNK - 1, #absent)
    local names = {}
    for j = first, last do names[#names + 1] = KEYS[1 + absent[j]] end
    if redis.call('EXISTS', unpack(names)) > 0 then
      for j = first, last do
        local kind = redis.call('TYPE', KEYS[1 + absent[j]]).ok
        if kind ~= 'none' then reject(absent[j], 'a ' .. kind) end
      end
    end
  end
  for i = 1, n do
    local text = current[i]
    if text then
      local value = tonumber(text)
      if value == nil or value < 0 or value % 1 ~= 0 or value > LIMIT then
        reject(i, 'the value ' .. string.sub(text, 1, 64))
      end
    end
  end

  -- A read, or a batch already applied (a retry after a lost reply): current totals.
  if seq <= mark then
    -- A retry rewrites the mark as it is: a write, replicated after the first application,
    -- so a WAIT that follows the retry on its connection (Redis Cluster) also covers the
    -- first application, which another connection may have made.
    if seq > 0 then redis.call('HSET', KEYS[1], ARGV[1], stored) end
    for i = 1, n do
      if bad[i] then current[i] = '0' else current[i] = current[i] or '0' end
    end
    return {0, mark, current, rejected}
  end

  -- Compute the new totals before the first write; a total past 2^53-1 is rejected too.
  local totals = {}
  for i = 1, n do
    if bad[i] then
      totals[i] = 0
    else
      local value = tonumber(current[i] or '0')
      local total = value + tonumber(ARGV[d + i])
      if total > LIMIT then
        reject(i, 'the value ' .. current[i] .. ', which +' .. ARGV[d + i] .. ' would take past 2^53-1')
        totals[i] = 0
      else
        totals[i] = total
      end
    end
  end

  -- Sub-keys ('{key}\31{sub}': a page's count on a day) are written one SET each: one
  -- this batch creates expires after ARGV[d + n + 1] seconds, when given (EX, set once),
  -- and one that exists keeps its expiry (KEEPTTL: MSET, like SET, would drop it, and the
  -- day would never expire). Every other key goes into one MSET per chunk.
  local ttl
  if not zset then ttl = ARGV[d + n + 1] end
  for first = 1, n, CHUNK do
    local last = math.min(first + CHUNK - 1, n)
    local args = {}
    local j = 0
    for i = first, last do
      -- A new key's total is its delta, as sent; '%d' writes every other integer below
      -- 2^53 exactly (tostring would use %.14g).
      local text
      if not bad[i] then
        if current[i] then text = string.format('%d', totals[i]) else text = ARGV[d + i] end
      end
      if bad[i] then
        -- Left as it is.
      elseif zset then
        args[j + 1] = text
        args[j + 2] = ARGV[4 + i]
        j = j + 2
      elseif string.find(KEYS[1 + i], '\31', 1, true) then
        if current[i] then redis.call('SET', KEYS[1 + i], text, 'KEEPTTL')
        elseif ttl then redis.call('SET', KEYS[1 + i], text, 'EX', ttl)
        else redis.call('SET', KEYS[1 + i], text) end
      else
        args[j + 1] = KEYS[1 + i]
        args[j + 2] = text
        j = j + 2
      end
    end
    if j > 0 then
      if zset then redis.call('ZADD', KEYS[2], unpack(args))
      else redis.call('MSET', unpack(args)) end
    end
  end
  -- The mark carries the node's time of this write, so marks of instances that stopped
  -- writing can be removed after the retention (marks.rs, SWEEP_SCRIPT); writing it with every
  -- batch keeps a live instance's mark fresh.
  if not now then now = redis.call('TIME') end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. now[1] .. string.format('%03d', math.floor(now[2] / 1000)))
  return {1, seq, totals, rejected}
end
"
    };
}

/// The batch script. One round trip applies a batch at most once, or reads values together
/// with the mark; see the comments inside for the argument layout.
///
/// Why not one `INCRBY`/`ZINCRBY` per key: a Redis script is not rolled back when a command
/// inside it fails, so a batch whose 500th key held a string would leave 499 increments
/// applied with no mark, and the counter's retry would apply them again. Instead the script
/// reads every current value first (`MGET` / `ZMSCORE`), checks them all, computes the new
/// totals, and only then writes them (`MSET` / `ZADD`) with the mark: a failure cannot come
/// half-way, and a key that cannot be counted is left out and reported before the first
/// write. Four commands per chunk instead of two per key also saves the fixed cost of each
/// `redis.call`; only a page's count on a day (a sub-key) is written with a `SET` of its
/// own, which sets its expiry when it is new and keeps it otherwise. Why not native
/// commands (`WATCH` the marks, `MULTI`, `INCRBY` per key, `EXEC`), although `cargo run -p
/// tally-benches --release --bin cold-apply` measures them at about two thirds of this
/// script's Redis CPU per new counter key: `INCRBY` adds to a negative stored value and
/// carries a total past 2^53 instead of leaving the key as it is and reporting it, so a
/// poisoned value would be counted on rather than held apart; checking the values first
/// would need a `WATCH` of every key, and every concurrent write of a hot key by another
/// instance would then abort the transaction (README, *The cold page set*). The script runs atomically, so read-then-write loses no concurrent
/// increment. Commands take at most `CHUNK` keys because Lua's `unpack` has a stack limit
/// (batches after an outage can hold many thousands of keys). Needs Redis 6.2+ (`ZMSCORE`).
pub(crate) const BATCH_SCRIPT: &str = concat!(batch_function!(), "return batch(KEYS, ARGV)\n");

/// The combined batch script (Redis Cluster): the batches of several buckets whose slots
/// one primary serves, applied in one call, each exactly as [`BATCH_SCRIPT`] applies it
/// (its own mark, its own reply), so one call and one `WAIT` carry them all.
///
/// Redis Cluster refuses a script whose declared keys span slots (`CROSSSLOT`), even with
/// the `allow-cross-slot-keys` flag; the flag only lets the script's own commands touch
/// other slots of the node. So the call declares one key, the first batch's marks hash
/// (it routes the call, and a node that does not serve it answers `MOVED`), and passes
/// every batch's key names as arguments. Each command inside stays within one bucket's
/// slot. A key the node does not serve (a stale slot map, a slot half-migrated) fails the
/// call at the first read of that bucket, before any of its writes: the batches before it
/// are applied with their marks, the rest are not, and the caller sends each batch again
/// on its own, where a mark answers for the ones already applied. Needs Redis 7.0+ (script
/// flags).
pub(crate) const COMBINED_BATCH_SCRIPT: &str = concat!(
    "#!lua flags=allow-cross-slot-keys\n",
    batch_function!(),
    r"
-- ARGV[1] m, the number of batches; then per batch: its key count k, its argument count
-- a, its k key names, its a arguments (as KEYS and ARGV of BATCH_SCRIPT).
-- Answers one reply per batch, in order.
local m = tonumber(ARGV[1])
local at = 1
local out = {}
for b = 1, m do
  local k = tonumber(ARGV[at + 1])
  local a = tonumber(ARGV[at + 2])
  at = at + 2
  local keys = {}
  for i = 1, k do keys[i] = ARGV[at + i] end
  at = at + k
  local args = {}
  for i = 1, a do args[i] = ARGV[at + i] end
  at = at + a
  out[b] = batch(keys, args)
end
return out
"
);

/// Where the keys of one script call live: a standalone node's names ([`Standalone`]:
/// [`COUNTER_KEY_PREFIX`], [`URLS_KEY`] and the marks hashes), or one bucket's of a Redis
/// Cluster, whose names all carry the bucket's hash tag (`crate::cluster`).
pub(crate) trait KeySpace {
    /// The hash holding `layout`'s high-water marks.
    fn marks_key(&self, layout: Layout) -> String;
    /// The string holding `key`'s count in [`Layout::Counters`].
    fn counter_key(&self, key: &str) -> String;
    /// The sorted set of [`Layout::SortedSet`].
    fn urls_key(&self) -> String;
    /// The HyperLogLog of `key`'s distinct members in [`Layout::Counters`].
    fn sketch_key(&self, key: &str) -> String;
}

/// The key names of a standalone node: the constants of this module.
pub(crate) struct Standalone;

impl KeySpace for Standalone {
    fn marks_key(&self, layout: Layout) -> String {
        layout.marks_key().to_owned()
    }

    fn counter_key(&self, key: &str) -> String {
        Layout::Counters.redis_key(key)
    }

    fn urls_key(&self) -> String {
        URLS_KEY.to_owned()
    }

    fn sketch_key(&self, key: &str) -> String {
        format!("{SKETCH_KEY_PREFIX}{key}")
    }
}

/// What the keys and arguments of a script call are written to: a
/// `redis::ScriptInvocation`, or a [`ScriptCall`] sent as a command of its own.
pub(crate) trait ScriptArgs {
    /// Appends a key (`KEYS[i]`).
    fn key(&mut self, key: String);
    /// Appends an argument (`ARGV[i]`).
    fn arg(&mut self, arg: impl redis::ToRedisArgs);
}

impl ScriptArgs for redis::ScriptInvocation<'_> {
    fn key(&mut self, key: String) {
        redis::ScriptInvocation::key(self, key);
    }

    fn arg(&mut self, arg: impl redis::ToRedisArgs) {
        redis::ScriptInvocation::arg(self, arg);
    }
}

/// The keys and arguments of a script call, for sending it as a plain command
/// ([`ScriptCall::evalsha`], or [`ScriptCall::eval`] for a node that does not have the
/// script yet), e.g. in a pipeline with other commands, which a `ScriptInvocation` cannot
/// join.
#[derive(Debug, Default)]
pub(crate) struct ScriptCall {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl ScriptArgs for ScriptCall {
    fn key(&mut self, key: String) {
        self.keys.push(key);
    }

    fn arg(&mut self, arg: impl redis::ToRedisArgs) {
        arg.write_redis_args(&mut self.args);
    }
}

impl ScriptCall {
    /// `EVALSHA` of `script` with these keys and arguments.
    pub(crate) fn evalsha(&self, script: &redis::Script) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash());
        self.append(&mut cmd);
        cmd
    }

    /// `EVAL` of `code` (the script's source) with these keys and arguments: it also
    /// caches the script on the node, for the `EVALSHA`s after it.
    pub(crate) fn eval(&self, code: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(code);
        self.append(&mut cmd);
        cmd
    }

    fn append(&self, cmd: &mut redis::Cmd) {
        cmd.arg(self.keys.len()).arg(&self.keys).arg(&self.args);
    }

    /// The keys of this call (the first is the marks hash).
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// One call of [`COMBINED_BATCH_SCRIPT`] carrying `calls` (each a [`BATCH_SCRIPT`]
    /// call), whose reply is theirs, one per call in order: the first call's marks hash is
    /// its one declared key, and every call's keys and arguments are arguments.
    pub(crate) fn combine<'c>(calls: impl ExactSizeIterator<Item = &'c ScriptCall>) -> Self {
        let mut combined = ScriptCall::default();
        combined.arg(calls.len());
        for call in calls {
            if combined.keys.is_empty()
                && let Some(first) = call.keys.first()
            {
                combined.keys.push(first.clone());
            }
            combined.arg(call.keys.len());
            combined.arg(call.args.len());
            for key in &call.keys {
                combined.arg(key);
            }
            combined.args.extend(call.args.iter().cloned());
        }
        combined
    }
}

/// Fills the script's keys (named by `space`) and arguments for `keys` of one shard.
/// `seq` 0 with no deltas reads; a batch passes its seq and one delta per key, and
/// `subkey_ttl` (layout [`Layout::Counters`]) for the sub-keys it creates to expire after
/// (see [`tally_counter::routing_key`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fill_script_args<'k>(
    sink: &mut impl ScriptArgs,
    space: &impl KeySpace,
    layout: Layout,
    instance: InstanceId,
    shard: ShardId,
    seq: u64,
    keys: impl Iterator<Item = &'k str> + Clone,
    deltas: impl Iterator<Item = u64>,
    subkey_ttl: Option<std::time::Duration>,
) {
    let n = keys.clone().count();
    sink.key(space.marks_key(layout));
    match layout {
        Layout::Counters => {
            for key in keys.clone() {
                sink.key(space.counter_key(key));
            }
        }
        Layout::SortedSet => sink.key(space.urls_key()),
    }
    sink.arg(mark_field(instance, shard));
    sink.arg(seq);
    sink.arg(layout.script_code());
    sink.arg(n);
    if layout == Layout::SortedSet {
        for key in keys {
            sink.arg(key);
        }
    }
    for delta in deltas {
        sink.arg(delta);
    }
    if let Some(ttl) = subkey_ttl.filter(|_| layout == Layout::Counters && seq > 0) {
        sink.arg(ttl.as_secs().max(1));
    }
}

/// The script's answer: whether it applied the batch, the mark after it ran, and one value
/// per key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ScriptReply {
    pub(crate) applied: bool,
    pub(crate) mark: u64,
    pub(crate) values: Vec<u64>,
    /// Keys whose stored value is not a count: position in the batch (from 0) and what
    /// the script found there. Their value in `values` is 0.
    pub(crate) rejected: Vec<(usize, String)>,
}

impl ScriptReply {
    /// Decodes `{applied, mark, {values...}, {position, found, ...}}`; the error is a
    /// description for [`crate::Error::Protocol`].
    pub(crate) fn parse(reply: redis::Value) -> Result<Self, String> {
        let redis::Value::Array(mut parts) = reply else {
            return Err(format!("expected a 4-element array, got {reply:?}"));
        };
        if parts.len() != 4 {
            return Err(format!(
                "expected a 4-element array, got {} elements",
                parts.len()
            ));
        }
        let rejected = match parts.pop() {
            Some(redis::Value::Array(flat)) => flat
                .chunks(2)
                .map(|pair| match pair {
                    [position, found] => {
                        let position = usize::try_from(parse_count(position)?)
                            .ok()
                            .and_then(|p| p.checked_sub(1))
                            .ok_or_else(|| format!("bad position {position:?}"))?;
                        let found = match found {
                            redis::Value::BulkString(bytes) => {
                                String::from_utf8_lossy(bytes).into_owned()
                            }
                            other => format!("{other:?}"),
                        };
                        Ok((position, found))
                    }
                    _ => Err("an odd list of rejected keys".to_owned()),
                })
                .collect::<Result<Vec<_>, String>>()?,
            other => return Err(format!("expected a list of rejected keys, got {other:?}")),
        };
        let values = match parts.pop() {
            Some(redis::Value::Array(values)) => values
                .into_iter()
                .map(|v| parse_count(&v))
                .collect::<Result<Vec<_>, _>>()?,
            other => return Err(format!("expected an array of totals, got {other:?}")),
        };
        let mark = parts.pop().as_ref().map_or(Ok(0), parse_count)?;
        let applied = parts.pop().as_ref().map_or(Ok(0), parse_count)? == 1;
        Ok(Self {
            applied,
            mark,
            values,
            rejected,
        })
    }
}

/// The batch script's answer to a read of `keys` (sequence 0) on `node`: their values and
/// the mark, as [`tally_counter::Store::get`] answers them. A key holding something that is
/// not a count fails the read ([`Error::CorruptValue`], where `stored_as` says it is).
pub(crate) fn stored_values(
    reply: redis::Value,
    node: &str,
    keys: &[&str],
    stored_as: impl FnOnce(&str) -> String,
) -> crate::Result<StoredValues> {
    let protocol = |detail| Error::Protocol {
        node: node.to_owned(),
        op: "get",
        detail,
    };
    let reply = ScriptReply::parse(reply).map_err(protocol)?;
    if let Some((index, found)) = reply.rejected.into_iter().next() {
        return Err(Error::CorruptValue {
            node: node.to_owned(),
            stored_as: stored_as(keys.get(index).copied().unwrap_or_default()),
            found,
        });
    }
    if reply.values.len() != keys.len() {
        return Err(protocol(format!(
            "{} values for {} keys",
            reply.values.len(),
            keys.len()
        )));
    }
    Ok(StoredValues {
        values: reply.values,
        applied_seq: reply.mark,
    })
}

/// A count from an integer reply, a numeric string (`GET`, or a sorted-set score such as
/// `"3"` or `"1.5e+20"`), or nil (0).
pub(crate) fn parse_count(value: &redis::Value) -> Result<u64, String> {
    match value {
        redis::Value::Int(i) => u64::try_from(*i).map_err(|_| format!("negative count {i}")),
        redis::Value::Nil => Ok(0),
        redis::Value::BulkString(bytes) => parse_count_text(&String::from_utf8_lossy(bytes)),
        redis::Value::SimpleString(text) => parse_count_text(text),
        redis::Value::Double(d) => parse_count_text(&d.to_string()),
        other => Err(format!("expected a count, got {other:?}")),
    }
}

pub(crate) fn parse_count_text(text: &str) -> Result<u64, String> {
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    match text.parse::<f64>() {
        // Scores are written by ZINCRBY with whole deltas, so they are whole numbers.
        Ok(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= MAX_TOTAL as f64 => {
            Ok(f as u64)
        }
        _ => Err(format!("'{text}' is not a count")),
    }
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    #[test]
    fn counters_map_to_prefixed_strings_and_stats_to_one_set() {
        assert_eq!(Layout::Counters.redis_key("page1"), "tally:v:page1");
        assert_eq!(Layout::SortedSet.redis_key("/api/x/"), "tally:urls");
        assert_ne!(Layout::Counters.marks_key(), Layout::SortedSet.marks_key());
    }

    #[test]
    fn script_limit_matches_the_constant() {
        assert!(BATCH_SCRIPT.contains(&MAX_TOTAL.to_string()));
    }

    #[test]
    fn counts_parse_from_every_reply_shape() {
        assert_eq!(parse_count(&Value::Int(7)), Ok(7));
        assert_eq!(parse_count(&Value::Nil), Ok(0));
        assert_eq!(parse_count(&Value::BulkString(b"42".to_vec())), Ok(42));
        assert_eq!(
            parse_count(&Value::BulkString(b"1e+15".to_vec())),
            Ok(1_000_000_000_000_000)
        );
        assert!(parse_count(&Value::BulkString(b"1.5".to_vec())).is_err());
        assert!(parse_count(&Value::BulkString(b"abc".to_vec())).is_err());
        assert!(parse_count(&Value::Int(-1)).is_err());
    }

    #[test]
    fn script_reply_decodes_flag_mark_and_values() {
        let reply = Value::Array(vec![
            Value::Int(1),
            Value::Int(9),
            Value::Array(vec![
                Value::Int(3),
                Value::BulkString(b"5".to_vec()),
                Value::Int(0),
            ]),
            Value::Array(vec![Value::Int(3), Value::BulkString(b"a hash".to_vec())]),
        ]);
        assert_eq!(
            ScriptReply::parse(reply),
            Ok(ScriptReply {
                applied: true,
                mark: 9,
                values: vec![3, 5, 0],
                rejected: vec![(2, "a hash".to_owned())],
            })
        );
        assert!(ScriptReply::parse(Value::Int(1)).is_err());
    }
}
