"""The decisions, no I/O: scopes and keys, lookup and store logic, TTL and capacity policy, thresholds."""
