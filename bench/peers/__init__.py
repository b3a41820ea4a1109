"""The same pull done by others: dlt, and the straightforward script."""
