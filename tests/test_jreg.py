"""The jump metric (Psi, zeta) and the JREG regularizers."""

import math

import pytest
import torch
import torch.nn.functional as F

from llama_jreg import UserError
from llama_jreg.jreg import (
    JregConfig,
    layer_weights,
    penalty,
    psi,
    regularizer,
    stats_mode,
    weight_at,
    zeta,
    zeta_L,
)
from llama_jreg.model import Llama, ModelConfig


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(vocab_size=64, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32)
    return Llama(ModelConfig(**{**base, **kw}))


def test_psi_hand_computed():
    # layer 1: identical vectors (cos 1 -> psi 0); orthogonal (cos 0 -> 0.5); opposite (cos -1 -> 1)
    cos = torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]])  # (L=3, tokens=2)
    torch.testing.assert_close(psi(cos), torch.tensor([0.0, 0.5, 0.75]))
    # the mask drops padding tokens: only token 0 counts
    torch.testing.assert_close(psi(cos, mask=torch.tensor([True, False])), torch.tensor([0.0, 0.5, 1.0]))


def test_psi_from_real_vectors():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    cos = F.cosine_similarity(a, b, dim=-1)[None]  # 0 and 1
    torch.testing.assert_close(psi(cos), torch.tensor([0.25]))


def test_zeta_hand_computed():
    p = torch.tensor([0.10, 0.05, 0.08, 0.30])
    # jumps at l=2..4: max(0,-0.05)=0, 0.03, 0.22
    z = zeta(p)
    torch.testing.assert_close(z, torch.tensor([25.0, 25.0, 25.0, 22.0]))
    torch.testing.assert_close(zeta_L(p), torch.tensor(22.0))
    assert math.isclose(zeta(torch.tensor([0.3, 0.1]))[-1].item(), 0.0)


def test_regularizer_modes_hand_computed():
    p = torch.tensor([0.10, 0.05, 0.08, 0.30])
    torch.testing.assert_close(regularizer(p, JregConfig(mode="jump", l0=2)), torch.tensor(0.25))
    torch.testing.assert_close(regularizer(p, JregConfig(mode="jump", l0=4)), torch.tensor(0.22))
    torch.testing.assert_close(regularizer(p, JregConfig(mode="jump", l0=-1)), torch.tensor(0.22))  # l0=-1: L
    torch.testing.assert_close(regularizer(torch.tensor([0.1, 0.4, 0.2]), JregConfig(mode="jump", l0=-1)),
                               torch.tensor(0.0))  # the last layer rotates less than the one before: no jump
    torch.testing.assert_close(regularizer(p, JregConfig(mode="final")), torch.tensor(0.30))
    torch.testing.assert_close(regularizer(p, JregConfig(mode="paper")), torch.tensor(0.60))  # 1 - cos = 2 Psi
    torch.testing.assert_close(regularizer(p, JregConfig(mode="weighted", weighting="uniform")), p.mean())
    lin = (torch.tensor([1.0, 2, 3, 4]) * p).sum() / 10
    torch.testing.assert_close(regularizer(p, JregConfig(mode="weighted", weighting="linear")), lin)
    torch.testing.assert_close(
        regularizer(p, JregConfig(mode="weighted", weighting="last_k", last_k=2)), (p[2] + p[3]) / 2
    )
    for w in ("uniform", "linear", "last_k"):
        assert math.isclose(layer_weights(5, w, 3).sum().item(), 1.0, rel_tol=1e-6)


def test_weight_warmup():
    cfg = JregConfig(weight=0.4, warmup_steps=4)
    assert [weight_at(cfg, s) for s in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4])
    assert weight_at(JregConfig(weight=0.0, warmup_steps=4), 2) == 0.0


