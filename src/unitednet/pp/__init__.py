"""unitednet.pp."""
