"""Fault injection: exists in a server only with `triton-guard serve --chaos`."""
