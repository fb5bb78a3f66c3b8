"""The README's "Use your own data" walkthrough, run as written on small local stand-ins:

- the corpus: the tiny world's images served from 127.0.0.1 and fetched by the real img2dataset
  (its own webdataset output, planted near-copies of benchmark images included);
- the knowledge base: the tiny world's entities written as a Wikidata JSON dump (real shape,
  bz2), plus items the importer must skip;
- the weights: a seeded random-init ``mofi-tiny`` CLIP saved as safetensors (``ViT-B-16`` in
  the README is replaced by ``mofi-tiny``: no download, and small enough for two cores);
- the benchmark: the tiny world's GPR1200-layout images in an ``images/`` folder, as the
  official download unpacks.

The README's params go into params.yaml with ``/data`` replaced by the stand-ins' folder; a
small training budget is added on top (steps, batch sizes), and -- a 20-step control on 150
images reaches no FDR target -- the filter keeps every candidate (rule threshold at -1), as the
other tiny-world tests do. The README's commands then run with ``DATA`` and ``ARCH`` set, and
with ``img2dataset`` on PATH being a wrapper that adds a two-core concurrency (one process, four
threads, a 60 s timeout, two retries): the tool's defaults (16 processes x 256 threads, 10 s)
against a one-process test server on a loaded two-core CI host timed out 45 of 152 fetches.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from flows.pipeline import write_overrides
from mofi_core.io.layout import Layout
from mofi_core.tracking import flatten
from tests.conftest import ROOT, TINY
from tests.img2dataset_run import IMG2DATASET, QUIET, corpus_as_urls, serve
from tests.project import tiny_project
from tests.wikidata_dump import entity, write_dump

MARK = "<!-- own-data-walkthrough"
# kb type -> a P31 class the importer's built-in map turns back into that type
P31 = {"person": "Q5", "landmark": "Q570116", "organization": "Q43229", "product": "Q2424752",
       "species": "Q16521", "place": "Q515"}
# the tiny budget, on top of the README's params (no corpus.* key: there is no demo world)
BUDGET = {k: v for k, v in TINY.items() if not k.startswith(("corpus.", "runtime.corpus"))}
BUDGET.update({"build.rules": ["threshold", "top_k"], "build.threshold": -1.0,
               "train.recipes": ["multitask"]})  # MOFI; one candidate keeps the test short
# what the wrapper adds to the README's img2dataset line (the README leaves them at the defaults)
FETCH = ("--processes_count", "1", "--thread_count", "4", "--timeout", "60", "--retries", "2",
         "--enable_wandb", "False")


def blocks() -> tuple[dict, str]:
    """The README walkthrough's params (YAML) and commands (bash), in that order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    at = text.index(MARK)
    y0 = text.index("```yaml\n", at) + len("```yaml\n")
    y1 = text.index("```", y0)
    b0 = text.index("```bash\n", y1 + 3) + len("```bash\n")
    return yaml.safe_load(text[y0:y1]), text[b0:text.index("```", b0)]


def _here(value, data: Path):
    """A README value with the stand-ins in place of /data and ViT-B-16."""
    if isinstance(value, str):
        return value.replace("/data", str(data)).replace("ViT-B-16", "mofi-tiny")
    return value


def test_the_walkthrough_blocks_are_where_the_test_looks():
    params, commands = blocks()
    flat = flatten(params)
    assert flat["corpus.source"] == "none" and flat["kb.source"] == "wikidata"
    assert flat["build.rules"] == ["fdr", "top_k"]  # no truth: the label-free rule
    for key in ("kb.path", "ingest.input", "decontam.against", "score.pretrained",
                "evaluate.gpr_dir"):
        assert str(flat[key]).startswith("/data/"), key
    for command in ("img2dataset --url_list", "mofi model import $ARCH", "dvc repro"):
        assert command in commands, command
    for flag in FETCH[::2]:  # the wrapper's flags would be given twice
        assert flag not in commands, flag


def _fetch_wrapper(folder: Path) -> Path:
    """An ``img2dataset`` for PATH: the real tool with FETCH after the user's arguments."""
    folder.mkdir()
    wrapper = folder / "img2dataset"
    wrapper.write_text(f'#!/usr/bin/env bash\nexec "{IMG2DATASET}" "$@" {" ".join(FETCH)}\n',
                       encoding="utf-8")
    wrapper.chmod(0o755)
    return folder


