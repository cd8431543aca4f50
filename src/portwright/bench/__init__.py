"""portwright.bench."""
