"""workers/destinations."""
