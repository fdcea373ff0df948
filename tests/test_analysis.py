"""Analysis and interop commands end to end on tiny checkpoints (our format), plus real SmolLM2-135M (slow)."""

import itertools
import json
import math
import os

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import save_file

from llama_jreg import UserError
from llama_jreg.cli import main as cli
from llama_jreg.config import load_config, to_yaml
from llama_jreg.jreg import psi, zeta_L
from llama_jreg.model import Llama

# A few hundred words of ordinary English (public-domain style prose), enough for a small tokenizer
CORPUS = """\
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness,
it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of
Darkness, it was the spring of hope, it was the winter of despair, we had everything before us, we had nothing
before us, we were all going direct to Heaven, we were all going direct the other way.
There were a king with a large jaw and a queen with a plain face, on the throne of England; there were a king
with a large jaw and a queen with a fair face, on the throne of France. In both countries it was clearer than
crystal to the lords of the State preserves of loaves and fishes, that things in general were settled for ever.
In the year 1775, spiritual revelations were conceded to England at that favoured period, as at this.
The numbers 12, 345 and 6789 appear here; so do tabs\tand  double  spaces, and unicode: café, naïve, 日本.
"""


def _text(tmp_path, repeat=6):
    p = tmp_path / "text.txt"
    p.write_text(CORPUS * repeat)
    return p


def _train_sp(tmp_path, vocab=320):
    prefix = str(tmp_path / "sp")
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter([line for line in CORPUS.splitlines() if line.strip()] * 3), model_prefix=prefix,
        model_type="bpe", vocab_size=vocab, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
        minloglevel=2, num_threads=1,
    )
    return prefix + ".model"


def make_checkpoint(run_dir, step, *, tie=True, tokenizer=True, overrides=(), seed=0, tmp=None):
    """One of our checkpoints, exactly as the trainer writes it: checkpoints/step_XXXXXXXX/{model.safetensors,
    config.yaml, tokenizer.model}."""
    cfg = load_config(["model=tiny", "model.vocab_size=320", "model.dim=32", "model.n_layers=3", "model.n_heads=4",
                       "model.n_kv_heads=2", "model.ffn_dim=64", "model.max_seq_len=64",
                       f"model.tie_embeddings={str(tie).lower()}", "data.seq_len=32", f"run.dir={run_dir}",
                       *overrides])
    torch.manual_seed(seed)
    model = Llama(cfg.model)
    with torch.no_grad():  # bigger weights than init so layers differ visibly
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            else:  # norm gains, so the final norm changes directions
                p.uniform_(0.5, 1.5)
    d = run_dir / "checkpoints" / f"step_{step:08d}"
    d.mkdir(parents=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if tie:
        sd.pop("output.weight")  # a tied head is stored once
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.yaml").write_text(to_yaml(cfg))
    if tokenizer:
        import shutil

        shutil.copyfile(_train_sp(tmp or run_dir), d / "tokenizer.model")
    return d, model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    run = tmp / "run"
    make_checkpoint(run, 10, seed=1, tmp=tmp)
    d, model = make_checkpoint(run, 20, seed=2, tmp=tmp)
    return run, d, model


def test_load_model_checkpoint_and_run_dir(ckpt, tmp_path):
    from llama_jreg.load import load_model

    run, d, model = ckpt
    for path in (d, run):  # a run dir resolves to its latest checkpoint
        loaded, tok, info = load_model(path)
        assert info["kind"] == "checkpoint" and info["step"] == 20
        assert loaded.output.weight is loaded.tok_embeddings.weight
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
        assert tok is not None and tok.vocab_size == 320
    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="not a .gguf"):
        load_model(tmp_path / "x.txt")
    with pytest.raises(UserError, match="is not a model"):
        load_model(tmp_path)


def test_untied_checkpoint_without_tokenizer(tmp_path):
    from llama_jreg.load import load_model

    d, model = make_checkpoint(tmp_path / "run", 5, tie=False, tokenizer=False)
    loaded, tok, _ = load_model(d)
    assert tok is None and loaded.output.weight is not loaded.tok_embeddings.weight
    x = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, loaded(x).logits)
    text = _text(tmp_path)
    assert cli(["jump", str(d), "--text", str(text)]) == 2  # no tokenizer: one clear error


