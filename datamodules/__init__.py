"""The data side of diff4splat: clip schema, shard writing, dataset converters, streaming, synthetic scenes."""
