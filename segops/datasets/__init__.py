"""Discovering image/label pairs in a layout, and the built-in synthetic scene generator."""
