"""WordPiece tokenization as BERT's pretraining data was made, and a small-vocabulary builder.

`FullTokenizer` follows google-research/bert's ``tokenization.py`` (which MLPerf's
``create_pretraining_data.py`` uses) rule for rule: the basic tokenizer cleans control
characters, puts spaces around CJK ideographs, lower-cases and strips accents (uncased
models), and splits off every punctuation character; the WordPiece tokenizer then splits
each word greedily into the longest pieces in the vocabulary (``##`` marks a piece that
continues a word), and a word it cannot split, or longer than 200 characters, becomes
``[UNK]``. tests/test_bert_tokenizer.py checks it against transformers' ``BertTokenizer``
on MLPerf's own 30,522-token uncased vocabulary.

`build_vocab` makes a small WordPiece vocabulary from a corpus, for CPU-sized models: the
special tokens, every character the corpus uses (alone and as a ``##`` continuation), then
its most frequent words and word endings. It is not Google's WordPiece training algorithm;
it is deterministic and gives the greedy tokenizer few ``[UNK]``s on the corpus it was built
from.
"""

from __future__ import annotations

import collections
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
MAX_WORD_CHARS = 200


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
  """Token -> id, one token a line (surrounding whitespace stripped), ids = line numbers.

  A token listed twice keeps its first position in the mapping and its last line's id, as
  in google-research/bert (which matters for the writer's random replacement tokens).
  """
  vocab: dict[str, int] = {}
  with open(path, encoding='utf-8') as f:
    for index, line in enumerate(f):
      vocab[line.strip()] = index
  return vocab


def write_vocab(path: str | os.PathLike, tokens: Sequence[str]) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(f'{token}\n' for token in tokens)


def _is_whitespace(char: str) -> bool:
  return char in (' ', '\t', '\n', '\r') or unicodedata.category(char) == 'Zs'


def _is_control(char: str) -> bool:
  if char in ('\t', '\n', '\r'):
    return False
  return unicodedata.category(char).startswith('C')


def _is_punctuation(char: str) -> bool:
  """ASCII symbols count as punctuation too (``$``, ``^``, ``|``, ...), as in BERT."""
  cp = ord(char)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(char).startswith('P')


_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(cp: int) -> bool:
  return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


class BasicTokenizer:
  """Cleaning, CJK spacing, lower-casing and accent stripping, punctuation splitting."""

  def __init__(self, do_lower_case: bool = True):
    self.do_lower_case = do_lower_case

  def tokenize(self, text: str) -> list[str]:
    chars = []
    for char in text:
      cp = ord(char)
      if cp == 0 or cp == 0xFFFD or _is_control(char):
        continue
      if _is_whitespace(char):
        chars.append(' ')
      elif _is_cjk(cp):
        chars.append(f' {char} ')
      else:
        chars.append(char)
    words = []
    for word in ''.join(chars).split():
      if self.do_lower_case:
        word = ''.join(c for c in unicodedata.normalize('NFD', word.lower())
                       if unicodedata.category(c) != 'Mn')
      words.extend(_split_punctuation(word))
    return ' '.join(words).split()


def _split_punctuation(word: str) -> list[str]:
  pieces, current = [], []
  for char in word:
    if _is_punctuation(char):
      if current:
        pieces.append(''.join(current))
        current = []
      pieces.append(char)
    else:
      current.append(char)
  if current:
    pieces.append(''.join(current))
  return pieces


class WordpieceTokenizer:
  """Greedy longest-match-first split of one word into vocabulary pieces."""

  def __init__(self, vocab: Mapping[str, int], unk_token: str = '[UNK]',
               max_input_chars_per_word: int = MAX_WORD_CHARS):
    self.vocab = vocab
    self.unk_token = unk_token
    self.max_input_chars_per_word = max_input_chars_per_word

  def tokenize_word(self, word: str) -> list[str]:
    if len(word) > self.max_input_chars_per_word:
      return [self.unk_token]
    pieces, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else '##' + word[start:end]
        if piece in self.vocab:
          break
        end -= 1
      if end == start:
        return [self.unk_token]
      pieces.append(piece)
      start = end
    return pieces

  def tokenize(self, text: str) -> list[str]:
    return [piece for word in text.split() for piece in self.tokenize_word(word)]


