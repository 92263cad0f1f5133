"""The daemons of a gateway node, each a Daemon subclass run by a thin programs/<name>.py."""
