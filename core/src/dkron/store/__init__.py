"""Replicated store: SQLite state machine behind pysyncobj Raft."""
