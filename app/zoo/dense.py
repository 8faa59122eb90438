"""Linear-layer built-ins: an MLP and a small ViT over patches."""

from __future__ import annotations

import torch
from torch import nn

from app.zoo.layers import Shape, image_shape


class MLP(nn.Module):
    """LeNet-300-100 style: Flatten -> fc1(in, 300) -> fc2(300, 100) -> fc3(100, classes)."""

    def __init__(self, num_classes: int, input_shape: Shape) -> None:
        super().__init__()
        n_in = 1
        for d in input_shape:
            n_in *= int(d)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(n_in, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/proj Linear layers (prunable, wanda, N:M)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.head_dim = dim // heads  # the head count follows q's width (heads can be removed)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        hd = self.head_dim
        h = self.q.out_features // hd
        q = self.q(x).reshape(b, n, h, hd).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, hd).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, hd).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) * hd**-0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, h * hd))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """A small ViT: non-overlapping patches -> Linear embed -> 2 blocks -> mean pool -> head."""

    def __init__(
        self, num_classes: int, input_shape: Shape, dim: int = 32, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        c, h, w = image_shape(input_shape, "transformer")
        p = max(1, min(h, w) // 4)
        while h % p or w % p:
            p -= 1
        self.patch = p
        self.n_tokens = (h // p) * (w // p)
        self.embed = nn.Linear(c * p * p, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.n_tokens, dim))
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, 2 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the position embedding (the Linear/LayerNorm layers reset themselves)."""
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.embed(x.reshape(b, (h // p) * (w // p), c * p * p)) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))
