"""unitednet.datasets."""
