"""Raw event logs -> canonical events -> prepared, leakage-free datasets (Polars)."""