def test_jump_command(ckpt, tmp_path, capsys):
    _, d, model = ckpt
    text = _text(tmp_path)
    out_json, out_png = tmp_path / "j.json", tmp_path / "j.png"
    rc = cli(["jump", str(d), "--text", str(text), "--seq-len", "32", "--num-seqs", "3", "--json", str(out_json),
              "--plot", str(out_png)])
    assert rc == 0
    res = json.loads(out_json.read_text())
    assert res["windows"] == 3 and res["seq_len"] == 32 and res["tokens"] == 96 and len(res["psi"]) == 3
    assert out_png.stat().st_size > 1000
    # recompute independently from the returned hidden states (h_0..h_L) on the same windows
    from llama_jreg.analysis.jump import make_windows
    from llama_jreg.load import TextTokenizer

    tok = TextTokenizer.from_sentencepiece(d / "tokenizer.model")
    w = make_windows(tok.encode(text.read_text()), 32, 3)
    with torch.no_grad():
        out = model.eval()(w, return_hidden=True)
    cos = torch.stack([torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
                       for a, b in zip(out.hidden[:-1], out.hidden[1:])])
    ref = psi(cos).double()
    assert torch.allclose(torch.tensor(res["psi"], dtype=torch.float64), ref, atol=1e-5)
    assert res["zeta_L"] == pytest.approx(zeta_L(ref).item(), abs=1e-3)
    post = torch.nn.functional.cosine_similarity(out.hidden[-2], model.norm(out.hidden[-1]), dim=-1)
    assert res["psi_post_norm_L"] == pytest.approx(((1 - post) / 2).mean().item(), abs=1e-5)
    # per window: the same readings window by window (for intervals over windows)
    pw = res["per_window"]
    assert len(pw["psi"]) == 3 and len(pw["psi"][0]) == 3
    assert torch.allclose(torch.tensor(pw["psi"], dtype=torch.float64), ((1 - cos) / 2).mean(-1).T, atol=1e-5)
    assert pw["psi_post_norm_L"] == pytest.approx(((1 - post) / 2).mean(-1).tolist(), abs=1e-5)
    assert "zeta_L" in capsys.readouterr().out


