"""The README's main job (`vlptm demo`) end to end on a tiny world, and its cache on a rerun."""
import json

from vlptm.cli import main

TINY = ["--num-images", "40", "--detector-minutes", "0.1", "--pretrain-steps", "4", "--no-serve"]


def test_demo_runs_every_stage_then_serves_from_cache(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), *TINY]) == 0
    out = capsys.readouterr().out
    for command in ("generate-scenes", "train-detector", "extract", "pretrain", "index", "eval-retrieval", "search"):
        assert f"$ vlptm {command}" in out
    assert "query: a large red circle" in out
    results = json.loads((workdir / "retrieval.json").read_text())
    for mode in ("itc", "two-stage"):  # held-out recalls of both search modes, as percentages
        assert 0 <= results[mode]["t2i"]["r1"] <= results[mode]["t2i"]["r10"] <= 100
    assert results["images"] == sum(1 for e in json.loads((workdir / "scenes" / "captions.json").read_text())
                                    if e["split"] == "val")
    from vlptm.features import FeatureStore

    assert len(FeatureStore.open(workdir / "store")) == 40  # every generated image was extracted
    # A second run skips every finished stage and only searches again.
    assert main(["demo", "--workdir", str(workdir), *TINY]) == 0
    again = capsys.readouterr().out
    assert again.count("cached (") == 6 and "$ vlptm train-detector" not in again
    assert "query: a large red circle" in again


def test_demo_refuses_a_workdir_made_with_other_settings(tmp_path):
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "demo.json").write_text(json.dumps({"num_images": 5, "seed": 1}))
    try:
        main(["demo", "--workdir", str(workdir), *TINY])
    except SystemExit as err:
        assert "other settings" in str(err)
    else:
        raise AssertionError("demo reused a workdir made with other settings")
