"""Raw inputs -> validated Parquet datasets -> rank-sharded token streams."""
