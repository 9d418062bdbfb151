"""A small offline speech corpus: sentences spoken by espeak-ng, in the LibriSpeech layout.

No real speech corpus ships with the machine, and nothing may be downloaded at run time, so
the CPU recipes of wav2vec 2.0 train on synthetic speech with exact transcripts: Debian's
``espeak-ng`` (formant synthesis, ``apt-get install espeak-ng``) speaks sentences drawn from
a small grammar (determiner, adjective, noun, verb, preposition; 80 words using 25 of the 26
letters) in many "speakers": an English voice (American, British, Scottish, Caribbean, ...),
a voice variant (male/female timbres), a speaking rate and a pitch. The audio is resampled
from espeak's 22,050 Hz to 16 kHz and written as FLAC in the LibriSpeech layout::

    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

so it goes through exactly the reader that real LibriSpeech goes through. The dev split has
its own speakers (voice settings no train speaker has) and only sentences that are not in
the train split, as LibriSpeech's dev-clean has unseen speakers and text.

``python -m input_pipelines.speech_corpus --out DIR`` writes it; `prepare` writes it and its
TFRecords for a recipe (``data.prepare='espeak'``), once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

import numpy as np

from input_pipelines import librispeech_records as records
from input_pipelines.errors import DataError

WORDS = {
    'det': ('THE', 'A', 'ONE', 'MY', 'YOUR', 'HIS', 'HER', 'OUR', 'THIS', 'THAT'),
    'adj': ('RED', 'BLUE', 'GREEN', 'BIG', 'SMALL', 'OLD', 'YOUNG', 'HAPPY', 'QUIET', 'DARK',
            'WARM', 'COLD', 'FAST', 'SLOW', 'TALL', 'LAZY'),
    'noun': ('CAT', 'DOG', 'BIRD', 'FISH', 'HORSE', 'HOUSE', 'TREE', 'CAR', 'BOOK', 'BOX',
             'CHAIR', 'TABLE', 'DOOR', 'WINDOW', 'RIVER', 'HILL', 'GARDEN', 'FARMER', 'TEACHER',
             'CHILD', 'KING', 'QUEEN', 'BOAT', 'TRAIN', 'ZEBRA', 'JACKET', 'APPLE', 'MOUSE',
             'SHIP', 'LAMP', 'CLOCK', 'STONE'),
    'verb': ('SEES', 'FINDS', 'LIKES', 'WANTS', 'HOLDS', 'TAKES', 'MOVES', 'FOLLOWS',
             'WATCHES', 'CALLS', 'HELPS', 'PUSHES', 'CARRIES', 'PAINTS', 'SELLS', 'BUYS'),
    'prep': ('NEAR', 'UNDER', 'BEHIND', 'BESIDE', 'ABOVE', 'INSIDE'),
}
TEMPLATES = (
    ('det', 'adj', 'noun', 'verb', 'det', 'noun'),
    ('det', 'noun', 'verb', 'det', 'adj', 'noun'),
    ('det', 'adj', 'noun', 'verb', 'det', 'noun', 'prep', 'det', 'noun'),
    ('det', 'noun', 'prep', 'det', 'noun', 'verb', 'det', 'adj', 'noun'),
    ('det', 'noun', 'verb', 'det', 'noun'),
)
VOICES = ('en-us', 'en-gb', 'en-gb-scotland', 'en-gb-x-rp', 'en-gb-x-gbclan', 'en-gb-x-gbcwmd',
          'en-029', 'en-us-nyc')
VARIANTS = ('m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'f1', 'f2', 'f3', 'f4', 'f5')
ESPEAK_RATE = 22_050
SPLITS = ('train', 'dev')
CORPUS_FILE = 'podium_corpus.json'   # what was generated, to know when to regenerate


@dataclasses.dataclass(frozen=True)
class Speaker:
  id: int
  voice: str
  variant: str
  rate: int    # words per minute
  pitch: int   # 0..99

  @property
  def espeak_voice(self) -> str:
    return f'{self.voice}+{self.variant}'


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """What to generate; the same spec (and espeak-ng version) gives the same corpus."""

  train_utterances: int = 1600
  dev_utterances: int = 200
  train_speakers: int = 40
  dev_speakers: int = 10
  seed: int = 0

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def espeak_binary() -> str:
  path = shutil.which('espeak-ng')
  if path is None:
    raise DataError('espeak-ng is not installed; the offline speech corpus needs it: '
                    '`apt-get install -y espeak-ng` (Debian/Ubuntu)')
  return path


def speakers(spec: CorpusSpec) -> dict[str, list[Speaker]]:
  """Train and dev speakers with distinct (voice, variant, rate, pitch) settings."""
  rng = np.random.default_rng([spec.seed, 1])
  combos = [(v, w) for v in VOICES for w in VARIANTS]
  order = rng.permutation(len(combos))
  needed = spec.train_speakers + spec.dev_speakers
  if needed > len(combos):
    raise ValueError(f'{needed} speakers asked for; at most {len(combos)} voice settings exist')
  out, k = {}, 0
  for split, count in (('train', spec.train_speakers), ('dev', spec.dev_speakers)):
    out[split] = []
    for _ in range(count):
      voice, variant = combos[order[k]]
      out[split].append(Speaker(id=100 + k, voice=voice, variant=variant,
                                rate=int(rng.integers(145, 186)), pitch=int(rng.integers(30, 71))))
      k += 1
  return out


def sentences(spec: CorpusSpec) -> dict[str, list[str]]:
  """Distinct sentences per split; no dev sentence occurs in train."""
  rng = np.random.default_rng([spec.seed, 2])
  seen: set[str] = set()
  out = {}
  for split, count in (('train', spec.train_utterances), ('dev', spec.dev_utterances)):
    out[split] = []
    while len(out[split]) < count:
      template = TEMPLATES[rng.integers(len(TEMPLATES))]
      text = ' '.join(WORDS[slot][rng.integers(len(WORDS[slot]))] for slot in template)
      if text not in seen:
        seen.add(text)
        out[split].append(text)
  return out


def speak(text: str, speaker: Speaker, binary: str) -> np.ndarray:
  """16 kHz int16 samples of `text` in `speaker`'s voice."""
  import soundfile
  from scipy import signal

  command = [binary, '-v', speaker.espeak_voice, '-s', str(speaker.rate), '-p', str(speaker.pitch),
             '--stdout', text]
  result = subprocess.run(command, capture_output=True, check=False)
  if result.returncode != 0 or not result.stdout:
    raise DataError(f'espeak-ng failed ({" ".join(command)}): '
                    f'{result.stderr.decode(errors="replace").strip()}')
  wave, rate = soundfile.read(io.BytesIO(result.stdout), dtype='float32')
  if rate != ESPEAK_RATE:
    raise DataError(f'espeak-ng wrote {rate} Hz audio; expected {ESPEAK_RATE}')
  resampled = signal.resample_poly(wave, 320, 441)  # 22,050 Hz * 320 / 441 = 16,000 Hz
  return np.clip(np.round(resampled * 32767.0), -32768, 32767).astype(np.int16)


