"""Document masking (``data.document_mask``): in a packed row, every token's loss, hidden states and jump
cosines are those of its document run alone; the document ids come from EOS; the flash-attn varlen offsets;
the data bundle and a training run (with resume) carry the ids."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from llama_jreg import attention as A
from llama_jreg.data import build_data
from llama_jreg.data.loader import document_ids
from llama_jreg.model import Llama, ModelConfig
from tests.test_data import local_cfg, make_docs, write_jsonl
from tests.test_train_helpers import rows, run_inprocess, tiny

EOS = 2
V = 97


def _model(backend: str = "sdpa") -> Llama:
    torch.manual_seed(0)
    cfg = ModelConfig(name="custom", vocab_size=V, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      max_seq_len=64, attn_backend=backend)
    return Llama(cfg).eval()


def _packed_row(lengths=(6, 11, 9, 6), seed=0):
    """One row of 32 tokens: documents of these lengths, each but the last ending with EOS (the last one is
    cut by the window, as in real packing); labels are the next tokens of the same stream."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(3, V, (sum(lengths) + 1,), generator=g)
    ends = torch.tensor(lengths).cumsum(0) - 1
    stream[ends[:-1]] = EOS
    return stream[:-1].unsqueeze(0), stream[1:].unsqueeze(0), [(int(e) - n + 1, int(e) + 1) for n, e in
                                                                  zip(lengths, ends)]


def test_document_ids_and_positions_from_eos():
    x = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, EOS, 4],
                      [EOS, 1, 3, 3, 3, 3, 3, EOS, 1]])  # an empty document is one EOS; BOS-led documents too
    doc, pos = document_ids(x, EOS)
    assert doc.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1, 1, 2]]
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 0], [0, 0, 1, 2, 3, 4, 5, 6, 0]]


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("restart", [True, False], ids=["positions-restart", "positions-absolute"])
def test_packed_row_equals_its_documents_run_alone(backend, restart):
    """Per-token losses, per-layer cosines (the jump statistics) and the post-norm cosine of a packed row with
    document masking equal those of each document run alone (fp32, <= 1e-5). RoPE is relative, so this holds
    whether positions restart per document or not; without the mask it does not hold."""
    model = _model(backend)
    x, y, spans = _packed_row()
    doc, pos = document_ids(x, EOS)
    with torch.no_grad():
        packed = model(x, stats=True, doc_ids=doc, position_ids=pos if restart else None)
        plain = model(x, stats=True)
        loss = F.cross_entropy(packed.logits[0], y[0], reduction="none")
        loss_plain = F.cross_entropy(plain.logits[0], y[0], reduction="none")
        for i, (a, b) in enumerate(spans):
            alone = model(x[:, a:b], stats=True)
            loss_alone = F.cross_entropy(alone.logits[0], y[0, a:b], reduction="none")
            assert (loss[a:b] - loss_alone).abs().max() <= 1e-5
            assert (packed.cos[:, 0, a:b] - alone.cos[:, 0]).abs().max() <= 1e-5
            assert (packed.cos_post_norm[0, a:b] - alone.cos_post_norm[0]).abs().max() <= 1e-5
            if i > 0:  # the control: unmasked, later documents see the earlier ones
                assert (loss_plain[a:b] - loss_alone).abs().max() > 1e-3
        # the fused LM loss (the training path) sees the same masking
        fused = model(x, labels=y, doc_ids=doc, position_ids=pos if restart else None).loss
        torch.testing.assert_close(fused, loss.sum(), rtol=1e-5, atol=1e-5)


def test_gradients_of_a_packed_row_equal_the_sum_over_its_documents():
    a_model = _model("sdpa").train()
    b_model = copy.deepcopy(a_model)
    x, y, spans = _packed_row(seed=1)
    doc, pos = document_ids(x, EOS)
    a_model(x, labels=y, doc_ids=doc, position_ids=pos, stats="grad").loss.backward()
    sum(b_model(x[:, a:b], labels=y[:, a:b]).loss for a, b in spans).backward()
    for (name, pa), pb in zip(a_model.named_parameters(), b_model.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_bf16_autocast_with_documents_follows_fp32(backend):
    """Under bf16 autocast the mask is built in bf16 (the attention's compute dtype) and the loss stays close
    to fp32's."""
    model = _model(backend)
    x, y, _ = _packed_row(seed=3)
    doc, pos = document_ids(x, EOS)
    with torch.no_grad():
        want = model(x, labels=y, doc_ids=doc, position_ids=pos).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x, labels=y, doc_ids=doc, position_ids=pos).loss
    assert torch.isfinite(got) and abs(float(got) / float(want) - 1) < 2e-2


def test_activation_checkpointing_keeps_the_mask():
    plain = _model("sdpa").train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint_blocks = True  # what trainer.activation_checkpointing=true sets
    x, y, _ = _packed_row(seed=2)
    doc, pos = document_ids(x, EOS)
    losses = []
    for m in (plain, ckpt):
        out = m(x, labels=y, doc_ids=doc, position_ids=pos, stats="grad")
        (out.loss + out.cos.sum()).backward()
        losses.append(out.loss.detach())
    assert torch.equal(losses[0], losses[1])
    for (name, pa), pb in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_varlen_offsets_for_flash_attn():
    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    cu, longest = A.varlen_offsets(doc)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 2, 5, 6, 7, 12] and longest == 5


