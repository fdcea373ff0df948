"""`llama-jreg eval CHECKPOINT`: validation loss, perplexity, logit lens, early exit, induction accuracy.

Data, one of:

* ``--text FILE``: windows of ``--seq-len`` + 1 tokens of a text file (the model's own tokenizer);
* nothing: the checkpoint's own validation set (its ``config.yaml``'s data section, via ``build_data``);
* data overrides on the checkpoint's config, Hydra style: ``data=induction data.seq_len=64 seed=1``.

Logit lens (nostalgebraist 2020): every residual stream h_l, l = 0 (embeddings) .. L, is sent through the
final RMSNorm and the LM head. Per layer we report the loss against the labels and the top-1 agreement with
the final layer. The *saturation layer* of a token (Geva et al. 2022, "Transformer Feed-Forward Layers Build
Predictions by Promoting Concepts in the Vocabulary Space") is the earliest l from which the top-1 token no
longer changes up to layer L; an oracle early exit there skips (L - l) / L of the blocks. We report the
distribution of saturation layers and the mean fraction of blocks saved.

For induction data (batches with ``eval_mask``): accuracy of the final (and every lens) top-1 on the
second-and-later trigger outputs, the tokens only an induction head can predict (``induction_hits``, the
definition the ``induction`` task uses: llama_jreg/tasks/induction.py).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from llama_jreg import UserError
from llama_jreg.analysis.jump import make_windows
from llama_jreg.config import apply_data_overrides, load_config
from llama_jreg.data import build_data
from llama_jreg.load import load_model, need_tokenizer, pick_device, read_text
from llama_jreg.model import Llama
from llama_jreg.tasks.scoring import induction_hits


@torch.no_grad()
def logit_lens(model: Llama, batches, device: torch.device | str = "cpu") -> dict:
    """Logit-lens statistics over ``batches`` (dicts with ``input_ids``, ``labels`` and maybe ``eval_mask``)."""
    model.eval()
    L = model.cfg.n_layers
    n_lens = L + 1
    loss_sum = torch.zeros(n_lens, dtype=torch.float64)
    agree_sum = torch.zeros(n_lens, dtype=torch.float64)
    acc_sum = torch.zeros(n_lens, dtype=torch.float64)
    ind_sum = torch.zeros(n_lens, dtype=torch.float64)
    sat_hist = torch.zeros(n_lens, dtype=torch.float64)
    n_tok, n_ind = 0, 0
    for batch in batches:
        x = batch["input_ids"].to(device)
        y = batch["labels"].to(device)
        valid = y >= 0
        out = model(x, return_hidden=True)
        top1 = []
        for layer, h in enumerate(out.hidden):
            logits = out.logits if layer == L else model.output(model.norm(h))
            logits = logits.float()
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten().clamp_min(0), reduction="none").view_as(y)
            loss_sum[layer] += ce[valid].double().sum().cpu()
            pred = logits.argmax(-1)
            acc_sum[layer] += ((pred == y) & valid).sum().cpu()
            top1.append(pred)
        top1 = torch.stack(top1)  # (L+1, B, T)
        agree = top1 == top1[-1:]
        agree_sum += (agree & valid).flatten(1).sum(1).double().cpu()
        # saturation layer: first l such that agree[l:] is all True
        suffix_all = torch.flip(torch.cumprod(torch.flip(agree.long(), [0]), 0), [0])
        sat = n_lens - suffix_all.sum(0)  # (B, T) in 0..L
        sat_hist += torch.bincount(sat[valid].flatten().cpu(), minlength=n_lens).double()
        if "eval_mask" in batch:  # the induction task's definition, at every lens layer
            hits, count = induction_hits(top1, y, batch["eval_mask"].to(device))
            ind_sum += hits.double().cpu()
            n_ind += int(count)
        n_tok += int(valid.sum())
    if n_tok == 0:
        raise UserError("no tokens to evaluate")
    loss = loss_sum / n_tok
    sat_frac = sat_hist / n_tok
    layers = torch.arange(n_lens, dtype=torch.float64)
    res = {
        "tokens": n_tok,
        "loss": loss[-1].item(),
        "perplexity": math.exp(min(loss[-1].item(), 700.0)),
        "accuracy": (acc_sum[-1] / n_tok).item(),
        "lens": [
            {"layer": i, "loss": loss[i].item(), "top1_agreement_with_final": (agree_sum[i] / n_tok).item(),
             "accuracy": (acc_sum[i] / n_tok).item()}
            for i in range(n_lens)
        ],
        "saturation": {
            "histogram": sat_frac.tolist(),  # fraction of tokens whose saturation layer is l = 0..L
            "mean_layer": (sat_frac * layers).sum().item(),
            "early_exit_blocks_saved": (sat_frac * (L - layers) / L).sum().item(),
        },
    }
    if n_ind:
        res["induction"] = {
            "tokens": n_ind,
            "accuracy": (ind_sum[-1] / n_ind).item(),
            "lens_accuracy": (ind_sum / n_ind).tolist(),
        }
    return res


def text_batches(ids: list[int], seq_len: int, num_seqs: int, batch_size: int) -> list[dict]:
    w = make_windows(ids, seq_len + 1, num_seqs)
    if w.shape[1] < 2:
        raise UserError("the text is too short to evaluate")
    return [{"input_ids": w[i:i + batch_size, :-1], "labels": w[i:i + batch_size, 1:]}
            for i in range(0, w.shape[0], batch_size)]


def config_batches(train_cfg, model: Llama, n_batches: int | None) -> tuple[list[dict], dict]:
    bundle = build_data(train_cfg.data, seed=train_cfg.seed, model_vocab=model.cfg.vocab_size)
    if train_cfg.data.seq_len > model.cfg.max_seq_len:
        raise UserError(f"data.seq_len={train_cfg.data.seq_len} exceeds the model context {model.cfg.max_seq_len}")
    if n_batches is None:
        n_val = len(bundle.validation)
        if bundle.val_limit:
            n_val = min(n_val, bundle.val_limit)
        n_batches = max(1, math.ceil(n_val / bundle.micro_batch_size))
    desc = {"source": train_cfg.data.source, "seq_len": train_cfg.data.seq_len, "split": "validation",
            "batches": n_batches, "micro_batch_size": bundle.micro_batch_size}
    return bundle.val_batches(n_batches), desc


def format_report(res: dict) -> str:
    lines = [(f"tokens {res['tokens']}   loss {res['loss']:.4f}   perplexity {res['perplexity']:.2f}   "
              f"top-1 accuracy {res['accuracy']:.4f}")]
    if "induction" in res:
        ind = res["induction"]
        lines.append(f"induction accuracy (2nd+ trigger outputs, {ind['tokens']} tokens): {ind['accuracy']:.4f}")
    lines.append("logit lens (h_l -> final norm -> LM head):")
    lines.append(f"{'layer':>6} {'loss':>9} {'agree':>7} {'acc':>7} {'saturates':>9}")
    hist = res["saturation"]["histogram"]
    for row, h in zip(res["lens"], hist):
        name = "emb" if row["layer"] == 0 else str(row["layer"])
        lines.append(f"{name:>6} {row['loss']:9.4f} {row['top1_agreement_with_final']:7.3f} {row['accuracy']:7.3f} "
                     f"{h:9.3f}")
    s = res["saturation"]
    lines.append(f"mean saturation layer {s['mean_layer']:.2f}; an oracle early exit would skip "
                 f"{100 * s['early_exit_blocks_saved']:.1f}% of the blocks")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama-jreg eval", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="validation loss, perplexity, logit lens, early exit, induction "
                                            "accuracy", epilog=__doc__)
    p.add_argument("model", help="checkpoint dir, run dir, HF Llama dir or .gguf file")
    p.add_argument("overrides", nargs="*", help="data overrides, e.g. data=induction data.seq_len=64")
    p.add_argument("--text", help="evaluate on this UTF-8 text file instead of the config's validation set")
    p.add_argument("--seq-len", type=int, default=256, help="with --text: tokens per window (default 256)")
    p.add_argument("--num-seqs", type=int, default=16, help="with --text: number of windows (default 16)")
    p.add_argument("--batches", type=int, help="without --text: validation micro-batches (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="with --text: windows per forward pass")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", dest="json_out", help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.text and args.overrides:
        raise UserError("give either --text FILE or data overrides, not both")
    text = read_text(args.text) if args.text else None
    device = pick_device(args.device)
    model, tok, info = load_model(args.model)
    model.to(device)
    if text is not None:
        tok = need_tokenizer(tok, info)
        if args.seq_len > model.cfg.max_seq_len:
            raise UserError(f"--seq-len {args.seq_len} exceeds the model context {model.cfg.max_seq_len}")
        batches = text_batches(tok.encode(text), args.seq_len, args.num_seqs, args.batch_size)
        data = {"text": str(Path(args.text).resolve()), "seq_len": int(batches[0]["input_ids"].shape[1]),
                "windows": sum(int(b["input_ids"].shape[0]) for b in batches)}
    else:
        if info["kind"] == "checkpoint":
            train_cfg = apply_data_overrides(info["train_config"], args.overrides)
        else:
            if not args.overrides:
                raise UserError(f"{args.model} is not one of our checkpoints: give --text FILE or data overrides")

            train_cfg = load_config(args.overrides)
        batches, data = config_batches(train_cfg, model, args.batches)
    res = logit_lens(model, batches, device)
    res = {"model": info["path"], "kind": info["kind"], "step": info["step"], "n_layers": model.cfg.n_layers,
           "data": data, **res}
    print(f"{info['name']} ({info['kind']}) on {json.dumps(data)}")
    print(format_report(res))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
