"""Central: replication, retention, baseline, training, rollout (later issues)."""
