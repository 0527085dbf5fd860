"""mose: multi-task mixture-of-experts models for user activity streams."""
