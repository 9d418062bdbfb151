"""The one error type of the input pipelines.

Bad data (a missing directory, an empty or corrupt file, a manifest that disagrees with the
files) raises `DataError` with a message for people: it names the file or directory and
says what would be valid, so a failed run on a pod says what to fix without a debugger.
"""


class DataError(Exception):
  """Input data is missing, malformed or inconsistent; the message names the path."""
