"""`llama-jreg jump MODEL --text FILE`: Psi per layer and the final-layer jump zeta_L of any Llama on a text.

MODEL is one of our checkpoints (or a run dir), an HF Llama directory or a GGUF file. The text is tokenised
(SentencePiece for ours, the HF tokenizer otherwise) into one token stream; ``--num-seqs`` non-overlapping
windows of ``--seq-len`` tokens, evenly spread over the stream, are run through the model. For every layer
l, Psi_l = (1 - cos(h_{l-1}, h_l)) / 2 is averaged over all tokens of all windows (fp32), with h_L the last
block's output *before* the final norm; ``zeta_L = 100 * max(0, Psi_L - Psi_{L-1})``. ``zeta_L_post_norm``
uses Psi_L measured against the final norm's output instead (what one gets from HF ``hidden_states``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from llama_jreg import UserError, help_text
from llama_jreg.files import write_json_result
from llama_jreg.jreg import psi_per_token, zeta, zeta_L
from llama_jreg.load import load_model, need_tokenizer, pick_device, read_text
from llama_jreg.model import Llama


def make_windows(ids: list[int], seq_len: int, num_seqs: int) -> torch.Tensor:
    """(n, seq_len) int64: ``num_seqs`` non-overlapping windows evenly spread over ``ids`` (fewer when the
    text is short; one shorter window when it is shorter than ``seq_len``)."""
    n = len(ids)
    if n < 2:
        raise UserError(f"the text has {n} token(s); give at least 2")
    if num_seqs < 1 or seq_len < 2:
        raise UserError("--num-seqs must be >= 1 and --seq-len >= 2")
    if n < seq_len:
        return torch.tensor([ids], dtype=torch.long)
    chunks = n // seq_len
    if chunks <= num_seqs:
        picks = list(range(chunks))
    else:
        picks = [round(i * (chunks - 1) / (num_seqs - 1)) for i in range(num_seqs)] if num_seqs > 1 else [0]
    return torch.tensor([ids[c * seq_len:(c + 1) * seq_len] for c in picks], dtype=torch.long)


@torch.no_grad()
def measure_jump(model: Llama, windows: torch.Tensor, batch_size: int = 8, device: torch.device | str = "cpu") -> dict:
    """Psi per layer (pre final norm), Psi_L post norm, zeta_L, zeta_L_post_norm and zeta per layer, averaged
    over all tokens of ``windows`` (B, T)."""
    model.eval()
    sums, post_sum, count = None, 0.0, 0
    per_window, per_window_post = [], []
    for i in range(0, windows.shape[0], batch_size):
        batch = windows[i:i + batch_size].to(device)
        out = model(batch, stats=True)
        tok = psi_per_token(out.cos).double()  # (L, B, T)
        s = tok.flatten(1).sum(1)  # (L,)
        sums = s if sums is None else sums + s
        post = psi_per_token(out.cos_post_norm).double()  # (B, T)
        post_sum += post.sum().item()
        per_window += tok.mean(2).T.tolist()
        per_window_post += post.mean(1).tolist()
        count += batch.numel()
    psi = (sums / count).float().cpu()
    psi_post = post_sum / count
    post = psi.clone()
    post[-1] = psi_post
    L = psi.numel()
    return {
        "psi": psi.tolist(),
        "psi_post_norm_L": psi_post,
        "zeta_L": zeta_L(psi).item() if L >= 2 else 0.0,
        "zeta_L_post_norm": zeta_L(post).item() if L >= 2 else 0.0,
        "zeta": zeta(psi).tolist(),
        "argmax_layer": int(psi.argmax().item()) + 1,
        "tokens": int(count),
        "windows": int(windows.shape[0]),
        "seq_len": int(windows.shape[1]),
        # each window's own means (for intervals over windows): Psi per layer and the post-norm Psi_L
        "per_window": {"psi": per_window, "psi_post_norm_L": per_window_post},
    }


def format_table(res: dict) -> str:
    psi = res["psi"]
    top = max(max(psi), res["psi_post_norm_L"]) or 1.0
    lines = [f"{'layer':>5}  {'Psi':>9}  "]
    for i, v in enumerate(psi, 1):
        lines.append(f"{i:>5}  {v:9.5f}  " + "#" * round(40 * v / top))
    lines.append(f"{'L*':>5}  {res['psi_post_norm_L']:9.5f}  " + "#" * round(40 * res["psi_post_norm_L"] / top)
                 + "   (L* = last layer measured after the final norm)")
    lines.append(f"zeta_L = {res['zeta_L']:.3f}   zeta_L (post-norm) = {res['zeta_L_post_norm']:.3f}   "
                 f"max Psi at layer {res['argmax_layer']}/{len(psi)}")
    return "\n".join(lines)


def plot_psi(res: dict, out: str | Path, title: str = "") -> Path:
    import matplotlib  # deferred: ~0.4 s to import (scripts/bench_imports.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    psi = res["psi"]
    layers = list(range(1, len(psi) + 1))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(layers, psi, marker="o", label=r"$\Psi_l$ (pre final norm)")
    ax.scatter([len(psi)], [res["psi_post_norm_L"]], marker="x", color="C3", zorder=3,
               label=r"$\Psi_L$ post final norm")
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$\Psi_l = (1-\cos(h_{l-1}, h_l))/2$")
    ax.set_title(f"{title}  zeta_L={res['zeta_L']:.2f}".strip())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-jreg jump", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=help_text("\n\n".join(__doc__.split("\n\n")[1:])))
    p.add_argument("model", help="checkpoint dir, run dir, HF Llama dir or .gguf file")
    p.add_argument("--text", required=True, help="UTF-8 text file to measure on")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--num-seqs", type=int, default=8, help="number of windows (default 8)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", dest="json_out", help="write the result as JSON here")
    p.add_argument("--plot", help="write a Psi-per-layer plot (PNG) here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    text = read_text(args.text)
    device = pick_device(args.device)
    model, tok, info = load_model(args.model)
    tok = need_tokenizer(tok, info)
    if args.seq_len > model.cfg.max_seq_len:
        raise UserError(f"--seq-len {args.seq_len} exceeds the model context {model.cfg.max_seq_len}")
    windows = make_windows(tok.encode(text), args.seq_len, args.num_seqs)
    res = measure_jump(model.to(device), windows, args.batch_size, device)
    res = {"model": info["path"], "kind": info["kind"], "step": info["step"], "text": str(Path(args.text).resolve()),
           "n_layers": model.cfg.n_layers, **res}
    print(f"{info['name']} ({info['kind']}, {model.cfg.n_layers} layers) on {res['windows']} x {res['seq_len']} "
          f"= {res['tokens']} tokens of {args.text}")
    print(format_table(res))
    if args.json_out:
        write_json_result(args.json_out, res)
    if args.plot:
        print(f"wrote {plot_psi(res, args.plot, info['name'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
