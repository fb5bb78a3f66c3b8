"""Label precision without ground truth: decoy-calibrated mixture over each image's candidates.

``score`` scores every image against its NER candidates *and* against ``score.null_samples``
random entities the alt-text never named (decoys). A wrong candidate is an entity the image
does not show, so its score is drawn like a decoy's; the decoy scores give that null
distribution ``f0`` directly, per run, as target-decoy search does in proteomics.

Plain target-decoy counting (decoys that would pass / targets that pass) assumes every
candidate could be wrong, and on the demo world it underestimated precision by 3-5 points. The
model here adds what a label is: an image shows at most one of its candidates. Per image, either
none of its ``c`` candidates is depicted (prior ``pi_none``) or candidate ``j`` is (prior
``(1 - pi_none) / c``); a depicted candidate's score has density ``f1``, every other score
``f0``. With ``f1`` free, the likelihood cannot tell a null image from a depicted score that
looks null (EM drifts to ``pi_none`` = 0), so ``pi_none`` is estimated first, as Storey's
q-values do: each image's p-value is the chance that the best of ``c`` decoys beats its best
candidate, ``pi_none(lambda)`` = share of p-values above ``lambda`` / (1 - lambda), and
``lambda`` is the one whose bootstrap mean squared error against the smallest estimate is
lowest (Storey, Taylor and Siegmund 2004). Depicted images with a low best score count as
null, so the estimate leans conservative. EM then fits ``f1`` (a histogram) with ``f0`` and
``pi_none`` fixed, and the posterior that candidate ``j`` is the depicted one is::

    (1 - pi_none) / c * f1(s_j) / f0(s_j)
    -------------------------------------------------
    pi_none + (1 - pi_none) / c * sum_k f1(s_k) / f0(s_k)

With ``build.link_weight`` > 0 the prior of candidate ``j`` is ``(1 - pi_none)`` times its
share of the image's link scores (``link_j / sum_k link_k``: ner's text evidence, a softmax
over each mention's candidates) instead of ``1 / c``. Namesakes score almost alike, so under a
uniform prior each gets a share of the posterior and the estimate counts a right namesake as
mostly wrong; the link score says which one the text points at.

The estimated precision of any set of kept labels is the mean posterior over them; its
complement is the estimated false-discovery rate. Where real wrong candidates are harder than
random entities (a look-alike named in the alt-text), their scores sit above the decoys' and the
estimate is optimistic; the demo report measures the gap against the truth.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mofi_core.config.build import BuildConfig
from mofi_core.curate import rules
from mofi_core.io import tables

CURVE_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(-0.2, 0.951, 0.01), 2))
_PSEUDO = 0.5  # per null bin: no bin is impossible under the null
_F1_FLOOR = 1e-3  # per depicted-score bin, before normalising


class LabelFreeError(ValueError):
    """The scores cannot support a label-free estimate (no decoys, nothing to fit)."""


@dataclass(frozen=True)
class Candidates:
    """Every scored candidate, grouped by image: ``scores[i, j]`` (NaN-padded), entity ids, and
    with ``build.link_weight`` > 0 their link scores (``link``) and the value ``top_k`` ranks
    them by (``rank``), same shape."""

    keys: list[str]
    entities: list[list[str]]
    scores: np.ndarray  # (images, widest) float64, NaN where an image has fewer candidates
    rank: np.ndarray | None = None  # (images, widest) score + link_weight * log(link score)
    link: np.ndarray | None = None  # (images, widest) ner's link score, the prior's weight

    @classmethod
    def from_rows(cls, keys: Iterable[str], entities: Iterable[str], scores: Iterable[float],
                  links: Iterable[float] | None = None, link_weight: float = 0.0
                  ) -> Candidates:
        by_key: dict[str, list[tuple[str, float, float]]] = {}
        for k, e, s, x in zip(keys, entities, scores, links if links is not None else scores,
                              strict=True):
            by_key.setdefault(k, []).append((e, float(s), float(x)))
        order = sorted(by_key)
        width = max((len(v) for v in by_key.values()), default=0)
        grid = np.full((len(order), width), np.nan)
        lgrid = np.full((len(order), width), np.nan) if links is not None else None
        ents = []
        for i, k in enumerate(order):
            ents.append([e for e, _, _ in by_key[k]])
            grid[i, :len(by_key[k])] = [s for _, s, _ in by_key[k]]
            if lgrid is not None:
                lgrid[i, :len(by_key[k])] = [x for _, _, x in by_key[k]]
        rank = None
        if lgrid is not None:
            rank = grid + link_weight * np.log(np.maximum(lgrid, rules.LINK_FLOOR))
        return cls(order, ents, grid, rank, lgrid)

    def prior(self) -> np.ndarray | None:
        """(images, widest): each candidate's share of its image's link scores (0 on the
        padding); None without link scores (the uniform prior)."""
        if self.link is None:
            return None
        w = np.nan_to_num(np.maximum(self.link, rules.LINK_FLOOR), nan=0.0)
        return w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class DecoyMixture:
    """The fitted model: bin edges, null density (decoys), depicted density, ``pi_none``."""

    edges: np.ndarray
    null: np.ndarray
    depicted: np.ndarray
    pi_none: float
    storey_lambda: float
    iterations: int
    images: int
    decoys: int

    def _bins(self, scores: np.ndarray) -> np.ndarray:
        inner = np.searchsorted(self.edges, np.nan_to_num(scores), side="right") - 1
        return np.clip(inner, 0, len(self.null) - 1)

    def posteriors(self, cands: Candidates) -> np.ndarray:
        """(images, widest): P(candidate j is the entity the image shows); NaN padding."""
        return _posteriors(cands.scores, self._bins(cands.scores), self.null, self.depicted,
                           self.pi_none, cands.prior())[0]

    def summary(self) -> dict:
        return {"pi_none": round(self.pi_none, 6), "storey_lambda": self.storey_lambda,
                "iterations": self.iterations,
                "images": self.images, "decoys": self.decoys, "bins": len(self.null)}


def _posteriors(scores, bins, f0, f1, pi_none, prior=None):
    valid = ~np.isnan(scores)
    ratio = np.where(valid, f1[bins] / f0[bins], 0.0)
    if prior is None:  # every candidate equally likely
        prior = np.where(valid, 1.0 / np.maximum(valid.sum(axis=1), 1)[:, None], 0.0)
    weight = (1.0 - pi_none) * prior * ratio
    total = pi_none + weight.sum(axis=1)
    post = np.where(valid, weight / total[:, None], np.nan)
    return post, pi_none / total


LAMBDAS = tuple(float(x) for x in np.round(np.arange(0.05, 0.951, 0.05), 2))
BOOTSTRAPS = 200


def image_pvalues(cands: Candidates, decoys: np.ndarray) -> np.ndarray:
    """Per image: P(the best of c decoy scores >= its best candidate score), c = its number of
    candidates, from the pooled decoy distribution."""
    d = np.sort(decoys)
    top = np.nanmax(cands.scores, axis=1)
    c = (~np.isnan(cands.scores)).sum(axis=1)
    below = np.searchsorted(d, top, side="left") / len(d)  # P(decoy < best)
    return 1.0 - below ** c


def storey_pi_none(p: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """``(pi_none, lambda)``: Storey's estimate of the share of null images, ``lambda`` chosen
    by bootstrap mean squared error (no ground truth involved)."""
    lams = np.asarray(LAMBDAS)
    p = np.asarray(p)

    def pis(values: np.ndarray) -> np.ndarray:
        return np.minimum(1.0, (values[:, None] > lams).mean(axis=0) / (1.0 - lams))

    est = pis(p)
    rng = np.random.default_rng(seed)
    boot = np.stack([pis(p[rng.integers(0, len(p), len(p))]) for _ in range(BOOTSTRAPS)])
    mse = ((boot - est.min()) ** 2).mean(axis=0)
    best = int(np.argmin(mse))
    return float(est[best]), float(lams[best])


def fit(cands: Candidates, decoys: np.ndarray, bins: int = 40, max_iter: int = 2000,
        tol: float = 1e-9) -> DecoyMixture:
    """``pi_none`` by Storey's rule, then EM for the depicted-score histogram on [-1, 1] in
    ``bins`` bins, the null histogram fixed from ``decoys`` (the same images' decoy scores)."""
    decoys = np.asarray(decoys, dtype=np.float64)
    decoys = decoys[np.isfinite(decoys)]
    if len(decoys) == 0:
        raise LabelFreeError("no decoy scores: set score.null_samples > 0 (random entities "
                             "scored per image) and re-run score")
    if len(cands) == 0:
        raise LabelFreeError("no scored candidates to estimate label precision from")
    pi_none, lam = storey_pi_none(image_pvalues(cands, decoys))
    edges = np.linspace(-1.0, 1.0, bins + 1)
    f0 = (np.histogram(np.clip(decoys, -1, 1), edges)[0] + _PSEUDO)
    f0 = f0 / f0.sum()
    scores = cands.scores
    b = np.clip(np.searchsorted(edges, np.nan_to_num(scores), side="right") - 1, 0, bins - 1)
    # EM over the scored candidates only (the grid's padding can be most of it when a few
    # images have many namesakes): each candidate's bin, image and prior, flat
    valid = ~np.isnan(scores)
    rows = np.nonzero(valid)[0]
    bv = b[valid]
    prior = cands.prior()
    pv = prior[valid] if prior is not None else 1.0 / valid.sum(axis=1)[rows]
    f1, iterations = f0.copy(), 0
    while iterations < max_iter:
        iterations += 1
        weight = (1.0 - pi_none) * pv * (f1 / f0)[bv]
        post = weight / (pi_none + np.bincount(rows, weights=weight, minlength=len(cands)))[rows]
        h = np.bincount(bv, weights=post, minlength=bins) + _F1_FLOOR
        new_f1 = h / h.sum()
        step = float(np.abs(new_f1 - f1).max())
        f1 = new_f1
        if step < tol:
            break
    return DecoyMixture(edges, f0, f1, pi_none, lam, iterations, len(cands), len(decoys))


def in_sample(key: str, fraction: float) -> bool:
    """A fixed, key-seeded share of the images (the same whatever the shard order)."""
    return fraction >= 1.0 or zlib.crc32(key.encode()) < fraction * 2**32


def read_candidates(score_dir: Path, exclude: frozenset[str] = frozenset(),
                    fraction: float = 1.0, ner_dir: Path | None = None,
                    link_weight: float = 0.0) -> tuple[Candidates, np.ndarray]:
    """The candidates and decoy scores of ``score_dir`` (its per-shard parts), leaving out
    ``exclude`` (decontam's drops) and keeping a ``fraction`` of the images by key. With a
    ``link_weight``, each candidate's ``top_k`` rank value too, from ``ner_dir``'s link scores."""
    keys: list[str] = []
    ents: list[str] = []
    scs: list[float] = []
    links: list[float] = []
    decoys: list[np.ndarray] = []
    parts = sorted((score_dir / "parts").glob("*.scores.parquet"))
    if not parts:
        raise FileNotFoundError(f"no score parts in {score_dir / 'parts'}; run score first")
    for part in parts:
        t = tables.read_table(part, tables.SCORES)
        rows = [(k, e, s) for k, e, s in zip(t["key"].to_pylist(), t["entity_id"].to_pylist(),
                                             t["score"].to_pylist(), strict=True)
                if k not in exclude and in_sample(k, fraction)]
        keys += [r[0] for r in rows]
        ents += [r[1] for r in rows]
        scs += [r[2] for r in rows]
        if link_weight:
            links += rules.shard_links(ner_dir, part, [r[0] for r in rows], [r[1] for r in rows])
        null = score_dir / "parts" / part.name.replace(".scores.", ".null.")
        if null.is_file():
            n = tables.read_table(null, tables.NULL_SCORES)
            for k, row in zip(n["key"].to_pylist(), n["scores"].to_pylist(), strict=True):
                if row and k not in exclude and in_sample(k, fraction):
                    decoys.append(np.asarray(row, dtype=np.float64))
    return (Candidates.from_rows(keys, ents, scs, links if link_weight else None, link_weight),
            np.concatenate(decoys) if decoys else np.zeros(0))


def estimate(score_dir: Path, cfg: BuildConfig, exclude: frozenset[str] = frozenset(),
             ner_dir: Path | None = None) -> tuple[DecoyMixture, Candidates, np.ndarray]:
    """Fit on the run's own scores: the model, the candidates and their posteriors."""
    cands, decoys = read_candidates(score_dir, exclude, cfg.fdr_sample, ner_dir,
                                    cfg.link_weight)
    model = fit(cands, decoys, cfg.fdr_bins)
    return model, cands, model.posteriors(cands)


def ranks(cands: Candidates) -> np.ndarray:
    """(images, widest): each candidate's rank within its image, best first: how many of the
    image's candidates rank strictly higher (by ``cands.rank`` when it has one, else the
    score; tied candidates share a rank, as ``rules.top_k`` keeps every candidate tied with the
    k-th)."""
    s = np.nan_to_num(cands.scores if cands.rank is None else cands.rank, nan=-np.inf)
    out = np.zeros(s.shape, dtype=np.int64)
    step = max(1, 2**22 // max(1, s.shape[1] ** 2))  # a few MB of comparisons at a time
    for a in range(0, len(s), step):
        block = s[a:a + step]
        out[a:a + step] = (block[:, None, :] > block[:, :, None]).sum(axis=2)
    return out


def per_image_keep(cands: Candidates, cfg: BuildConfig, threshold: float,
                   rank: np.ndarray | None = None) -> np.ndarray:
    """(images, widest) bool: the candidates ``threshold`` and ``top_k`` keep (the vocabulary
    cut and ``null_quantile`` are not modelled here)."""
    s = cands.scores
    keep = ~np.isnan(s) & (np.nan_to_num(s, nan=-np.inf) >= threshold)
    if "top_k" in cfg.rules:
        keep &= (ranks(cands) if rank is None else rank) < cfg.top_k
    return keep


def curve(cands: Candidates, post: np.ndarray, cfg: BuildConfig,
          thresholds: Iterable[float] = CURVE_THRESHOLDS) -> list[dict]:
    """Per threshold: the labels the per-image rules keep, and their estimated precision."""
    out = []
    with_cands = max(len(cands), 1)
    rank = ranks(cands)
    for t in thresholds:
        keep = per_image_keep(cands, cfg, t, rank)
        n, images = int(keep.sum()), int(keep.any(axis=1).sum())
        out.append({"threshold": float(t), "labels": n, "images": images,
                    "image_share": images / with_cands,
                    "estimated_precision": float(post[keep].mean()) if n else None})
    return out


def choose_threshold(points: list[dict], target_fdr: float) -> dict:
    """The lowest threshold whose kept labels have an estimated FDR at or under the target --
    the q-value cut: a label is kept when some threshold at or below its score meets the
    target. (Requiring every higher threshold to meet it too would let the noisy estimates of
    the few labels at the top pull the choice up to almost nothing kept.)"""
    for p in points:  # ascending thresholds
        est = p["estimated_precision"]
        if est is not None and 1.0 - est <= target_fdr + 1e-12:  # 1 - 0.94 = 0.0600...05
            return p
    best = max((p for p in points if p["estimated_precision"] is not None),
               key=lambda p: p["estimated_precision"], default=None)
    where = (f"best estimated precision {best['estimated_precision']:.3f} at threshold "
             f"{best['threshold']:.2f}") if best else "no threshold keeps any label"
    raise LabelFreeError(f"build.target_fdr {target_fdr}: no threshold reaches it ({where}); "
                         "raise build.target_fdr or use rule threshold")


def pairs_posterior(cands: Candidates, post: np.ndarray) -> dict[tuple[str, str], float]:
    """(key, entity) -> posterior, for scoring a built label set."""
    return {(k, e): float(post[i, j]) for i, (k, ents) in enumerate(zip(cands.keys,
                                                                       cands.entities,
                                                                       strict=True))
            for j, e in enumerate(ents)}


def labels_precision(labels: pa.Table, posterior: dict[tuple[str, str], float]) -> float | None:
    """Mean posterior over the (key, entity) labels of an I2E ``labels.parquet`` table (those
    in the fitted sample)."""
    vals = [posterior[(k, e)] for k, es in zip(labels["key"].to_pylist(),
                                               labels["entity_ids"].to_pylist(), strict=True)
            for e in es if (k, e) in posterior]
    return float(np.mean(vals)) if vals else None
