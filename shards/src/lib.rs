//! The shard-per-core runtime of Kasagi.
