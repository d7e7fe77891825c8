"""workers/outputs."""
