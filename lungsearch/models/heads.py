"""Classifier heads: fusion output -> ``{"logits": [B, C], "hidden": [B, Dh]}``.

* ``linear`` / ``mlp``: on the fused vector (paper 2's softmax layer is ``linear``).
* ``bilstm``: a bidirectional LSTM over the fused sequence, masked mean of its outputs.
* ``sg_bilstm``: the sparse-gated Bi-LSTM of paper 1 (eq. 3-4), see :class:`SparseGatedBiLSTM`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lungsearch.errors import ConfigError
from lungsearch.models.registry import HEADS, BuildContext, take_params

__all__ = ["LinearHead", "MLPHead", "BiLSTMHead", "SparseGatedBiLSTM", "straight_through"]


def _as_sequence(fusion_out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    seq = fusion_out.get("sequence")
    if seq is None:
        fused = fusion_out["fused"]
        return fused[:, None, :], torch.ones(fused.shape[0], 1, dtype=torch.bool, device=fused.device)
    mask = fusion_out.get("sequence_mask")
    if mask is None:
        mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
    return seq, mask


class LinearHead(nn.Module):
    """``logits = W fused + b``; ``hidden`` is the fused vector itself."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        self.hidden_dim = in_dim

    def forward(self, fusion_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = fusion_out["fused"]
        return {"logits": self.fc(self.drop(h)), "hidden": h}


class MLPHead(nn.Module):
    """One hidden ReLU layer (``hidden``) then linear logits."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc = nn.Linear(hidden, num_classes)
        self.hidden_dim = hidden

    def forward(self, fusion_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.body(fusion_out["fused"])
        return {"logits": self.fc(h), "hidden": h}


def _masked_mean(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask[..., None].to(out.dtype)
    return (out * w).sum(1) / w.sum(1).clamp_min(1.0)


class BiLSTMHead(nn.Module):
    """Plain Bi-LSTM over the fused sequence (``torch.nn.LSTM``, packed by length), masked mean
    of the outputs, linear logits. The baseline of :class:`SparseGatedBiLSTM`."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden, num_classes)
        self.hidden_dim = 2 * hidden

    def encode(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp_min(1)
        if bool((lengths == seq.shape[1]).all()):
            out, _ = self.lstm(seq)
        else:  # valid steps are a prefix (see fusion._sequence): pack them
            packed = pack_padded_sequence(seq, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=seq.shape[1])
        return _masked_mean(out, mask)

    def forward(self, fusion_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seq, mask = _as_sequence(fusion_out)
        h = self.encode(seq, mask)
        return {"logits": self.fc(self.drop(h)), "hidden": h}


def straight_through(prob: torch.Tensor) -> torch.Tensor:
    """Binary ``1[prob > 0.5]`` forward, identity gradient to ``prob`` backward."""
    hard = (prob > 0.5).to(prob.dtype)
    return hard + prob - prob.detach()


def keep_at_least_one(keep: torch.Tensor, score: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``keep`` with each row that has valid entries but keeps none keeping its best-scoring one.

    An all-dropped sequence (or an all-pruned unit set) has no representation: its pooled vector,
    and so its embedding, would be zero, which no similarity can rank. Works on ``[B, T]`` masks
    and on a ``[H]`` vector; no host sync.
    """
    valid = torch.ones_like(keep) if valid is None else valid
    best = score.masked_fill(~valid, float("-inf")).argmax(-1, keepdim=True)
    forced = torch.zeros_like(keep).scatter(-1, best, True)
    empty = ~keep.any(-1, keepdim=True) & valid.any(-1, keepdim=True)
    return keep | (forced & empty)


class SparseGatedBiLSTM(nn.Module):
    """Sparse-gated Bi-LSTM (paper 1, eq. 3-4) whose zero gates are skipped at inference.

    Eq. 3 gates feature j at step t with ``g_tj = σ(a(x_t) + b_j) · s_tj``, ``s`` binary, and
    eq. 4 multiplies the LSTM's input, forget and output gates by ``g_t`` (the printed
    ``õ_t = i_t ⊙ g_t`` is read as ``o_t ⊙ g_t``). Choices, so that sparsity is real:

    * ``g`` is binary (the paper: "the sparse gate outputs a binary vector"), factorised as
      ``s_tj = z_t · u_j``: a **step gate** ``z_t = 1[σ(a(x_t) + b) > 0.5]`` computed from the
      input (eq. 3's ``a(x_t)``; the text's "input is h_t" would make the gate depend on its own
      output) with a straight-through gradient, and a **unit gate** ``u_j`` learned with a
      hard-concrete (L0) relaxation in training and thresholded at inference.
    * With ``g = 0`` eq. 4 gives ``c_t = 0, h_t = 0``: a dropped step resets the state, and a
      dropped unit is zero everywhere. Hence at inference the sequence splits into independent
      runs of kept steps, each starting from a zero state, and dropped units disappear from the
      weight matrices. :meth:`forward` in eval mode without grad runs exactly that: the kept
      runs as one packed batch through a ``torch.nn.LSTM`` of only the kept units (the same
      numbers as the step-by-step gated cell, see tests), so the cost scales with kept steps ×
      kept units².
    * Padding steps (``sequence_mask`` false) are dropped steps.
    * The sparsity penalty (:meth:`regularization`) is the mean step-keep probability plus the
      expected fraction of non-zero unit gates, times ``sparsity`` (a loss weight).
    * Gate parameters are stored divided by ``gate_scale`` (10) and multiplied back in the
      forward pass: with Adam this makes the gates learn ``gate_scale`` times faster than the
      LSTM weights under one learning rate, so they can cross their threshold within a short
      CPU training run.

    Output: masked mean of ``[h_fwd, h_bwd]`` over kept steps, then linear logits. A row whose gates
    drop every step keeps its most likely step, and the most likely unit stays when every unit is
    pruned (:func:`keep_at_least_one`): otherwise such a case gets a zero vector that retrieval
    cannot rank (seen: a briefly trained cxr-report model embedded a query as all zeros).
    """

    GAMMA, ZETA, TEMP = -0.1, 1.1, 2.0 / 3.0  # hard-concrete stretch and temperature (Louizos et al.)

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 64, sparsity: float = 0.3,
                 step_bias: float = 1.0, unit_init: float = 2.0, dropout: float = 0.0, gate_scale: float = 10.0) -> None:
        super().__init__()
        self.in_dim, self.hidden = in_dim, hidden
        k = 1.0 / math.sqrt(hidden)
        # weights in torch.nn.LSTM's layout (gates i, f, g, o stacked) so the fast path can load them
        self.w_ih = nn.Parameter(torch.empty(2, 4 * hidden, in_dim).uniform_(-k, k))
        self.w_hh = nn.Parameter(torch.empty(2, 4 * hidden, hidden).uniform_(-k, k))
        self.bias = nn.Parameter(torch.empty(2, 4 * hidden).uniform_(-k, k))
        self.gate_scale = float(gate_scale)
        self.step_gate = nn.Linear(in_dim, 1)
        with torch.no_grad():
            self.step_gate.weight.div_(self.gate_scale)
            self.step_gate.bias.fill_(step_bias / self.gate_scale)  # start with most steps kept
        self.unit_logit = nn.Parameter(torch.full((hidden,), float(unit_init) / self.gate_scale))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden, num_classes)
        self.hidden_dim = 2 * hidden
        self.sparsity = sparsity
        self._penalty: torch.Tensor | None = None
        self._fast_cache: tuple[tuple, tuple[nn.LSTM, nn.LSTM, torch.Tensor]] | None = None
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def last_stats(self) -> dict[str, float]:
        """Fractions of valid steps and of units kept by the last forward (read lazily: no
        device sync on the hot path)."""
        if self._stats is None:
            return {}
        return {"kept_steps": float(self._stats[0]), "kept_units": float(self._stats[1])}

    # ---- gates
    @property
    def unit_log_alpha(self) -> torch.Tensor:
        """Hard-concrete location ``log α`` of the unit gates ``[H]``."""
        return self.unit_logit * self.gate_scale

    def set_unit_gates(self, keep: torch.Tensor) -> None:
        """Force unit gates open (True) or shut (False), e.g. to study cost vs sparsity."""
        with torch.no_grad():
            self.unit_logit.copy_(torch.where(keep.to(self.unit_logit.device), 5.0, -5.0) / self.gate_scale)

    def step_logit(self, seq: torch.Tensor) -> torch.Tensor:
        """``a(x_t) + b`` of eq. 3 ``[B, T]``."""
        return self.step_gate(seq).squeeze(-1) * self.gate_scale

    def step_prob(self, seq: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.step_logit(seq))

    def unit_gate(self) -> torch.Tensor:
        """Unit gates ``[H]``: a hard-concrete sample in training, binary at inference."""
        la = self.unit_log_alpha
        if self.training:
            u = torch.rand_like(la).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / self.TEMP)
            g = (s * (self.ZETA - self.GAMMA) + self.GAMMA).clamp(0.0, 1.0)
            return g + (keep_at_least_one(g > 0, la) & (g <= 0)).to(g.dtype)
        return self.kept_units_mask().to(la.dtype)

    def kept_units_mask(self) -> torch.Tensor:
        la = self.unit_log_alpha
        s = torch.sigmoid(la) * (self.ZETA - self.GAMMA) + self.GAMMA
        return keep_at_least_one(s.clamp(0.0, 1.0) > 0.5, la)

    def unit_keep_prob(self) -> torch.Tensor:
        return torch.sigmoid(self.unit_log_alpha - self.TEMP * math.log(-self.GAMMA / self.ZETA))

    def regularization(self) -> torch.Tensor:
        """Sparsity penalty of the last training forward (0 before any)."""
        if self._penalty is None:
            return self.fc.weight.new_zeros(())
        return self._penalty

    # ---- reference path (training; differentiable)
    def gated_encode(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Step-by-step gated cell (eq. 4); returns the pooled ``[B, 2H]``."""
        logit = self.step_logit(seq)
        prob = torch.sigmoid(logit)
        z = straight_through(prob) * mask.to(seq.dtype)  # [B, T]
        hard = z.detach() > 0.5
        # the logit ranks steps even where the probability underflows to 0 (as the fast path does)
        z = z + (keep_at_least_one(hard, logit.detach(), mask) & ~hard).to(z.dtype)
        u = self.unit_gate()  # [H]
        b, t, _ = seq.shape
        outs = []
        for d in (0, 1):
            xw = seq @ self.w_ih[d].T + self.bias[d]  # [B, T, 4H] in one matmul
            h = seq.new_zeros(b, self.hidden)
            c = seq.new_zeros(b, self.hidden)
            out = [None] * t
            steps = range(t) if d == 0 else range(t - 1, -1, -1)
            for s in steps:
                gates = xw[:, s] + h @ self.w_hh[d].T
                i, f, g, o = gates.chunk(4, dim=1)
                gate = z[:, s, None] * u  # g_t = z_t u (binary at inference)
                i = torch.sigmoid(i) * gate
                f = torch.sigmoid(f) * gate
                o = torch.sigmoid(o) * gate
                c = f * c + i * torch.tanh(g)
                h = o * torch.tanh(c)
                out[s] = h
            outs.append(torch.stack(out, dim=1))
        hs = torch.cat(outs, dim=-1)  # [B, T, 2H]
        if self.training:
            valid = mask.to(seq.dtype)
            step_term = (prob * valid).sum() / valid.sum().clamp_min(1.0)
            self._penalty = self.sparsity * (step_term + self.unit_keep_prob().mean())
        keep = (z.detach() > 0.5)
        self._stats = (keep.sum() / mask.sum().clamp_min(1), (u.detach() > 0).float().mean())
        w = z[..., None]
        return (hs * w).sum(1) / keep.sum(1, keepdim=True).clamp_min(1).to(hs.dtype)

    # ---- fast path (inference)
    def _shrunk_lstm(self) -> tuple[nn.LSTM, nn.LSTM, torch.Tensor]:
        """Two unidirectional ``torch.nn.LSTM`` (forward, backward weights) of the kept units
        only; cached until a weight changes."""
        key = (self.w_ih._version, self.w_hh._version, self.bias._version, self.unit_logit._version,
               self.w_ih.data_ptr(), self.w_ih.device, self.w_ih.dtype)
        if self._fast_cache is not None and self._fast_cache[0] == key:
            return self._fast_cache[1]
        keep = torch.nonzero(self.kept_units_mask()).squeeze(1)
        hk = int(keep.numel())
        rows = torch.cat([keep + j * self.hidden for j in range(4)])
        lstms = []
        for d in (0, 1):
            lstm = nn.LSTM(self.in_dim, max(hk, 1), batch_first=True).to(self.w_ih.device, self.w_ih.dtype)
            with torch.no_grad():
                if hk:
                    lstm.weight_ih_l0.copy_(self.w_ih[d][rows])
                    lstm.weight_hh_l0.copy_(self.w_hh[d][rows][:, keep])
                    lstm.bias_ih_l0.copy_(self.bias[d][rows])
                    lstm.bias_hh_l0.zero_()
            lstms.append(lstm.eval())
        built = (lstms[0], lstms[1], keep)
        self._fast_cache = (key, built)
        return built

    @torch.no_grad()
    def sparse_encode(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Inference: only kept steps and kept units are computed.

        The kept steps form runs (a dropped step resets the state); runs are grouped by length
        into buckets whose lengths differ at most 2x, and each bucket goes through the fused
        LSTM kernel as one padded batch per direction (backward = each run reversed in place).
        Outputs past a run's end are masked out, so padding costs compute but not correctness;
        CPU LSTMs on ``PackedSequence`` were measured slower than this.
        """
        b, t, d_in = seq.shape
        fwd, bwd, keep_units = self._shrunk_lstm()
        hk = int(keep_units.numel())
        pooled = seq.new_zeros(b, 2 * self.hidden)
        logit = self.step_logit(seq)
        z = keep_at_least_one((logit > 0) & mask, logit, mask)  # σ(.) > 0.5  <=>  logit > 0
        n_kept = z.sum(1)
        self._stats = (n_kept.sum() / mask.sum().clamp_min(1), torch.tensor(hk / self.hidden))
        if hk == 0 or not bool(z.any()):
            return pooled
        zi = z.to(torch.int8)
        starts = zi.clone()
        starts[:, 1:] = zi[:, 1:] & (1 - zi[:, :-1])  # a run starts where z turns on
        sel = z.flatten()
        run_of_step = (torch.cumsum(starts.flatten(), 0) - 1)[sel]  # run index of each kept step
        n_runs = int(starts.sum())
        lengths = torch.bincount(run_of_step, minlength=n_runs)
        run_start = torch.cumsum(lengths, 0) - lengths
        kept_x = seq.reshape(b * t, d_in)[sel]
        pos = torch.arange(kept_x.shape[0], device=seq.device) - run_start[run_of_step]
        rev = lengths[run_of_step] - 1 - pos
        row_of_run = torch.zeros(n_runs, dtype=torch.long, device=seq.device).scatter_(
            0, run_of_step, torch.arange(b, device=seq.device)[:, None].expand(b, t).flatten()[sel])
        sums = seq.new_zeros(n_runs, 2 * hk)
        # CPU: length buckets [1], [2], [3, 4], [5, 8], ... (padding costs compute there);
        # GPU: one padded batch (padding is nearly free, every bucket costs host syncs)
        if seq.is_cuda:
            bucket = torch.zeros_like(lengths)
        else:
            bucket = torch.ceil(torch.log2(lengths.to(torch.float32))).long()
        for bk in torch.unique(bucket).tolist():
            runs = torch.nonzero(bucket == bk).squeeze(1)
            lmax = int(lengths[runs].max())
            local = torch.full((n_runs,), -1, dtype=torch.long, device=seq.device)
            local[runs] = torch.arange(runs.numel(), device=seq.device)
            in_b = local[run_of_step] >= 0
            xf = seq.new_zeros(runs.numel(), lmax, d_in)
            xb = seq.new_zeros(runs.numel(), lmax, d_in)
            li = local[run_of_step][in_b]
            xf[li, pos[in_b]] = kept_x[in_b]
            xb[li, rev[in_b]] = kept_x[in_b]
            valid = (torch.arange(lmax, device=seq.device)[None, :] < lengths[runs][:, None]).to(seq.dtype)[..., None]
            of, _ = fwd(xf)
            ob, _ = bwd(xb)
            sums[runs, :hk] = (of * valid).sum(1)
            sums[runs, hk:] = (ob * valid).sum(1)
        per_row = seq.new_zeros(b, 2 * hk).index_add_(0, row_of_run, sums)
        per_row = per_row / n_kept.clamp_min(1)[:, None].to(per_row.dtype)
        pooled[:, keep_units] = per_row[:, :hk]
        pooled[:, self.hidden + keep_units] = per_row[:, hk:]
        return pooled

    def encode(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training and not torch.is_grad_enabled():
            return self.sparse_encode(seq, mask)
        return self.gated_encode(seq, mask)

    def forward(self, fusion_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seq, mask = _as_sequence(fusion_out)
        h = self.encode(seq, mask)
        return {"logits": self.fc(self.drop(h)), "hidden": h}


@HEADS.register("linear")
def _linear(params: dict[str, Any], ctx: BuildContext) -> LinearHead:
    p = take_params("linear", params, {"dropout": 0.0})
    return LinearHead(ctx.dims["fused"], ctx.num_classes, **p)


@HEADS.register("mlp")
def _mlp(params: dict[str, Any], ctx: BuildContext) -> MLPHead:
    p = take_params("mlp", params, {"hidden": 128, "dropout": 0.2})
    return MLPHead(ctx.dims["fused"], ctx.num_classes, **p)


@HEADS.register("bilstm")
def _bilstm(params: dict[str, Any], ctx: BuildContext) -> BiLSTMHead:
    p = take_params("bilstm", params, {"hidden": 64, "dropout": 0.0})
    return BiLSTMHead(ctx.dims.get("sequence") or ctx.dims["fused"], ctx.num_classes, **p)


@HEADS.register("sg_bilstm")
def _sg_bilstm(params: dict[str, Any], ctx: BuildContext) -> SparseGatedBiLSTM:
    p = take_params("sg_bilstm", params, {"hidden": 64, "sparsity": 0.3, "step_bias": 1.0, "unit_init": 2.0, "dropout": 0.0,
                                          "gate_scale": 10.0})
    return SparseGatedBiLSTM(ctx.dims.get("sequence") or ctx.dims["fused"], ctx.num_classes, **p)
