"""portwright.publish."""
