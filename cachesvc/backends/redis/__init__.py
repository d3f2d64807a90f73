"""The Redis backend: entries in Redis (Redis Query Engine vector search), shared by every replica."""
