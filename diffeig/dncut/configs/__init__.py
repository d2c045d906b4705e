"""Packaged YAML configs of the DNCut recipe."""
