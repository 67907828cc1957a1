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
    for head in (LinearHead(16, 3), MLPHead(16, 3, hidden=8), BiLSTMHead(16, 3, hidden=4), SparseGatedBiLSTM(16, 3, hidden=4)):
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
