"""A small English corpus that every Python installation ships: its own documentation.

For training BERT on a CPU with nothing downloaded. The text is the prose of the standard
library (PSF License): each module's docstrings (module, classes, functions, in source
order), and the reference topics behind ``help()`` (``pydoc_data.topics``: the language
reference's sections). Each module and each topic is one *document*; its prose is split
into sentences, one a line, documents separated by a blank line: the input format of
``create_pretraining_data.py``, whose next-sentence pairs never cross a document.

Code is left out: doctest lines (``>>>``), indented blocks, and lines that are mostly
symbols. Files are read with ``ast`` (never imported) in sorted order, so the corpus is a
function of the Python version. Python 3.11's gives about 2 MB of text.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import platform
import random
import re
import sysconfig
from collections.abc import Iterator

from input_pipelines import bert_records, bert_tokenizer

_SKIP_DIRS = {'test', 'tests', 'idle_test', 'site-packages', 'dist-packages', '__pycache__',
              'lib2to3', 'ensurepip', 'turtledemo'}
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=[A-Z(\"\'])')
_WORDY = re.compile(r'[A-Za-z]')


def stdlib_dir() -> str:
  return sysconfig.get_paths()['stdlib']


def _paragraphs(docstring: str) -> Iterator[str]:
  """Prose paragraphs of a docstring: code, doctests and reST directives dropped."""
  block: list[str] = []
  for line in docstring.splitlines() + ['']:
    stripped = line.strip()
    code_like = (line.startswith((' ', '\t')) and not block) or stripped.startswith(
        ('>>>', '...', '.. ', '$ ', '%', '#'))
    if not stripped or code_like:
      if block:
        yield ' '.join(block)
        block = []
      continue
    if line.startswith((' ', '\t')) and block and len(line) - len(line.lstrip()) >= 4:
      # An indented continuation inside prose is usually a literal block: end the paragraph.
      yield ' '.join(block)
      block = []
      continue
    block.append(stripped)


def _sentences(paragraph: str) -> Iterator[str]:
  for sentence in _SENTENCE_END.split(paragraph):
    sentence = ' '.join(sentence.split())
    letters = len(_WORDY.findall(sentence))
    # Prose: several words, mostly letters (not a signature or a table row).
    if len(sentence.split()) >= 4 and letters >= 0.6 * len(sentence.replace(' ', '')):
      yield sentence


def module_documents(root: str | None = None) -> Iterator[tuple[str, list[str]]]:
  """(module path, sentences) for each standard-library module with prose, sorted by path."""
  root = root or stdlib_dir()
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    paths += [os.path.join(dirpath, f) for f in filenames if f.endswith('.py')]
  for path in sorted(paths):
    try:
      with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue
    sentences = []
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc:
          for paragraph in _paragraphs(doc):
            sentences.extend(_sentences(paragraph))
    if sentences:
      yield os.path.relpath(path, root), sentences


def topic_documents() -> Iterator[tuple[str, list[str]]]:
  """(topic, sentences) for each ``help()`` topic of the language reference."""
  try:
    from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  except ImportError:  # some distributions split it out (python3-doc)
    return
  for name in sorted(topics.topics):
    sentences = [s for p in _paragraphs(topics.topics[name]) for s in _sentences(p)]
    if sentences:
      yield f'topic:{name}', sentences


def documents() -> list[tuple[str, list[str]]]:
  """Every document of the corpus: the modules, then the topics."""
  return list(module_documents()) + list(topic_documents())


_WORDS = ('zero one two three four five six seven eight nine ten eleven twelve thirteen '
          'fourteen fifteen sixteen seventeen eighteen nineteen').split()
_TENS = 'twenty thirty forty fifty sixty seventy eighty ninety'.split()


def number_words(n: int) -> str:
  """English for 0 <= n < 1000: 'three hundred and forty two'."""
  if n < 20:
    return _WORDS[n]
  if n < 100:
    return _TENS[n // 10 - 2] + ('' if n % 10 == 0 else ' ' + _WORDS[n % 10])
  rest = n % 100
  return _WORDS[n // 100] + ' hundred' + ('' if rest == 0 else ' and ' + number_words(rest))


def counting_documents(num_documents: int = 3000, seed: int = 0) -> list[tuple[str, list[str]]]:
  """A generated corpus in which most words follow from their neighbours: counting in English.

  Each sentence counts from a random number by one or two, in the words zero to nineteen:
  "counting by two from four : four six eight ten twelve ." A masked number follows from the
  numbers beside it, so a small model learns to fill in most masks within minutes, which
  natural text does not allow. A document is 3-8 such sentences. Deterministic in ``seed``;
  podium's own (no third-party text, no license needed).
  """
  rng = random.Random(seed)
  docs = []
  for d in range(num_documents):
    sentences = []
    for _ in range(rng.randint(3, 8)):
      step = rng.randint(1, 2)
      length = rng.randint(4, 8)
      first = rng.randint(0, 19 - step * (length - 1))
      numbers = [first + i * step for i in range(length)]
      sentences.append(f'counting by {_WORDS[step]} from {_WORDS[first]} : '
                       + ' '.join(_WORDS[x] for x in numbers) + ' .')
    docs.append((f'counting-{d}', sentences))
  return docs


CORPORA = {
    'stdlib_docs': ('Python standard library docstrings and pydoc_data topics (PSF License), '
                    f'Python {platform.python_version()}', documents),
    'counting': ('counting in English, generated by podium (bert_corpus.counting_documents)',
                 counting_documents),
}


def write_text(path: str | os.PathLike, docs: list[tuple[str, list[str]]]) -> int:
  """Writes ``docs`` in create_pretraining_data.py's input format; returns the sentence count."""
  count = 0
  with open(path, 'w', encoding='utf-8') as f:
    for i, (_, sentences) in enumerate(docs):
      if i:
        f.write('\n')
      for sentence in sentences:
        f.write(sentence + '\n')
        count += 1
  return count


