"""From faces to a training set: quality and pose, duplicates, identities and search."""
