"""Data in: procedural demo data (scenes, photo style) and ingest of Flickr/COCO/CSV."""
