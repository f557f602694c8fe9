"""Commands of the cache app."""
