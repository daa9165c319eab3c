"""The soft assignment of a block of weighted log densities, shared by both GMM-EM formulations
(:mod:`bayesclust.inference.em`, :mod:`bayesclust.inference.em_cholesky`)."""

from __future__ import annotations

import torch

# exp(x) below -87 (float32) or -708 (float64) is a denormal, which costs the exp and the next matmul
# many times a normal number; relative responsibilities below these floors are set to the floor.
EXP_FLOOR = {4: -80.0, 8: -700.0}


def exp_normalise_(logits: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From weighted log densities (components along ``dim``), overwritten: the unnormalised
    responsibilities ``exp(logits - peak)`` (floored, see ``EXP_FLOOR``), their sum along ``dim``
    (keepdim) and the block's total log-likelihood (float64 scalar). One exp serves both."""
    floor = EXP_FLOOR.get(logits.element_size(), -80.0)
    peak = logits.amax(dim=dim, keepdim=True)
    resp = torch.exp_(logits.sub_(peak).clamp_(min=floor))
    norm = resp.sum(dim=dim, keepdim=True)
    return resp, norm, (peak + torch.log(norm)).sum(dtype=torch.float64)
