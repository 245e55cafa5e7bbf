"""Prompt sets shipped as package data (see ``README.md`` in this folder for their origin and licence)."""
