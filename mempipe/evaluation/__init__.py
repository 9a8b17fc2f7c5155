"""Victims, retrieval metrics, countermeasures, and inspect."""
