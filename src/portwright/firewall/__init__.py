"""portwright.firewall: the nftables layer behind the kernel NAT publisher.

``rules`` turns networks and mappings into nft JSON commands for the one ``inet portwright`` table
(pure, golden-tested); ``backend`` is the seam: a ``Backend`` protocol (apply one atomic batch,
read the table back, lock it) and the ``Firewall`` (``ops``) that every caller is handed, written
once over it; ``nft`` is the kernel backend and ``fake`` the in-memory one for tests without root;
``dockeruser`` keeps dockerd's FORWARD DROP policy from blocking our bridges; ``bench`` measures
the layer.
"""
