"""Figures a person would rather look at than read (written by the evaluate stage).

* figure2_manipulation.png: the paper's Figure 2: a query, then per attribute type one manipulation
  and its top-3 gallery images; green border = the image has the target (shape, color, pattern).
  One row per method for the same query (the default FLAM above FLAM (paper)).
* figure3_embeddings.png: the paper's Figure 3: attribute embeddings of evaluation features before
  and after manipulating a third of them to color=red (t-SNE when scikit-learn is installed, else
  PCA), one panel per attribute type, points coloured by their original class.
* training_curves.png: the loss curves of every training stage.
The grid needs only Pillow; the plots need matplotlib (`pip install .[plot]`), and are skipped
with a warning without it.
"""

import glob
import json
import os
from typing import Dict, List

import numpy as np
from absl import logging

from flam_tf import vocabulary


def write_all(ctx, features, queries, fam_rows, ranked_by_method, flam_model) -> List[str]:
    """Writes every figure; returns their paths relative to the run directory.

    Args:
        features: float32 [N, D], the feature store in manifest order (already loaded).
        queries: metrics.FamQueries of the FAM gallery.
        fam_rows: int [G], manifest rows of the FAM gallery.
        ranked_by_method: {method: int [Q, K]} ranked gallery indices per query, for the methods
            shown side by side in figure 2.
        flam_model: the trained FeatureManipulator.
    """
    paths = [figure2_grid(ctx, queries, fam_rows, ranked_by_method)]
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        logging.warning(
            "matplotlib is not installed: skipping figure3 and training curves "
            "(pip install '.[plot]')"
        )
        return [os.path.relpath(p, ctx.run.root) for p in paths]
    paths.append(figure3_embeddings(ctx, features, fam_rows, flam_model))
    paths.append(training_curves(ctx))
    return [os.path.relpath(p, ctx.run.root) for p in paths]


def _load_image(ctx, path: str, size: int):
    from PIL import Image

    full = path if os.path.isabs(path) else os.path.join(ctx.manifest.root, path)
    return Image.open(full).convert("RGB").resize((size, size), Image.BILINEAR)


def figure2_grid(ctx, queries, fam_rows, ranked_by_method, top: int = 3, cell: int = 96) -> str:
    """Per query and method, a row: query | per attribute type: 'a -> value' then its top-`top`."""
    from PIL import Image, ImageDraw

    m = ctx.manifest
    labels = m.label_matrix()[fam_rows]
    paths = m["path"][fam_rows]
    # Queries with a manipulation for every attribute type, spread over the evaluation set.
    by_query: Dict[int, Dict[int, int]] = {}
    for row, (q, a) in enumerate(zip(queries.query_index, queries.attribute_index)):
        by_query.setdefault(int(q), {}).setdefault(int(a), row)
    full = [q for q, d in by_query.items() if len(d) == len(vocabulary.ATTRIBUTE_TYPES)]
    chosen = full[:: max(1, len(full) // max(1, ctx.config.evaluation.figure_queries))]
    chosen = chosen[: ctx.config.evaluation.figure_queries]
    label_h, pad = 28, 6
    width = cell + len(vocabulary.ATTRIBUTE_TYPES) * (top * cell + pad) + pad
    rows = [(q, method, ranked) for q in chosen for method, ranked in ranked_by_method.items()]
    sheet = Image.new("RGB", (width, max(1, len(rows)) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)

    def paste(index, x, y, border, caption):
        sheet.paste(_load_image(ctx, paths[index], cell - 6), (x + 3, y + label_h + 3))
        draw.rectangle(
            [x, y + label_h, x + cell - 1, y + label_h + cell - 1], outline=border, width=3
        )
        draw.text((x + 2, y + 2), caption, fill="black")

    def names(row):
        return "/".join(
            vocabulary.CLASSES[a][row[i]][:6] for i, a in enumerate(vocabulary.ATTRIBUTE_TYPES)
        )

    for r, (q, method, ranked) in enumerate(rows):
        y = r * (cell + label_h)
        paste(q, 0, y, (0, 160, 0), f"{method}\n" + names(labels[q]))
        for a, attribute in enumerate(vocabulary.ATTRIBUTE_TYPES):
            row = by_query[q][a]
            target = queries.target_labels[row]
            x0 = cell + pad + a * (top * cell + pad)
            for t in range(top):
                g = int(ranked[row, t])
                hit = np.array_equal(labels[g], target)
                caption = (
                    f"{attribute}->{vocabulary.CLASSES[attribute][target[a]]}\n" if t == 0 else "\n"
                ) + names(labels[g])
                paste(g, x0 + t * cell, y, (0, 170, 0) if hit else (200, 0, 0), caption)
    path = ctx.run.path("figures", "figure2_manipulation.png")
    sheet.save(path)
    return path


def _project(points: np.ndarray, seed: int) -> np.ndarray:
    try:
        from sklearn.manifold import TSNE

        return TSNE(2, random_state=seed, init="pca", perplexity=30).fit_transform(points)
    except ImportError:
        centred = points - points.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T


def figure3_embeddings(
    ctx,
    features,
    fam_rows,
    flam_model,
    limit: int = 1500,
    attribute: str = "color",
    value: str = "red",
) -> str:
    import matplotlib.pyplot as plt
    import tensorflow as tf

    m = ctx.manifest
    is_query = m.has_role("fam_query")[fam_rows]
    rows = fam_rows[is_query][:limit]
    x = features[rows]
    labels = m.label_matrix()[rows]
    rng = np.random.default_rng(ctx.config.runtime.seed)
    picked = rng.permutation(len(x))[: len(x) // 3]
    x_manip = np.asarray(flam_model.manipulate(x[picked], attribute, value))
    before = flam_model.embedder.embed(tf.constant(x))
    after = flam_model.embedder.embed(tf.constant(x_manip))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    cmap = plt.get_cmap("tab10")
    for ax, (i, a) in zip(axes, enumerate(vocabulary.ATTRIBUTE_TYPES)):
        points = np.concatenate([np.asarray(before[a]), np.asarray(after[a])])
        xy = _project(points, ctx.config.runtime.seed)
        orig, man = xy[: len(x)], xy[len(x) :]
        for c, name in enumerate(vocabulary.CLASSES[a]):
            sel = labels[:, i] == c
            ax.scatter(orig[sel, 0], orig[sel, 1], s=6, color=cmap(c), alpha=0.5, label=name)
            sel_m = labels[picked, i] == c
            ax.scatter(man[sel_m, 0], man[sel_m, 1], s=18, color=cmap(c), marker="x")
        ax.set_title(f"{a} embedding (x: manipulated to {attribute}={value})")
        ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.tight_layout()
    path = ctx.run.path("figures", "figure3_embeddings.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def training_curves(ctx) -> str:
    import matplotlib.pyplot as plt

    files = sorted(glob.glob(ctx.run.path("logs", "*_history.json")))
    fig, axes = plt.subplots(
        1, max(1, len(files)), figsize=(4 * max(1, len(files)), 3.2), squeeze=False
    )
    for ax, path in zip(axes[0], files):
        with open(path) as f:
            history = json.load(f)
        for key, values in history.items():
            if key.endswith("loss") or key == "cycle_cosine":
                ax.plot(np.arange(1, len(values) + 1), values, label=key)
        ax.set_title(os.path.basename(path).replace("_history.json", ""))
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = ctx.run.path("figures", "training_curves.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
