"""Per-parameter analysis tables and model comparisons over the store (numpy; Ray only when asked)."""
