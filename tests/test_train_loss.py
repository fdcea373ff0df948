"""The loss of one optimizer step (``train/step.py``'s ``forward_backward``, called without a Trainer): JREG
off == plain LM bit for bit, token-count normalisation across micro-batches, the JREG weighting, the named sums;
the optimizer's parameter groups, the schedules, the FLOP count."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llama_jreg import UserError
from llama_jreg import jreg as J
from llama_jreg.config import ScheduleConfig, TrainConfig, load_config
from llama_jreg.model import Llama
from llama_jreg.train.metrics import device_peak_flops, flops_per_token
from llama_jreg.train.optim import Schedule, lr_factor, param_groups
from llama_jreg.train.step import World, forward_backward, micro_batches_per_rank
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


def _setup(tmp_path, *extra) -> tuple[TrainConfig, Llama]:
    """The tiny test config and a freshly initialised model of it (no Trainer, no data, no run dir)."""
    cfg = load_config(tiny(tmp_path, "trainer.max_steps=4", *extra))
    torch.manual_seed(cfg.seed)
    return cfg, Llama(cfg.model)


def _step(model, batches, cfg, weight: float, with_psi: bool, **kw):
    """``forward_backward`` on one CPU process, then the step's floats."""
    return forward_backward(model, batches, cfg, World(), weight=weight, with_psi=with_psi, **kw).losses(cfg)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("jump_step", [False, True])
def test_jreg_off_is_plain_lm_bit_for_bit(tmp_path, jump_step):
    cfg, model = _setup(tmp_path, "jreg=off", "optim.z_loss=0")  # z-loss off too: no term, no extra computation
    ref = copy.deepcopy(model)
    batches = _batches(0, 3, ignore=[5, 0, 17])
    fb = _step(model, batches, cfg, weight=J.weight_at(cfg.jreg, 0), with_psi=jump_step)
    assert (fb.psi is not None) == jump_step  # the jump row still gets Psi, detached

    # plain LM training, written out by hand (the model's LM loss; tests/test_loss.py checks that against
    # F.cross_entropy over materialised logits)
    n = sum(int((b["labels"] != -100).sum()) for b in batches)
    ce_total = 0.0
    for b in batches:
        ce = ref(b["input_ids"], labels=b["labels"]).loss
        (ce / n).backward()
        ce_total += float(ce.detach().double())
    got, want = _grads(model), _grads(ref)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert fb.loss == fb.lm_loss and fb.jreg_loss == 0.0 and fb.z_loss == 0.0
    assert fb.lm_loss == pytest.approx(ce_total / n, rel=1e-12)


def test_jreg_term_is_the_mean_over_micro_batches(tmp_path):
    cfg, model = _setup(tmp_path, "jreg=jump", "jreg.weight=0.5")
    ref = copy.deepcopy(model)
    batches = _batches(1, 2, ignore=[3, 40])
    fb = _step(model, batches, cfg, weight=0.5, with_psi=True)

    n = sum(int((b["labels"] != -100).sum()) for b in batches)
    regs, ces = [], []
    for b in batches:
        out = ref(b["input_ids"], stats="grad", labels=b["labels"])
        ce = out.loss
        reg = J.regularizer(J.psi(out.cos, b["labels"] != -100), cfg.jreg)
        (ce / n + (0.5 / len(batches)) * reg).backward()
        regs.append(float(reg.detach()))
        ces.append(float(ce.detach()))
    got, want = _grads(model), _grads(ref)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert fb.jreg_loss == pytest.approx(sum(regs) / 2, rel=1e-6) and fb.jreg_loss > 0
    assert fb.loss == pytest.approx(sum(ces) / n + 0.5 * sum(regs) / 2, rel=1e-6)
    # and the gradient really differs from plain LM
    ref2 = copy.deepcopy(ref)
    ref2.zero_grad()
    for b in batches:
        logits = ref2(b["input_ids"]).logits
        (F.cross_entropy(logits.float().flatten(0, 1), b["labels"].flatten(), ignore_index=-100, reduction="sum") / n).backward()
    assert not all(torch.equal(got[k], p.grad) for k, p in ref2.named_parameters())


