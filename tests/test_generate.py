"""`llama-jreg generate`: the KV-cache forward equals the full forward, greedy decoding equals a plain argmax
loop, sampling follows the tempered / truncated softmax and is seeded, the CLI, and parity with transformers'
``generate`` on the real SmolLM2-135M (slow)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from llama_jreg import UserError
from llama_jreg.cli import main as cli
from llama_jreg.generate import continuation, generate, sample_next
from llama_jreg.load import TextTokenizer
from llama_jreg.model import Llama, config_for_size
from tests.hf_assets import make_tiny_hf_llama
from tests.test_analysis import _train_sp, make_checkpoint


def _model(dtype=torch.float64, backend="auto") -> Llama:
    torch.manual_seed(0)
    cfg = config_for_size("tiny", vocab_size=97, dim=48, n_layers=3, n_heads=6, n_kv_heads=2, ffn_dim=96,
                          max_seq_len=40, attn_backend=backend)
    m = Llama(cfg).to(dtype).eval()
    with torch.no_grad():  # weights large enough that every position matters
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return m


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("chunks", [[12], [5, 1, 1, 3, 1, 1], [1] * 12, [7, 5]])
def test_cached_forward_matches_the_full_forward(chunks, backend):
    m = _model(backend=backend)
    tokens = torch.randint(0, 97, (3, sum(chunks)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(tokens).logits
    got, s = [], 0
    with torch.no_grad(), m.kv_cache(3, 40) as cache:
        for n in chunks:  # prefill, then pieces of any size over the cache
            got.append(m(tokens[:, s:s + n]).logits)
            s += n
    assert cache.length == sum(chunks)
    assert m.cache is None and all(layer.attn.cache is None for layer in m.layers)  # detached afterwards
    assert torch.allclose(torch.cat(got, 1), ref, atol=1e-10, rtol=0)


def test_the_cache_refuses_positions_beyond_it_and_packed_documents():
    m = _model()
    tokens = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), m.kv_cache(1, 10) as cache:
        m(tokens)
        with pytest.raises(UserError, match="10 positions"):
            m(tokens[:, :3])
        assert cache.length == 8  # nothing written by the refused forward
        with pytest.raises(ValueError, match="doc_ids"):
            m(tokens[:, :1], doc_ids=torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(UserError, match="model.max_seq_len=40"), m.kv_cache(1, 41):
        pass


def test_greedy_generation_equals_an_argmax_loop_over_the_full_forward():
    m = _model(torch.float32)
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(2))
    out = generate(m, prompt, 20, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(20):
            seq = torch.cat([seq, m(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
    assert len(set(out[0, 4:].tolist())) > 1  # a real continuation, not one repeated token


def test_sampling_is_seeded_and_the_limits_of_top_k_and_top_p_are_greedy():
    m = _model(torch.float32)
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(3))
    a = generate(m, prompt, 15, temperature=1.0, seed=7)
    assert torch.equal(a, generate(m, prompt, 15, temperature=1.0, seed=7))
    assert not torch.equal(a, generate(m, prompt, 15, temperature=1.0, seed=8))
    greedy = generate(m, prompt, 15, temperature=0)
    assert torch.equal(generate(m, prompt, 15, temperature=1.0, top_k=1, seed=7), greedy)
    assert torch.equal(generate(m, prompt, 15, temperature=1.0, top_p=1e-6, seed=7), greedy)


def test_sample_next_draws_from_the_tempered_truncated_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(40000, 1)
    gen = torch.Generator().manual_seed(0)

    def freq(**kw):
        return torch.bincount(sample_next(logits, generator=gen, **kw), minlength=5).double() / len(logits)

    p = (logits[0] / 0.7).softmax(-1).double()
    assert torch.allclose(freq(temperature=0.7, top_k=None, top_p=1.0), p, atol=0.01)
    top2 = torch.zeros(5, dtype=torch.float64)
    top2[:2] = logits[0, :2].softmax(-1).double()
    assert torch.allclose(freq(temperature=1.0, top_k=2, top_p=1.0), top2, atol=0.01)
    # nucleus 0.8: the two best tokens hold 0.563 + 0.207 = 0.770 < 0.8, the third (0.126) completes it; the
    # rest never appear
    p1 = logits[0].softmax(-1).double()
    nuc = torch.zeros(5, dtype=torch.float64)
    nuc[:3] = p1[:3] / p1[:3].sum()
    assert torch.allclose(freq(temperature=1.0, top_k=None, top_p=0.8), nuc, atol=0.01)


def test_generation_draws_only_ids_the_tokenizer_has():
    # a model whose embedding is padded past its tokenizer's vocabulary: sampling at temperature 1 over 97 ids
    # would draw ids 10..96 (which the tokenizer cannot decode) almost surely in 30 x 3 draws
    m = _model(torch.float32)
    prompt = torch.randint(0, 10, (3, 4), generator=torch.Generator().manual_seed(5))
    free = generate(m, prompt, 30, temperature=1.0, seed=1)
    assert (free[:, 4:] >= 10).any()
    for temperature in (1.0, 0.0):
        out = generate(m, prompt, 30, temperature=temperature, seed=1, vocab_size=10)
        assert out.shape == (3, 34) and (out[:, 4:] < 10).all()


def test_generation_stops_at_eos():
    m = _model(torch.float32)
    prompt = torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(4))
    first = generate(m, prompt, 1, temperature=0)[0, -1].item()
    out = generate(m, prompt, 10, temperature=0, eos_id=first)  # the first token it generates is "EOS"
    assert out.shape == (1, 5) and out[0, -1].item() == first


def test_generate_command(tmp_path, capsys):
    run = tmp_path / "run"
    d, _ = make_checkpoint(run, 5, seed=3, tmp=tmp_path)
    args = ["generate", str(run), "--prompt", "the quick", "--max-new-tokens", "12", "--ignore-eos"]
    assert cli([*args, "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert cli([*args, "--seed", "1"]) == 0
    assert capsys.readouterr().out == first  # seeded: the same text again
    assert first.startswith("the quick") and len(first.strip()) > len("the quick")
    assert cli([*args, "--temperature", "0", "--num-samples", "2"]) == 0
    samples = capsys.readouterr().out.split("--- sample ")
    assert len(samples) == 3 and samples[1][1:] == samples[2][1:]  # greedy: both samples identical


def test_the_continuation_keeps_the_space_that_starts_its_first_word(tmp_path):
    tok = TextTokenizer.from_sentencepiece(_train_sp(tmp_path))  # a real SentencePiece model (add_dummy_prefix)
    prompt = tok.encode_prompt("it was the best")
    whole = tok.encode_prompt("it was the best of times")
    assert whole[:len(prompt)] == prompt
    new = whole[len(prompt):]
    assert tok.decode(new) == "of times"  # decoded alone, the first word loses its leading "▁"
    assert continuation(tok, prompt, new) == " of times"
    assert continuation(tok, prompt, []) == ""


def _generate_text(capsys, model, prompt, n=16):
    assert cli(["generate", str(model), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", str(n),
                "--ignore-eos"]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def _transformers_text(hf_dir, prompt_ids, prompt, n=16):
    """``prompt`` + transformers' greedy continuation of ``prompt_ids``: decode(all) minus decode(prompt)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    ids = torch.tensor([prompt_ids])
    out = hf.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
                      attention_mask=torch.ones_like(ids))
    return prompt + hf_tok.decode(out[0])[len(hf_tok.decode(prompt_ids)):]


