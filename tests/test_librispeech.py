"""The speech input: LibriSpeech layout reader, TFRecord writer and index, characters, and
length-bucketed batches (static shapes, sharding, determinism, resume, exactly-once eval)."""

import os

import numpy as np
import pytest
import soundfile

from input_pipelines import librispeech
from input_pipelines import librispeech_records as records
from input_pipelines.errors import DataError

RATE = records.SAMPLE_RATE
WORDS = ['ALPHA', 'BRAVO', 'CHARLIE', 'DELTA', 'ECHO', "FOXTROT'S", 'GOLF']


def write_layout(root, split, utterances_per_chapter=(5, 4, 6), *, seed=0, min_s=0.5, max_s=3.0):
  """A LibriSpeech-layout split of tones with known lengths and transcripts."""
  rng = np.random.default_rng(seed)
  expected = {}
  for c, count in enumerate(utterances_per_chapter):
    speaker, chapter = str(100 + c), str(2000 + c)
    directory = os.path.join(root, split, speaker, chapter)
    os.makedirs(directory)
    lines = []
    for u in range(count):
      uid = f'{speaker}-{chapter}-{u:04d}'
      n = int(rng.uniform(min_s, max_s) * RATE)
      audio = (8000 * np.sin(np.arange(n) * rng.uniform(0.01, 0.2)) + rng.normal(0, 300, n)).astype(np.int16)
      text = ' '.join(rng.choice(WORDS, size=rng.integers(1, 5)))
      soundfile.write(os.path.join(directory, f'{uid}.flac'), audio, RATE, subtype='PCM_16')
      lines.append(f'{uid} {text}')
      expected[uid] = (audio, text)
    with open(os.path.join(directory, f'{speaker}-{chapter}.trans.txt'), 'w') as f:
      f.write('\n'.join(lines) + '\n')
  return expected


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('libri')
  layout = str(root / 'LibriSpeech')
  train = write_layout(layout, 'train-clean-100', (9, 7, 11, 8), seed=1)
  dev = write_layout(layout, 'dev-clean', (5, 2), seed=2)
  out = str(root / 'records')
  librispeech.write_dataset(layout, out, ['train-clean-100', 'dev-clean'],
                            num_shards={'train-clean-100': 4, 'dev-clean': 3})
  return out, train, dev, layout


def test_layout_reader_yields_every_utterance_in_order(tmp_path):
  expected = write_layout(str(tmp_path), 'dev-clean', (3, 2))
  got = list(librispeech.read_librispeech_split(str(tmp_path), 'dev-clean'))
  assert [u.id for u in got] == sorted(expected)
  for u in got:
    audio, text = expected[u.id]
    np.testing.assert_array_equal(u.audio, audio)
    assert u.text == text and u.speaker == u.id.split('-')[0] and u.chapter == u.id.split('-')[1]


def test_layout_errors_name_the_file(tmp_path):
  write_layout(str(tmp_path), 'a', (2,))
  chapter = tmp_path / 'a' / '100' / '2000'
  os.remove(chapter / '100-2000-0001.flac')
  with pytest.raises(DataError, match=r'100-2000\.trans\.txt:2: no audio 100-2000-0001\.flac'):
    list(librispeech.read_librispeech_split(str(tmp_path), 'a'))
  write_layout(str(tmp_path), 'b', (1,))
  path = tmp_path / 'b' / '100' / '2000' / '100-2000-0000.flac'
  soundfile.write(str(path), np.zeros(800, np.int16), 8000, subtype='PCM_16')
  with pytest.raises(DataError, match=r'100-2000-0000\.flac: 8000 Hz'):
    list(librispeech.read_librispeech_split(str(tmp_path), 'b'))
  with pytest.raises(DataError, match='no such directory'):
    list(librispeech.read_librispeech_split(str(tmp_path), 'missing'))


