"""Storage and formats: fsspec URLs, shards, images, locations, locks, retries, records."""
