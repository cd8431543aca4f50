"""portwright.firewall: the nftables layer behind the kernel NAT publisher.

``rules`` turns networks and mappings into nft JSON commands for the one ``inet portwright`` table
(pure, golden-tested); ``nft`` applies them atomically and reads the table back; ``dockeruser``
keeps dockerd's FORWARD DROP policy from blocking our bridges; ``bench`` measures the layer.
"""
