"""MoA's heterogeneous experts. Each reads its per-token gate from the block's shared state.

Every expert returns its contribution already scaled by its gate column g (B, T, 1), so the
block adds them without knowing which kinds it holds.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ...base.upstream import llama_rotate_half
from ..experts import LoraExperts

rotate_half = llama_rotate_half()


class BlockState:
    """What one decoder block's forward shares between its hooks; cleared when the block returns.

    gates: (B, T, E) mixing weights of this forward's tokens (router columns in spec order).
    position_embeddings: the (cos, sin) RoPE tables the decoder layer received.
    query: q_proj's output (LoRA_Q included, before RoPE), for the prompt expert.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.gates: torch.Tensor | None = None
        self.position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
        self.query: torch.Tensor | None = None

    def gate(self, column: int) -> torch.Tensor:
        if self.gates is None:
            raise RuntimeError("MoA expert called outside its decoder layer's forward (no gates computed)")
        return self.gates[..., column : column + 1]


class GatedLora(LoraExperts):
    """One LoRA expert whose gate is applied at the rank stage: B((g·s)·A x) = g · s·B A x."""

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float, state: BlockState, column: int):
        super().__init__(in_features, out_features, num_experts=1, rank=rank, scaling=scaling)
        self.state, self.column = state, column

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor | None = None, active: torch.Tensor | None = None, projected: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LoraExperts.forward with weights defaulting to this expert's gate (a MoA layer passes only x)."""
        return super().forward(x, self.state.gate(self.column) if weights is None else weights, active, projected)


class ParallelAdapter(nn.Module):
    """d → size → d bottleneck beside the MLP; near-zero init (xavier gain 1e-4, zero biases) as the reference."""

    def __init__(self, hidden_size: int, size: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, size)
        self.up = nn.Linear(size, hidden_size)
        for linear in (self.down, self.up):
            nn.init.xavier_uniform_(linear.weight, gain=1e-4)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return gate * self.up(F.silu(self.down(x.to(self.down.weight.dtype))))


class PromptExpert(nn.Module):
    """LLaMA-Adapter-style prompt: `length` learned tokens every query attends to in its own softmax.

    Prompt keys/values come from the frozen base k_proj/v_proj (no RoPE on the keys), once per
    forward and broadcast over the batch; the queries are the post-RoPE attention queries. A
    zero-init per-head gate makes the expert a no-op at initialisation.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, length: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.embeddings = nn.Parameter(torch.randn(length, hidden_size))
        self.head_gate = nn.Parameter(torch.zeros(1, num_heads, 1, 1))

    def _prompt_heads(self, projection: nn.Linear) -> torch.Tensor:
        """(length, d) → (H, length, head_dim), KV heads repeated for GQA as repeat_kv does."""
        states = projection(self.embeddings.to(projection.weight.dtype)).float()
        states = states.view(-1, self.num_kv_heads, self.head_dim).transpose(0, 1)
        return states.repeat_interleave(self.num_heads // self.num_kv_heads, dim=0)

    def forward(
        self,
        query: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        key_proj: nn.Linear,
        value_proj: nn.Linear,
        scaling: float,
        gate: torch.Tensor,
    ) -> torch.Tensor:
        """query: (B, T, H·D) before RoPE → g · prompt attention output, (B, T, H·D) in fp32."""
        batch, length = query.shape[:2]
        cos, sin = (t.unsqueeze(1).float() for t in position_embeddings)
        q = query.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2).float()
        q = q * cos + rotate_half(q) * sin
        keys, values = self._prompt_heads(key_proj), self._prompt_heads(value_proj)
        scores = torch.softmax(q @ keys.transpose(-1, -2) * scaling, dim=-1)  # (B, H, T, length)
        out = (self.head_gate * scores) @ values  # (B, H, T, D)
        return gate * out.transpose(1, 2).reshape(batch, length, -1)
