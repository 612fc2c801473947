"""The repository's layout as the README describes it."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_map():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## How a feature flows (where things live)", 1)[1]
    return section.split("```", 2)[1]


def test_readme_map_names_every_flam_tf_module_and_only_real_ones():
    block = _readme_map()
    # "flam_tf/x.py" or "flam_tf/x/" names a module; a bare "y.py" on a line that starts with a
    # folder names a file in that folder.
    named = set()
    folder = None
    for line in block.splitlines():
        start = re.match(r"(flam_tf/[\w/]*|export/, serving/|benchmarks/)", line)
        if start:
            folder = start.group(1) if start.group(1).endswith("/") else None
        for path in re.findall(r"flam_tf/[\w/.]+", line):
            named.add(path.rstrip("/."))
        if folder and folder.startswith("flam_tf/"):
            for name in re.findall(r"(?<![\w/])(\w+\.py|\w+/)(?=[\s,)])", line):
                named.add(folder + name.rstrip("/"))
    for path in named:
        assert os.path.exists(os.path.join(REPO, path)), f"README names {path}, which is gone"
    top = {
        f"flam_tf/{n}"
        for n in os.listdir(os.path.join(REPO, "flam_tf"))
        if not n.startswith(("_", "."))
        and (n.endswith(".py") or os.path.isdir(os.path.join(REPO, "flam_tf", n)))
        and n != "__pycache__"
    }
    assert top <= {p.split("/")[0] + "/" + p.split("/")[1] for p in named}, (
        f"not in README's map: {sorted(top - {'/'.join(p.split('/')[:2]) for p in named})}"
    )
