"""The study's findings: the claims C1..C6 (:data:`CLAIMS`), every comparison made for them (:func:`readings`,
Holm-adjusted within each claim) and the sentences the report lists (:func:`findings`), each tagged
``supports``, ``contradicts``, ``mechanical`` (a better reading of a layer the penalty acts on directly:
:func:`penalised_streams`), ``identical`` or ``noise``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from llama_jreg.analysis.stats import holm
from llama_jreg.study.results import by_seed, cells, complete, stat_list
from llama_jreg.study.stats import ALPHA, Stat, Test, _f, _ms, compare, stat


def holm_adjust(readings: list[Reading]) -> None:
    """Holm's correction within each claim: the tests (readings with a p-value) of one claim form a family of
    size m; each gets its adjusted p-value and m."""
    for claim in sorted({r.claim for r in readings}):
        tests = [r.test for r in readings if r.claim == claim and r.test.p is not None]
        for t, p in zip(tests, holm([t.p for t in tests])):
            t.p_holm, t.m = p, len(tests)


# ----------------------------------------------------------------------------------------------- layers


def penalised_psi(r: dict) -> set[int]:
    """The layers l whose Ψ_l the run's penalty R contains (1-indexed; empty at λ = 0): ``final`` and ``paper``
    Ψ_L (``paper``: 1 - cos(h_{L-1}, h_L), pre- or post-norm); ``jump`` with l0 (-1 = L): Ψ_{l0-1} .. Ψ_L (R sums
    max(0, Ψ_l - Ψ_{l-1}) over l = l0..L); ``weighted``: every l with w_l > 0
    (all of them for ``uniform`` and ``linear``, the last ``last_k`` for ``last_k``)."""
    L = r.get("n_layers")
    if not L or not r["jreg.weight"] > 0:
        return set()
    mode = r["jreg.mode"]
    if mode in ("final", "paper"):
        return {L}
    if mode == "jump":
        l0 = int(r.get("jreg.l0", 2))
        return set(range(max(1, (L if l0 == -1 else l0) - 1), L + 1))
    if mode == "weighted":
        if r["jreg.weighting"] == "last_k":
            return set(range(L - int(r.get("jreg.last_k", 2)) + 1, L + 1))
        return set(range(1, L + 1))
    return set()


def penalised_streams(r: dict) -> set[int]:
    """The streams h_k (h_0 = embeddings .. h_L) the penalty is a direct function of: h_{l-1} and h_l for each
    penalised Ψ_l = (1 - cos(h_{l-1}, h_l)) / 2. A better logit-lens reading of such a stream is *mechanical*:
    the penalty pulls it towards its neighbour (for ``final``, h_{L-1} towards the output h_L) by construction."""
    return {k for ell in penalised_psi(r) for k in (ell - 1, ell)}


def exit_is_mechanical(r: dict) -> bool:
    """Whether a larger oracle early-exit saving is mechanical for a run: the penalty acts directly on every
    layer h_1..h_{L-1} an early exit can stop at (any ``jump`` penalty from l0 <= 2; ``final``/``paper`` on a
    2-layer model, where the only early exit, h_1 = h_{L-1}, is the stream the penalty pulls towards h_L)."""
    L = r["n_layers"]
    return L >= 2 and set(range(1, L)) <= penalised_streams(r)


def _layers(ks: list[int]) -> str:
    """``h2–h5`` for a contiguous run of layers, else ``h2, h4``."""
    ks = sorted(ks)
    if len(ks) > 2 and ks == list(range(ks[0], ks[-1] + 1)):
        return f"h{ks[0]}–h{ks[-1]}"
    return ", ".join(f"h{k}" for k in ks)


def _lens_mean(ks: list[int]):
    def f(r: dict) -> float | None:
        lens = r.get("lens_loss")
        return statistics.fmean(lens[k] for k in ks) if lens and len(lens) > max(ks) else None
    return f


def _derived(results: list[dict], fn) -> list[dict]:
    """Per run ``{"seed", "v"}`` with ``v = fn(run)`` (runs where it is None left out)."""
    return [{"seed": r["seed"], "v": v} for r in results if (v := fn(r)) is not None]


CLAIMS = {
    "C1": "pre-trained LMs rotate the hidden state little in the middle layers and jump at the last one (E1)",
    "C2": "without suppression the final-layer jump grows during pre-training (E2: the λ = 0 runs)",
    "C3": "JREG lowers the jump (E3, E4: λ > 0 against λ = 0)",
    "C4": "JREG does not cost validation loss (a higher loss contradicts it, a lower one supports it)",
    "C5": "with JREG the middle layers do more of the work: a lower logit-lens loss of the intermediate layers "
          "(layer 1, which reads the embeddings, apart from the middle layers 2..L-1) and a larger oracle "
          "early-exit saving; a better reading of a layer the penalty acts on directly, and a larger saving when it "
          "acts on every layer an exit can stop at, is mechanical (listed apart, it does not support the claim)",
    "C6": "JREG helps a task: induction accuracy (logit-lens evaluation) and the accuracies of the in-training "
          "task evaluations (e.g. induction, cloze)",
}
STAGE = {"continued": "E4"}  # experiments from scratch are E3


@dataclass
class Reading:
    """One comparison of the findings: claim, what is compared (``text``), the test, the direction that
    supports the claim (``good``), and whether the penalty acts on the compared layers directly."""

    claim: str
    text: str
    test: Test
    good: str                # "lower" | "higher"
    digits: int = 3
    mechanical: bool = False
    note: str = ""
    key: tuple = ()          # (experiment, cell, weight, metric) for lookups (summary table)

    @property
    def tag(self) -> str:
        """supports | contradicts | mechanical | identical | noise."""
        v = self.test.verdict
        if v == "identical":
            return "identical"
        if v not in ("higher", "lower"):
            return "noise"
        if v != self.good:
            return "contradicts"
        return "mechanical" if self.mechanical else "supports"

    def sentence(self) -> str:
        return f"{self.text}: {self.test.says(self.digits)}{self.note}."


def readings(results: list[dict]) -> list[Reading]:
    """Every comparison of the findings C2..C6 (complete runs only), Holm-adjusted within each claim."""
    out: list[Reading] = []
    results = complete(results)
    by_cell = cells(results)
    for exp in sorted({r["experiment"] for r in results}):
        base = by_cell.get((exp, "jump", 0.0))
        if not base:
            continue
        stage = STAGE.get(exp, "E3")
        if stage == "E3":  # emergence from scratch: first vs last logged validation zeta_L at lambda = 0
            first = {r["seed"]: r["history"][0]["val_zeta_L"] for r in base
                     if r["history"] and isinstance(r["history"][0].get("val_zeta_L"), (int, float))}
            t = compare(by_seed(base, "val_zeta_L"), first)
            if t is not None:
                out.append(Reading(
                    "C2", f"C2 · E2, {exp}, λ = 0: validation ζ_L {_ms(Stat(list(first.values())))} at the first "
                          f"measurement ({base[0]['history'][0]['tokens']:,} tokens), "
                          f"{_ms(stat(base, 'val_zeta_L'))} at the end ({base[0]['tokens']:,} tokens)",
                    t, "higher", key=(exp, "jump", 0.0, "C2")))
        for (e, cell, w), rs in by_cell.items():
            if e != exp or (cell == "jump" and w == 0.0):
                continue
            where = f"{stage}, {exp}, {cell} λ = {w:g}"
            checks = [("C3", "val_zeta_L", "validation ζ_L", 3, "lower", False, None),
                      ("C4", "val_loss", "validation loss", 4, "lower", False, None)]
            checks += _lens_checks(rs, base)
            checks += [("C5", "early_exit_saving", "oracle early-exit saving (fraction of blocks)", 3, "higher",
                        exit_is_mechanical(rs[0]), None),
                       ("C6", "induction_accuracy", "induction accuracy (eval)", 3, "higher", False, None)]
            checks += [("C6", f"task_{name}_accuracy", f"{name} accuracy (task evaluation, step "
                        f"{rs[0].get(f'task_{name}_step', '-')})", 3, "higher", False, None)
                       for name in sorted({n for r in rs + base for n in r.get("tasks", [])})]
            for claim, key, label, digits, good, mech, fn in checks:
                ra = _derived(rs, fn) if fn else rs
                rb = _derived(base, fn) if fn else base
                k = "v" if fn else key
                a, b = stat(ra, k), stat(rb, k)
                t = compare(by_seed(ra, k), by_seed(rb, k))
                if a is None or b is None or t is None:
                    continue
                rel = f", {100 * (a.mean - b.mean) / abs(b.mean):+.2f} %" if key == "val_loss" and b.mean else ""
                note = ""
                if stage == "E4" and key == "val_zeta_L":  # continued pre-training starts from a measured jump
                    s0 = Stat([r["history"][0]["val_zeta_L"] for r in rs if r["history"]])
                    note = f"; at step {rs[0]['history'][0]['step']} it was {_ms(s0, digits)}" if s0.n else ""
                if key.startswith("lens_"):
                    note = _largest_layer_change(rs, base, key)
                out.append(Reading(claim, f"{claim} · {where}: {label} {_ms(a, digits)} vs {_ms(b, digits)} at "
                                          f"λ = 0 ({a.mean - b.mean:+.{digits}f}{rel})"
                                          + ((" [mechanical: the penalty acts on every layer an exit can stop at]"
                                              if key == "early_exit_saving" else
                                              " [mechanical: the penalty acts on these layers directly]")
                                             if mech else ""),
                                   t, good, digits, mech, note, key=(exp, cell, w, key)))
    holm_adjust(out)
    return out


def _lens_checks(rs: list[dict], base: list[dict]) -> list[tuple]:
    """C5's logit-lens readings of a cell: layer 1 alone, then the middle layers 2..L-1 split into those the
    cell's penalty does not act on and those it acts on directly (mechanical), each as a mean over its layers."""
    lens = [r.get("lens_loss") for r in rs + base]
    if not all(lens) or len({len(v) for v in lens}) != 1:
        return []
    L = len(lens[0]) - 1
    acted = penalised_streams(rs[0])
    out = [("C5", "lens_h1", "logit-lens loss of layer 1 (h1)", 3, "lower", 1 in acted, _lens_mean([1]))] if L >= 2 \
        else []
    mid = list(range(2, L))
    for ks, mech in (([k for k in mid if k not in acted], False), ([k for k in mid if k in acted], True)):
        if ks:
            out.append(("C5", f"lens_mid_{'acted' if mech else 'free'}",
                        f"logit-lens loss of the middle layers {_layers(ks)} (mean)", 3, "lower", mech,
                        _lens_mean(ks)))
    return out


