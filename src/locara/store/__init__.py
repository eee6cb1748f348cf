"""The content-addressed model store: blobs by SHA-256, verified fetch, references."""
