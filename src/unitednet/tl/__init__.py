"""unitednet.tl."""
