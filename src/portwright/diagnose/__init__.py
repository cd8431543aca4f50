"""portwright.diagnose."""