@pytest.mark.parametrize("mode,kw,layers", [
    ("jump", {}, range(4)), ("final", {}, range(4)), ("weighted", {"weighting": "uniform"}, range(4)),
])
def test_gradients_reach_every_layer_involved(mode, kw, layers):
    m = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    out = m(x, stats="grad")
    p = psi(out.cos)
    cfg = JregConfig(weight=1.0, mode=mode, **kw)
    if mode == "jump":
        # make sure every jump term is active so every layer is "involved"
        r = (p[1:] - p[:-1]).abs().sum()
    else:
        r = regularizer(p, cfg)
    r.backward()
    for i in layers:
        g = m.layers[i].mlp.w2.weight.grad
        # final mode: the last block's output and input depend on all earlier layers too
        assert g is not None and g.abs().sum() > 0, (mode, i)
    assert m.tok_embeddings.weight.grad.abs().sum() > 0


def test_jump_gradient_reaches_layers_l0_and_above_only_through_active_terms():
    m = tiny_model()
    x = torch.randint(0, 64, (2, 16))
    p = psi(m(x, stats="grad").cos)
    r = regularizer(p, JregConfig(weight=1.0, mode="jump", l0=2))
    if r.item() == 0:
        pytest.skip("no positive jump at init for this seed")
    r.backward()
    assert any(m.layers[i].attn.wq.weight.grad.abs().sum() > 0 for i in range(4))


def _hidden(seed=0):
    m = tiny_model(seed)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(seed))
    return m, m(x, stats="grad_post_norm", return_hidden=True)


def test_paper_penalty_is_one_minus_cos_of_the_last_layer_on_either_stream():
    """R = mean(1 - cos(h_{L-1}, h_L)) by hand, with h_L before and after the final norm."""
    m, out = _hidden()
    h_prev, h_last = out.hidden[-2], out.hidden[-1]
    by_hand = {
        "pre_norm": (1 - F.cosine_similarity(h_prev, h_last, dim=-1)).mean(),
        "post_norm": (1 - F.cosine_similarity(h_prev, m.norm(h_last), dim=-1)).mean(),
    }
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, :5] = False  # padding tokens do not count
    for stream, want in by_hand.items():
        p, r = penalty(out.cos, out.cos_post_norm, None, JregConfig(mode="paper", stream=stream))
        torch.testing.assert_close(r, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p, psi(out.cos))  # the logged Psi stays pre-norm
        _, r_masked = penalty(out.cos, out.cos_post_norm, mask, JregConfig(mode="paper", stream=stream))
        h_n = h_last if stream == "pre_norm" else m.norm(h_last)
        torch.testing.assert_close(r_masked, (1 - F.cosine_similarity(h_prev, h_n, dim=-1))[mask].mean(),
                                   rtol=1e-5, atol=1e-6)
    # the two streams are different quantities (the final norm's per-channel gain rotates h_L)
    with torch.no_grad():
        m.norm.weight.copy_(torch.linspace(0.2, 3.0, m.norm.weight.numel()))
        out = m(torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0)), stats=True)
    pre = penalty(out.cos, out.cos_post_norm, None, JregConfig(mode="paper", stream="pre_norm"))[1]
    post = penalty(out.cos, out.cos_post_norm, None, JregConfig(mode="paper", stream="post_norm"))[1]
    assert abs(pre.item() - post.item()) > 1e-3, (pre.item(), post.item())


@pytest.mark.parametrize("stream", ["pre_norm", "post_norm"])
def test_paper_penalty_gradient_exists_and_lowers_it(stream):
    """The gradient reaches the last block (and the final norm's gain only on post_norm), and a small step
    against it lowers R: the sign is right."""
    m, out = _hidden(1)
    cfg = JregConfig(weight=1.0, mode="paper", stream=stream)
    r = penalty(out.cos, out.cos_post_norm, None, cfg)[1]
    r.backward()
    assert m.layers[-1].mlp.w2.weight.grad.abs().sum() > 0
    g_norm = m.norm.weight.grad
    if stream == "post_norm":
        assert g_norm is not None and g_norm.abs().sum() > 0
    else:
        assert g_norm is None or g_norm.abs().sum() == 0
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for q in m.parameters():
            if q.grad is not None:
                q -= 1e-3 * q.grad / (q.grad.norm() + 1e-12)
        out2 = m(x, stats=True)
    r2 = penalty(out2.cos, out2.cos_post_norm, None, cfg)[1]
    assert r2.item() < r.item(), (stream, r.item(), r2.item())


