"""portwright.firewall."""
