"""absl flag types shared by the binaries (flags live only in binaries)."""

from __future__ import annotations

from typing import Any

from absl import flags

# Flags defined with `DEFINE_int_list` belong to the module that calls it
# (listed in its --help), not to this one.
flags.disclaim_key_flags()


class _IntListParser(flags.ArgumentParser):
  """Parses '64,64,64' (or a list) into a list of ints."""

  syntactic_help = 'a comma-separated list of integers'

  def parse(self, argument: Any) -> list[int]:
    values = (
      list(argument)
      if isinstance(argument, list | tuple)
      else [v for v in str(argument).split(',') if v.strip()]
    )
    try:
      return [int(v) for v in values]
    except (TypeError, ValueError):
      raise ValueError(
        f'must be comma-separated integers. Found {argument!r}.'
      ) from None

  def flag_type(self) -> str:
    return 'int list'


def DEFINE_int_list(  # noqa: N802 (absl's naming)
  name: str, default: list[int] | None, help: str, **kwargs: Any
) -> flags.FlagHolder:
  """Defines a flag holding a list of ints, e.g. `--crop_size=64,64,64`.

  A value that is not a list of integers stops the binary with absl's
  flag-parsing error, which names the flag and the value.
  """
  return flags.DEFINE(
    _IntListParser(),
    name,
    default,
    help,
    serializer=flags.CsvListSerializer(','),
    **kwargs,
  )
