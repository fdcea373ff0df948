"""llama-jreg generate: sample text from a model (our checkpoint or run dir, an HF Llama dir, or a GGUF file).

Decoding uses the model's own KV cache (``Llama.kv_cache``): the prompt is run once, then one token per step
attends over the cached keys and values of all earlier positions, with the same logits as a forward over the
whole sequence (``tests/test_generate.py``). Greedy with ``--temperature 0``; otherwise softmax sampling with
``--temperature``, ``--top-k`` and ``--top-p`` (nucleus), seeded by ``--seed`` (same seed, same text).
The text printed after the prompt is the decoding of prompt + new tokens minus the decoding of the prompt, so
a word that starts with a space (SentencePiece's ``▁``) keeps it.

Prompts: for our SentencePiece checkpoints the prompt is preceded by EOS, the separator between documents in
the training stream (so the model continues it as the start of a document); HF tokenizers add their own
special tokens. Generation stops after ``--max-new-tokens`` or at EOS (``--ignore-eos`` to go on).
"""

from __future__ import annotations

import argparse
import sys

import torch

from llama_jreg import UserError
from llama_jreg.load import TextTokenizer, load_model, need_tokenizer, pick_device, read_text
from llama_jreg.model import Llama


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row of ``logits`` (B, V): argmax at temperature 0, else a draw from the tempered softmax
    restricted to the ``top_k`` most likely tokens and to the smallest set whose probability reaches ``top_p``."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # tokens after the nucleus is already complete
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: Llama, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float = 1.0, eos_id: int | None = None, seed: int | None = None,
             vocab_size: int | None = None) -> torch.Tensor:
    """``prompt`` (B, T) int64 → (B, T + n) with ``n <= max_new_tokens`` generated tokens (rows that reach
    ``eos_id`` are padded with it until every row has, or ``max_new_tokens`` is reached). ``vocab_size``: only
    ids below it are generated (a model whose embedding is padded past its tokenizer's vocabulary)."""
    model.eval()
    B, T = prompt.shape
    total = T + max_new_tokens
    if total > model.cfg.max_seq_len:
        raise UserError(f"prompt ({T} tokens) + --max-new-tokens {max_new_tokens} = {total} exceeds the model "
                        f"context model.max_seq_len={model.cfg.max_seq_len}; shorten one of them")
    gen = None
    if seed is not None and temperature > 0:
        gen = torch.Generator(device=prompt.device)
        gen.manual_seed(seed)
    out = [prompt]
    done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    with model.kv_cache(B, total):
        logits = model(prompt).logits[:, -1]
        for _ in range(max_new_tokens):
            if vocab_size is not None and vocab_size < logits.shape[-1]:
                logits = logits.clone()
                logits[:, vocab_size:] = float("-inf")
            nxt = sample_next(logits, temperature, top_k, top_p, gen)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out.append(nxt[:, None])
            if eos_id is not None and bool(done.all()):
                break
            if len(out) - 1 < max_new_tokens:
                logits = model(nxt[:, None]).logits[:, -1]
    return torch.cat(out, dim=1)


def continuation(tok: TextTokenizer, prompt: list[int], new: list[int]) -> str:
    """The text ``new`` adds after ``prompt``: decode(prompt + new) minus decode(prompt). Decoding ``new`` alone
    would lose what depends on the tokens before it (SentencePiece drops the space of a leading ``▁``)."""
    before, full = tok.decode(prompt), tok.decode(prompt + new)
    if full.startswith(before):
        return full[len(before):]
    return tok.decode(new)  # the prompt's text changed with what followed (not seen with our tokenizers)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-jreg generate", description="sample text from a model (KV cache)",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  llama-jreg generate runs/demo --prompt 'ROMEO:' --max-new-tokens 80\n"
                                       "  llama-jreg generate path/to/hf_llama --prompt 'The' --temperature 0")
    p.add_argument("model", help="our checkpoint dir or run dir, an HF Llama dir, or a .gguf file")
    p.add_argument("--prompt", default=None, help="the text to continue")
    p.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    p.add_argument("--device", default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.prompt is None) == (args.prompt_file is None):
        raise UserError("give the text to continue with exactly one of --prompt TEXT or --prompt-file FILE")
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise UserError("--max-new-tokens and --num-samples must be >= 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or (args.top_k is not None and args.top_k < 1):
        raise UserError("--temperature must be >= 0, --top-p in (0, 1], --top-k >= 1")
    text = args.prompt if args.prompt is not None else read_text(args.prompt_file)
    device = pick_device(args.device)
    model, tok, info = load_model(args.model)
    tok = need_tokenizer(tok, info)
    ids = tok.encode_prompt(text)
    if not ids:
        raise UserError("the prompt is empty after tokenisation; give some text")
    prompt = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    out = generate(model.to(device), prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, eos_id=None if args.ignore_eos else tok.eos_id, seed=args.seed,
                   vocab_size=tok.vocab_size)
    print(f"# {info['name']} ({info['kind']}), {len(ids)} prompt tokens, seed {args.seed}, temperature "
          f"{args.temperature}", file=sys.stderr)
    for i, row in enumerate(out.tolist()):
        new = row[len(ids):]
        if tok.eos_id is not None and not args.ignore_eos and tok.eos_id in new:
            new = new[:new.index(tok.eos_id)]
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(text + continuation(tok, ids, new), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
