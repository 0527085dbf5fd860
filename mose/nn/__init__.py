"""Building blocks shared by every model: embeddings, encoders, MLPs, batched experts, gates, towers."""
