"""The loss of one optimizer step: JREG off == plain LM bit for bit, token-count normalisation across
micro-batches, the JREG weighting; the optimizer's parameter groups, the schedules, the FLOP count."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from llama_jreg import jreg as J
from llama_jreg.config import ScheduleConfig, load_config
from llama_jreg.train.metrics import flops_per_token
from llama_jreg.train.optim import Schedule, lr_factor, param_groups
from llama_jreg.train.trainer import Trainer
from tests.test_train_helpers import tiny


def _batches(seed: int, n: int, B: int = 2, T: int = 32, V: int = 128, ignore: list[int] | None = None):
    """Hand-made micro-batches; micro-batch i has ``ignore[i]`` labels set to -100 (uneven on purpose)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randint(0, V, (B, T), generator=g)
        y = torch.randint(0, V, (B, T), generator=g)
        if ignore:
            y.view(-1)[: ignore[i]] = -100
        out.append({"input_ids": x, "labels": y})
    return out


def _trainer(tmp_path, *extra) -> Trainer:
    return Trainer(load_config(tiny(tmp_path, "trainer.max_steps=4", *extra)))


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("jump_step", [False, True])
def test_jreg_off_is_plain_lm_bit_for_bit(tmp_path, jump_step):
    tr = _trainer(tmp_path, "jreg=off", "optim.z_loss=0")  # z-loss off too: no term, no extra computation
    ref = copy.deepcopy(tr.llama)
    batches = _batches(0, 3, ignore=[5, 0, 17])
    fb = tr.forward_backward(batches, weight=J.weight_at(tr.cfg.jreg, 0), want_stats=jump_step)
    assert (fb["psi"] is not None) == jump_step  # the jump row still gets Psi, detached

    # plain LM training, written out by hand (the model's LM loss; tests/test_loss.py checks that against
    # F.cross_entropy over materialised logits)
    n = sum(int((b["labels"] != -100).sum()) for b in batches)
    ce_total = 0.0
    for b in batches:
        ce = ref(b["input_ids"], labels=b["labels"]).loss
        (ce / n).backward()
        ce_total += float(ce.detach().double())
    got, want = _grads(tr.llama), _grads(ref)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert fb["loss"] == fb["lm_loss"] and fb["jreg_loss"] == 0.0 and fb["z_loss"] == 0.0
    assert fb["lm_loss"] == pytest.approx(ce_total / n, rel=1e-12)


def test_jreg_term_is_the_mean_over_micro_batches(tmp_path):
    tr = _trainer(tmp_path, "jreg=jump", "jreg.weight=0.5")
    ref = copy.deepcopy(tr.llama)
    batches = _batches(1, 2, ignore=[3, 40])
    fb = tr.forward_backward(batches, weight=0.5, want_stats=True)

    n = sum(int((b["labels"] != -100).sum()) for b in batches)
    regs, ces = [], []
    for b in batches:
        out = ref(b["input_ids"], stats="grad", labels=b["labels"])
        ce = out.loss
        reg = J.regularizer(J.psi(out.cos, b["labels"] != -100), tr.cfg.jreg)
        (ce / n + (0.5 / len(batches)) * reg).backward()
        regs.append(float(reg.detach()))
        ces.append(float(ce.detach()))
    got, want = _grads(tr.llama), _grads(ref)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert fb["jreg_loss"] == pytest.approx(sum(regs) / 2, rel=1e-6) and fb["jreg_loss"] > 0
    assert fb["loss"] == pytest.approx(sum(ces) / n + 0.5 * sum(regs) / 2, rel=1e-6)
    # and the gradient really differs from plain LM
    ref2 = copy.deepcopy(ref)
    ref2.zero_grad()
    for b in batches:
        logits = ref2(b["input_ids"]).logits
        (F.cross_entropy(logits.float().flatten(0, 1), b["labels"].flatten(), ignore_index=-100, reduction="sum") / n).backward()
    assert not all(torch.equal(got[k], p.grad) for k, p in ref2.named_parameters())


def test_paper_penalty_on_the_post_norm_stream_in_the_trainer(tmp_path):
    """jreg=paper (stream post_norm): the trainer's gradient is that of CE/n + w * mean(1 - cos(h_{L-1},
    final_norm(h_L))) written out by hand; the logged Psi stays the pre-norm one."""
    tr = _trainer(tmp_path, "jreg=paper", "jreg.weight=0.5")
    assert tr.cfg.jreg.stream == "post_norm"
    with torch.no_grad():  # a non-uniform final-norm gain, so the two streams differ
        tr.llama.norm.weight.copy_(torch.linspace(0.5, 2.0, tr.llama.norm.weight.numel()))
    ref = copy.deepcopy(tr.llama)
    batches = _batches(2, 1, ignore=[7])
    fb = tr.forward_backward(batches, weight=0.5, want_stats=True)

    b = batches[0]
    mask = b["labels"] != -100
    out = ref(b["input_ids"], labels=b["labels"], return_hidden=True)
    h_prev, h_last = out.hidden[-2], out.hidden[-1]
    reg = (1 - F.cosine_similarity(h_prev, ref.norm(h_last), dim=-1))[mask].mean()
    (out.loss / int(mask.sum()) + 0.5 * reg).backward()
    got, want = _grads(tr.llama), _grads(ref)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-7)
    reg = float(reg.detach())
    assert fb["jreg_loss"] == pytest.approx(reg, rel=1e-5)
    pre = (1 - F.cosine_similarity(h_prev, h_last, dim=-1))[mask].mean().detach() / 2
    assert fb["psi"][-1] == pytest.approx(float(pre), rel=1e-5)
    assert abs(fb["psi"][-1] - reg / 2) > 1e-4  # the penalty did not read the logged (pre-norm) Psi_L


