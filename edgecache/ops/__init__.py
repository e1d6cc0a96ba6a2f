"""Background work on the cache: the prefetch queue, the scrubber, the byte-rate cap they share."""
