"""Paths, atomic writes, shard and table I/O shared by every stage."""
