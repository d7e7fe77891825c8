"""models/architectures."""