def test_records_round_trip_by_random_access(dataset):
  out, train, dev, _ = dataset
  source = records.SpeechSource.from_dir(out)
  assert source.splits == ['dev-clean', 'train-clean-100']
  assert source.num_examples('train-clean-100') == len(train) == 35
  assert source.max_num_samples('dev-clean') == max(a.size for a, _ in dev.values())
  index = source.index('train-clean-100')
  assert len(index.files) == 4 and len(index) == 35
  for position in np.random.default_rng(0).permutation(len(index)):
    u = source.read('train-clean-100', int(position))
    audio, text = train[u.id]
    np.testing.assert_array_equal(u.audio, audio)
    assert u.text == text and index.num_samples[position] == audio.size


def test_truncated_shard_and_stale_manifest_are_data_errors(dataset, tmp_path):
  import shutil
  out = str(tmp_path / 'copy')
  shutil.copytree(dataset[0], out)
  victim = os.path.join(out, 'train-clean-100-00002-of-00004')
  with open(victim, 'r+b') as f:
    f.truncate(os.path.getsize(victim) - 10)
  with pytest.raises(DataError, match='train-clean-100-00002-of-00004: .* bytes, but its index'):
    records.SpeechSource.from_dir(out)
  os.remove(victim)
  with pytest.raises(DataError, match='listed in podium_dataset.json for train-clean-100 but absent'):
    records.SpeechSource.from_dir(out)
  with pytest.raises(DataError, match='has no podium_dataset.json'):
    records.SpeechSource.from_dir(str(tmp_path))


def test_characters_round_trip_and_unknowns():
  ids = librispeech.encode_transcript("it's  A dog ")
  assert librispeech.decode_tokens(ids) == "IT'S A DOG"
  assert ids[3] == librispeech.VOCABULARY.index('S') and ids[4] == librispeech.WORD_DELIMITER
  assert librispeech.encode_transcript('É1').tolist() == [librispeech.UNKNOWN] * 2
  assert len(librispeech.VOCABULARY) == 32 and librispeech.VOCABULARY[librispeech.BLANK] == '<pad>'


def batches(out, *, shards=(0,), num_shards=1, mode='crop', lengths=(16000, 24000, 32000),
            seed=0, batch=3, normalize=False, labels=False):
  return librispeech.SpeechBatches(
      records.SpeechSource.from_dir(out), train_splits=['train-clean-100'],
      eval_split='dev-clean', train_bucketing=librispeech.Bucketing(lengths, mode),
      eval_bucketing=librispeech.Bucketing((16000, 32000), 'pad'), batch_per_shard=batch,
      eval_batch_per_shard=2, shards=shards, num_shards=num_shards, seed=seed,
      normalize=normalize, labels=labels)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_crop_buckets_give_a_few_static_shapes_and_exact_lengths(dataset):
  out, train, _, _ = dataset
  data = batches(out, mode='crop')
  lengths = data.train_bucketing.lengths
  got = take(data.train_batches(), 3 * data.steps_per_epoch)
  shapes = {(b['audio'].shape, lengths[b['bucket'][0]]) for b in got}
  # One array shape for the loop; the bucket decides the static slice the model runs on.
  assert {s for s, _ in shapes} == {(3, lengths[-1])}
  assert {n for _, n in shapes} <= set(lengths) and len({n for _, n in shapes}) >= 2
  for step, b in enumerate(got):
    n = lengths[b['bucket'][0]]
    assert (b['bucket'] == b['bucket'][0]).all()
    assert (b['length'] == n).all()                         # cropped to exactly the bucket
    assert not b['audio'][:, n:].any() and b['audio'][:, :n].any(axis=1).all()
    assert b['step'].tolist() == [step] * 3
  # Crop mode drops what is shorter than the first bucket and counts the rest.
  shortest = sum(1 for a, _ in train.values() if a.size < lengths[0])
  assert data.train_examples <= len(train) - shortest


def test_pad_buckets_hold_whole_utterances(dataset):
  out, train, _, _ = dataset
  data = batches(out, mode='pad', lengths=(16000, 32000), labels=True)
  # The last bucket is widened to the longest utterance: nothing is cut.
  assert data.train_bucketing.lengths[-1] >= max(a.size for a, _ in train.values())
  by_length = {a.size: (a, t) for a, t in train.values()}
  for b in take(data.train_batches(), data.steps_per_epoch):
    upper = data.train_bucketing.lengths[b['bucket'][0]]
    lower = ([0] + list(data.train_bucketing.lengths))[b['bucket'][0]]
    for row in range(3):
      n = b['length'][row]
      assert lower < n <= upper
      audio, text = by_length[n]
      np.testing.assert_allclose(b['audio'][row, :n], audio / 32768.0)
      assert librispeech.decode_tokens(b['labels'][row, :b['label_length'][row]]) == text


