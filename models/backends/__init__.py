"""models/backends."""
