"""HF transformers interop: logits parity both ways on tiny random Llamas, refusals, and real SmolLM2-135M."""

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llama_jreg import UserError
from llama_jreg.interop.hf import config_from_hf, load_hf_llama, save_hf_llama
from llama_jreg.model import Llama, config_for_size, rope_tables


def _tiny_hf(tie: bool, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=5000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF inits norms to 1 and some weights to 0: randomise everything
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_hf_to_ours_logits(tmp_path, tie):
    hf = _tiny_hf(tie)
    hf.save_pretrained(tmp_path)
    ours, cfg = load_hf_llama(tmp_path)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.tie_embeddings, cfg.rope_theta) == (4, 2, tie, 5000.0)
    assert (ours.output.weight is ours.tok_embeddings.weight) == tie
    ids = torch.randint(0, 97, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids).logits
        got_mem, _ = load_hf_llama(hf)  # an in-memory transformers model works as well
        got2 = got_mem(ids).logits
    assert (got - ref).abs().max().item() < 1e-4
    assert torch.equal(got, got2)


@pytest.mark.parametrize("tie", [False, True])
def test_ours_to_hf_logits(tmp_path, tie):
    torch.manual_seed(0)
    cfg = config_for_size("tiny", vocab_size=101, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=80,
                          max_seq_len=40, rope_theta=777.0, tie_embeddings=tie)
    ours = Llama(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.2)
    save_hf_llama(ours, tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["architectures"] == ["LlamaForCausalLM"] and conf["model_type"] == "llama"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    ids = torch.randint(0, 101, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids).logits).abs().max().item()
    assert diff < 1e-4
    # and back again: a round trip is exact
    back, back_cfg = load_hf_llama(tmp_path)
    assert back_cfg.rope_theta == 777.0 and back_cfg.tie_embeddings == tie
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_non_llama_directory_is_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)).save_pretrained(
        tmp_path
    )
    with pytest.raises(UserError, match="not a Llama model: model_type='gpt2'"):
        load_hf_llama(tmp_path)


def test_refusals(tmp_path):
    base = _tiny_hf(False).config.to_dict()
    with pytest.raises(UserError, match="rope scaling type 'yarn'"):
        config_from_hf({**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 8.0}})
    with pytest.raises(UserError, match="rope scaling type 'dynamic'"):
        config_from_hf({**base, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    with pytest.raises(UserError, match="attention_factor"):
        config_from_hf({**base, "rope_scaling": {"type": "linear", "factor": 2.0, "attention_factor": 0.5}})
    with pytest.raises(UserError, match="bias"):
        config_from_hf({**base, "attention_bias": True})
    with pytest.raises(UserError, match="no such file"):
        load_hf_llama(tmp_path / "missing")
    with pytest.raises(UserError, match="no config.json"):
        load_hf_llama(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(base))
    with pytest.raises(UserError, match="no weights"):
        load_hf_llama(tmp_path)


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}


@pytest.mark.parametrize("scaling", [LLAMA3_ROPE, {"rope_type": "linear", "factor": 4.0}])
def test_rope_scaling_parity_both_ways(tmp_path, scaling):
    """Llama 3.1-style and linear RoPE scaling: HF -> ours and ours -> HF give the same logits on positions far
    past original_max_position_embeddings (where the scaled and unscaled frequencies differ)."""
    torch.manual_seed(0)
    hcfg = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, head_dim=16,
        rope_parameters={**scaling, "rope_theta": 500000.0},
    )
    hf = LlamaForCausalLM(hcfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    ours, cfg = load_hf_llama(tmp_path / "hf")
    assert cfg.rope_scaling == scaling["rope_type"] and cfg.rope_factor == scaling["factor"]
    ids = torch.randint(0, 97, (2, 200), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(ids).logits
        assert (ours(ids).logits - ref).abs().max().item() < 1e-4
        # the scaling matters here: plain RoPE gives different logits
        plain, _ = load_hf_llama(tmp_path / "hf")
        plain.rope_cos, plain.rope_sin = rope_tables(replace(cfg, rope_scaling=None))
        assert (plain(ids).logits - ref).abs().max().item() > 1e-2
    save_hf_llama(ours, tmp_path / "back")
    conf = json.loads((tmp_path / "back" / "config.json").read_text())
    written = conf.get("rope_parameters") or conf.get("rope_scaling")
    assert written["rope_type"] == scaling["rope_type"] and written["factor"] == scaling["factor"]
    hf2 = AutoModelForCausalLM.from_pretrained(tmp_path / "back", local_files_only=True).eval()
    with torch.no_grad():
        assert (hf2(ids).logits - ref).abs().max().item() < 1e-4


def test_rope_scaling_values_are_validated():
    with pytest.raises(UserError, match="rope_scaling"):
        config_for_size("tiny", rope_scaling="ntk")
    with pytest.raises(UserError, match="0 < low < high"):
        config_for_size("tiny", rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=4.0,
                        rope_high_freq_factor=1.0)
    with pytest.raises(UserError, match="rope_factor"):
        config_for_size("tiny", rope_scaling="linear", rope_factor=0.0)


# ------------------------------------------------------------------------------------- real SmolLM2-135M


@pytest.fixture(scope="module")
def smollm2():
    from llama_jreg.interop.smollm2 import smollm2_dir

    return smollm2_dir()


SMOL_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers that changed "
    "physics; one of them introduced special relativity."
)


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2, local_files_only=True)
    ids = torch.tensor([tok(SMOL_TEXT).input_ids])
    assert ids.shape[1] > 20
    hf = AutoModelForCausalLM.from_pretrained(smollm2, local_files_only=True, dtype=torch.float32).eval()
    ours, cfg = load_hf_llama(smollm2)
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids).logits
    diff = (got - ref).abs().max().item()
    print(f"SmolLM2-135M max |logit diff| ours vs transformers: {diff:.3e}")
    assert diff < 1e-4
    assert torch.equal(got.argmax(-1), ref.argmax(-1))

    save_hf_llama(ours, tmp_path / "export")
    hf2 = AutoModelForCausalLM.from_pretrained(tmp_path / "export", local_files_only=True).eval()
    with torch.no_grad():
        diff2 = (hf2(ids).logits - ref).abs().max().item()
    print(f"SmolLM2-135M max |logit diff| after export: {diff2:.3e}")
    assert diff2 < 1e-4


@pytest.mark.slow
def test_smollm2_gguf_loads_directly(smollm2):
    from llama_jreg.interop.smollm2 import smollm2_gguf

    from_gguf, cfg = load_hf_llama(smollm2_gguf())
    from_dir, _ = load_hf_llama(smollm2)
    assert cfg.n_layers == 30
    for k, v in from_dir.state_dict().items():
        assert torch.equal(v, from_gguf.state_dict()[k]), k
