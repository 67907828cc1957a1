"""Classifier heads: fusion output -> ``{"logits": [B, C], "hidden": [B, Dh]}``.

* ``linear`` / ``mlp``: on the fused vector (paper 2's softmax layer is ``linear``).
* ``bilstm``: a bidirectional LSTM over the fused sequence, masked mean of its outputs.
* ``sg_bilstm``: the sparse-gated Bi-LSTM of paper 1 (eq. 3-4), see :class:`SparseGatedBiLSTM`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
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
    """``logits = W fused + b``; ``hidden`` is the fused vector itself.

    ``norm: true`` standardises each feature first (``BatchNorm1d`` without affine: batch
    statistics in training, running ones at inference). Needed on frozen features whose
    class-specific part is small beside what every case shares: cxr-report's "Report only"
    row (frozen MiniLM mean-pooled report vectors, a linear head, Adam at 1e-3 for a few
    epochs) stayed a majority-class predictor (accuracy 50.8 %, recall 1/6, AUC 0.76: the
    ranking was learnt, the decision never crossed the class prior) because Adam moves each
    weight ~lr per step and the raw features' class differences are small: on 600 phantom
    reports the class means sit 0.025 per dimension from the overall mean (per-dimension sd
    0.08, overall mean norm 2.0). Measured on those reports (360 train / 120 test, the loop's 6
    epochs): raw, accuracy 0.575, macro recall 0.176, 2 classes predicted; standardised,
    accuracy 0.792, macro recall 0.702, all 6 classes.
    """

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0, norm: bool = False) -> None:
        super().__init__()
        # momentum None: the running statistics are the plain average over every training batch,
        # exact for frozen inputs however few steps a short run takes (an EMA at 0.1 is still 10 %
        # its initial (0, 1) after 22 steps, and at inference would then scale tiny features wrongly)
        self.norm = nn.BatchNorm1d(in_dim, affine=False, momentum=None) if norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        self.hidden_dim = in_dim

    def forward(self, fusion_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.norm(fusion_out["fused"])
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

    ``gate_mode`` picks the reading of eq. 4 (both are in paper 1's ablation table as variants):

    * ``"reset"`` (default): eq. 4 as printed, the binary ``g_t`` multiplies ``i_t``, ``f_t``,
      ``o_t`` inside the cell, so a dropped step zeroes the memory (above). The memory loss is
      measurable: SG+Bi-LSTM lost 30 points of accuracy to the Bi-LSTM on the phantoms.
    * ``"output"``: §1.3's prose, "先使用 Bi-LSTM 对序列进行编码,再通过稀疏门对编码后的序列进行稀疏化"
      (encode with the Bi-LSTM first, then sparsify the *encoded* sequence) with "the sparse
      gate's input is the Bi-LSTM's output h_t": the step gate ``z_t = 1[σ(a(h_t) + b) > 0.5]``
      reads the encoded ``h_t = [h_fwd, h_bwd]`` (no circularity: the recurrence does not see
      it) and drops step t from the encoded sequence (from the pooled mean); the recurrence runs
      through every valid step, so the cell state carries on across a dropped step. The unit
      gate ``u_j`` stays inside the cell (it multiplies ``i, f, o`` as eq. 4 says; being constant
      over time it resets nothing, and pruned units still leave the weight matrices). The cost
      is then a Bi-LSTM of the kept units over all steps: steps are not saved, only units.
    """

    GAMMA, ZETA, TEMP = -0.1, 1.1, 2.0 / 3.0  # hard-concrete stretch and temperature (Louizos et al.)

    GATE_MODES = ("reset", "output")

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 64,
        sparsity: float = 0.3,
        step_bias: float = 1.0,
        unit_init: float = 2.0,
        dropout: float = 0.0,
        gate_scale: float = 10.0,
        gate_mode: str = "reset",
    ) -> None:
        super().__init__()
        if gate_mode not in self.GATE_MODES:
            raise ConfigError(f"sg_bilstm: gate_mode must be one of {', '.join(self.GATE_MODES)}, got {gate_mode!r}")
        self.gate_mode = gate_mode
        self.in_dim, self.hidden = in_dim, hidden
        k = 1.0 / math.sqrt(hidden)
        # weights in torch.nn.LSTM's layout (gates i, f, g, o stacked) so the fast path can load them
        self.w_ih = nn.Parameter(torch.empty(2, 4 * hidden, in_dim).uniform_(-k, k))
        self.w_hh = nn.Parameter(torch.empty(2, 4 * hidden, hidden).uniform_(-k, k))
        self.bias = nn.Parameter(torch.empty(2, 4 * hidden).uniform_(-k, k))
        self.gate_scale = float(gate_scale)
        # the step gate reads the input x_t (reset: eq. 3's a(x_t)) or the encoded h_t (output)
        self.step_gate = nn.Linear(in_dim if gate_mode == "reset" else 2 * hidden, 1)
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
        self._totals: list[torch.Tensor] | None = None  # kept steps, valid steps, unit fraction sum, forwards

    @property
    def last_stats(self) -> dict[str, float]:
        """Fractions of valid steps and of units kept by the last forward (read lazily: no
        device sync on the hot path)."""
        if self._stats is None:
            return {}
        return {"kept_steps": float(self._stats[0]), "kept_units": float(self._stats[1])}

    def _record(self, kept: torch.Tensor, valid: torch.Tensor, unit_frac: torch.Tensor) -> None:
        """Store the last forward's fractions and add its counts to the running totals."""
        kept, valid = kept.sum().float(), valid.sum().float()
        unit_frac = unit_frac.float().to(kept.device)
        self._stats = (kept / valid.clamp_min(1), unit_frac)
        row = [kept, valid, unit_frac, torch.ones((), device=kept.device)]
        self._totals = row if self._totals is None else [a + b.to(a.device) for a, b in zip(self._totals, row)]

    def reset_gate_stats(self) -> None:
        """Start counting kept steps and units afresh (:meth:`gate_stats`)."""
        self._totals = None

    def gate_stats(self) -> dict[str, float]:
        """Fractions kept over every forward since :meth:`reset_gate_stats`: ``kept_steps`` (kept
        steps / valid steps, pooled over the cases) and ``kept_units`` (mean over forwards; at
        inference the unit gates are fixed, so it is the fraction of units the model keeps)."""
        if self._totals is None:
            return {}
        kept, valid, units, n = (float(t) for t in self._totals)
        return {"kept_steps": kept / max(valid, 1.0), "kept_units": units / max(n, 1.0)}

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
        """``a(·) + b`` of eq. 3 ``[B, T]``, of the input ``x_t`` (``"reset"``) or of the encoded
        ``h_t`` (``"output"``)."""
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
    def run_cell(
        self, seq: torch.Tensor, step_gate: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step-by-step cell of eq. 4 with ``g_t = step_gate[:, t] × u`` multiplying ``i, f, o``.

        Returns the outputs ``[B, T, 2H]`` and the cell states ``[B, T, 2H]`` (forward then
        backward direction; the backward one runs from the last step to the first). ``"reset"``
        passes the step gate ``z``; ``"output"`` passes ones (the cell is never step-gated).
        """
        b, t, _ = seq.shape
        outs, cells = [], []
        for d in (0, 1):
            xw = seq @ self.w_ih[d].T + self.bias[d]  # [B, T, 4H] in one matmul
            h = seq.new_zeros(b, self.hidden)
            c = seq.new_zeros(b, self.hidden)
            out, cell = [None] * t, [None] * t
            steps = range(t) if d == 0 else range(t - 1, -1, -1)
            for s in steps:
                gates = xw[:, s] + h @ self.w_hh[d].T
                i, f, g, o = gates.chunk(4, dim=1)
                gate = step_gate[:, s, None] * u  # g_t = z_t u (binary at inference)
                i = torch.sigmoid(i) * gate
                f = torch.sigmoid(f) * gate
                o = torch.sigmoid(o) * gate
                c = f * c + i * torch.tanh(g)
                h = o * torch.tanh(c)
                out[s], cell[s] = h, c
            outs.append(torch.stack(out, dim=1))
            cells.append(torch.stack(cell, dim=1))
        return torch.cat(outs, dim=-1), torch.cat(cells, dim=-1)

    def _step_gate(self, logit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Binary step gate ``[B, T]`` (straight-through) with at least one kept step per row."""
        z = straight_through(torch.sigmoid(logit)) * mask.to(logit.dtype)
        hard = z.detach() > 0.5
        # the logit ranks steps even where the probability underflows to 0 (as the fast path does)
        return z + (keep_at_least_one(hard, logit.detach(), mask) & ~hard).to(z.dtype)

    def gated_encode(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Step-by-step gated cell (eq. 4, either reading); returns the pooled ``[B, 2H]``."""
        u = self.unit_gate()  # [H]
        if self.gate_mode == "reset":
            logit = self.step_logit(seq)
            z = self._step_gate(logit, mask)
            hs, _ = self.run_cell(seq, z, u)
        else:
            # padding steps are not run through the cell's state either: valid steps are a prefix
            hs, _ = self.run_cell(seq, mask.to(seq.dtype), u)
            logit = self.step_logit(hs)
            z = self._step_gate(logit, mask)
        if self.training:
            valid = mask.to(seq.dtype)
            step_term = (torch.sigmoid(logit) * valid).sum() / valid.sum().clamp_min(1.0)
            self._penalty = self.sparsity * (step_term + self.unit_keep_prob().mean())
        keep = z.detach() > 0.5
        self._record(keep, mask, (u.detach() > 0).float().mean())
        w = z[..., None]
        return (hs * w).sum(1) / keep.sum(1, keepdim=True).clamp_min(1).to(hs.dtype)

    # ---- fast path (inference)
    def _shrunk_lstm(self) -> tuple[nn.LSTM, nn.LSTM, torch.Tensor]:
        """Two unidirectional ``torch.nn.LSTM`` (forward, backward weights) of the kept units
        only; cached until a weight changes."""
        key = (
            self.w_ih._version,
            self.w_hh._version,
            self.bias._version,
            self.unit_logit._version,
            self.w_ih.data_ptr(),
            self.w_ih.device,
            self.w_ih.dtype,
        )
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
        self._record(z, mask, torch.tensor(hk / self.hidden))
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
            0, run_of_step, torch.arange(b, device=seq.device)[:, None].expand(b, t).flatten()[sel]
        )
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

    @torch.no_grad()
    def output_gate_encode(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Inference of ``gate_mode: "output"``: the kept units' Bi-LSTM over every valid step
        (fused kernel; the backward direction reads each row's valid prefix reversed), then the
        step gate on the encoded outputs and the mean over the kept steps. Valid steps are a
        prefix of each row (``fusion._sequence``)."""
        b, t, _ = seq.shape
        fwd, bwd, keep_units = self._shrunk_lstm()
        hk = int(keep_units.numel())
        lengths = mask.sum(1)
        pos = torch.arange(t, device=seq.device)[None, :].expand(b, t)
        # reversal of the valid prefix (padding stays in place, after it)
        rev = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)
        x = seq * mask[..., None].to(seq.dtype)
        of, _ = fwd(x)
        ob, _ = bwd(torch.gather(x, 1, rev[..., None].expand_as(x)))
        ob = torch.gather(ob, 1, rev[..., None].expand_as(ob))
        hs = seq.new_zeros(b, t, 2 * self.hidden)
        if hk:
            hs[..., keep_units] = of
            hs[..., self.hidden + keep_units] = ob
        hs = hs * mask[..., None].to(hs.dtype)
        logit = self.step_logit(hs)
        z = keep_at_least_one((logit > 0) & mask, logit, mask)
        self._record(z, mask, torch.tensor(hk / self.hidden))
        w = z[..., None].to(hs.dtype)
        return (hs * w).sum(1) / z.sum(1, keepdim=True).clamp_min(1).to(hs.dtype)

    def encode(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training and not torch.is_grad_enabled():
            if self.gate_mode == "output":
                return self.output_gate_encode(seq, mask)
            return self.sparse_encode(seq, mask)
        return self.gated_encode(seq, mask)

    def forward(self, fusion_out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seq, mask = _as_sequence(fusion_out)
        h = self.encode(seq, mask)
        return {"logits": self.fc(self.drop(h)), "hidden": h}


@HEADS.register("linear")
def _linear(params: dict[str, Any], ctx: BuildContext) -> LinearHead:
    p = take_params("linear", params, {"dropout": 0.0, "norm": False})
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
    p = take_params(
        "sg_bilstm",
        params,
        {
            "hidden": 64,
            "sparsity": 0.3,
            "step_bias": 1.0,
            "unit_init": 2.0,
            "dropout": 0.0,
            "gate_scale": 10.0,
            "gate_mode": "reset",
        },
    )
    return SparseGatedBiLSTM(ctx.dims.get("sequence") or ctx.dims["fused"], ctx.num_classes, **p)
