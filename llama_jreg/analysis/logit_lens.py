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
distribution of saturation layers and the mean fraction of blocks saved, over all exits and over exits at
h_l with l <= L - 2 only (``early_exit_blocks_saved_upto_L-2``: a penalty on the last layer forces exits at
h_(L-1) by construction). ``--unit-gain-lens`` adds the same lens and exit with the final norm's learned gain
left out (``unit_gain_lens``). ``jump``: Psi per layer on both streams over the same tokens, the signed jumps
``D`` = Psi_L - Psi_(L-1), ``D_post_norm`` and ``J2`` = max(Psi_(L-1), Psi_L) - Psi_(L-2), and zeta_L.

For induction data (batches with ``eval_mask``): accuracy of the final (and every lens) top-1 on the
second-and-later trigger outputs, the tokens only an induction head can predict (``induction_hits``, the
definition the ``induction`` task uses: llama_jreg/tasks/induction.py).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from llama_jreg import UserError, help_text
from llama_jreg.analysis.jump import make_windows
from llama_jreg.config import apply_data_overrides, load_config
from llama_jreg.data import build_data
from llama_jreg.files import write_json_result
from llama_jreg.jreg import psi_per_token
from llama_jreg.load import load_model, need_tokenizer, pick_device, read_text
from llama_jreg.model import Llama
from llama_jreg.ops import rms_normalise
from llama_jreg.tasks.scoring import induction_hits


def _saturation(top1: torch.Tensor) -> torch.Tensor:
    """(B, T) saturation layer of each token from (L+1, B, T) lens top-1s: the first l such that the top-1 of
    every layer l..L equals layer L's."""
    agree = top1 == top1[-1:]
    suffix_all = torch.flip(torch.cumprod(torch.flip(agree.long(), [0]), 0), [0])
    return top1.shape[0] - suffix_all.sum(0)


def _saturation_summary(sat_frac: torch.Tensor, L: int) -> dict:
    """Histogram of saturation layers, its mean, and the oracle early-exit saving (L - l) / L: over all exits,
    and counting only exits at h_l with l <= L - 2 (a token saturating at L - 1 or L saves nothing)."""
    layers = torch.arange(L + 1, dtype=torch.float64)
    saved = sat_frac * (L - layers) / L
    return {
        "histogram": sat_frac.tolist(),  # fraction of tokens whose saturation layer is l = 0..L
        "mean_layer": (sat_frac * layers).sum().item(),
        "early_exit_blocks_saved": saved.sum().item(),
        "early_exit_blocks_saved_upto_L-2": saved[: max(L - 1, 0)].sum().item(),
    }


class _Lens:
    """Running sums of one logit lens over every residual stream h_0..h_L: loss, accuracy, top-1 agreement
    with layer L, saturation layers."""

    def __init__(self, n_lens: int):
        self.loss = torch.zeros(n_lens, dtype=torch.float64)
        self.agree = torch.zeros(n_lens, dtype=torch.float64)
        self.acc = torch.zeros(n_lens, dtype=torch.float64)
        self.sat = torch.zeros(n_lens, dtype=torch.float64)

    def add(self, logits_per_layer, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        top1 = []
        for layer, logits in enumerate(logits_per_layer):
            logits = logits.float()
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten().clamp_min(0), reduction="none").view_as(y)
            self.loss[layer] += ce[valid].double().sum().cpu()
            pred = logits.argmax(-1)
            self.acc[layer] += ((pred == y) & valid).sum().cpu()
            top1.append(pred)
        top1 = torch.stack(top1)  # (L+1, B, T)
        self.agree += ((top1 == top1[-1:]) & valid).flatten(1).sum(1).double().cpu()
        self.sat += torch.bincount(_saturation(top1)[valid].flatten().cpu(), minlength=len(self.sat)).double()
        return top1

    def rows(self, n_tok: int) -> list[dict]:
        return [{"layer": i, "loss": (self.loss[i] / n_tok).item(),
                 "top1_agreement_with_final": (self.agree[i] / n_tok).item(),
                 "accuracy": (self.acc[i] / n_tok).item()} for i in range(len(self.loss))]


def _jump_readings(psi_sum: torch.Tensor, post_sum: float, n_tok: int) -> dict:
    """Psi per layer on both streams over the evaluated tokens, and the signed jumps D = Psi_L - Psi_(L-1),
    D_post_norm (Psi_L with the final norm applied to h_L) and J2 = max(Psi_(L-1), Psi_L) - Psi_(L-2)
    (docs/preregistration.md), with the hinge zeta_L on both streams for reference."""
    psi = (psi_sum / n_tok).tolist()
    post = post_sum / n_tok
    L = len(psi)
    d = psi[-1] - psi[-2] if L >= 2 else 0.0
    d_post = post - psi[-2] if L >= 2 else 0.0
    return {"psi": psi, "psi_post_norm_L": post, "D": d, "D_post_norm": d_post,
            "J2": max(psi[-2], psi[-1]) - psi[-3] if L >= 3 else None,
            "zeta_L": 100 * max(0.0, d), "zeta_L_post_norm": 100 * max(0.0, d_post)}


