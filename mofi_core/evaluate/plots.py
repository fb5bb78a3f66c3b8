"""Evaluation figures, each written atomically as a PNG.

The retrieval grid is one image drawn with PIL. The other figures are built with matplotlib's
object API on an Agg canvas (no pyplot, so no global backend state and no display needed). The
temporary file of ``atomic_path`` has no ``.png`` suffix, hence the explicit ``format="png"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mofi_core.io.atomic import atomic_path

THUMB = 96
DPI = 100


def _save(fig: Figure, out_png: Path | str) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(out_png)


def pick_queries(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` query indices spread over classes: one image of each class (classes in a seeded
    order) before a second image of any class, and so on."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    members = [rng.permutation(np.flatnonzero(labels == c))
               for c in rng.permutation(np.unique(labels))]
    order = [m[r] for r in range(max(map(len, members))) for m in members if r < len(m)]
    return np.asarray(order[:n], dtype=np.int64)


def retrieval_tiles(features: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """For each query, its ``k`` most cosine-similar *other* images (ties: lower index first) and
    whether each one shares the query's class: ``(neighbours [q, k], same_class [q, k])``."""
    feats = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = feats[queries] @ feats.T
    sims[np.arange(len(queries)), queries] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    labels = np.asarray(labels)
    return top, labels[top] == labels[queries][:, None]


FRAME, TITLE, GAP = 3, 14, 8  # retrieval grid: frame width, title band, space between tiles
FRAMES = {"black": (0, 0, 0), "green": (0, 150, 0), "red": (210, 0, 0)}


def _thumb(path: Path) -> Image.Image:
    """The image scaled to fit THUMB x THUMB (up or down), its aspect kept."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = THUMB / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        return img.resize(size, Image.Resampling.BICUBIC) if size != img.size else img


def retrieval_grid(files: Sequence[Path], labels: np.ndarray, features: np.ndarray,
                   out_png: Path | str, queries: int = 6, k: int = 8, seed: int = 0) -> Path:
    """One row per query: the query, then its top-k retrieved other images, framed green when
    they share the query's class and red otherwise, each titled with its label.

    Drawn as one image with PIL (a matplotlib axes per tile took ~3 s a model: most of the
    evaluate stage's figure time)."""
    from PIL import ImageDraw

    if len(files) < 2 or len(files) != len(labels) or len(files) != len(features):
        raise ValueError(f"retrieval grid needs >= 2 images with one label and one feature each "
                         f"(files {len(files)}, labels {len(labels)}, features {len(features)})")
    k = min(k, len(files) - 1)
    rows = pick_queries(labels, queries, seed)
    top, same = retrieval_tiles(features, labels, rows, k)
    cell_w, cell_h = THUMB + 2 * FRAME, TITLE + THUMB + 2 * FRAME
    canvas = Image.new("RGB", (GAP + (k + 1) * (cell_w + GAP), GAP + len(rows) * (cell_h + GAP)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    thumbs: dict[int, Image.Image] = {}
    for r, q in enumerate(rows):
        for c, idx in enumerate(int(i) for i in [q, *top[r]]):
            if idx not in thumbs:
                thumbs[idx] = _thumb(Path(files[idx]))
            colour = "black" if c == 0 else ("green" if same[r, c - 1] else "red")
            x, y = GAP + c * (cell_w + GAP), GAP + r * (cell_h + GAP)
            title = f"{'query ' if c == 0 else ''}{labels[idx]}"
            draw.text((x, y), title[:16], fill=(0, 0, 0))
            thumb = thumbs[idx]
            left = x + FRAME + (THUMB - thumb.width) // 2
            top_ = y + TITLE + FRAME + (THUMB - thumb.height) // 2
            draw.rectangle((left - FRAME, top_ - FRAME, left + thumb.width + FRAME - 1,
                            top_ + thumb.height + FRAME - 1), fill=FRAMES[colour])
            canvas.paste(thumb, (left, top_))
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(out_png)


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def tsne_plot(features: np.ndarray, labels: np.ndarray, out_png: Path | str,
              groups: np.ndarray | None = None, seed: int = 0, max_points: int = 3000) -> Path:
    """2-D t-SNE of a seeded subsample, coloured by class, or by ``groups`` (e.g. seen/unseen or
    GPR1200 domain) with a legend. Perplexity shrinks with few points (it must stay below n)."""
    from sklearn.manifold import TSNE

    keep = _subsample(len(features), max_points, seed)
    if len(keep) < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {len(keep)}")
    perplexity = float(min(30.0, max(1.0, (len(keep) - 1) / 3)))
    # 500 iterations, not sklearn's 1,000: on the demo's 800 benchmark embeddings the final KL
    # divergence is 0.733 against 0.723 (the map has settled), in 1.2 s instead of 1.9 s
    xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
              learning_rate="auto", max_iter=500).fit_transform(np.asarray(features)[keep])
    colour_by = np.asarray(labels if groups is None else groups)[keep]
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    values = np.unique(colour_by)
    for i, v in enumerate(values):
        m = colour_by == v
        ax.scatter(xy[m, 0], xy[m, 1], s=8, color=f"C{i % 10}", label=str(v))
    if groups is not None or len(values) <= 10:
        ax.legend(fontsize=7, markerscale=1.5)
    ax.set(title=f"t-SNE of {len(keep)} embeddings", xticks=[], yticks=[])
    fig.tight_layout()
    return _save(fig, out_png)


def pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_png: Path | str) -> Path:
    """One line per model: mean interpolated precision at each recall level."""
    if not curves:
        raise ValueError("pr_curves needs at least one model's (recall, precision) arrays")
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, (recall, precision) in curves.items():
        if len(recall) != len(precision):
            raise ValueError(f"{name}: {len(recall)} recall levels but {len(precision)} "
                             "precision values")
        ax.plot(recall, precision, label=name)
    ax.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.05),
           title="precision-recall")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, out_png)


def loss_curve(rows: Sequence[dict], out_png: Path | str, title: str) -> Path:
    """Training loss against step (one line per logged loss column), as a PNG."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    steps = [r["step"] for r in rows]
    for col in sorted(k for k in rows[0] if k == "loss" or k.endswith("_loss")):
        ax.plot(steps, [r[col] for r in rows], label=col, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)


COMPARED = ("gpr_map", "gpr_map_seen", "gpr_map_unseen", "zero_shot_top1", "probe_top1")


def comparison_bars(results: dict[str, dict[str, float]], out_png: Path | str,
                    labels: dict[str, str] | None = None) -> Path:
    """One group of bars per metric of :data:`COMPARED`, one bar per model (a model without
    the metric, e.g. zero-shot without a text tower, has no bar)."""
    labels = labels or {}
    metrics = [m for m in COMPARED if any(m in r for r in results.values())]
    fig = Figure(figsize=(max(6.0, 1.6 * len(metrics) + 2), 4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(results))
    for i, (name, row) in enumerate(results.items()):
        xs = [j + i * width for j, m in enumerate(metrics) if m in row]
        ax.bar(xs, [row[m] for m in metrics if m in row], width, label=labels.get(name, name))
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(fontsize="small")
    ax.set_title("every model on the same benchmark")
    fig.tight_layout()
    return _save(fig, out_png)
