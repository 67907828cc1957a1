import pytest
import torch

from lungsearch.models.heads import BiLSTMHead, LinearHead, MLPHead, SparseGatedBiLSTM, straight_through


def _seq(b=4, t=10, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(b, t, d, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 7:] = False
    mask[3, 2:] = False
    return {"sequence": seq * mask[..., None], "sequence_mask": mask}


@pytest.mark.parametrize("t", [5, 12])
@pytest.mark.parametrize("cls", [BiLSTMHead, SparseGatedBiLSTM])
def test_sequence_heads_shapes_two_lengths(cls, t):
    head = cls(16, 3, hidden=8)
    out = head(_seq(t=t))
    assert out["logits"].shape == (4, 3) and out["hidden"].shape == (4, 16)


def test_vector_heads_and_sequence_heads_accept_a_plain_vector():
    fused = {"fused": torch.randn(2, 16)}
    for head in (
        LinearHead(16, 3),
        MLPHead(16, 3, hidden=8),
        BiLSTMHead(16, 3, hidden=4),
        SparseGatedBiLSTM(16, 3, hidden=4),
    ):
        assert head(fused)["logits"].shape == (2, 3)


def test_bilstm_ignores_padding():
    torch.manual_seed(0)
    head = BiLSTMHead(16, 3, hidden=8).eval()
    x = _seq()
    noisy = {"sequence": x["sequence"] + (~x["sequence_mask"])[..., None] * 5.0, "sequence_mask": x["sequence_mask"]}
    with torch.no_grad():
        assert torch.allclose(head(x)["logits"], head(noisy)["logits"], atol=1e-6)


def _sparse_head():
    torch.manual_seed(0)
    head = SparseGatedBiLSTM(16, 3, hidden=8, step_bias=0.0)
    head.set_unit_gates(torch.arange(8) >= 3)  # three units pruned
    return head.eval()


def test_sparse_fast_path_equals_the_gated_cell():
    head = _sparse_head()
    x = _seq()
    with torch.enable_grad():
        slow = head.gated_encode(x["sequence"], x["sequence_mask"])
    slow_stats = dict(head.last_stats)
    with torch.no_grad():
        fast = head.sparse_encode(x["sequence"], x["sequence_mask"])
    assert 0.0 < slow_stats["kept_steps"] < 1.0 and slow_stats["kept_units"] == 5 / 8
    assert head.last_stats == pytest.approx(slow_stats)
    assert torch.allclose(slow, fast, atol=1e-5)
    # forward() picks the fast path in eval mode without grad
    with torch.no_grad():
        assert torch.allclose(head(x)["hidden"], fast)


def test_pruned_units_shrink_the_inference_lstm():
    head = _sparse_head()
    lstm, back, keep = head._shrunk_lstm()
    assert lstm.hidden_size == 5 == back.hidden_size and keep.tolist() == [3, 4, 5, 6, 7]
    assert lstm.weight_hh_l0.shape == (20, 5)
    # cached until the weights change
    assert head._shrunk_lstm()[0] is lstm
    with torch.no_grad():
        head.w_hh.add_(0.0)
    assert head._shrunk_lstm()[0] is not lstm


def test_dropped_steps_do_not_influence_the_output():
    """A dropped step resets the state (eq. 4 with g = 0): changing its input changes nothing
    unless it changes the gate decision."""
    head = _sparse_head()
    x = _seq()
    with torch.no_grad():
        z = (head.step_logit(x["sequence"]) > 0) & x["sequence_mask"]
        ref = head(x)["hidden"]
        seq2 = x["sequence"].clone()
        # move dropped inputs along the gate's null space: the decision stays, the content changes
        w = head.step_gate.weight[0]
        noise = torch.randn_like(seq2)
        noise -= (noise @ w)[..., None] * w / (w @ w)
        seq2[~z] += 3 * noise[~z]
        out = head({"sequence": seq2, "sequence_mask": x["sequence_mask"]})["hidden"]
    assert torch.allclose(ref, out, atol=1e-5)


def test_all_steps_dropped_keeps_the_most_likely_step():
    """A row whose gates drop every step would pool to zeros (a zero embedding cannot be ranked):
    it keeps its most likely step, on the fast path and in the differentiable cell alike."""
    head = _sparse_head()
    x = _seq()
    with torch.no_grad():
        head.step_gate.bias.fill_(-1e4)
        fast = head(x)["hidden"]
        kept = head.last_stats["kept_steps"]
        logit = head.step_logit(x["sequence"]).masked_fill(~x["sequence_mask"], float("-inf"))
        only = torch.zeros_like(x["sequence_mask"]).scatter(1, logit.argmax(1, keepdim=True), True)
        ref = head({"sequence": x["sequence"], "sequence_mask": only})["hidden"]
    assert (fast.abs().sum(1) > 0).all() and kept == pytest.approx(4 / 29)  # one step of each row's 10, 7, 10, 2
    with torch.enable_grad():
        slow = head.gated_encode(x["sequence"], x["sequence_mask"])
    assert torch.allclose(fast, ref, atol=1e-6) and torch.allclose(slow, fast, atol=1e-5)


def test_all_units_pruned_keeps_the_most_likely_unit():
    head = _sparse_head()
    with torch.no_grad():
        head.unit_logit.fill_(-1.0)
        head.unit_logit[5] = -0.5
    assert head.kept_units_mask().nonzero().flatten().tolist() == [5]
    with torch.no_grad():
        assert (head(_seq())["hidden"].abs().sum(1) > 0).all()
    head.train()
    assert (head.unit_gate() > 0).sum() >= 1


def test_keep_at_least_one_leaves_rows_that_keep_something():
    from lungsearch.models.heads import keep_at_least_one

    keep = torch.tensor([[False, True, False], [False, False, False], [False, False, False]])
    score = torch.tensor([[9.0, 0.0, 0.0], [1.0, 3.0, 2.0], [5.0, 1.0, 0.0]])
    valid = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    out = keep_at_least_one(keep, score, valid)
    assert out.tolist() == [[False, True, False], [False, False, True], [False, False, False]]


def test_sparse_gates_train_and_penalty():
    torch.manual_seed(0)
    head = SparseGatedBiLSTM(16, 3, hidden=8, sparsity=0.5).train()
    out = head(_seq())
    assert float(head.regularization().detach()) > 0
    (out["logits"].sum() + head.regularization()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert head.step_gate.weight.grad.abs().sum() > 0
    assert head.unit_logit.grad.abs().sum() > 0


def test_straight_through_is_binary_forward_identity_backward():
    p = torch.tensor([0.2, 0.7], requires_grad=True)
    z = straight_through(p)
    assert z.tolist() == [0.0, 1.0]
    z.sum().backward()
    assert p.grad.tolist() == [1.0, 1.0]


def _output_gate_head():
    torch.manual_seed(0)
    head = SparseGatedBiLSTM(16, 3, hidden=8, step_bias=0.0, gate_mode="output")
    head.set_unit_gates(torch.arange(8) >= 3)  # three units pruned
    return head.eval()


def _plain_bilstm(head: SparseGatedBiLSTM, seq: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.nn.LSTM`` with the head's weights over each row's valid prefix: outputs and the
    forward direction's cell state after every step (run one step at a time)."""
    lstm = torch.nn.LSTM(head.in_dim, head.hidden, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for d, sfx in ((0, ""), (1, "_reverse")):
            getattr(lstm, f"weight_ih_l0{sfx}").copy_(head.w_ih[d])
            getattr(lstm, f"weight_hh_l0{sfx}").copy_(head.w_hh[d])
            getattr(lstm, f"bias_ih_l0{sfx}").copy_(head.bias[d])
            getattr(lstm, f"bias_hh_l0{sfx}").zero_()
        lengths = mask.sum(1)
        packed = torch.nn.utils.rnn.pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=seq.shape[1])
        cells = []
        cell = torch.nn.LSTMCell(head.in_dim, head.hidden)  # the forward direction, step by step
        cell.weight_ih.copy_(head.w_ih[0])
        cell.weight_hh.copy_(head.w_hh[0])
        cell.bias_ih.copy_(head.bias[0])
        cell.bias_hh.zero_()
        h = c = seq.new_zeros(seq.shape[0], head.hidden)
        for t in range(seq.shape[1]):
            h, c = cell(seq[:, t], (h, c))
            cells.append(c)
    return out, torch.stack(cells, 1)


def test_output_gate_keeps_the_cell_state_on_a_dropped_step():
    """Eq. 4's other reading (gate_mode "output"): the gate sparsifies the encoded sequence, so
    the cell runs through a dropped step and carries its state on; the literal reading
    (gate_mode "reset") zeroes the state there. Checked against torch.nn.LSTM with the same
    weights: the output-gate head pools exactly the plain Bi-LSTM's outputs at its kept steps."""
    head = _output_gate_head()
    head.set_unit_gates(torch.ones(8, dtype=torch.bool))  # all units: comparable with a plain LSTM
    x = _seq()
    seq, mask = x["sequence"], x["sequence_mask"]
    plain, plain_c = _plain_bilstm(head, seq, mask)
    from lungsearch.models.heads import keep_at_least_one

    with torch.no_grad():
        logit = head.step_logit(plain)
        z = keep_at_least_one((logit > 0) & mask, logit, mask)
    # a row where a dropped step is followed by a kept one (so the carried state matters)
    row = next(r for r in range(4) if any(not z[r, t] and z[r, t + 1 :].any() and mask[r, t] for t in range(10)))
    t_drop = next(t for t in range(10) if not z[row, t] and z[row, t + 1 :].any() and mask[row, t])
    expect = (plain * z[..., None]).sum(1) / z.sum(1, keepdim=True)
    with torch.enable_grad():
        slow = head.gated_encode(seq, mask)
    assert torch.allclose(slow.detach(), expect, atol=1e-5)
    # the cell the output reading runs is the plain one: state after the dropped step unchanged
    with torch.no_grad():
        _, c_out = head.run_cell(seq, mask.float(), torch.ones(8))
        _, c_reset = head.run_cell(seq, z.float(), torch.ones(8))
    assert torch.allclose(c_out[row, t_drop, :8], plain_c[row, t_drop], atol=1e-5)
    assert c_out[row, t_drop, :8].abs().sum() > 0
    assert (c_reset[row, t_drop, :8] == 0).all()  # the literal reading wipes it
    # the literal head with the same weights and the same kept steps pools something else
    lit = SparseGatedBiLSTM(16, 3, hidden=8, gate_mode="reset").eval()
    with torch.no_grad():
        for n in ("w_ih", "w_hh", "bias"):
            getattr(lit, n).copy_(getattr(head, n))
        hs_lit, _ = lit.run_cell(seq, z.float(), torch.ones(8))
    lit_pool = (hs_lit * z[..., None]).sum(1) / z.sum(1, keepdim=True)
    assert not torch.allclose(lit_pool[row], expect[row], atol=1e-3)


def test_output_gate_fast_path_equals_the_gated_cell():
    head = _output_gate_head()
    x = _seq()
    with torch.enable_grad():
        slow = head.gated_encode(x["sequence"], x["sequence_mask"])
    slow_stats = dict(head.last_stats)
    with torch.no_grad():
        fast = head(x)["hidden"]  # eval + no grad: output_gate_encode
    assert head.last_stats == pytest.approx(slow_stats)
    assert torch.allclose(slow, fast, atol=1e-5)


def test_output_gate_reads_the_encoded_sequence():
    head = SparseGatedBiLSTM(16, 3, hidden=8, gate_mode="output")
    assert head.step_gate.in_features == 16  # 2 x hidden: [h_fwd, h_bwd]
    assert SparseGatedBiLSTM(16, 3, hidden=8).step_gate.in_features == 16  # reset: the input x_t (16 features here)
    assert SparseGatedBiLSTM(12, 3, hidden=8, gate_mode="output").step_gate.in_features == 16
    from lungsearch.errors import ConfigError

    with pytest.raises(ConfigError):
        SparseGatedBiLSTM(16, 3, gate_mode="skip")


def test_output_gate_trains():
    torch.manual_seed(0)
    head = SparseGatedBiLSTM(16, 3, hidden=8, sparsity=0.5, gate_mode="output").train()
    out = head(_seq())
    (out["logits"].sum() + head.regularization()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert head.step_gate.weight.grad.abs().sum() > 0


def test_gate_stats_pool_the_forwards_since_reset():
    head = _sparse_head()
    x = _seq()
    head.reset_gate_stats()
    assert head.gate_stats() == {}
    with torch.no_grad():
        head(x)
        first = dict(head.last_stats)
        half = {"sequence": x["sequence"][:2], "sequence_mask": x["sequence_mask"][:2]}
        head(half)
        second = dict(head.last_stats)
    stats = head.gate_stats()
    valid = [int(x["sequence_mask"].sum()), int(half["sequence_mask"].sum())]
    expect = (first["kept_steps"] * valid[0] + second["kept_steps"] * valid[1]) / sum(valid)
    assert stats["kept_steps"] == pytest.approx(expect) and stats["kept_units"] == pytest.approx(5 / 8)
    head.reset_gate_stats()
    assert head.gate_stats() == {}


def test_linear_head_norm_standardises_features():
    torch.manual_seed(0)
    head = LinearHead(8, 3, norm=True).train()
    x = 5.0 + 0.1 * torch.randn(32, 8)  # a large shared part, small differences
    h = head({"fused": x})["hidden"]
    assert torch.allclose(h.mean(0), torch.zeros(8), atol=1e-3) and torch.allclose(
        h.std(0, unbiased=False), torch.ones(8), atol=1e-2
    )
    assert LinearHead(8, 3)({"fused": x})["hidden"] is x  # default: unchanged