def test_accumulation_normalises_by_all_target_tokens(tmp_path):
    """2 micro-batches of 2 with uneven padding == 1 micro-batch of 4 (the mean over all target tokens, not the
    mean of the per-micro-batch means)."""
    small = _trainer(tmp_path / "a", "jreg=off", "trainer.global_batch_size=4")
    assert small.accum == 2
    big = _trainer(tmp_path / "b", "jreg=off", "data.micro_batch_size=4")
    big.llama.load_state_dict(small.llama.state_dict())
    batches = _batches(2, 2, ignore=[60, 1])
    joined = [{k: torch.cat([b[k] for b in batches]) for k in ("input_ids", "labels")}]
    fa = small.forward_backward(batches, 0.0, False)
    fb = big.forward_backward(joined, 0.0, False)
    assert fa["lm_loss"] == pytest.approx(fb["lm_loss"], rel=1e-6)
    ga, gb = _grads(small.llama), _grads(big.llama)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7)
    # the naive mean of means would differ here
    means = [F.cross_entropy(small.llama(b["input_ids"]).logits.flatten(0, 1), b["labels"].flatten(),
                             ignore_index=-100).item() for b in batches]
    assert abs(sum(means) / 2 - fa["lm_loss"]) > 1e-3


def test_param_groups_skip_norms_and_embeddings(tmp_path):
    tr = _trainer(tmp_path)
    groups = param_groups(tr.llama, tr.cfg.optim)
    decay, no_decay = groups
    def ids(g):
        return {id(p) for p in g["params"]}

    assert decay["weight_decay"] == tr.cfg.optim.weight_decay and no_decay["weight_decay"] == 0.0
    assert id(tr.llama.tok_embeddings.weight) in ids(no_decay)  # also the tied head
    assert all(p.ndim == 1 or p is tr.llama.tok_embeddings.weight for p in no_decay["params"])
    assert id(tr.llama.layers[0].attn.wq.weight) in ids(decay)
    n_params = len({id(p) for p in tr.llama.parameters()})
    assert len(ids(decay) | ids(no_decay)) == n_params
    tr.cfg.optim.decay_norms_and_embeddings = True
    assert len(param_groups(tr.llama, tr.cfg.optim)) == 1


def test_schedules():
    cos = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cos, 100) == pytest.approx(0.1)
    assert lr_factor(9, cos, 100) == pytest.approx(1.0)
    assert lr_factor(10, cos, 100) == pytest.approx(1.0)
    assert lr_factor(55, cos, 100) == pytest.approx(0.55)
    assert lr_factor(100, cos, 100) == pytest.approx(0.1)
    wsd = ScheduleConfig(name="wsd", warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_factor(50, wsd, 100) == 1.0 and lr_factor(79, wsd, 100) == 1.0
    assert lr_factor(89, wsd, 100) == pytest.approx(0.5) and lr_factor(99, wsd, 100) == pytest.approx(0.0)
    const = ScheduleConfig(name="constant", warmup_steps=0)
    assert all(lr_factor(s, const, 10) == 1.0 for s in range(12))
    # Stateful round trip
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = Schedule(opt, cos, base_lr=2.0, max_steps=100)
    for _ in range(30):
        s.step()
    s2 = Schedule(opt, cos, base_lr=2.0, max_steps=100)
    s2.load_state_dict(s.state_dict())
    assert opt.param_groups[0]["lr"] == s.lr() == 2.0 * lr_factor(30, cos, 100)


def test_flops_per_token_counts_the_head_and_attention(tmp_path):
    tr = _trainer(tmp_path)
    c = tr.llama.cfg
    per_layer = c.dim * (c.n_heads + 2 * c.n_kv_heads) * c.hd + c.n_heads * c.hd * c.dim + 3 * c.dim * c.ffn_dim
    n_matmul = c.n_layers * per_layer + c.vocab_size * c.dim  # the (tied) LM head is a matmul
    assert flops_per_token(tr.llama, 32) == 6 * n_matmul + 12 * c.n_layers * 32 * c.n_heads * c.hd
    assert math.isfinite(tr.flops_per_token) and tr.peak_flops is None  # CPU: MFU not reported
