//! Room state, ops and deltas.