def test_command_errors(ckpt, tmp_path, capsys):
    _, d, _ = ckpt
    text = _text(tmp_path)
    assert cli(["jump", str(tmp_path / "missing"), "--text", str(text)]) == 2
    assert cli(["jump", str(d), "--text", str(tmp_path / "missing.txt")]) == 2
    assert cli(["jump", str(d), "--text", str(text), "--seq-len", "1000"]) == 2
    assert cli(["ffn-concepts", str(d), "--text", str(text), "--layer", "9"]) == 2
    assert cli(["plot", str(tmp_path)]) == 2
    assert cli(["eval", str(d), "model.dim=3"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 6, err
    assert "no such file" in lines[0] and "exceeds the model context" in lines[2] and "1..3" in lines[3]


def test_plot_command(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for step in range(0, 200, 10):
        rows.append({"step": step, "tokens": step * 64, "loss": 5.0 - step / 100, "lm_loss": 5.0 - step / 100,
                     "jreg_loss": 0.01, "lr": 1e-3})
        if step % 20 == 0:
            p = [0.1 + 0.01 * i for i in range(4)] + [0.3 + step / 1000]
            rows.append({"step": step, "psi": p, "zeta_L": 100 * max(0, p[-1] - p[-2]), "val_zeta_L": 20.0,
                         "psi_post_norm_L": p[-1] + 0.1})
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"step": 200, "psi": [0.1'  # a torn last line
    (run / "metrics.jsonl").write_text(text)
    assert cli(["plot", str(run), "--steps", "40,100"]) == 0
    for name in ("zeta_L.png", "psi_layers.png", "loss.png"):
        assert (run / "plots" / name).stat().st_size > 1000
    from llama_jreg.plots import plot_run

    paths = plot_run(run)
    assert [p.name for p in paths] == ["zeta_L.png", "psi_layers.png", "loss.png"]
    assert cli(["plot", str(run), "--steps", "a,b"]) == 2


def test_eval_on_text(ckpt, tmp_path):
    _, d, model = ckpt
    text = _text(tmp_path)
    out = tmp_path / "eval.json"
    assert cli(["eval", str(d), "--text", str(text), "--seq-len", "32", "--num-seqs", "4", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    L = 3
    assert len(res["lens"]) == L + 1 and res["tokens"] == 4 * 32
    assert res["lens"][-1]["top1_agreement_with_final"] == 1.0
    assert res["lens"][-1]["loss"] == pytest.approx(res["loss"])
    assert res["perplexity"] == pytest.approx(math.exp(res["loss"]), rel=1e-6)
    hist = res["saturation"]["histogram"]
    assert sum(hist) == pytest.approx(1.0) and 0 <= res["saturation"]["early_exit_blocks_saved"] <= 1
    # the loss matches a plain cross-entropy on the same windows
    from llama_jreg.analysis.jump import make_windows
    from llama_jreg.load import TextTokenizer

    w = make_windows(TextTokenizer.from_sentencepiece(d / "tokenizer.model").encode(text.read_text()), 33, 4)
    with torch.no_grad():
        logits = model.eval()(w[:, :-1]).logits
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten()).item()
    assert res["loss"] == pytest.approx(ce, rel=1e-5)
    # saturation from the lens agreement: tokens saturating at the last layer disagree at L-1
    assert hist[-1] == pytest.approx(1.0 - res["lens"][-2]["top1_agreement_with_final"], abs=1e-6)


def test_eval_jump_readings_and_unit_gain_lens(ckpt, tmp_path):
    """`eval --unit-gain-lens`: the jump readings equal `jump`'s on the same windows; the unit-gain lens equals
    h_l -> x / rms(x) -> LM head computed here by hand; the saving over exits at h <= L-2 is the histogram's."""
    _, d, model = ckpt
    text = _text(tmp_path)
    out = tmp_path / "eval.json"
    assert cli(["eval", str(d), "--text", str(text), "--seq-len", "32", "--num-seqs", "4", "--unit-gain-lens",
                "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    from llama_jreg.analysis.jump import make_windows, measure_jump
    from llama_jreg.load import TextTokenizer

    w = make_windows(TextTokenizer.from_sentencepiece(d / "tokenizer.model").encode(text.read_text()), 33, 4)
    jump, j = measure_jump(model, w[:, :-1]), res["jump"]  # `llama-jreg jump`'s measurement of the same inputs
    assert j["psi"] == pytest.approx(jump["psi"], abs=1e-6)
    assert j["psi_post_norm_L"] == pytest.approx(jump["psi_post_norm_L"], abs=1e-6)
    assert j["D"] == pytest.approx(j["psi"][-1] - j["psi"][-2]) and j["zeta_L"] == pytest.approx(jump["zeta_L"], abs=1e-4)
    assert j["D_post_norm"] == pytest.approx(jump["psi_post_norm_L"] - jump["psi"][-2], abs=1e-6)
    assert j["J2"] == pytest.approx(max(j["psi"][-2], j["psi"][-1]) - j["psi"][-3])
    # the unit-gain lens by hand: the checkpoint's final norm has a trained (non-unit) gain, so the two differ
    with torch.no_grad():
        hidden = model.eval()(w[:, :-1], return_hidden=True).hidden
        for layer, h in enumerate(hidden):
            hn = h.float() / h.float().square().mean(-1, keepdim=True).add(model.norm.eps).sqrt()
            ce = torch.nn.functional.cross_entropy(model.output(hn).flatten(0, 1), w[:, 1:].flatten()).item()
            assert res["unit_gain_lens"]["lens"][layer]["loss"] == pytest.approx(ce, rel=1e-5)
    assert not torch.allclose(model.norm.weight, torch.ones_like(model.norm.weight))
    assert res["unit_gain_lens"]["lens"][-1]["loss"] != pytest.approx(res["loss"], rel=1e-6)
    L = 3
    for sat in (res["saturation"], res["unit_gain_lens"]["saturation"]):
        hist = sat["histogram"]
        assert sat["early_exit_blocks_saved_upto_L-2"] == pytest.approx(
            sum(h * (L - i) / L for i, h in enumerate(hist[: L - 1])))
        assert sat["early_exit_blocks_saved_upto_L-2"] <= sat["early_exit_blocks_saved"] + 1e-12


def test_eval_induction(tmp_path):
    pytest.importorskip("llama_jreg.data.synthetic")
    d, _ = make_checkpoint(tmp_path / "run", 1, tokenizer=False,
                           overrides=["data=induction", "data.seq_len=32", "data.induction.num_val=8",
                                      "data.induction.vocab_size=64", "data.micro_batch_size=4"])
    out = tmp_path / "eval.json"
    assert cli(["eval", str(d), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["data"]["source"] == "induction" and res["tokens"] == 8 * 32
    ind = res["induction"]
    assert ind["tokens"] > 0 and 0.0 <= ind["accuracy"] <= 1.0 and len(ind["lens_accuracy"]) == 4
    # overrides on the checkpoint's data config
    assert cli(["eval", str(d), "data.induction.num_val=4", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tokens"] == 4 * 32


def test_ffn_concepts(ckpt, tmp_path, capsys):
    _, d, model = ckpt
    text = _text(tmp_path)
    out = tmp_path / "ffn.json"
    assert cli(["ffn-concepts", str(d), "--text", str(text), "--layer", "2", "--position", "5", "--top-k", "4",
                "--tokens", "3", "--seq-len", "20", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    subs = res["sub_updates"]
    assert len(subs) == 4 and all(len(s["tokens"]) == 3 for s in subs)
    mags = [abs(s["coefficient"]) for s in subs]
    assert mags == sorted(mags, reverse=True)
    # the sub-updates add up to the block's FFN output: check the coefficients against a direct computation
    from llama_jreg.load import TextTokenizer

    ids = torch.tensor(TextTokenizer.from_sentencepiece(d / "tokenizer.model").encode(text.read_text())[:20])
    captured = {}
    blk = model.layers[1]

    def grab(module, inputs, output):  # the input of w2 is the coefficient vector m
        captured["m"] = inputs[0].detach()

    hook = blk.mlp.w2.register_forward_hook(grab)
    with torch.no_grad():
        model.eval()(ids[None])
    hook.remove()
    m = captured["m"][0, 5]
    assert torch.allclose(m[[s["index"] for s in subs]], torch.tensor([s["coefficient"] for s in subs]), atol=1e-5)
    assert m.abs().max().item() == pytest.approx(mags[0], rel=1e-5)
    assert "promotes" in capsys.readouterr().out


def test_export_hf_command(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_jreg.load import TextTokenizer

    run, d, model = ckpt
    out = tmp_path / "hf"
    assert cli(["export-hf", str(run), str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~umask, modes  # readable like any new file (safetensors: 0600)
    assert set(modes.values()) == {0o666 & ~umask}, modes
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    sp = TextTokenizer.from_sentencepiece(d / "tokenizer.model")
    samples = CORPUS.splitlines() + [" leading space", "two  spaces\n\n", "<s> literal </s>", "digits 2024 🙂", ""]
    for s in samples:
        assert hf_tok(s, add_special_tokens=False)["input_ids"] == sp.encode(s), repr(s)
        assert hf_tok.decode(sp.encode(s)) == sp.decode(sp.encode(s)), repr(s)
    ids = torch.tensor([sp.encode(CORPUS)[:64]])
    with torch.no_grad():
        assert (hf(ids).logits - model.eval()(ids).logits).abs().max().item() < 1e-4
    # refuses to overwrite without --force
    assert cli(["export-hf", str(d), str(out)]) == 2
    assert cli(["export-hf", str(d), str(out), "--force"]) == 0


# ----------------------------------------------------------------------------------------- real SmolLM2-135M

SMOL_TEXT = """\
The history of science is the study of the development of science and scientific knowledge, including both
the natural and social sciences. Science is a body of empirical, theoretical, and practical knowledge about
the natural world, produced by scientists who emphasize the observation, explanation, and prediction of
real-world phenomena. The earliest roots of science can be traced to Ancient Egypt and Mesopotamia in around
3000 to 1200 BCE. Their contributions to mathematics, astronomy, and medicine entered and shaped Greek natural
philosophy of classical antiquity, whereby formal attempts were made to provide explanations of events in the
physical world based on natural causes. After the fall of the Western Roman Empire, knowledge of Greek
conceptions of the world deteriorated in Western Europe during the early centuries of the Middle Ages but was
preserved in the Muslim world during the Islamic Golden Age. The recovery and assimilation of Greek works and
Islamic inquiries into Western Europe from the 10th to 13th century revived natural philosophy, which was later
transformed by the Scientific Revolution that began in the 16th century as new ideas and discoveries departed
from previous Greek conceptions and traditions. The scientific method soon played a greater role in knowledge
creation and it was not until the 19th century that many of the institutional and professional features of
science began to take shape, along with the changing of natural philosophy to natural science.
"""


@pytest.mark.slow
def test_smollm2_jump_matches_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_jreg.interop.smollm2 import smollm2_dir

    path = smollm2_dir()
    text = tmp_path / "text.txt"
    text.write_text(SMOL_TEXT)
    out = tmp_path / "jump.json"
    assert cli(["jump", str(path), "--text", str(text), "--seq-len", "64", "--num-seqs", "4", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    psi_ours = torch.tensor(res["psi"], dtype=torch.float64)
    L = 30
    print("SmolLM2-135M Psi per layer:", [round(v, 4) for v in res["psi"]])
    print(f"SmolLM2-135M zeta_L={res['zeta_L']:.3f} zeta_L_post_norm={res['zeta_L_post_norm']:.3f} "
          f"Psi_L_post_norm={res['psi_post_norm_L']:.4f}")
    assert res["windows"] == 4 and len(psi_ours) == L
    # the final-layer jump is there: a clear zeta_L, and Psi_L is the largest displacement of layers 2..L
    # (layer 1, which turns raw token embeddings into a residual stream, moves them more)
    assert res["zeta_L"] > 5.0
    assert psi_ours[1:].argmax().item() == L - 2
    assert psi_ours[-1] > 4 * psi_ours[1:-1].median()

    # the same with transformers: hidden_states[0..L-1] are h_0..h_{L-1}; hidden_states[L] is AFTER the final
    # norm, so the pre-norm h_L is captured with a hook on the last decoder layer
    hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tok(SMOL_TEXT, add_special_tokens=False)["input_ids"]
    from llama_jreg.analysis.jump import make_windows

    w = make_windows(ids, 64, 4)
    captured = {}

    def hook(module, args, output):
        captured["h_L"] = (output[0] if isinstance(output, tuple) else output).detach()

    handle = hf.model.layers[-1].register_forward_hook(hook)
    with torch.no_grad():
        hs = hf(w, output_hidden_states=True).hidden_states
    handle.remove()
    assert len(hs) == L + 1
    hidden = list(hs[:L]) + [captured["h_L"]]
    cos = torch.stack([torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
                       for a, b in itertools.pairwise(hidden)])
    psi_hf = psi(cos).double()
    assert (psi_ours - psi_hf).abs().max().item() < 1e-4
    assert res["zeta_L"] == pytest.approx(zeta_L(psi_hf).item(), abs=1e-2)
    post = torch.nn.functional.cosine_similarity(hs[L - 1].double(), hs[L].double(), dim=-1)
    assert res["psi_post_norm_L"] == pytest.approx(((1 - post) / 2).mean().item(), abs=1e-4)


def test_analysis_refuses_a_damaged_trainer_checkpoint_and_skips_it_in_a_run_dir(tmp_path):
    """A checkpoint the trainer wrote carries a sha256 manifest: analysis commands check it like resume does."""
    import os
    import subprocess
    import sys
    import warnings

    from llama_jreg import UserError
    from llama_jreg.load import load_model
    from tests.conftest import REPO

    run = tmp_path / "run"
    tiny = ["data=induction", "model.n_layers=2", "model.dim=32", "model.n_heads=2", "model.n_kv_heads=1",
            "model.ffn_dim=64", "model.vocab_size=64", "data.seq_len=32", "data.micro_batch_size=2",
            "data.induction.num_val=4", "trainer.eval_batches=1", "trainer.max_steps=4", "trainer.ckpt_every=2",
            "trainer.keep_last=2", "trainer.progress=false", "trainer.plots=false", f"run.dir={run}"]
    subprocess.run([sys.executable, "-m", "llama_jreg", "train", *tiny], check=True, cwd=tmp_path,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    newest = run / "checkpoints" / "step_00000004"
    assert json.loads((newest / "manifest.json").read_text())["files"]
    with open(newest / "model.safetensors", "r+b") as f:  # flip bytes in the weights
        f.seek(-16, 2)
        f.write(b"\xff" * 16)
    with pytest.raises(UserError, match="refusing a damaged checkpoint"):
        load_model(newest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, info = load_model(run)  # the run dir falls back to the previous, intact checkpoint
    assert "step_00000002" in json.dumps(info, default=str)
    assert any("skipping broken checkpoint" in str(w.message) for w in caught)