class FullTokenizer:
  """Basic then WordPiece tokenization, and token <-> id conversion."""

  def __init__(self, vocab: str | os.PathLike | Mapping[str, int], do_lower_case: bool = True):
    self.vocab = dict(vocab) if isinstance(vocab, Mapping) else load_vocab(vocab)
    missing = [t for t in SPECIAL_TOKENS if t not in self.vocab]
    if missing:
      where = vocab if not isinstance(vocab, Mapping) else 'the vocabulary'
      raise ValueError(f'{where} lacks the special tokens {missing}; a BERT vocabulary needs '
                       f'{", ".join(SPECIAL_TOKENS)}')
    self.inv_vocab = {i: t for t, i in self.vocab.items()}
    self.basic = BasicTokenizer(do_lower_case)
    self.wordpiece = WordpieceTokenizer(self.vocab)

  def __len__(self) -> int:
    """Ids in use: the size of the model's embedding table this vocabulary needs."""
    return max(self.vocab.values()) + 1

  def tokenize(self, text: str) -> list[str]:
    return [piece for word in self.basic.tokenize(text)
            for piece in self.wordpiece.tokenize_word(word)]

  def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
    return [self.vocab[t] for t in tokens]

  def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
    return [self.inv_vocab[int(i)] for i in ids]


def build_vocab(lines: Iterable[str], size: int, *, do_lower_case: bool = True,
                min_char_count: int = 2, suffix_share: float = 0.2) -> list[str]:
  """A WordPiece vocabulary of at most ``size`` tokens for the corpus ``lines``.

  In order: the special tokens ([PAD] first: padding id 0), every character seen at least
  ``min_char_count`` times alone and as ``##c``, then whole words by frequency, with
  ``suffix_share`` of the room kept for the most frequent ``##`` endings (2-6 characters)
  of words that did not make it. Ties break alphabetically, so the result is a function of
  the corpus.
  """
  basic = BasicTokenizer(do_lower_case)
  words: collections.Counter[str] = collections.Counter()
  for line in lines:
    words.update(basic.tokenize(line))
  chars: collections.Counter[str] = collections.Counter()
  for word, count in words.items():
    for char in word:
      chars[char] += count
  alphabet = sorted(c for c, n in chars.items() if n >= min_char_count)
  tokens = list(SPECIAL_TOKENS) + alphabet + [f'##{c}' for c in alphabet]
  if len(tokens) > size:
    raise ValueError(f'a vocabulary of {size} tokens cannot hold the {len(SPECIAL_TOKENS)} '
                     f'special tokens and the corpus\'s {len(alphabet)} characters (twice, '
                     f'alone and as ##c): use size >= {len(tokens)}')
  room = size - len(tokens)
  seen = set(tokens)
  ranked = sorted(((n, w) for w, n in words.items() if w not in seen and len(w) > 1),
                  key=lambda x: (-x[0], x[1]))
  n_words = room - int(room * suffix_share)
  kept = [w for _, w in ranked[:n_words]]
  seen.update(kept)
  suffixes: collections.Counter[str] = collections.Counter()
  for count, word in ranked[n_words:]:
    for k in range(2, 7):
      if len(word) > k:
        suffixes[f'##{word[-k:]}'] += count
  ranked_suffixes = sorted(((n, s) for s, n in suffixes.items() if s not in seen),
                           key=lambda x: (-x[0], x[1]))
  kept += [s for _, s in ranked_suffixes[:size - len(tokens) - len(kept)]]
  return tokens + kept
