"""portwright.proxy."""
