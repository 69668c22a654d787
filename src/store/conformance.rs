//! The store conformance suite (written on its own branch; this stub keeps the tree building).
