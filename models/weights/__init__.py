"""models/weights."""
