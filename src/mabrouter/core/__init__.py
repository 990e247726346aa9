"""The decision: pure functions over immutable data. No I/O, no clock, no global random state."""