def test_paper_penalty_on_the_post_norm_stream_in_the_step(tmp_path):
    """jreg=paper (stream post_norm): the step's gradient is that of CE/n + w * mean(1 - cos(h_{L-1},
    final_norm(h_L))) written out by hand; the logged Psi stays the pre-norm one."""
    cfg, model = _setup(tmp_path, "jreg=paper", "jreg.weight=0.5")
    assert cfg.jreg.stream == "post_norm"
    with torch.no_grad():  # a non-uniform final-norm gain, so the two streams differ
        model.norm.weight.copy_(torch.linspace(0.5, 2.0, model.norm.weight.numel()))
    ref = copy.deepcopy(model)
    batches = _batches(2, 1, ignore=[7])
    fb = _step(model, batches, cfg, weight=0.5, with_psi=True)

    b = batches[0]
    mask = b["labels"] != -100
    out = ref(b["input_ids"], labels=b["labels"], return_hidden=True)
    h_prev, h_last = out.hidden[-2], out.hidden[-1]
    reg = (1 - F.cosine_similarity(h_prev, ref.norm(h_last), dim=-1))[mask].mean()
    (out.loss / int(mask.sum()) + 0.5 * reg).backward()
    got, want = _grads(model), _grads(ref)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-7)
    reg = float(reg.detach())
    assert fb.jreg_loss == pytest.approx(reg, rel=1e-5)
    pre = (1 - F.cosine_similarity(h_prev, h_last, dim=-1))[mask].mean().detach() / 2
    assert fb.psi[-1] == pytest.approx(float(pre), rel=1e-5)
    assert abs(fb.psi[-1] - reg / 2) > 1e-4  # the penalty did not read the logged (pre-norm) Psi_L


@pytest.mark.parametrize("z_loss", [0.0, 0.05])
def test_accumulation_normalises_by_all_target_tokens(tmp_path, z_loss):
    """2 micro-batches of 2 with uneven padding == 1 micro-batch of 4 (the mean over all target tokens, not the
    mean of the per-micro-batch means), with and without the z-loss term."""
    cfg, small = _setup(tmp_path, "jreg=off", f"optim.z_loss={z_loss}")
    big = copy.deepcopy(small)
    batches = _batches(2, 2, ignore=[60, 1])
    joined = [{k: torch.cat([b[k] for b in batches]) for k in ("input_ids", "labels")}]
    sa = forward_backward(small, batches, cfg, World(), weight=0.0, with_psi=False)
    sb = forward_backward(big, joined, cfg, World(), weight=0.0, with_psi=False)
    assert sa.n_target == sb.n_target == 2 * 2 * 32 - 61 and (sa.micro_batches, sb.micro_batches) == (2, 1)
    fa, fb = sa.losses(cfg), sb.losses(cfg)
    assert fa.lm_loss == pytest.approx(fb.lm_loss, rel=1e-6)
    assert fa.z_loss == pytest.approx(fb.z_loss, rel=1e-6) and (fa.z_loss > 0) == (z_loss > 0)
    ga, gb = _grads(small), _grads(big)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7)
    # the naive mean of means would differ here
    means = [F.cross_entropy(small(b["input_ids"]).logits.flatten(0, 1), b["labels"].flatten(),
                             ignore_index=-100).item() for b in batches]
    assert abs(sum(means) / 2 - fa.lm_loss) > 1e-3


def test_micro_batches_per_rank(tmp_path):
    cfg = load_config(tiny(tmp_path, "trainer.global_batch_size=8"))  # micro-batches of 2 sequences
    assert micro_batches_per_rank(cfg, 1) == 4 and micro_batches_per_rank(cfg, 2) == 2
    with pytest.raises(UserError, match="not a multiple of data.micro_batch_size \\* world size = 2 \\* 3"):
        micro_batches_per_rank(cfg, 3)
    assert micro_batches_per_rank(load_config(tiny(tmp_path)), 4) == 1  # default: one micro-batch per rank


