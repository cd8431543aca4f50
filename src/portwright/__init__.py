"""portwright: publish the ports of Linux network-namespace sandboxes, measure each mechanism, and say who owns a port."""

__version__ = "0.1.0"
