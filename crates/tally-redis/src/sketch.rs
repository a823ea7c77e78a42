//! Visitor sketches: [`tally_counter::Store::sketch`] on Redis, with `PFADD` and `PFCOUNT`.
//!
//! A key's distinct members (a page's visitor ids) are a Redis HyperLogLog at
//! [`SKETCH_KEY_PREFIX`]`{key}` on the node that holds the key's count (on a cluster,
//! `tally:u:{bNNNN}:{key}`, in the count's bucket). One store call is one pipeline on the
//! key's node: a `PFADD` per key with all its members, an `EXPIRE` after each sub-key's
//! `PFADD` (a page's day, kept `subkey_ttl` from its last add), then a `PFCOUNT` per key
//! estimated. Nothing needs a batch id: adding a member a HyperLogLog holds already leaves
//! it as it was, so a pipeline sent again after a lost reply changes no estimate.
//!
//! Only [`crate::Layout::Counters`] keeps sketches. A `DEL` of a page's count (a reset)
//! deletes its sketch in the same command. On a cluster the pipeline is not followed by
//! `WAIT`: a failover may lose the members added in the last moments before it, which
//! moves an estimate by those visitors and never a count.
//!
//! A sketch key holding something that is not a HyperLogLog (another type, or a string
//! Redis does not read as one) refuses its `PFADD`: its members are dropped, logged at
//! `error` with the key's name for an operator to repair, and the other keys of the call
//! are added, so one bad value cannot hold a node's sketches. Reading its estimate fails
//! with [`Error::CorruptSketch`].

use redis::Value;
use tally_counter::SketchAdd;

use crate::error::{Error, Result};
use crate::layout::KeySpace;
#[cfg(doc)]
use crate::layout::SKETCH_KEY_PREFIX;

/// The pipeline of one [`tally_counter::Store::sketch`] call on the node (or bucket) of
/// `space`.
pub(crate) fn pipeline(
    space: &impl KeySpace,
    adds: &[SketchAdd<'_>],
    estimate: &[&str],
    subkey_ttl: Option<std::time::Duration>,
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for add in adds {
        let key = space.sketch_key(add.key);
        pipe.cmd("PFADD").arg(&key).arg(add.members);
        if let Some(ttl) = subkey_ttl.filter(|_| tally_counter::subkey(add.key).is_some()) {
            pipe.cmd("EXPIRE").arg(&key).arg(ttl.as_secs().max(1));
        }
    }
    for key in estimate {
        pipe.cmd("PFCOUNT").arg(space.sketch_key(key));
    }
    pipe
}

/// The estimates of `estimate` from the replies to [`pipeline`], after checking each
/// `PFADD`: a key that is no HyperLogLog is logged and skipped, any other error fails the
/// call (its members are then sent again).
pub(crate) fn estimates(
    replies: Vec<Value>,
    node: &str,
    space: &impl KeySpace,
    adds: &[SketchAdd<'_>],
    estimate: &[&str],
    subkey_ttl: Option<std::time::Duration>,
) -> Result<Vec<u64>> {
    let protocol = |detail: String| Error::Protocol {
        node: node.to_owned(),
        op: "sketch",
        detail,
    };
    let mut replies = replies.into_iter();
    let mut next = |what: &str| {
        replies
            .next()
            .ok_or_else(|| protocol(format!("no reply to {what}")))
    };
    for add in adds {
        match next("PFADD")? {
            Value::ServerError(error) if not_a_sketch(&error) => {
                tracing::error!(
                    node,
                    stored_as = %space.sketch_key(add.key),
                    members = add.members.len(),
                    error.message = %error.details().unwrap_or_default(),
                    "a visitor sketch holds a value that is not a HyperLogLog; its new members \
                     were dropped (delete or repair the key)"
                );
            }
            Value::ServerError(error) => return Err(redis_error(node, error)),
            _ => {}
        }
        if subkey_ttl.is_some()
            && tally_counter::subkey(add.key).is_some()
            && let Value::ServerError(error) = next("EXPIRE")?
        {
            return Err(redis_error(node, error));
        }
    }
    estimate
        .iter()
        .map(|key| match next("PFCOUNT")? {
            Value::Int(n) => u64::try_from(n).map_err(|_| protocol(format!("PFCOUNT {n}"))),
            Value::ServerError(error) if not_a_sketch(&error) => Err(Error::CorruptSketch {
                node: node.to_owned(),
                stored_as: space.sketch_key(key),
                found: error.details().unwrap_or("not a HyperLogLog").to_owned(),
            }),
            Value::ServerError(error) => Err(redis_error(node, error)),
            other => Err(protocol(format!("PFCOUNT answered {other:?}"))),
        })
        .collect()
}

/// Whether a `PFADD`/`PFCOUNT` error says the key holds something else than a HyperLogLog
/// (`WRONGTYPE`, or `INVALIDOBJ` for a string Redis cannot read as one).
fn not_a_sketch(error: &redis::ServerError) -> bool {
    matches!(error.code(), "WRONGTYPE" | "INVALIDOBJ")
}

fn redis_error(node: &str, error: redis::ServerError) -> Error {
    Error::Redis {
        node: node.to_owned(),
        op: "sketch",
        source: error.into(),
    }
}
