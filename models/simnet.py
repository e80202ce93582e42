"""SimNet (spec §3): is pixel a the same class as pixel b? Residual MLP over [f_a || f_b]."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _ResBlock(nn.Module):
    """FC-BN-ReLU-FC-BN-ReLU plus a shortcut (FC+ReLU when projecting, identity otherwise)."""

    def __init__(self, cin: int, cout: int, project: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True),
                                  nn.Linear(cout, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True))
        self.shortcut = nn.Sequential(nn.Linear(cin, cout), nn.ReLU(inplace=True)) if project else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


def _grid_linear(linear: nn.Linear, grids: list[tuple[Tensor, Tensor]]) -> Tensor:
    """linear([a_p || b_q]) for every (p, q) of every grid, as a_p W_a + b_q W_b: no [Ja*Jb, 2C] input is built."""
    outs = []
    for a, b in grids:
        wa, wb = linear.weight.split((a.shape[1], b.shape[1]), dim=1)
        outs.append(((a @ wa.T)[:, None] + (b @ wb.T)[None]).flatten(0, 1))
    out = torch.cat(outs)
    return out if linear.bias is None else out + linear.bias


class SimNet(nn.Module):
    """Pair classifier. The release's 1x1 convs over a J x J pair grid are Linear layers over flattened pairs here;
    BatchNorm1d over the pairs matches BatchNorm2d over the grid."""

    def __init__(self, feat_dim: int = 256, width: int = 256, num_blocks: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_ResBlock(2 * feat_dim if i == 0 else width, width, project=i == 0)
                                    for i in range(num_blocks))
        self.head = nn.Linear(width, 2)

    def _rest(self, body: Tensor, shortcut: Tensor) -> Tensor:
        first = self.blocks[0]
        x = first.body[1:](body) + first.shortcut[1:](shortcut)
        for block in self.blocks[1:]:
            x = block(x)
        return self.head(x)

    def logits(self, fa: Tensor, fb: Tensor) -> Tensor:
        """[N, 2] (dissimilar, similar) logits of pairs (fa[n], fb[n]); the loss takes a stable log-softmax."""
        x = torch.cat((fa, fb), dim=1)
        return self._rest(self.blocks[0].body[0](x), self.blocks[0].shortcut[0](x))

    def grid_logits(self, grids: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Logits [sum Ja*Jb, 2] of all pairs of each grid (a [Ja, C], b [Jb, C]), row-major, in one batch.

        Same as logits() on the expanded pairs, but the first layer costs (Ja + Jb) rows instead of Ja*Jb.
        """
        first = self.blocks[0]
        return self._rest(_grid_linear(first.body[0], grids), _grid_linear(first.shortcut[0], grids))

    def forward(self, fa: Tensor, fb: Tensor) -> Tensor:
        """fa, fb: [N, C] -> P(similar) [N]."""
        return self.logits(fa, fb).softmax(-1)[:, 1]
