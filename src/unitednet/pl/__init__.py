"""unitednet.pl."""