def _stand_ins(tiny_world, data: Path) -> dict:
    """Write the user's data the README points at; returns what the test expects of it."""
    import torch
    from safetensors.torch import save_file

    from mofi_core.kb.store import KnowledgeBase
    from mofi_core.models.factory import arch_config, build_clip

    layout, _, _ = tiny_world
    data.mkdir()
    # the corpus: every tiny-world image, behind a URL (planted copies of benchmark images too)
    rows = corpus_as_urls(sorted(layout.corpus_shards.glob("*.tar")), data / "www", limit=10**6)
    # the KB as Wikidata items (Q ids), with items the importer must skip
    kb = KnowledgeBase.open(layout.kb)
    items = [entity(f"Q{1000 + i}", e.name, [P31[e.type]], sitelinks=7, aliases=e.aliases,
                    desc=e.description) for i, e in enumerate(kb)]
    items += [entity("Q9", "Obscure person", ["Q5"], sitelinks=1),
              entity("Q7", "Some galaxy", ["Q318"], sitelinks=40)]
    write_dump(data / "latest-all.json.bz2", items)
    # the weights: a seeded random-init model, as open_clip would save a state dict
    torch.manual_seed(3)
    clip = build_clip(arch_config("mofi-tiny"))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(data / "open_clip_vit_b16.safetensors"))
    # the benchmark: the GPR1200-layout images inside images/, as the download unpacks
    (data / "GPR1200" / "images").mkdir(parents=True)
    gpr = sorted(layout.gpr.glob("*.jpg"))
    for f in gpr:
        (data / "GPR1200" / "images" / f.name).write_bytes(f.read_bytes())
    # the corpus holds near-copies of some of these (the rest copy the labelled splits)
    planted = (layout.truth / "planted.json").read_text().count('"gpr1200/')
    return {"urls": rows, "entities": len(kb), "gpr_images": len(gpr),
            "planted_gpr_copies": planted}


def test_the_readme_walkthrough_runs_on_your_own_data(tiny_world, tmp_path):
    if not IMG2DATASET.is_file():
        pytest.fail(f"{IMG2DATASET} is missing: `make setup` installs img2dataset")
    data = tmp_path / "data"
    want = _stand_ins(tiny_world, data)
    project = tiny_project(tmp_path / "project")
    root = project.root
    params, commands = blocks()
    write_overrides(root / "params.yaml",
                    {**{k: _here(v, data) for k, v in flatten(params).items()}, **BUDGET})

    env = {**project.env, **QUIET, "DATA": str(data), "ARCH": "mofi-tiny",
           "PATH": f"{_fetch_wrapper(tmp_path / 'bin')}{os.pathsep}{project.env['PATH']}"}
    with serve(data / "www") as base:
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(
            [{"url": f"{base}/{r['file']}", "caption": r["caption"]} for r in want["urls"]]),
            data / "urls.parquet")
        script = tmp_path / "walkthrough.sh"  # the README's block, as a user would paste it
        script.write_text(commands, encoding="utf-8")
        done = subprocess.run(["bash", "-euo", "pipefail", str(script)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    lay = Layout(root)

    def metrics(stage: str) -> dict:
        return json.loads((root / "metrics" / f"{stage}.json").read_text())[stage]

    # no demo world was made, and nothing is scored against one
    assert json.loads((lay.corpus / "world.json").read_text())["source"] == "none"
    assert not list(lay.corpus.rglob("*.tar")) and not list(lay.truth.glob("*.parquet"))
    quality = (root / "reports" / "quality.md").read_text()
    assert "no ground truth: corpus.source is none" in quality
    # the KB came from the dump: every item of the world, the two others skipped and counted
    kb = metrics("kb")
    assert kb["entities"] == want["entities"]
    assert kb["skipped.too_few_sitelinks"] == 1 and kb["skipped.P31_not_in_type_map"] == 1
    assert pq.read_table(lay.kb_table, columns=["entity_id"])["entity_id"].to_pylist()[0] == "Q1000"
    # ingest read what img2dataset wrote: every image it fetched
    rows = [r for p in sorted((data / "shards").glob("0*.parquet"))
            for r in pq.read_table(p).to_pylist()]
    fetched = [r for r in rows if r["status"] == "success"]
    failed = sorted({str(r["error_message"]) for r in rows if r["status"] != "success"})
    assert not failed, f"img2dataset could not fetch {len(rows) - len(fetched)}: {failed[:5]}"
    assert len(fetched) == len(want["urls"]) == metrics("ingest")["samples_in"]
    # decontam protected the GPR1200 folder and found the planted near-copies of it
    decontam = metrics("decontam")
    assert decontam["evaluation_images"] == want["gpr_images"]
    assert want["planted_gpr_copies"] >= 1 and decontam["dropped"] >= 1
    # mentions were linked to the dump's Q ids
    mentions = pq.read_table(lay.ner / "mentions.parquet", columns=["entity_id"])
    assert {e for e in mentions["entity_id"].to_pylist() if e} <= {
        f"Q{1000 + i}" for i in range(want["entities"])}
    # evaluate: the GPR1200 folder, and the imported weights beside MOFI and the control
    evaluate = json.loads((root / "metrics" / "evaluate.json").read_text())["evaluate"]
    assert evaluate["benchmark"]["images"] == want["gpr_images"]
    assert {"clip-reference", "baseline", "multitask"} <= set(evaluate)
    # registered: the candidate (imported weights join only with register.extra_models)
    register = json.loads((root / "reports" / "register.json").read_text())
    assert set(register["candidates"]) == {"multitask"} and register["champion"] == 1
    assert 0 < evaluate["clip-reference"]["gpr_map"] <= 1
    header = next(line for line in (root / "reports" / "evaluate.md").read_text().splitlines()
                  if line.startswith("| metric |"))
    assert "clip-reference" in header
    # everything is up to date for DVC; a new dump is seen as a change of the kb stage
    status = project.run("dvc", "status").stdout
    assert "up to date" in status, status
    write_dump(data / "latest-all.json.bz2", [entity("Q1", "Only item", ["Q5"], sitelinks=9)])
    status = project.run("dvc", "status", "kb").stdout
    assert "latest-all.json.bz2" in status and "modified" in status, status
