"""The Llama model: sizes, attention backends, per-layer statistics, bad input."""

from dataclasses import asdict

import pytest
import torch
from omegaconf import OmegaConf

import llama_jreg.model as model_mod
from llama_jreg import UserError, ops
from llama_jreg.attention import HAS_FLASH_ATTN, attention
from llama_jreg.config import CONFIG_DIR
from llama_jreg.model import SIZES, Llama, ModelConfig, RMSNorm, config_for_size
from llama_jreg.ops import stream_cosines, token_cosine


def tiny(**kw) -> ModelConfig:
    base = dict(name="tiny", vocab_size=128, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=96,
                max_seq_len=32)
    return ModelConfig(**{**base, **kw}).validate()


def test_size_yaml_matches_code():
    for name, kw in SIZES.items():
        yaml = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"))
        assert yaml == asdict(ModelConfig(name=name, **kw)), name


@pytest.mark.parametrize(
    "name,lo,hi", [("tiny", 2e6, 10e6), ("small", 125e6, 150e6), ("medium", 350e6, 400e6), ("large", 1.0e9, 1.3e9)]
)
def test_sizes_in_range(name, lo, hi):
    with torch.device("meta"):
        n = Llama(config_for_size(name)).num_params()
    assert lo <= n <= hi, (name, n)


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_sdpa_matches_eager_outputs_and_grads(n_kv):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 16, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, n_kv, 16, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, n_kv, 16, 8, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for backend in ("eager", "sdpa"):
        o = attention(q, k, v, backend)
        g = torch.autograd.grad((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum(), (q, k, v))
        outs.append(o)
        grads.append(g)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_model_sdpa_matches_eager_fp32():
    torch.manual_seed(0)
    m_eager = Llama(tiny(attn_backend="eager"))
    m_sdpa = Llama(tiny(attn_backend="sdpa"))
    m_sdpa.load_state_dict(m_eager.state_dict())
    x = torch.randint(0, 128, (2, 32))
    le, ls = m_eager(x).logits, m_sdpa(x).logits
    torch.testing.assert_close(le, ls, rtol=1e-5, atol=1e-5)
    le.square().mean().backward()
    ls.square().mean().backward()
    for (n, pe), (_, ps) in zip(m_eager.named_parameters(), m_sdpa.named_parameters()):
        torch.testing.assert_close(pe.grad, ps.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_causality():
    torch.manual_seed(0)
    m = Llama(tiny())
    x = torch.randint(0, 128, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 128
    torch.testing.assert_close(m(x).logits[:, :10], m(y).logits[:, :10])


def test_stats_match_hidden_states():
    torch.manual_seed(0)
    m = Llama(tiny())
    x = torch.randint(0, 128, (2, 16))
    out = m(x, stats=True, return_hidden=True)
    assert out.cos.shape == (3, 2, 16) and out.cos.dtype == torch.float32
    for layer in range(3):
        ref = torch.nn.functional.cosine_similarity(out.hidden[layer], out.hidden[layer + 1], dim=-1)
        torch.testing.assert_close(out.cos[layer], ref, rtol=1e-5, atol=1e-6)
    post = torch.nn.functional.cosine_similarity(out.hidden[-2], m.norm(out.hidden[-1]), dim=-1)
    torch.testing.assert_close(out.cos_post_norm, post, rtol=1e-5, atol=1e-6)
    # stats are off by default and do not change the logits
    plain = m(x)
    assert plain.cos is None and plain.cos_post_norm is None
    torch.testing.assert_close(plain.logits, out.logits)


def test_detached_stats_carry_no_grad():
    m = Llama(tiny())
    out = m(torch.randint(0, 128, (1, 8)), stats=True)
    assert not out.cos.requires_grad
    out = m(torch.randint(0, 128, (1, 8)), stats="grad")
    assert out.cos.requires_grad


def test_token_cosine_gradient():
    torch.manual_seed(0)
    a = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: token_cosine(a, b, 1e-12), (a, b))


def test_stream_cosines_gradient():
    """The all-layers node (eager JREG): values = per-pair token cosines, gradient by finite differences."""
    torch.manual_seed(0)
    hs = [torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    cos = stream_cosines(hs, 1e-12)
    for layer in range(3):
        torch.testing.assert_close(cos[layer], token_cosine(hs[layer], hs[layer + 1], 1e-12))
    assert torch.autograd.gradcheck(lambda *h: stream_cosines(list(h), 1e-12), tuple(hs))
    with torch.no_grad():  # no graph without grad mode
        assert not stream_cosines(hs).requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stream_and_in_block_cosines_agree(dtype):
    """Llama.stats_in_blocks=False (eager: one node over all streams) and True (each block's own cosine, what
    compiled blocks use) give the same cosines and the same parameter gradients of a JREG-like loss."""
    torch.manual_seed(0)
    m = Llama(tiny()).to(dtype)
    x = torch.randint(0, 128, (2, 16))
    res = {}
    for in_blocks in (False, True):
        m.stats_in_blocks = in_blocks
        res[in_blocks] = _stats_grads(m, x)
    (cos_s, g_s), (cos_b, g_b) = res[False], res[True]
    assert torch.equal(cos_s, cos_b)  # the same norms and dot products
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    for a, b in zip(g_s, g_b):
        torch.testing.assert_close(a, b, **tol)


def _stats_grads(model, x, forward=None):
    """Cosines and parameter gradients of cos.sum() + logits.mean() (the model's grads are reset first)."""
    model.zero_grad()
    out = (forward if forward is not None else model)(x, stats="grad")
    (out.cos.sum() + out.logits.mean()).backward()
    return out.cos.detach(), [p.grad.clone() for p in model.parameters()]


def test_stats_under_activation_checkpointing():
    torch.manual_seed(0)
    m = Llama(tiny())
    x = torch.randint(0, 128, (2, 16))
    cos_ref, g_ref = _stats_grads(m, x)
    m.checkpoint_blocks = True
    cos, g = _stats_grads(m, x)
    torch.testing.assert_close(cos, cos_ref)
    for a, b in zip(g_ref, g):
        torch.testing.assert_close(a, b)


def test_tied_and_untied_heads():
    m = Llama(tiny(tie_embeddings=True))
    assert m.output.weight.data_ptr() == m.tok_embeddings.weight.data_ptr()
    m = Llama(tiny(tie_embeddings=False))
    assert m.output.weight.data_ptr() != m.tok_embeddings.weight.data_ptr()
    assert Llama(tiny(tie_embeddings=False)).num_params() - Llama(tiny()).num_params() == 128 * 64


def test_init_is_documented_scheme():
    torch.manual_seed(0)
    cfg = tiny(dim=256, ffn_dim=512, n_layers=8)
    m = Llama(cfg)
    assert abs(m.layers[0].attn.wq.weight.std().item() - 0.02) < 2e-3
    assert abs(m.layers[0].mlp.w2.weight.std().item() - 0.02 / 4) < 1e-3  # 0.02 / sqrt(2 * 8)
    assert torch.all(m.norm.weight == 1)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(dim=66, n_heads=4), "does not divide model.dim"),
        (dict(n_heads=4, n_kv_heads=3), "does not divide model.n_heads"),
        (dict(attn_backend="nope"), "unknown model.attn_backend"),
    ],
)
def test_bad_model_configs(kw, match):
    with pytest.raises(UserError, match=match):
        tiny(**kw)


