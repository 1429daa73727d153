"""Per-step accumulation of cross-attention for the M1 mask, bounded to one step of memory."""

from __future__ import annotations

import torch


class AttentionAccumulator:
    """Collects, for each concept, attention on its prompt tokens at one spatial resolution.

    add() takes head-averaged probabilities (B, Nq, Nk) of one layer for one concept, sums them over
    the concept's token columns right away and adds the (B, Nq) result to a running sum, so memory is
    one (B, h*w) map per concept whatever the number of layers and steps. maps() averages over layers.
    """

    def __init__(self, token_indices: dict[int, torch.Tensor], target_hw: tuple[int, int],
                 keep_history: bool = False):
        self.token_indices = {k: torch.as_tensor(v, dtype=torch.long) for k, v in token_indices.items()}
        self.target_hw = tuple(int(v) for v in target_hw)
        self.keep_history = keep_history
        self.history: list[dict[int, torch.Tensor]] = []
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}

    @property
    def num_queries(self) -> int:
        return self.target_hw[0] * self.target_hw[1]

    def wants(self, concept: int, num_queries: int) -> bool:
        """Whether a layer with this many query positions is at the target resolution for this concept."""
        return concept in self.token_indices and num_queries == self.num_queries

    def add(self, concept: int, probs: torch.Tensor) -> None:
        """probs: (B, Nq, Nk) softmax probabilities averaged over heads, Nq = h * w of the target."""
        idx = self.token_indices[concept].to(probs.device)
        if idx.numel() and int(idx.max()) >= probs.shape[-1]:
            raise ValueError(f"concept {concept}: token index {int(idx.max())} outside {probs.shape[-1]} keys")
        summed = probs.index_select(-1, idx).float().sum(-1)
        if concept in self._sums:
            self._sums[concept] += summed
            self._counts[concept] += 1
        else:
            self._sums[concept] = summed
            self._counts[concept] = 1

    def add_summed(self, concept: int, summed: torch.Tensor) -> None:
        """One layer's map already summed over the concept's tokens: (B, Nq), Nq = h * w of the target."""
        if summed.shape[-1] != self.num_queries:
            raise ValueError(f"concept {concept}: a map of {summed.shape[-1]} queries, expected {self.num_queries}")
        summed = summed.float()
        if concept in self._sums:
            self._sums[concept] += summed
            self._counts[concept] += 1
        else:
            self._sums[concept] = summed
            self._counts[concept] = 1

    def layer_count(self, concept: int) -> int:
        return self._counts.get(concept, 0)

    def maps(self) -> dict[int, torch.Tensor]:
        """Layer-averaged token-summed maps for this step: {concept: (B, h, w) float32}."""
        h, w = self.target_hw
        return {c: (s / self._counts[c]).view(s.shape[0], h, w) for c, s in self._sums.items()}

    def end_step(self) -> dict[int, torch.Tensor]:
        """Return this step's maps and reset; with keep_history also keep a CPU copy for previews."""
        maps = self.maps()
        if self.keep_history:
            self.history.append({c: m.detach().cpu() for c, m in maps.items()})
        self._sums, self._counts = {}, {}
        return maps
