"""Event sources: each returns a polars DataFrame of canonical events (see ``data_prep.schema``)."""
