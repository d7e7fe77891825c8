"""models/preprocessing."""
