"""kresize."""
