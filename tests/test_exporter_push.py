"""Pushing bundles to the TF Serving layout: each push claims its own version, atomically."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from components.exporter.component import push_bundle
from schemas.artifacts import BundleFiles


def fake_bundle(path):
    bundle = BundleFiles(path)
    (bundle.saved_model_dir / "variables").mkdir(parents=True)
    (bundle.saved_model_dir / "saved_model.pb").write_bytes(b"graph")
    (bundle.saved_model_dir / "variables" / "variables.index").write_bytes(b"weights")
    bundle.labels_file.write_text("{}")
    return path


def test_concurrent_pushes_get_distinct_versions_and_leave_no_temporary_folder(tmp_path):
    bundle, base = fake_bundle(tmp_path / "bundle"), tmp_path / "serving" / "model"
    with ThreadPoolExecutor(8) as pool:
        pushed = list(pool.map(lambda _: push_bundle(bundle, base), range(8)))
    assert sorted(int(p.name) for p in pushed) == list(range(1, 9))
    assert sorted(p.name for p in base.iterdir()) == sorted(str(v) for v in range(1, 9))  # no .tmp-* left
    for version in pushed:
        assert (version / "saved_model.pb").read_bytes() == b"graph"
        assert (version / "assets.extra" / "labels.json").is_file()


def test_a_push_after_existing_versions_takes_the_next_number(tmp_path):
    bundle, base = fake_bundle(tmp_path / "bundle"), tmp_path / "serving" / "model"
    (base / "7").mkdir(parents=True)
    (base / "7" / "saved_model.pb").write_bytes(b"old")
    assert push_bundle(bundle, base).name == "8"
