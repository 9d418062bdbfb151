"""`podium bench`: the machinery that measures podium beside PyTorch and the input pipeline.

Numbers are not asserted (they belong to `make bench`, on a quiet machine); what is: every
measurement is taken and written, the pipeline variants decode the same records, and the
tables say what was measured."""

import json

import pytest

from benchmarks import bench


def test_imagenet_pipeline_bench_on_real_photographs(tmp_path):
  data = bench.photo_records(str(tmp_path / 'photos'), count=16)
  result = bench.bench_imagenet_pipeline(data, rounds=1)
  podium = result['podium (decode_and_crop_jpeg)']
  baseline = result['baseline (decode, then crop)']
  assert podium['images_per_core_s'] > 0 and baseline['images_per_core_s'] > 0
  assert result['ratio'] == pytest.approx(podium['images_per_core_s'] / baseline['images_per_core_s'])
  table = bench.markdown({'device': 'cpu x1', 'models': [], 'imagenet_pipeline': result})
  assert 'decode_and_crop_jpeg' in table and 'TPU v4 host' in table


@pytest.mark.slow
def test_bench_measures_podium_and_pytorch(tmp_path):
  results = bench.run(['resnet50'], batch=2, dtype='float32', steps=1, warmup=1,
                      out_dir=str(tmp_path), torch_modes=('eager',), pipelines=False, quick=True)
  row = results['models'][0]
  assert row['podium']['examples_per_s'] > 0 and row['podium']['model_flops_per_step'] > 0
  assert row['podium']['step_memory_bytes'] > 0 and row['torch_eager']['examples_per_s'] > 0
  saved = json.loads((tmp_path / 'bench.json').read_text())
  assert saved['models'][0]['model'] == 'resnet50'
  assert '| resnet50 | float32 | 2 |' in (tmp_path / 'bench.md').read_text()
  assert (tmp_path / 'bench.png').stat().st_size > 0