def test_post_norm_cosine_carries_gradient_only_when_the_penalty_reads_it():
    """stats="grad" (every stream but post_norm) keeps the post-norm cosine out of the autograd graph, so it
    saves nothing for backward; a post_norm penalty on such a forward is refused, not silently gradient-free."""
    m = tiny_model(1)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    assert stats_mode(JregConfig(mode="paper", stream="pre_norm")) == "grad"
    assert stats_mode(JregConfig(mode="paper", stream="post_norm")) == "grad_post_norm"
    out = m(x, stats="grad")
    assert out.cos.requires_grad and not out.cos_post_norm.requires_grad
    with pytest.raises(ValueError, match="grad_post_norm"):
        penalty(out.cos, out.cos_post_norm, None, JregConfig(mode="paper", stream="post_norm"))
    out = m(x, stats="grad_post_norm")
    assert out.cos.requires_grad and out.cos_post_norm.requires_grad
    torch.testing.assert_close(out.cos_post_norm, m(x, stats="grad").cos_post_norm)


# jreg.weight == 0 bit-identical to plain LM training is tested on the real trainer step:
# tests/test_train_loss.py::test_jreg_off_is_plain_lm_bit_for_bit


@pytest.mark.parametrize("cfg", [
    JregConfig(weight=1.0, mode="jump"),
    JregConfig(weight=1.0, mode="final"),
    JregConfig(weight=1.0, mode="jump", l0=-1),
    JregConfig(weight=1.0, mode="paper", stream="post_norm"),
    JregConfig(weight=1.0, mode="weighted", weighting="linear"),
    JregConfig(weight=1.0, mode="weighted", weighting="last_k", last_k=1),
])
def test_optimising_each_regularizer_lowers_it(cfg):
    """A real optimisation of R alone (Adam on all weights) on a tiny model."""
    m = tiny_model(3)
    torch.manual_seed(3)
    x = torch.randint(0, 64, (4, 32))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def r_value():
        out = m(x, stats=stats_mode(cfg))
        return penalty(out.cos, out.cos_post_norm, None, cfg)[1]

    start = r_value().item()
    if cfg.mode == "jump" and start < 1e-4:
        # make a jump first so there is something to suppress: push the last layer to rotate
        for _ in range(30):
            opt.zero_grad()
            (-psi(m(x, stats="grad").cos)[-1]).backward()
            opt.step()
        start = r_value().item()
    assert start > 1e-4
    for _ in range(40):
        opt.zero_grad()
        r = r_value()
        r.backward()
        opt.step()
    end = r_value().item()
    assert end < 0.5 * start, (cfg.mode, start, end)


@pytest.mark.parametrize("kw,match", [
    (dict(weight=-0.1), "must be >= 0"),
    (dict(mode="bogus"), "unknown jreg.mode"),
    (dict(weighting="bogus"), "unknown jreg.weighting"),
    (dict(l0=1), "must be >= 2"),
    (dict(l0=-2), r"or -1 \(= the last layer L\)"),
    (dict(stream="after"), "unknown jreg.stream"),
    (dict(l0=9), "exceeds the number of layers"),
])
def test_bad_jreg_configs(kw, match):
    with pytest.raises(UserError, match=match):
        JregConfig(**kw).validate(n_layers=4)


def test_study_cells_tell_the_variants_apart():
    """The study report groups runs by cell: jump (l0 = 2), jump_last (l0 = -1) and the streams stay apart."""
    from llama_jreg.study.results import cell_label

    labels = [cell_label("jump", "uniform", 2, "pre_norm"), cell_label("jump", "uniform", -1, "pre_norm"),
              cell_label("jump", "uniform", 4, "pre_norm"), cell_label("paper", "uniform", 2, "post_norm"),
              cell_label("paper", "uniform", 2, "pre_norm"), cell_label("final", "uniform", 2, "post_norm"),
              cell_label("weighted", "linear", 2, "pre_norm")]
    assert labels == ["jump", "jump-last", "jump-l0=4", "paper", "paper-pre-norm", "final-post-norm",
                      "weighted-linear"]
    assert cell_label("final", "uniform") == "final"  # configs written before jreg.stream existed
