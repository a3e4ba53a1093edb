"""Text generation: greedy, top-k and top-p (nucleus) sampling, with temperature, from

- decoder-only models (Generator): lm, and prefixlm, whose prompt is the prefix (seen whole, the
  generated tokens in segment 2 as in training);
- encoder-decoder models (Seq2SeqGenerator): mt and t5, the source encoded once and the decoder
  generating from a start token.

A transformer keeps the keys and values of the positions it has seen (a KV cache; a decoder also
keeps those of the encoder's output), so each new token costs one position's work; other causal
encoders (gated CNN, rnn) recompute the prefix.
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


class Sampler:
    """The loop: _start(ids) gives the next-token logits [1, V] after the prompt, _step(ids)
    after each new token (ids: everything so far, [1, n])."""

    model: Model

    def _start(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def _sample(self, prompt: list[int], max_length: int, top_k: int, top_p: float, temperature: float,
                stop_id: int | None, generator: torch.Generator | None) -> list[int]:
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


class Generator(Sampler):
    """lm and prefixlm models."""

    def __init__(self, model: Model, use_cache: bool | None = None):
        self.model = model
        enc = model.encoder
        self.prefix = getattr(enc, "prefix", False)
        cacheable = getattr(enc, "causal", False) or self.prefix
        self.use_cache = cacheable if use_cache is None else (use_cache and cacheable)
        self.prompt_length = 0

    def _segments(self, n: int, device) -> torch.Tensor:
        """Segment 1 for the prompt; with a prefix, 2 for what follows it."""
        seg = torch.ones(1, n, dtype=torch.long, device=device)
        if self.prefix:
            seg[:, self.prompt_length:] = 2
        return seg

    def _start(self, ids: torch.Tensor):
        self.prompt_length = ids.shape[1]
        seg = torch.ones_like(ids)
        if self.use_cache:
            self.caches = [{} for _ in range(self.model.encoder.layers_num)]
            hidden = self.model.encoder(self.model.embedding(ids, seg), seg, self.caches)
        else:
            hidden = self.model.encode(ids, seg)
        return self.model.target.output_layer(hidden[:, -1])

    def _step(self, ids: torch.Tensor):
        if not self.use_cache:
            hidden = self.model.encode(ids, self._segments(ids.shape[1], ids.device))
            return self.model.target.output_layer(hidden[:, -1])
        new = ids[:, -1:]
        seg = torch.full_like(new, 2 if self.prefix else 1)
        hidden = self.model.encoder(self.model.embedding(new, seg, start=ids.shape[1] - 1), seg, self.caches)
        return self.model.target.output_layer(hidden[:, -1])

    def generate(self, prompt: list[int], max_length: int, *, top_k: int = 0, top_p: float = 0.0,
                 temperature: float = 1.0, stop_id: int | None = None,
                 generator: torch.Generator | None = None) -> list[int]:
        """The prompt followed by new tokens, up to max_length tokens in all (or stop_id).
        top_k 1 is greedy decoding."""
        return self._sample(prompt, max_length, top_k, top_p, temperature, stop_id, generator)


class Seq2SeqGenerator(Sampler):
    """mt and t5 models: the encoder reads the source once; the decoder generates."""

    def __init__(self, model: Model, use_cache: bool | None = None):
        self.model = model
        cacheable = hasattr(model.target.decoder, "layers_num")
        self.use_cache = cacheable if use_cache is None else (use_cache and cacheable)

    def _start(self, ids: torch.Tensor):
        self.caches = [{} for _ in range(self.model.target.decoder.layers_num)] if self.use_cache else None
        return self._step(ids)

    def _step(self, ids: torch.Tensor):
        target = self.model.target
        start = 0
        if self.caches is not None and self.caches[0]:  # the earlier positions are in the cache
            ids, start = ids[:, -1:], ids.shape[1] - 1
        hidden = target.decoder(target.embedding(ids, torch.ones_like(ids), start=start), self.memory, self.seg,
                                self.caches)
        return target.output_layer(hidden[:, -1])

    @torch.no_grad()
    def generate(self, source: list[int], max_length: int, *, start_id: int, stop_id: int | None = None,
                 top_k: int = 0, top_p: float = 0.0, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[int]:
        """The decoder's tokens after start_id, up to max_length - 1 of them (stop_id included
        when reached), for the source ids (the encoder's input, e.g. [CLS] ... [SEP])."""
        self.model.eval()
        device = next(self.model.parameters()).device
        src = torch.tensor([source], dtype=torch.long, device=device)
        self.seg = torch.ones_like(src)
        self.memory = self.model.encode(src, self.seg)
        return self._sample([start_id], max_length, top_k, top_p, temperature, stop_id, generator)[1:]
