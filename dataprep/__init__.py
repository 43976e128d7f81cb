"""blip2-ray data preparation: sources, validation, CapFilt, Parquet sink, synthetic data."""
