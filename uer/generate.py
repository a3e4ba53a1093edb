"""Text generation with an lm model: greedy, top-k and top-p (nucleus) sampling, with temperature.

A causal transformer keeps the keys and values of the positions it has seen (a KV cache), so each
new token costs one position's work; other causal encoders (gated CNN, rnn) recompute the prefix.
"""
from __future__ import annotations

import torch

from uer.model import Model


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Keep the top_k highest scores (0: all) and, of those, the smallest set whose probability
    reaches top_p (0: all); the rest become -inf. logits: [V]."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        order = torch.argsort(logits, descending=True)
        probs = torch.softmax(logits[order], -1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop = (torch.cumsum(probs, -1) - probs) >= top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


class Generator:
    def __init__(self, model: Model, use_cache: bool | None = None):
        self.model = model
        enc = model.encoder
        cacheable = getattr(enc, "causal", False)
        self.use_cache = cacheable if use_cache is None else (use_cache and cacheable)

    def _start(self, ids: torch.Tensor):
        seg = torch.ones_like(ids)
        if self.use_cache:
            self.caches = [{} for _ in range(self.model.encoder.layers_num)]
            hidden = self.model.encoder(self.model.embedding(ids, seg), seg, self.caches)
        else:
            hidden = self.model.encode(ids, seg)
        return self.model.target.output_layer(hidden[:, -1])

    def _step(self, ids: torch.Tensor):
        if not self.use_cache:
            return self._start(ids)
        new = ids[:, -1:]
        seg = torch.ones_like(new)
        hidden = self.model.encoder(self.model.embedding(new, seg, start=ids.shape[1] - 1), seg, self.caches)
        return self.model.target.output_layer(hidden[:, -1])

    @torch.no_grad()
    def generate(self, prompt: list[int], max_length: int, *, top_k: int = 0, top_p: float = 0.0,
                 temperature: float = 1.0, stop_id: int | None = None,
                 generator: torch.Generator | None = None) -> list[int]:
        """The prompt followed by new tokens, up to max_length tokens in all (or stop_id).
        top_k 1 is greedy decoding."""
        self.model.eval()
        device = next(self.model.parameters()).device
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        logits = self._start(ids)
        while ids.shape[1] < max_length:
            scores = filter_logits(logits[0].float() / max(temperature, 1e-6), top_k, top_p)
            if top_k == 1:
                nxt = scores.argmax()
            else:
                nxt = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)[0]
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
            if stop_id is not None and int(nxt) == stop_id:
                break
            if ids.shape[1] < max_length:
                logits = self._step(ids)
        return ids[0].tolist()