def test_generated_text_equals_transformers_generate_and_decode_on_the_export(tmp_path, capsys):
    run, hf_dir = tmp_path / "run", tmp_path / "hf"
    d, model = make_checkpoint(run, 5, seed=4, tmp=tmp_path, tie=False)
    tok = TextTokenizer.from_sentencepiece(d / "tokenizer.model")
    # a random model that writes word pieces: byte-fallback pieces (whose invalid UTF-8 runs SentencePiece and
    # HF tokenizers render differently), special and unused ids get logit 0, below the best of ~60 word pieces
    sp = tok.sp
    with torch.no_grad():
        for i in range(model.cfg.vocab_size):
            if i >= sp.GetPieceSize() or sp.IsByte(i) or sp.IsControl(i) or sp.IsUnknown(i):
                model.output.weight[i] = 0
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    assert cli(["export-hf", str(run), str(hf_dir)]) == 0
    capsys.readouterr()
    spaced = 0
    for prompt in ("In the beginning", "it was the best", "we had"):
        ours = _generate_text(capsys, run, prompt)
        assert ours == _transformers_text(hf_dir, tok.encode_prompt(prompt), prompt), prompt
        spaced += ours[len(prompt)] == " "
    assert spaced >= 1  # at least one continuation starts with a new word: the case that lost its space


def test_generated_text_equals_transformers_generate_and_decode_with_an_hf_tokenizer(tmp_path, capsys):
    from transformers import AutoTokenizer

    hf_dir = make_tiny_hf_llama(tmp_path / "hf", add_bos=True)
    hf_tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    for prompt in ("To be, or not", "The slings and"):
        ours = _generate_text(capsys, hf_dir, prompt)
        assert ours == _transformers_text(hf_dir, hf_tok(prompt).input_ids, prompt), prompt


@pytest.mark.parametrize("args, msg", [
    ([], "exactly one of --prompt TEXT or --prompt-file FILE"),
    (["--prompt", "a", "--max-new-tokens", "500"], "exceeds the model context model.max_seq_len=64"),
    (["--prompt", "a", "--top-p", "0"], "--top-p in (0, 1]"),
    (["--prompt-file", "/nonexistent/prompt.txt"], "no such file"),
])
def test_generate_command_bad_input(tmp_path, capsys, args, msg):
    run = tmp_path / "run"
    make_checkpoint(run, 5, seed=3, tmp=tmp_path)
    assert cli(["generate", str(run), *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and msg in err[0], err


@pytest.mark.slow
def test_smollm2_greedy_generation_matches_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_jreg.interop.hf import load_hf_llama
    from llama_jreg.interop.smollm2 import smollm2_dir

    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = torch.tensor([tok("The capital of France is").input_ids])
    hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    ref = hf.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id)
    ours, _ = load_hf_llama(path)
    got = generate(ours, ids, 24, temperature=0)
    assert torch.equal(got, ref), (tok.decode(got[0]), tok.decode(ref[0]))


def test_generate_refuses_a_checkpoint_without_tokenizer(tmp_path, capsys):
    run = tmp_path / "run"
    make_checkpoint(run, 5, tokenizer=False)  # e.g. a data=induction run: token ids only
    assert cli(["generate", str(run), "--prompt", "a"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and "has no tokenizer" in err[0], err
