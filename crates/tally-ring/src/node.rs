//! What the ring needs from a node: a stable, credential-free name.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

/// A member of a [`crate::Ring`], known to the ring by its name only.
///
/// The name alone places the node's points, so it must identify the node and nothing more:
/// use `host:port`, never a URL with a password or a database index, or changing a secret
/// would move every key. Two nodes in one ring must have different names.
///
/// Implemented for string types and for references and smart pointers to any `Node`, so a
/// ring can hold plain names or the caller's own node structs:
///
/// ```
/// use tally_ring::{Node, Ring};
///
/// #[derive(Debug)]
/// struct Shard {
///     addr: String,
///     pool_size: usize,
/// }
///
/// impl Node for Shard {
///     fn name(&self) -> &str {
///         &self.addr
///     }
/// }
///
/// let ring = Ring::builder()
///     .node(Shard { addr: "redis1:6379".into(), pool_size: 8 }, 1)
///     .node(Shard { addr: "redis2:6379".into(), pool_size: 8 }, 1)
///     .build()?;
/// assert!(ring.lookup(b"page1").name().starts_with("redis"));
/// # Ok::<(), tally_ring::Error>(())
/// ```
pub trait Node {
    /// The node's name, e.g. `redis1:6379`.
    fn name(&self) -> &str;
}

impl Node for str {
    fn name(&self) -> &str {
        self
    }
}

impl Node for String {
    fn name(&self) -> &str {
        self
    }
}

impl Node for Cow<'_, str> {
    fn name(&self) -> &str {
        self
    }
}

impl<T: Node + ?Sized> Node for &T {
    fn name(&self) -> &str {
        (**self).name()
    }
}

impl<T: Node + ?Sized> Node for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
}

impl<T: Node + ?Sized> Node for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
}

impl<T: Node + ?Sized> Node for Rc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of<N: Node>(n: &N) -> &str {
        n.name()
    }

    #[test]
    fn string_types_are_nodes_named_by_their_text() {
        assert_eq!(name_of(&"a:1"), "a:1");
        assert_eq!(name_of(&String::from("b:2")), "b:2");
        assert_eq!(name_of(&Box::<str>::from("c:3")), "c:3");
        assert_eq!(name_of(&Arc::<str>::from("d:4")), "d:4");
        assert_eq!(name_of(&Rc::<str>::from("e:5")), "e:5");
        assert_eq!(name_of(&Cow::Borrowed("f:6")), "f:6");
        assert_eq!(name_of(&&&String::from("g:7")), "g:7");
    }
}
