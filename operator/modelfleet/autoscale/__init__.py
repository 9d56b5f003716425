"""Pure autoscaling decisions: desired replicas from demand samples (no I/O)."""