def write_corpus(root: str, spec: CorpusSpec = CorpusSpec(), *, workers: int = 2) -> None:
  """Writes the corpus in the LibriSpeech layout under `root` (splits 'train' and 'dev')."""
  import soundfile

  binary = espeak_binary()
  voices, texts = speakers(spec), sentences(spec)
  jobs = []
  for split in SPLITS:
    group = voices[split]
    for i, text in enumerate(texts[split]):
      speaker = group[i % len(group)]
      chapter = 1000 + speaker.id
      number = i // len(group)
      jobs.append((split, speaker, chapter, f'{speaker.id}-{chapter}-{number:04d}', text))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    audio = list(pool.map(lambda job: speak(job[4], job[1], binary), jobs))
  transcripts: dict[str, list[str]] = {}
  for (split, speaker, chapter, uid, text), samples in zip(jobs, audio):
    directory = os.path.join(root, split, str(speaker.id), str(chapter))
    os.makedirs(directory, exist_ok=True)
    soundfile.write(os.path.join(directory, f'{uid}.flac'), samples, records.SAMPLE_RATE,
                    format='FLAC', subtype='PCM_16')
    transcripts.setdefault(os.path.join(directory, f'{speaker.id}-{chapter}.trans.txt'), []).append(
        f'{uid} {text}')
  for path, lines in transcripts.items():
    with open(path, 'w', encoding='utf-8') as f:
      f.write('\n'.join(lines) + '\n')
  with open(os.path.join(root, CORPUS_FILE), 'w') as f:
    json.dump({'spec': spec.to_json(), 'speakers': {
        split: [dataclasses.asdict(s) for s in group] for split, group in voices.items()}}, f,
              indent=1)


def prepare(data_dir: str, spec: CorpusSpec = CorpusSpec(), *, num_shards: int = 4) -> None:
  """The corpus as speech TFRecords in `data_dir` (its LibriSpeech layout in
  ``<data_dir>/LibriSpeech``); does nothing when the same spec is already there."""
  from input_pipelines import librispeech

  marker = os.path.join(data_dir, CORPUS_FILE)
  if os.path.exists(marker) and records.read_manifest(data_dir) is not None:
    with open(marker) as f:
      if json.load(f).get('spec') == spec.to_json():
        return
  layout = os.path.join(data_dir, 'LibriSpeech')
  if os.path.exists(layout):
    shutil.rmtree(layout)
  write_corpus(layout, spec)
  librispeech.write_dataset(layout, data_dir, SPLITS,
                            num_shards={'train': num_shards, 'dev': 1})
  shutil.copyfile(os.path.join(layout, CORPUS_FILE), marker)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m input_pipelines.speech_corpus',
      description='Write sentences spoken by espeak-ng in the LibriSpeech layout.')
  parser.add_argument('--out', required=True, help='root directory (gets train/ and dev/)')
  parser.add_argument('--train', type=int, default=CorpusSpec.train_utterances)
  parser.add_argument('--dev', type=int, default=CorpusSpec.dev_utterances)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  spec = CorpusSpec(train_utterances=args.train, dev_utterances=args.dev, seed=args.seed)
  try:
    write_corpus(args.out, spec)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {args.train} train and {args.dev} dev utterances to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