def test_step_sums_are_named_and_stack_in_one_order(tmp_path):
    """The sums ``forward_backward`` returns: each field what its name says (checked against the model run by
    hand), one flat vector for the all-reduce and back, and the step's floats derived from them."""
    cfg, model = _setup(tmp_path, "jreg=jump", "jreg.weight=0.5", "optim.z_loss=0.01")
    ref = copy.deepcopy(model)
    batches = _batches(3, 2, ignore=[9, 30])
    sums = forward_backward(model, batches, cfg, World(), weight=0.25, with_psi=True)
    L = cfg.model.n_layers
    masks = [b["labels"] != -100 for b in batches]
    n = sum(int(m.sum()) for m in masks)
    with torch.no_grad():
        outs = [ref(b["input_ids"], stats="grad", labels=b["labels"], z_loss=0.01) for b in batches]
        psis = [J.psi(o.cos, m) for o, m in zip(outs, masks)]
        regs = [J.regularizer(p, cfg.jreg) for p in psis]
    assert sums.n_target == n and sums.micro_batches == 2 and sums.weight == 0.25 and sums.with_psi
    assert float(sums.ce) == pytest.approx(sum(float(o.ce) for o in outs), rel=1e-5)
    assert float(sums.lse2) == pytest.approx(sum(float(o.lse_sq) for o in outs), rel=1e-5)
    assert float(sums.jreg) == pytest.approx(sum(float(r) for r in regs), rel=1e-5)
    assert float(sums.psi_tokens) == n and sums.psi.shape == (L,)
    want_psi = sum(p.double() * int(m.sum()) for p, m in zip(psis, masks))
    torch.testing.assert_close(sums.psi, want_psi, rtol=1e-5, atol=1e-8)

    flat = sums.flatten()
    assert flat.dtype == torch.float64 and flat.shape == (3 + L + 2,)
    back = sums.unflatten(flat.tolist())  # host floats, the same names
    assert back.ce == float(sums.ce) and back.psi == sums.psi.tolist() and back.lse2 == float(sums.lse2)
    assert back.psi_post_norm == float(sums.psi_post_norm) and back.n_target == sums.n_target

    out = sums.losses(cfg, grad_norm=torch.tensor(3.5))
    assert out.lm_loss == pytest.approx(back.ce / n, rel=1e-12)
    assert out.z_loss == pytest.approx(0.01 * back.lse2 / n, rel=1e-12)
    assert out.jreg_loss == pytest.approx(back.jreg / 2, rel=1e-12)
    assert out.loss == pytest.approx(out.lm_loss + out.z_loss + 0.25 * out.jreg_loss, rel=1e-12)
    assert out.psi == pytest.approx([x / n for x in back.psi], rel=1e-12) and out.grad_norm == 3.5
    assert out.jreg_weight == 0.25 and not out.stop


def test_stop_and_injected_nan_travel_with_the_sums(tmp_path):
    """A stop request comes back as the step's ``stop``; an injected NaN makes the loss and the gradients NaN
    while the logged LM loss stays the real one."""
    cfg, model = _setup(tmp_path, "jreg=off")
    batches = _batches(4, 1)
    clean = copy.deepcopy(model)
    want = _step(clean, batches, cfg, weight=0.0, with_psi=False)
    assert not want.stop and want.psi is None
    got = _step(model, batches, cfg, weight=0.0, with_psi=False, stop=True, nan=True)
    assert got.stop and got.lm_loss == want.lm_loss and got.loss != got.loss
    assert all(torch.isnan(p.grad).all() for p in model.parameters())


def test_param_groups_skip_norms_and_embeddings(tmp_path):
    cfg, model = _setup(tmp_path)
    groups = param_groups(model, cfg.optim)
    decay, no_decay = groups
    def ids(g):
        return {id(p) for p in g["params"]}

    assert decay["weight_decay"] == cfg.optim.weight_decay and no_decay["weight_decay"] == 0.0
    assert id(model.tok_embeddings.weight) in ids(no_decay)  # also the tied head
    assert all(p.ndim == 1 or p is model.tok_embeddings.weight for p in no_decay["params"])
    assert id(model.layers[0].attn.wq.weight) in ids(decay)
    n_params = len({id(p) for p in model.parameters()})
    assert len(ids(decay) | ids(no_decay)) == n_params
    cfg.optim.decay_norms_and_embeddings = True
    assert len(param_groups(model, cfg.optim)) == 1


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
    _, model = _setup(tmp_path)
    c = model.cfg
    per_layer = c.dim * (c.n_heads + 2 * c.n_kv_heads) * c.hd + c.n_heads * c.hd * c.dim + 3 * c.dim * c.ffn_dim
    n_matmul = c.n_layers * per_layer + c.vocab_size * c.dim  # the (tied) LM head is a matmul
    assert flops_per_token(model, 32) == 6 * n_matmul + 12 * c.n_layers * 32 * c.n_heads * c.hd
    assert device_peak_flops(torch.device("cpu"), "fp32") is None  # CPU: MFU not reported
    assert device_peak_flops(torch.device("cpu"), "bf16") is None
