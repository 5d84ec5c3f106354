"""Codecs: how a vector is stored in a list row."""
