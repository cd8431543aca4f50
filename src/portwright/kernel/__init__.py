"""portwright.kernel."""
