"""uer: pre-training for text encoders and generators, assembled from five named slots
(embedding, encoder, target embedding, decoder, target)."""

__version__ = "0.1.0"
