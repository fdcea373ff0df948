"""`llama-jreg ffn-concepts MODEL --text FILE --layer L`: which FFN sub-updates a layer applies at a position,
and which tokens each one promotes (Geva et al. 2022, "Transformer Feed-Forward Layers Build Predictions by
Promoting Concepts in the Vocabulary Space").

The SwiGLU FFN of layer l writes ``sum_i m_i v_i`` into the residual stream, where ``v_i`` is column i of the
down projection ``w2`` (a "value vector") and ``m_i = silu(w1 x)_i * (w3 x)_i`` its coefficient for the
normalised input ``x`` at that position. For the ``--top-k`` sub-updates with the largest ``|m_i|`` we project
the direction ``sign(m_i) v_i`` through the final norm's gain and the LM head and list the ``--tokens``
tokens it promotes most. Positions are token indices in the first ``--seq-len`` tokens of the text
(``--position -1``, the default, is the last one).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from llama_jreg import UserError, help_text
from llama_jreg.files import write_json_result
from llama_jreg.load import load_model, need_tokenizer, pick_device, read_text
from llama_jreg.model import Llama


@torch.no_grad()
def ffn_sub_updates(model: Llama, ids: torch.Tensor, layer: int, position: int, top_k: int = 10,
                    n_tokens: int = 10) -> dict:
    """Top-|coefficient| FFN sub-updates of ``layer`` (1-indexed) at ``position`` of ``ids`` (1-D)."""
    L = model.cfg.n_layers
    if not 1 <= layer <= L:
        raise UserError(f"--layer {layer} is out of range; the model has layers 1..{L}")
    T = ids.numel()
    pos = position + T if position < 0 else position
    if not 0 <= pos < T:
        raise UserError(f"--position {position} is out of range for {T} tokens (use 0..{T - 1} or negative)")
    model.eval()
    out = model(ids[None], return_hidden=True)
    blk = model.layers[layer - 1]
    x = out.hidden[layer - 1]
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    h = x + blk.attn(blk.attn_norm(x), cos, sin)
    z = blk.mlp_norm(h)[0, pos]
    coeff = (F.silu(blk.mlp.w1(z)) * blk.mlp.w3(z)).float()  # (ffn_dim,)
    values = blk.mlp.w2.weight.float()  # (dim, ffn_dim): column i is v_i
    k = min(top_k, coeff.numel())
    top = coeff.abs().topk(k).indices
    head = model.output.weight.float()
    gain = model.norm.weight.float()
    total = (values @ coeff).norm().item()
    subs = []
    for i in top.tolist():
        m = coeff[i].item()
        v = values[:, i]
        scores = head @ (gain * v * (1.0 if m >= 0 else -1.0))
        best = scores.topk(min(n_tokens, scores.numel()))
        subs.append({"index": i, "coefficient": m, "update_norm": abs(m) * v.norm().item(),
                     "token_ids": best.indices.tolist(), "scores": best.values.tolist()})
    final_top = out.logits[0, pos].float().topk(min(n_tokens, out.logits.shape[-1]))
    return {"layer": layer, "position": pos, "token_id": int(ids[pos]), "ffn_update_norm": total,
            "sub_updates": subs, "prediction_ids": final_top.indices.tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama-jreg ffn-concepts", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="top FFN sub-updates and the tokens they promote", epilog=help_text(__doc__))
    p.add_argument("model", help="checkpoint dir, run dir, HF Llama dir or .gguf file")
    p.add_argument("--text", required=True, help="UTF-8 text file; its first --seq-len tokens are the context")
    p.add_argument("--layer", type=int, required=True, help="layer, 1..n_layers")
    p.add_argument("--position", type=int, default=-1, help="token position (default -1: the last)")
    p.add_argument("--top-k", type=int, default=10, help="sub-updates to show (default 10)")
    p.add_argument("--tokens", type=int, default=10, help="promoted tokens per sub-update (default 10)")
    p.add_argument("--seq-len", type=int, default=256, help="context length cap (default 256)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.tokens < 1:
        raise UserError("--top-k and --tokens must be >= 1")
    text = read_text(args.text)
    device = pick_device(args.device)
    model, tok, info = load_model(args.model)
    tok = need_tokenizer(tok, info)
    ids = tok.encode(text)[: min(args.seq_len, model.cfg.max_seq_len)]
    if not ids:
        raise UserError(f"--text {args.text} gives no tokens")
    res = ffn_sub_updates(model.to(device), torch.tensor(ids, device=device), args.layer, args.position,
                          args.top_k, args.tokens)
    pos = res["position"]
    context = tok.decode(ids[max(0, pos - 12): pos + 1])
    res["token"] = tok.piece(res["token_id"])
    res["context"] = context
    res["prediction"] = [tok.piece(i) for i in res["prediction_ids"]]
    for s in res["sub_updates"]:
        s["tokens"] = [tok.piece(i) for i in s["token_ids"]]
    print(f"{info['name']}: layer {args.layer}, position {pos} (token {res['token']!r}), context ...{context!r}")
    print(f"model's top predictions here: {res['prediction']}")
    print(f"FFN update norm {res['ffn_update_norm']:.3f}; top {len(res['sub_updates'])} sub-updates by |m_i|:")
    for s in res["sub_updates"]:
        print(f"  v_{s['index']:<6} m={s['coefficient']:+9.4f} |m v|={s['update_norm']:8.4f}  promotes "
              + " ".join(repr(t) for t in s["tokens"]))
    if args.json_out:
        res = {"model": info["path"], "kind": info["kind"], **res}
        write_json_result(args.json_out, res, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
