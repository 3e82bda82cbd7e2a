"""medfed's benchmark task as a Flower app."""