def test_flash_varlen_path_computes_what_the_dense_mask_does(monkeypatch):
    """The flash path's offsets and (B, H, T, D) <-> (B*T, H, D) reshapes, on CPU: flash-attn is replaced by a
    plain causal SDPA per varlen sequence (flash_attn_varlen_func's documented semantics); the GQA heads are
    expanded for it. flash-attn itself only runs on CUDA (not available to these tests)."""

    def varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, causal):
        assert torch.equal(cu_q, cu_k) and causal and max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
        out = torch.empty_like(q)
        rep = q.shape[1] // k.shape[1]
        for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))
            ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
            out[s:e] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1)
        return out

    monkeypatch.setattr(A, "_flash_attn_varlen_func", varlen_reference)
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 12, 8, generator=g), torch.randn(2, 2, 12, 8, generator=g), torch.randn(2, 2, 12, 8,
                                                                                                      generator=g)
    doc = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12])
    got = A._flash_varlen(q, k, v, A.document_mask(doc, "flash"))
    want = A._sdpa(q, k, v, A.document_mask(doc, "sdpa").dense)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1:], A._sdpa(q[1:], k[1:], v[1:]), rtol=1e-5, atol=1e-6)  # one document


def test_bundle_batches_carry_document_ids(tmp_path):
    docs = make_docs(n=30, words=24, seed=1)  # short documents: several per 32-token window
    cfg = local_cfg([write_jsonl(tmp_path / "c.jsonl", docs)], tmp_path / "cache", document_mask=True,
                    document_positions=True, val_sequences=2)
    bundle = build_data(cfg, seed=0, model_vocab=512)
    eos = bundle.tokenizer.eos_id
    for b in [next(bundle.train), *bundle.val_batches(2)]:
        doc, pos = document_ids(b["input_ids"], eos)
        assert torch.equal(b["doc_ids"], doc) and torch.equal(b["position_ids"], pos)
        assert int(doc.max()) >= 1  # rows do hold several documents
    plain = build_data(local_cfg(cfg.files, tmp_path / "cache", val_sequences=2), seed=0, model_vocab=512)
    assert "doc_ids" not in next(plain.train)
    assert plain.train.state_dict() == bundle.train.state_dict()  # the loader state is the plain loader's


def _run_args(tmp_path) -> list[str]:
    corpus = write_jsonl(tmp_path / "c.jsonl", make_docs(n=40, words=24, seed=2))
    return ["data=local", f"data.files=[{corpus}]", "model.vocab_size=384", "data.vocab_size=384",
            "data.tokenizer_train_chars=100000",
            "data.val_sequences=2", "data.val_fraction=0.1", f"data.cache_dir={tmp_path / 'cache'}",
            "data.document_mask=true", "data.document_positions=true", "trainer.ckpt_every=2"]


def test_the_trainer_step_masks_documents(tmp_path):
    """The trainer hands the batches' document ids and positions to the model: the step's LM loss is the
    masked model's, not the unmasked one."""
    from llama_jreg.config import load_config
    from llama_jreg.train.step import forward_backward
    from llama_jreg.train.trainer import Trainer

    tr = Trainer(load_config(tiny(tmp_path / "r", *_run_args(tmp_path), "jreg=off", "trainer.max_steps=2")))
    ref = copy.deepcopy(tr.llama)
    batches = tr._next_batches()
    fb = forward_backward(tr.model, batches, tr.cfg, tr.step_world, weight=0.0, with_psi=True).losses(tr.cfg)
    n = sum(int((b["labels"] != -100).sum()) for b in batches)
    with torch.no_grad():
        masked = sum(float(ref(b["input_ids"], labels=b["labels"], doc_ids=b["doc_ids"],
                               position_ids=b["position_ids"]).loss) for b in batches) / n
        unmasked = sum(float(ref(b["input_ids"], labels=b["labels"]).loss) for b in batches) / n
    assert fb.lm_loss == pytest.approx(masked, rel=1e-6) and abs(masked - unmasked) > 1e-4
    tr.close()


@pytest.mark.slow
def test_a_run_with_document_mask_trains_and_resumes(tmp_path):
    args = _run_args(tmp_path)
    ref = tmp_path / "ref"
    run_inprocess(tiny(ref, *args, "trainer.max_steps=4"))
    run = tmp_path / "run"
    run_inprocess(tiny(run, *args, "trainer.max_steps=4", "trainer.steps_per_run=2"))
    s = run_inprocess(tiny(run, *args, "trainer.max_steps=4", "resume=auto"))
    assert s["steps"] == 4 and s["resumed_from"].endswith("step_00000002")
    want = {r["step"]: r["loss"] for r in rows(ref)}
    got = {r["step"]: r["loss"] for r in rows(run)}
    assert want.keys() == got.keys() == {1, 2, 3, 4} and all(got[k] == want[k] for k in want)
    assert json.loads(json.dumps(s))["val_loss"] > 0
