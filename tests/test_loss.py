"""The fused chunked LM head + cross-entropy (llama_jreg/loss.py) against F.cross_entropy over materialised
logits: loss and both gradients, every chunking, ignored labels, autocast, no-grad, the model and the trainer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llama_jreg.config import load_config
from llama_jreg.loss import (
    auto_chunk_tokens,
    cross_entropy_sum,
    linear_cross_entropy,
    linear_cross_entropy_z,
    lse_square_sum,
)
from llama_jreg.model import Llama, ModelConfig
from llama_jreg.train.step import forward_backward
from llama_jreg.train.trainer import Trainer
from tests.test_train_helpers import tiny


def _inputs(N=37, D=24, V=53, dtype=torch.float64, n_ignored=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g, dtype=dtype) * 0.5).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    y[torch.randperm(N, generator=g)[:n_ignored]] = -100
    return h, w, y


def _reference(h, w, y, scale=1.0):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = F.cross_entropy(F.linear(h, w).float() if h.dtype != torch.float64 else F.linear(h, w), y,
                           ignore_index=-100, reduction="sum")
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 5, 8, 37, 64])
def test_loss_and_gradients_match_cross_entropy_fp64(chunk):
    h, w, y = _inputs()
    want_loss, want_gh, want_gw = _reference(h, w, y, scale=2.5)
    loss = linear_cross_entropy(h, w, y, chunk)
    (loss * 2.5).backward()  # backward scales the stored gradients by the upstream gradient
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h.grad, want_gh, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w.grad, want_gw, rtol=1e-12, atol=1e-12)
    assert h.grad[y == -100].abs().max() == 0  # ignored tokens get no gradient


def test_fp32_matches_and_chunking_only_changes_rounding():
    h, w, y = _inputs(N=300, D=64, V=1000, dtype=torch.float32, n_ignored=40)
    want_loss, want_gh, want_gw = _reference(h, w, y)
    losses = []
    for chunk in (16, 128, 300, None):
        hh, ww = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        loss = linear_cross_entropy(hh, ww, y, chunk)
        loss.backward()
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(hh.grad, want_gh, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ww.grad, want_gw, rtol=1e-5, atol=1e-6)
        losses.append(float(loss.detach()))
    assert max(losses) - min(losses) < 1e-4 * abs(losses[0])


def test_chunk_zero_is_the_materialised_reference_bit_for_bit():
    h, w, y = _inputs(dtype=torch.float32)
    want_loss, want_gh, want_gw = _reference(h, w, y)
    loss = linear_cross_entropy(h, w, y, 0)
    loss.backward()
    assert torch.equal(loss.detach(), want_loss) and torch.equal(h.grad, want_gh) and torch.equal(w.grad, want_gw)


def test_all_ignored_gives_zero_loss_and_zero_gradients():
    h, w, y = _inputs(N=10, n_ignored=10)
    loss = linear_cross_entropy(h, w, y, 4)
    loss.backward()
    assert float(loss.detach()) == 0.0 and h.grad.abs().max() == 0 and w.grad.abs().max() == 0


def test_no_grad_path_returns_the_same_loss_without_a_graph():
    h, w, y = _inputs(dtype=torch.float32)
    with_grad = linear_cross_entropy(h, w, y, 8)
    with torch.no_grad():
        plain = linear_cross_entropy(h, w, y, 8)
    assert not plain.requires_grad and plain.grad_fn is None
    assert torch.equal(plain, with_grad.detach())


def test_only_the_inputs_that_need_gradients_get_them():
    h, w, y = _inputs()
    frozen_w = w.detach()
    loss = linear_cross_entropy(h, frozen_w, y, 8)
    loss.backward()
    _, want_gh, _ = _reference(h, w, y)
    torch.testing.assert_close(h.grad, want_gh, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_follows_the_autocast_numerics():
    """Under autocast the matmuls run in bf16 (like F.linear would) and the softmax/loss in fp32."""
    h, w, y = _inputs(N=200, D=64, V=500, dtype=torch.float32, n_ignored=20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), y, ignore_index=-100, reduction="sum")
        got = linear_cross_entropy(h, w, y, 64)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=0)
    got.backward()
    _, gh, gw = _reference(h, w, y)
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    assert (h.grad - gh).norm() / gh.norm() < 2e-2 and (w.grad - gw).norm() / gw.norm() < 2e-2


def test_auto_chunk_sizes():
    assert auto_chunk_tokens(8192, "cpu") == 1024  # 32 MiB of fp32 logits
    assert auto_chunk_tokens(32000, "cpu") == 512  # never below the minimum
    assert auto_chunk_tokens(10**7, "cpu") == 512
    assert auto_chunk_tokens(32000, "cuda") == 4096
    for v in (1000, 8192, 50257):
        n = auto_chunk_tokens(v, "cpu")
        assert n & (n - 1) == 0


def test_model_labels_path_matches_logits_path_with_a_tied_head():
    torch.manual_seed(0)
    cfg = ModelConfig(name="custom", vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      max_seq_len=32, tie_embeddings=True)
    a = Llama(cfg)
    b = copy.deepcopy(a)
    x = torch.randint(0, 97, (3, 16))
    y = torch.randint(0, 97, (3, 16))
    y[0, :5] = -100
    out = a(x, labels=y, loss_chunk_tokens=7, stats="grad")
    assert out.logits is None and out.cos is not None
    out.loss.backward()
    ref = cross_entropy_sum(b(x).logits, y)
    ref.backward()
    torch.testing.assert_close(out.loss, ref.detach(), rtol=1e-5, atol=1e-5)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_trainer_fused_and_materialised_loss_give_the_same_step(tmp_path):
    fused = Trainer(load_config(tiny(tmp_path / "a", "trainer.max_steps=2", "jreg=jump", "jreg.weight=0.1")))
    plain = Trainer(load_config(tiny(tmp_path / "b", "trainer.max_steps=2", "jreg=jump", "jreg.weight=0.1",
                                     "trainer.loss_chunk_tokens=0")))
    plain.llama.load_state_dict(fused.llama.state_dict())
    batches = fused._next_batches()
    fa, fb = (forward_backward(t.model, batches, t.cfg, t.step_world, weight=0.1, with_psi=True).losses(t.cfg)
              for t in (fused, plain))
    assert fa.lm_loss == pytest.approx(fb.lm_loss, rel=1e-5)
    assert fa.jreg_loss == pytest.approx(fb.jreg_loss, rel=1e-4)
    for (name, pa), pb in zip(fused.llama.named_parameters(), plain.llama.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert fused.evaluate() == pytest.approx(plain.evaluate(), rel=1e-5)
    fused.close()
    plain.close()


# ---------------------------------------------------------------- z-loss (optim.z_loss)

def _z_reference(h, w, y, coef):
    """CE_sum + coef * sum lse^2 over materialised logits, differentiated by autograd (fp64 in, fp64 out)."""
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    logits = F.linear(h, w)
    keep = y != -100
    lse = torch.logsumexp(logits, dim=-1)
    loss = F.cross_entropy(logits, y, ignore_index=-100, reduction="sum") + coef * (lse.square() * keep).sum()
    loss.backward()
    return loss.detach(), (lse.square() * keep).sum().detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 5, 37, 64])
def test_z_loss_and_its_gradients_match_autograd_fp64(chunk):
    h, w, y = _inputs()
    with torch.no_grad():
        w.mul_(6)  # logits of a few units: lse far from 0, so the z-term and its gradient are not small
    coef = 0.3
    want_loss, want_z, want_gh, want_gw = _z_reference(h, w, y, coef)
    assert float(want_z) > 10 * len(y)  # the term is real
    loss, ce, zsum = linear_cross_entropy_z(h, w, y, coef, chunk)
    (loss * 2.5).backward()
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(zsum, want_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ce + coef * zsum, want_loss, rtol=1e-12, atol=1e-12)
    assert not ce.requires_grad and not zsum.requires_grad
    torch.testing.assert_close(h.grad, 2.5 * want_gh, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(w.grad, 2.5 * want_gw, rtol=1e-11, atol=1e-11)
    assert h.grad[y == -100].abs().max() == 0
    # the gradient differs from plain CE's: the z-term acts
    _, plain_gh, _ = _reference(h, w, y)
    assert (h.grad / 2.5 - plain_gh).abs().max() > 1e-2


def test_z_loss_chunked_fp32_agrees_with_the_reference_path_and_no_grad():
    h, w, y = _inputs(N=300, D=64, V=1000, dtype=torch.float32, n_ignored=40)
    results = []
    for chunk in (0, 16, 128, None):
        hh, ww = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        loss, ce, zsum = linear_cross_entropy_z(hh, ww, y, 1e-2, chunk)
        loss.backward()
        assert loss.dtype == torch.float32
        results.append((loss.detach(), zsum, hh.grad, ww.grad))
        with torch.no_grad():
            again = linear_cross_entropy_z(h, w, y, 1e-2, chunk)
        assert not again[0].requires_grad
        torch.testing.assert_close(again[0], loss.detach(), rtol=1e-6, atol=1e-4)
    ref = results[0]
    for got in results[1:]:
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_z_loss_zero_is_refused_by_the_z_function():
    h, w, y = _inputs()
    with pytest.raises(ValueError, match="z_coef"):
        linear_cross_entropy_z(h, w, y, 0.0)


def test_trainer_z_loss_step_matches_the_written_out_objective(tmp_path):
    """optim.z_loss=c: the step's gradients are those of (CE_sum + c * sum lse^2) / N_target over materialised
    logits; lm_loss stays the plain CE and z_loss = c * mean lse^2 is logged."""
    coef = 0.05
    tr = Trainer(load_config(tiny(tmp_path / "z", "trainer.max_steps=2", "jreg=off", f"optim.z_loss={coef}")))
    ref = copy.deepcopy(tr.llama)
    batches = tr._next_batches() + tr._next_batches()
    fb = forward_backward(tr.model, batches, tr.cfg, tr.step_world, weight=0.0, with_psi=False).losses(tr.cfg)
    n = sum(int((b["labels"] != -100).sum()) for b in batches)
    ce_total = z_total = 0.0
    for b in batches:
        logits = ref(b["input_ids"]).logits
        ce, z = cross_entropy_sum(logits, b["labels"]), lse_square_sum(logits, b["labels"])
        ((ce + coef * z) / n).backward()
        ce_total += float(ce.detach())
        z_total += float(z.detach())
    assert fb.lm_loss == pytest.approx(ce_total / n, rel=1e-5)
    assert fb.z_loss == pytest.approx(coef * z_total / n, rel=1e-5)
    assert fb.loss == pytest.approx(fb.lm_loss + fb.z_loss, rel=1e-12)
    for (name, pa), pb in zip(tr.llama.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
    tr.close()


def test_a_run_with_z_loss_logs_it_in_every_train_row(tmp_path):
    from tests.test_train_helpers import rows, run_inprocess

    run_inprocess(tiny(tmp_path / "r", "trainer.max_steps=3", "jreg=off", "optim.z_loss=1e-3"))
    train = rows(tmp_path / "r")
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        assert r["z_loss"] > 0 and r["loss"] == pytest.approx(r["lm_loss"] + r["z_loss"], rel=1e-12)
    assert all(r["val_loss"] > 0 for r in rows(tmp_path / "r", "eval"))  # validation: the plain CE, as before
