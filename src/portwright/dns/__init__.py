"""Name resolution for sandboxes: one resolver process per state directory answers each bridge
network's sandbox names and ``--network-alias`` names on that network's gateway addresses, and
forwards every other name to the host's resolvers; ``NAME.portwright`` also resolves on the host
through a marked block of the hosts file.

``records`` (the record table) and ``message`` (query in, decision out) are pure; ``hosts`` renders
the hosts-file block; ``forward`` relays to upstream resolvers; ``server`` is the process doing the
I/O; ``service`` is what the engine calls (resolv.conf per sandbox, start on demand, notify).
"""