def test_order_is_a_function_of_the_seed_and_resume_reads_the_same_batches(dataset):
  out = dataset[0]
  a = take(batches(out).train_batches(), 12)
  b = take(batches(out).train_batches(), 12)
  resumed = take(batches(out).train_batches(start_step=7), 5)
  other = take(batches(out, seed=1).train_batches(), 12)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['audio'], y['audio'])
  for x, y in zip(a[7:], resumed):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert [x['step'][0] for x in resumed] == list(range(7, 12))
  assert any(not np.array_equal(x['audio'], y['audio']) for x, y in zip(a, other))
  # Epochs differ: the same step count later is another permutation.
  data = batches(out)
  epoch0 = take(data.train_batches(), data.steps_per_epoch)
  epoch1 = take(data.train_batches(start_step=data.steps_per_epoch), data.steps_per_epoch)
  assert any(not np.array_equal(x['audio'], y['audio']) for x, y in zip(epoch0, epoch1))


def test_two_shards_read_disjoint_files_and_agree_on_every_bucket(dataset):
  out = dataset[0]
  first = batches(out, shards=(0,), num_shards=2, batch=2)
  second = batches(out, shards=(1,), num_shards=2, batch=2)
  both = batches(out, shards=(0, 1), num_shards=2, batch=2)
  steps = first.steps_per_epoch
  assert steps == second.steps_per_epoch == both.steps_per_epoch > 0
  assert first.bucket_sequence(0, 3 * steps) == second.bucket_sequence(0, 3 * steps)
  a, b, ab = (take(d.train_batches(), steps) for d in (first, second, both))
  for x, y, xy in zip(a, b, ab):
    assert x['bucket'][0] == y['bucket'][0]
    # One process reading both shards sees exactly what two processes see.
    np.testing.assert_array_equal(np.concatenate([x['audio'], y['audio']]), xy['audio'])
  files = records.SpeechSource.from_dir(out).index('train-clean-100')
  shard_of = {p: i % 2 for i, p in enumerate(files.files)}
  assert set(shard_of.values()) == {0, 1}


def test_eval_visits_every_utterance_once_on_every_shard_count(dataset):
  out, _, dev, _ = dataset
  for num_shards in (1, 2, 3, 4):
    seen, steps = [], set()
    for shard in range(num_shards):
      data = batches(out, shards=(shard,), num_shards=num_shards, labels=True)
      got = list(data.eval_batches())
      steps.add(len(got))
      for b in got:
        assert b['audio'].shape == (2, data.eval_bucketing.lengths[-1])
        for row in np.flatnonzero(b['mask']):
          n = b['length'][row]
          seen.append((n, librispeech.decode_tokens(b['labels'][row, :b['label_length'][row]])))
        assert not b['length'][b['mask'] == 0].any()
    # Every shard runs the same number of eval steps, even one without files (4 > 3 files).
    assert len(steps) == 1
    assert sorted(seen) == sorted((a.size, t) for a, t in dev.values())


def test_normalize_gives_zero_mean_unit_variance_per_utterance(dataset):
  out = dataset[0]
  data = batches(out, mode='pad', lengths=(16000, 32000), normalize=True)
  b = next(data.train_batches())
  for row in range(3):
    wave = b['audio'][row, :b['length'][row]]
    assert abs(wave.mean()) < 1e-4 and abs(wave.std() - 1.0) < 1e-3


def test_too_few_utterances_for_a_batch_is_a_data_error(dataset):
  with pytest.raises(DataError, match='no full batch of 40 utterances'):
    batches(dataset[0], batch=40)
  with pytest.raises(DataError, match='4 files but there are 5 input shards'):
    batches(dataset[0], shards=(0,), num_shards=5)
