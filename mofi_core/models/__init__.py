"""Model architectures (open_clip towers), the MOFI image classifier, and model folders on disk."""