def test_unknown_size():
    with pytest.raises(UserError, match="unknown model size 'huge'"):
        config_for_size("huge")


def test_sequence_longer_than_context():
    m = Llama(tiny())
    with pytest.raises(UserError, match="exceeds the model context"):
        m(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.skipif(HAS_FLASH_ATTN, reason="flash-attn is installed here")
def test_flash_without_flash_attn():
    with pytest.raises(UserError, match="flash-attn is not installed"):
        tiny(attn_backend="flash")


@pytest.mark.slow
def test_stats_under_torch_compile():
    """The per-layer cosines are computed inside the blocks, so torch.compile traces them (no hooks)."""
    torch.manual_seed(0)
    m = Llama(tiny())
    x = torch.randint(0, 128, (2, 16))
    cos_ref, g_ref = _stats_grads(m, x)
    cos, g = _stats_grads(m, x, forward=torch.compile(m))
    torch.testing.assert_close(cos, cos_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_ref, g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_the_formula_and_its_gradient(dtype):
    """The Llama formula w * x / sqrt(mean(x^2) + eps), values and gradients (low precision: normalised in
    fp32, cast, then scaled, as HF does)."""
    torch.manual_seed(0)
    norm = RMSNorm(48, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
    x = (torch.randn(3, 7, 48) * 3).to(dtype).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    wr = norm.weight.detach().clone().requires_grad_()
    xf = xr.float()
    ref = wr * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    gtol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(x.grad, xr.grad, **gtol)
    torch.testing.assert_close(norm.weight.grad, wr.grad, **gtol)


def _rmsnorm_reference(x, w, eps):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def test_rmsnorm_node_gradcheck_and_mixed_dtypes():
    """The one-node eager RMSNorm (hand-written backward) against autograd of the formula: gradcheck and
    gradgradcheck in fp64, and a bf16 input with an fp32 weight (the bf16-autocast case) value for value."""
    torch.manual_seed(0)
    norm = RMSNorm(12, 1e-5).double()
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: ops.rms_norm(a, w, 1e-5), (x, norm.weight))
    assert torch.autograd.gradgradcheck(lambda a, w: ops.rms_norm(a, w, 1e-5), (x, norm.weight))
    assert norm(x).grad_fn.name().startswith("_RMSNorm")  # the node is what eager training runs

    w = torch.nn.Parameter(torch.randn(48) * 0.3 + 1)
    x = (torch.randn(4, 48) * 3).bfloat16().requires_grad_()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    out, ref = ops.rms_norm(x, w, 1e-5), _rmsnorm_reference(xr, wr, 1e-5)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=0)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_rope_rotation_matches_the_rotate_half_formula(dtype):
    """The concatenation-free rotation equals x cos + rotate_half(x) sin bit for bit (one rounding to x.dtype
    at the end, as the formula has), its inverse is the rotation by -angle, and RoPE's node passes gradcheck and gradgradcheck."""
    cfg = config_for_size("tiny", max_seq_len=64)
    cos, sin = model_mod.rope_tables(cfg)
    cos, sin = cos[:20], sin[:20]
    x = torch.randn(2, 3, 20, cfg.hd).to(dtype)
    ref = ops.rotate_formula(x, cos, sin).to(dtype)
    torch.testing.assert_close(ops.rotate(x, cos, sin), ref, rtol=0, atol=0)
    inv_ref = ops.rotate_formula(x, cos, -sin).to(dtype)
    torch.testing.assert_close(ops.rotate(x, cos, sin, inverse=True), inv_ref, rtol=0, atol=0)
    if dtype == torch.float64:  # fp64 tables (cos^2 + sin^2 = 1 to fp64): the inverse undoes the rotation
        angles = torch.outer(torch.arange(20, dtype=torch.float64), model_mod.rope_inv_freq(cfg)).repeat(1, 2)
        c64, s64 = angles.cos(), angles.sin()
        back = ops.rotate(ops.rotate(x, c64, s64), c64, s64, inverse=True)
        torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-12)
        xg = x.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda a: ops.apply_rope(a, c64, s64), (xg,))
        assert torch.autograd.gradgradcheck(lambda a: ops.apply_rope(a, c64, s64), (xg,))
