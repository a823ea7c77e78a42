//! The crate's error type: everything that can be wrong with a ring's description.

/// Why a [`crate::RingBuilder`] refused to build a ring.
///
/// Lookups never fail: every check happens once, in [`crate::RingBuilder::build`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given no nodes, so no key would have an owner.
    #[error("cannot build a ring with no nodes")]
    Empty,
    /// Two nodes have the same name. Names place a node's points, so two nodes with one name
    /// would share every point and one of them would never own a key.
    #[error("duplicate ring node name '{name}'")]
    DuplicateNode {
        /// The name given twice.
        name: String,
    },
    /// A node's name is the empty string.
    #[error("ring node at position {position} has an empty name")]
    EmptyName {
        /// The node's position in insertion order.
        position: usize,
    },
    /// A node has weight 0, so it would own no point and no key.
    #[error("ring node '{name}' has weight 0; a weight must be at least 1")]
    ZeroWeight {
        /// The node's name.
        name: String,
    },
    /// `vnodes` is 0, so no node would own a point.
    #[error("ring vnodes is 0; each unit of weight needs at least one point")]
    ZeroVnodes,
    /// The ring would hold more points than its index type can address.
    #[error("ring would have {points} points (vnodes x total weight); the limit is {max}")]
    TooManyPoints {
        /// Points asked for: vnodes times the sum of the weights.
        points: u64,
        /// The most a ring can hold.
        max: u64,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_and_name_the_culprit() {
        let e = Error::DuplicateNode {
            name: "redis1:6379".into(),
        };
        assert_eq!(e.to_string(), "duplicate ring node name 'redis1:6379'");
        for e in [
            Error::Empty,
            Error::ZeroVnodes,
            Error::EmptyName { position: 2 },
            Error::ZeroWeight { name: "a".into() },
            Error::TooManyPoints { points: 9, max: 8 },
        ] {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg}");
        }
    }
}
