"""Converters from native dataset layouts to clip shards, one module per dataset (see `datamodules.write`)."""
