"""workers/tasks."""
