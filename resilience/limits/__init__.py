"""Pure limit algorithms: small objects with time passed in, no I/O."""

from resilience.limits.token_bucket import KeyedBuckets, TokenBucket

__all__ = ["KeyedBuckets", "TokenBucket"]