@torch.no_grad()
def logit_lens(model: Llama, batches, device: torch.device | str = "cpu", unit_gain: bool = False) -> dict:
    """Logit-lens statistics over ``batches`` (dicts with ``input_ids``, ``labels`` and maybe ``eval_mask``),
    and the jump readings of the same tokens on both streams (``jump``). ``unit_gain``: also the lens whose
    norm has no learned gain (h_l -> RMSNorm without weight -> LM head; ``unit_gain_lens``), which a penalty
    training the final norm's gain cannot move."""
    model.eval()
    L = model.cfg.n_layers
    n_lens = L + 1
    lens, plain = _Lens(n_lens), (_Lens(n_lens) if unit_gain else None)
    ind_sum = torch.zeros(n_lens, dtype=torch.float64)
    psi_sum, post_sum = torch.zeros(L, dtype=torch.float64), 0.0
    n_tok, n_ind = 0, 0
    for batch in batches:
        x = batch["input_ids"].to(device)
        y = batch["labels"].to(device)
        valid = y >= 0
        out = model(x, return_hidden=True, stats=True)
        psi_sum += (psi_per_token(out.cos) * valid).flatten(1).double().sum(1).cpu()
        post_sum += (psi_per_token(out.cos_post_norm) * valid).double().sum().item()
        top1 = lens.add((out.logits if i == L else model.output(model.norm(h)) for i, h in enumerate(out.hidden)),
                        y, valid)
        if plain is not None:
            eps = model.norm.eps
            plain.add((model.output(rms_normalise(h, eps)[0].to(h.dtype)) for h in out.hidden), y, valid)
        if "eval_mask" in batch:  # the induction task's definition, at every lens layer
            hits, count = induction_hits(top1, y, batch["eval_mask"].to(device))
            ind_sum += hits.double().cpu()
            n_ind += int(count)
        n_tok += int(valid.sum())
    if n_tok == 0:
        raise UserError("no tokens to evaluate")
    loss = lens.loss[-1].item() / n_tok
    res = {
        "tokens": n_tok,
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "accuracy": (lens.acc[-1] / n_tok).item(),
        "lens": lens.rows(n_tok),
        "saturation": _saturation_summary(lens.sat / n_tok, L),
        "jump": _jump_readings(psi_sum, post_sum, n_tok),
    }
    if plain is not None:
        res["unit_gain_lens"] = {"lens": plain.rows(n_tok), "saturation": _saturation_summary(plain.sat / n_tok, L)}
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


def describe_data(data: dict) -> str:
    """One line for the header of ``eval``: what the model was evaluated on."""
    if "text" in data:
        return f"{data['windows']} windows of {data['seq_len']} tokens from {data['text']}"
    return (f"the {data['split']} split of {data['source']}: {data['batches']} batches of "
            f"{data['micro_batch_size']} x {data['seq_len']} tokens")


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
                 f"{100 * s['early_exit_blocks_saved']:.1f}% of the blocks "
                 f"({100 * s['early_exit_blocks_saved_upto_L-2']:.1f}% from exits at h <= L-2)")
    if "unit_gain_lens" in res:
        u = res["unit_gain_lens"]
        lines.append("unit-gain lens (h_l -> RMSNorm without its gain -> LM head): loss per layer "
                     + " ".join(f"{r['loss']:.3f}" for r in u["lens"])
                     + f"; early exit {100 * u['saturation']['early_exit_blocks_saved_upto_L-2']:.1f}% at h <= L-2")
    j = res["jump"]
    lines.append(f"jump: D = Psi_L - Psi_L-1 = {j['D']:+.5f} (post-norm {j['D_post_norm']:+.5f}); "
                 f"zeta_L {j['zeta_L']:.3f} (post-norm {j['zeta_L_post_norm']:.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama-jreg eval", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="validation loss, perplexity, logit lens, early exit, induction "
                                            "accuracy", epilog=help_text(__doc__))
    p.add_argument("model", help="checkpoint dir, run dir, HF Llama dir or .gguf file")
    p.add_argument("overrides", nargs="*", help="data overrides, e.g. data=induction data.seq_len=64")
    p.add_argument("--text", help="evaluate on this UTF-8 text file instead of the config's validation set")
    p.add_argument("--seq-len", type=int, default=256, help="with --text: tokens per window (default 256)")
    p.add_argument("--num-seqs", type=int, default=16, help="with --text: number of windows (default 16)")
    p.add_argument("--batches", type=int, help="without --text: validation micro-batches (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="with --text: windows per forward pass")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", dest="json_out", help="write the result as JSON here")
    p.add_argument("--unit-gain-lens", action="store_true",
                   help="also the logit lens without the final norm's learned gain (h_l -> RMSNorm without weight "
                        "-> LM head)")
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
    res = logit_lens(model, batches, device, unit_gain=args.unit_gain_lens)
    res = {"model": info["path"], "kind": info["kind"], "step": info["step"], "n_layers": model.cfg.n_layers,
           "data": data, **res}
    print(f"{info['name']} ({info['kind']}) on {describe_data(data)}")
    print(format_report(res))
    if args.json_out:
        write_json_result(args.json_out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
