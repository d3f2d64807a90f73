"""Python client for cachesvc."""
