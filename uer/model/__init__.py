"""Model room: layers and the five slots (embedding, encoder, target embedding, decoder, target).

Importing the package registers every component."""
from uer.model import decoders, embeddings, encoders, targets  # noqa: F401  (registration side effects)
from uer.model.model import Model, build_model, count_parameters, model_problems  # noqa: F401