def write_dataset(data_dir: str | os.PathLike, *, corpus: str = 'stdlib_docs', vocab_size: int,
                  opts: bert_records.MaskingOptions, eval_examples: int,
                  num_train_files: int, eval_every: int = 10) -> dict:
  """A corpus of `CORPORA` as MLPerf-format BERT records, written once (idempotent).

  Every ``eval_every``-th document is held out for eval, the rest train. The vocabulary
  (``vocab.txt``) is built from the training text (`bert_tokenizer.build_vocab`); the
  records are ``create_pretraining_data.py``'s with ``opts`` (`bert_records.MaskingOptions`),
  training round-robin over ``part-XXXXX-of-NNNNN``, and the eval set is ``eval_examples``
  records picked evenly from those of the held-out text, as MLPerf picks its 10,000
  (``eval-00000-of-00001``). A second call with the same parameters finds the manifest and
  writes nothing.
  """
  data_dir = os.fspath(data_dir)
  if corpus not in CORPORA:
    raise ValueError(f'corpus={corpus!r}; valid: {", ".join(CORPORA)}')
  description, make_documents = CORPORA[corpus]
  wanted = {'corpus': corpus, 'python': platform.python_version(),
            'vocab_size': vocab_size, 'eval_examples': eval_examples,
            'num_train_files': num_train_files, 'eval_every': eval_every,
            **dataclasses.asdict(opts)}
  existing = bert_records.read_manifest(data_dir) if os.path.isdir(data_dir) else None
  if existing is not None and existing.get('prepared') == wanted:
    return existing
  os.makedirs(os.path.join(data_dir, 'text'), exist_ok=True)
  manifest_path = os.path.join(data_dir, bert_records.MANIFEST_NAME)
  if os.path.exists(manifest_path):
    os.remove(manifest_path)  # counts unknown, never wrong, while the files change
  docs = make_documents()
  train_docs = [d for i, d in enumerate(docs) if i % eval_every]
  eval_docs = [d for i, d in enumerate(docs) if i % eval_every == 0]
  train_text = os.path.join(data_dir, 'text', 'train.txt')
  eval_text = os.path.join(data_dir, 'text', 'eval.txt')
  write_text(train_text, train_docs)
  write_text(eval_text, eval_docs)
  with open(train_text, encoding='utf-8') as f:
    vocab = bert_tokenizer.build_vocab(f, vocab_size, do_lower_case=opts.do_lower_case)
  vocab_path = os.path.join(data_dir, 'vocab.txt')
  bert_tokenizer.write_vocab(vocab_path, vocab)
  tokenizer = bert_tokenizer.FullTokenizer(vocab_path, do_lower_case=opts.do_lower_case)
  for name in os.listdir(data_dir):
    if name.startswith(('part-', 'eval-')):
      os.remove(os.path.join(data_dir, name))
  names = [bert_records.shard_name(i, num_train_files) for i in range(num_train_files)]
  counts = bert_records.write_records([train_text], [os.path.join(data_dir, n) for n in names],
                                      tokenizer, opts)
  intermediate = os.path.join(data_dir, 'text', 'eval_intermediate')
  bert_records.write_records([eval_text], [intermediate], tokenizer, opts)
  eval_name = 'eval-00000-of-00001'
  picked = bert_records.pick_eval_examples([intermediate], os.path.join(data_dir, eval_name),
                                           eval_examples)
  os.remove(intermediate)
  return bert_records.write_manifest(
      data_dir, opts, {'train': dict(zip(names, counts)), 'eval': {eval_name: picked}},
      vocab_path=vocab_path, vocab_size=len(tokenizer), prepared=wanted,
      source=f'{description}: {len(train_docs)} training and {len(eval_docs)} held-out documents')