def _largest_layer_change(rs: list[dict], base: list[dict], key: str) -> str:
    """For a multi-layer lens reading: the layer whose mean loss changed most (so that one layer's large change
    is not hidden in a mean)."""
    if key == "lens_h1":
        return ""
    a, b = stat_list(rs, "lens_loss"), stat_list(base, "lens_loss")
    acted = penalised_streams(rs[0])
    ks = [k for k in range(2, len(a) - 1) if (k in acted) == key.endswith("acted")]
    if len(ks) < 2:
        return ""
    k = max(ks, key=lambda k: abs(a[k] - b[k]))
    return f"; largest change of one layer: h{k} {a[k] - b[k]:+.3f}"


def findings(results: list[dict], e1: list[dict] | None = None) -> list[tuple[str, str]]:
    """(tag, sentence) pairs, tag in supports | contradicts | mechanical | identical | noise, each sentence
    naming its claim (:data:`CLAIMS`); every number is taken from ``results`` (per-run dicts of
    :func:`run_result`) and ``e1`` (``llama-jreg jump --json`` results with a ``name``)."""
    out: list[tuple[str, str]] = []
    for m in e1 or []:
        psi = m["psi"]
        L = len(psi)
        if L < 4:
            continue
        mid = psi[1:-1]  # layers 2..L-1: layer 1 reads the raw embeddings
        k = mid.index(max(mid)) + 2
        tag = "supports" if psi[-1] > max(mid) and m["zeta_L"] > 0 else "contradicts"
        out.append((tag, f"C1 · E1, {m['name']}: Ψ_L = {_f(psi[-1], 4)} is "
                         f"{psi[-1] / statistics.median(mid):.1f}x the median of layers 2..{L - 1} "
                         f"({_f(statistics.median(mid), 4)}) and {'above' if psi[-1] > max(mid) else 'not above'} "
                         f"the largest of them ({_f(max(mid), 4)}, layer {k}); ζ_L = {_f(m['zeta_L'], 2)} "
                         f"(post-norm {_f(m['zeta_L_post_norm'], 2)}); layer 1 (from the embeddings): "
                         f"{_f(psi[0], 4)}."))
    out += [(r.tag, r.sentence()) for r in readings(results)]
    return out


