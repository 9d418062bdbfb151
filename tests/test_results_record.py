"""Result records round-trip, hash configs stably and refuse what they cannot read."""

import hashlib
import json
import math

import pytest

from results.record import (SCHEMA_VERSION, ResultRecord, config_hash, podium_revision,
                            read_record, write_record)

CONFIG = {"model": {"depth": 50, "widths": (64, 128)}, "optimizer": "lars", "lr": 10.0,
          "seed": 0}


def _record(**overrides):
    fields = dict(
        benchmark="resnet", recipe="digits_cpu", status="success", time_to_train_s=812.5,
        init_s=95.25, quality_metric="eval_accuracy", quality_value=0.7612,
        quality_target=0.759, epochs_or_samples_to_converge=36.0, global_batch_size=4096,
        num_devices=64, device_kind="TPU v5p", config=CONFIG,
        log_path="podium/results/tpu-v5p-64/resnet/result_0.txt",
        eval_curve=[(4, 0.25, 101.0), (36, 0.7612, 812.0)], throughput=215000.0,
        mesh_shape={"data": 64, "fsdp": 1}, versions={"jax": "0.7.2", "flax": "0.12.8"},
        podium_commit="0123abc", podium_dirty=False, started_at="2025-01-02T03:04:05+00:00",
        extra={"mfu": 0.41})
    fields.update(overrides)
    return ResultRecord(**fields)


def test_round_trip(tmp_path):
    record = _record()
    path = tmp_path / "records" / "result_0.json"
    write_record(path, record)
    assert read_record(path) == record
    data = json.loads(path.read_text())
    assert list(data)[0] == "schema_version" and data["schema_version"] == SCHEMA_VERSION
    assert data["eval_curve"] == [[4, 0.25, 101.0], [36, 0.7612, 812.0]]
    assert data["config"]["model"]["widths"] == [64, 128]
    assert sorted(p.name for p in path.parent.iterdir()) == ["result_0.json"]


def test_config_hash_is_canonical():
    reordered = {"seed": 0, "lr": 10.0, "optimizer": "lars",
                 "model": {"widths": [64, 128], "depth": 50}}
    assert config_hash(CONFIG) == config_hash(reordered)
    assert config_hash(CONFIG) != config_hash({**CONFIG, "lr": 10.5})
    # Pinned canonical form (sorted keys, no spaces): changing it would silently break
    # comparisons with every earlier record.
    assert config_hash({"b": (1.5, "x"), "a": 1}) == hashlib.sha256(
        b'{"a":1,"b":[1.5,"x"]}').hexdigest()
    assert _record().config_hash == config_hash(CONFIG)


def test_non_finite_numbers_become_null(tmp_path):
    record = _record(status="aborted", quality_value=math.nan, time_to_train_s=None,
                     eval_curve=[(4, math.inf, 100.0)])
    path = tmp_path / "r.json"
    write_record(path, record)
    back = read_record(path)
    assert back.quality_value is None and back.eval_curve == [(4, None, 100.0)]


def test_bad_records_are_refused(tmp_path):
    with pytest.raises(ValueError, match="invalid result status 'ok'"):
        _record(status="ok")
    with pytest.raises(ValueError, match=r"eval_curve\[0\].*\(progress, value, time_s\)"):
        _record(eval_curve=[(1, 0.5)])
    with pytest.raises(TypeError, match=r"config.model is a object"):
        _record(config={"model": object()})
    path = tmp_path / "r.json"
    write_record(path, _record())
    data = json.loads(path.read_text())

    def read(mutated):
        path.write_text(json.dumps(mutated))
        return read_record(path)

    with pytest.raises(ValueError, match="schema_version 3.*update podium"):
        read({**data, "schema_version": 3})
    # A version-1 record (before resuming existed) reads with the new fields' defaults.
    old = {k: v for k, v in data.items() if k not in ("resumed", "segments", "phases")}
    record = read({**old, "schema_version": 1})
    assert record.resumed is False and record.segments == [] and record.phases == {}
    with pytest.raises(ValueError, match="config_hash .* does not match"):
        read({**data, "config": {**data["config"], "lr": 1.0}})
    with pytest.raises(ValueError, match=r"unknown fields \['color'\]"):
        read({**data, "color": "red"})
    with pytest.raises(ValueError, match=r"lacks required fields \['benchmark'\]"):
        read({k: v for k, v in data.items() if k != "benchmark"})
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_record(path)


def test_podium_revision_outside_git(tmp_path):
    assert podium_revision(tmp_path) == (None, None)
    commit, dirty = podium_revision()
    assert commit is None or (len(commit) == 40 and isinstance(dirty, bool))