def testing_summary(rds: list[Reading]) -> str:
    """How many comparisons the findings made and the false-positive rate the rule implies."""
    tested = [r for r in rds if r.test.p is not None]
    fams = {}
    for r in tested:
        fams[r.claim] = fams.get(r.claim, 0) + 1
    ident = sum(r.test.identical for r in rds)
    untested = len(rds) - len(tested) - ident
    k = len(fams)
    resolved = sum(r.test.verdict in ("higher", "lower") for r in tested)
    per = ", ".join(f"{c}: m = {m}" for c, m in sorted(fams.items())) or "none"
    line = (f"**Comparisons made: {len(rds)}** ({len(tested)} tested, {ident} with identical values, {untested} "
            f"without a test: one seed or no spread); tests per claim ({per}); {resolved} resolved after the "
            "correction.")
    if k:
        line += (f" Holm's correction keeps the chance that a claim gets any false 'supports' or 'contradicts' "
                 f"from seed noise at most {100 * ALPHA:g} % when there is no effect; over the {k} claims tested "
                 f"at most {100 * min(1.0, k * ALPHA):.0f} % (Bonferroni; {100 * (1 - (1 - ALPHA) ** k):.0f} % "
                 f"if the claims were independent). Without the correction, {len(tested)} tests at "
                 f"{100 * ALPHA:g} % would call about {ALPHA * len(tested):.1f} differences by chance.")
    return line
