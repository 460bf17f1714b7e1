"""Clients trained on the sites that hold their data, on TFF's executor services.

Each site (a hospital's host) runs `experiments/run_site.py`: its own TFF
worker, behind TLS, in a serving folder (`write_serving_folder`) that
holds `site.json` (the institutions it serves and their shard paths,
relative to that folder) and a link `data` to its prepared data. The
coordinator:

1. connects to every site (`SiteConnection`): mutual TLS by default,
   plaintext only to loopback unless explicitly allowed
   (`tls.check_site_address`), with a deadline for the site to answer;
2. reads each site's `site.json` on the site (a TFF computation that reads
   the file there). That tells it which institutions each site serves and
   the shard paths to send, which resolve on that site only. An
   institution claimed by two sites, or not served where the caller
   expects it, is an error;
3. runs every round in TFF's mergeable form
   (`tff.backends.native.compile_to_mergeable_comp_form` of the learning
   process's `next`). `up_to_merge` runs on each site with the state and
   that site's clients only: the clients read their data, train and
   privatise their updates there, and the site returns its privatised
   partial sums. `merge` and `after_merge` run on the coordinator's own
   local worker. TFF's `MergeableCompExecutionContext` cannot do this,
   since it splits the clients into contiguous chunks without regard to
   where their data is.

Deadlines. TFF's async context retries UNAVAILABLE forever, so a dead site
would hang the round. Every call to a site has a deadline
(`site_timeout`, default one hour per round, for slow CPU sites). A site
that does not answer in time, or fails, stops the round with a `SiteError`
that names the site and its address. The run can then continue with
`--resume` once the site is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import json
import os
from typing import Any

from absl import logging
import grpc
import tensorflow as tf
import tensorflow_federated as tff

from tff_brats.data import manifest as manifest_lib
from tff_brats.runtime import local
from tff_brats.runtime import tls as tls_lib
from tff_brats.utils import atomic

SITE_FILE = 'site.json'
DATA_LINK = 'data'
FORMAT_VERSION = 1
DEFAULT_CONNECT_TIMEOUT = 60.0
DEFAULT_SITE_TIMEOUT = 3600.0


class SiteError(RuntimeError):
  """A site failed, did not answer in time, or does not serve a client."""


@dataclasses.dataclass(frozen=True)
class TlsOptions:
  """The coordinator's TLS files (mutual TLS when certificate and key)."""

  ca_file: str
  certificate_file: str | None = None
  private_key_file: str | None = None

  def credentials(self) -> grpc.ChannelCredentials:
    return tls_lib.channel_credentials(
      self.ca_file, self.certificate_file, self.private_key_file
    )


def parse_sites(entries: Sequence[str]) -> dict[str, str]:
  """{'site_a': 'host:8443'} from ['site_a=host:8443', ...].

  An address is HOST:PORT, [IPv6]:PORT, or unix:PATH (a site on this host).

  Raises:
    ValueError: A malformed entry or a repeated name.
  """
  sites: dict[str, str] = {}
  for entry in entries:
    name, sep, address = entry.partition('=')
    if not sep or not name:
      raise ValueError(
        f'sites entries must be NAME=HOST:PORT. Found {entry!r}.'
      )
    if not address.startswith('unix:'):
      tls_lib.split_address(address)
    if name in sites:
      raise ValueError(f'sites must name each site once. Found {name!r} twice.')
    sites[name] = address
  return sites


def write_serving_folder(
  data_dir: str, institutions: Sequence[str], folder: str
) -> dict[str, list[str]]:
  """Makes `folder` a site's serving folder for `institutions` of `data_dir`.

  Writes `site.json` (the institutions and their shard paths relative to
  `folder`) and a link `data` to the prepared folder. The site's worker runs
  in `folder`, so the paths resolve there.

  Returns:
    Institution -> relative shard paths.

  Raises:
    ValueError: Not a prepared folder, or an institution it does not hold.
  """
  prepared = manifest_lib.load(data_dir)
  held = list(prepared.client_ids)
  missing = [i for i in institutions if i not in held]
  if missing or not institutions:
    raise ValueError(
      f'institutions must be held in {prepared.root!r}, whose manifest lists '
      f'{held}. Found {list(institutions)}.'
    )
  os.makedirs(folder, exist_ok=True)
  link = os.path.join(folder, DATA_LINK)
  if os.path.lexists(link):
    os.remove(link)
  os.symlink(os.path.abspath(prepared.root), link)
  shards = {
    institution: [
      os.path.join(
        DATA_LINK, os.path.relpath(path, os.path.abspath(prepared.root))
      )
      for path in prepared.shard_paths(institution)
    ]
    for institution in institutions
  }
  atomic.write_text(
    os.path.join(folder, SITE_FILE),
    json.dumps(
      {'format_version': FORMAT_VERSION, 'institutions': shards},
      indent=1,
      sort_keys=True,
    )
    + '\n',
  )
  return shards


@tff.tensorflow.computation
def _read_site_file():
  # Runs on the site: a relative path resolves in its serving folder.
  return tf.io.read_file(SITE_FILE)


class SiteConnection:
  """One site: its gRPC channel and an async TFF context on its worker."""

  def __init__(
    self,
    name: str,
    address: str,
    *,
    tls: TlsOptions | None,
    allow_plaintext: bool = False,
  ):
    """Checks the address (nothing is connected yet).

    Raises:
      ValueError: A malformed address, or plaintext to another host without
        `allow_plaintext`.
    """
    tls_lib.check_site_address(
      name, address, tls=tls is not None, allow_plaintext=allow_plaintext
    )
    self.name = name
    self.address = address
    self._tls = tls
    self.channel: grpc.Channel | None = None
    self.context = None
    self.institutions: dict[str, list[str]] = {}

  def __str__(self) -> str:
    return f'site {self.name!r} at {self.address}'

  def connect(self, timeout: float) -> None:
    """Opens the channel and waits for the site's worker to be ready.

    Raises:
      SiteError: Not ready within `timeout` seconds (down, wrong address,
        or a TLS failure such as a certificate the site does not accept).
    """
    options = local.GRPC_CHANNEL_OPTIONS
    if self._tls is None:
      self.channel = grpc.insecure_channel(self.address, options)
    else:
      self.channel = grpc.secure_channel(
        self.address, self._tls.credentials(), options
      )
    ready = grpc.channel_ready_future(self.channel)
    try:
      ready.result(timeout=timeout)
    except grpc.FutureTimeoutError:
      ready.cancel()
      self.close()
      raise SiteError(
        f'{self} did not answer within {timeout:.0f} s: it is down, the '
        'address is wrong, or TLS failed (certificates of another study, a '
        'name the site certificate does not cover, or plaintext against '
        'TLS). Check that run_site.py is running there and its log.'
      ) from None
    # A computation without clients (reading site.json) still needs a
    # CLIENTS cardinality on the worker: one.
    self.context = local.remote_context(
      tff.framework.RemoteExecutorGrpcStub(self.channel),
      1,
      tff.framework.AsyncExecutionContext,
    )

  async def invoke(self, computation, arg, timeout: float):
    """`computation(arg)` on this site, within `timeout` seconds.

    Raises:
      SiteError: The site failed or did not answer in time.
    """
    try:
      return await asyncio.wait_for(
        self.context.invoke(computation, arg), timeout
      )
    except TimeoutError:
      raise SiteError(
        f'{self} did not finish within {timeout:.0f} s (down, or too slow '
        'for --site_timeout). Resume the run with --resume once it is back.'
      ) from None
    except SiteError:
      raise
    except grpc.RpcError as e:  # the site's own error, e.g. a missing shard
      details = (e.details() or '').split('\n')[0]
      raise SiteError(f'{self} failed: {e.code().name}: {details}') from e
    except Exception as e:
      raise SiteError(f'{self} failed: {e}') from e

  async def describe(self, timeout: float) -> dict[str, list[str]]:
    """Reads the site's `site.json` there; returns institution -> shards.

    Raises:
      SiteError: No readable, valid site.json on the site.
    """
    raw = await self.invoke(_read_site_file, None, timeout)
    try:
      content = json.loads(bytes(raw).decode())
      institutions = content['institutions']
      if content.get('format_version') != FORMAT_VERSION or not isinstance(
        institutions, dict
      ):
        raise ValueError(f'format_version {content.get("format_version")!r}')
    except (ValueError, KeyError, TypeError) as e:
      raise SiteError(
        f'{self} must serve a {SITE_FILE} of format {FORMAT_VERSION} (run '
        f'it with run_site.py). Found: {e}.'
      ) from None
    self.institutions = {
      str(k): [str(p) for p in v] for k, v in institutions.items()
    }
    return self.institutions

  def close(self) -> None:
    self.context = None
    if self.channel is not None:
      self.channel.close()
      self.channel = None


class Sites:
  """The study's sites, connected; where each institution's data is.

  Example:

    with Sites({'site_a': 'h1:8443', 'site_b': 'h2:8443'},
               tls=TlsOptions('ca.pem', 'coordinator.pem',
                              'coordinator.key')) as sites:
      sites.site_of['3']       # 'site_b'
      sites.shard_paths('3')   # paths on site_b
  """

  def __init__(
    self,
    addresses: Mapping[str, str],
    *,
    tls: TlsOptions | None,
    allow_plaintext: bool = False,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    site_timeout: float = DEFAULT_SITE_TIMEOUT,
  ):
    """Checks the addresses (nothing is connected until `open`).

    Raises:
      ValueError: No sites, a malformed address, or plaintext to another
        host without `allow_plaintext`.
    """
    if not addresses:
      raise ValueError('sites must name at least one site. Found none.')
    self.connections = {
      name: SiteConnection(
        name, address, tls=tls, allow_plaintext=allow_plaintext
      )
      for name, address in addresses.items()
    }
    self.connect_timeout = connect_timeout
    self.site_timeout = site_timeout
    self.site_of: dict[str, str] = {}
    self._loop: asyncio.AbstractEventLoop | None = None

  def __enter__(self) -> Sites:
    self.open()
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def open(self) -> None:
    """Connects to every site and reads what each serves.

    Raises:
      SiteError: A site is unreachable, serves no valid site.json, or two
        sites claim one institution.
    """
    self._loop = asyncio.new_event_loop()
    try:
      for connection in self.connections.values():
        connection.connect(self.connect_timeout)
      served = self.run(
        [c.describe(self.connect_timeout) for c in self.connections.values()]
      )
    except BaseException:
      self.close()
      raise
    site_of: dict[str, str] = {}
    for name, institutions in zip(self.connections, served, strict=True):
      for institution in institutions:
        if institution in site_of:
          self.close()
          raise SiteError(
            f'institution {institution!r} is served by two sites, '
            f"{site_of[institution]!r} and {name!r}: each institution's "
            'data must be on one site.'
          )
        site_of[institution] = name
      logging.info(
        'Connected to %s: institutions %s.',
        self.connections[name],
        ', '.join(institutions) or 'none',
      )
    self.site_of = site_of

  def run(self, coroutines: Sequence[Any]) -> list[Any]:
    """Runs coroutines concurrently on this object's loop; their results."""

    async def gather():
      return await asyncio.gather(*coroutines)

    return self._loop.run_until_complete(gather())

  @property
  def institutions(self) -> list[str]:
    """Every institution the sites serve, sorted."""
    return sorted(self.site_of)

  def shard_paths(self, institution: str) -> list[str]:
    """The institution's shard paths, relative to its site's folder.

    Raises:
      SiteError: No site serves it.
    """
    site = self.site_of.get(institution)
    if site is None:
      raise SiteError(
        f'institution {institution!r} is served by no site. The sites '
        f'serve {self.institutions}.'
      )
    served = self.connections[site].institutions
    if institution not in served:
      raise SiteError(
        f'institution {institution!r} is routed to {self.connections[site]}, '
        f'which does not serve it (it serves {sorted(served)}).'
      )
    return served[institution]

  def close(self) -> None:
    for connection in self.connections.values():
      connection.close()
    if self._loop is not None:
      self._loop.close()
      self._loop = None


class SitesLearningProcess:
  """A learning process whose clients train on their sites; see the module.

  Wraps a `tff.learning` `LearningProcess` built for the worker runtime
  (`fed_avg.build_fed_avg_process`). `initialize`, `get_model_weights` and
  `set_model_weights` run on the coordinator's local TFF runtime, `next`
  splits the round by site. `next` takes the round's institution ids along
  with their inputs (`takes_client_ids`).
  """

  takes_client_ids = True

  def __init__(self, process, sites: Sites):
    self.process = process
    self.sites = sites
    self.form = tff.backends.native.compile_to_mergeable_comp_form(process.next)
    self.initialize = process.initialize
    self.get_model_weights = process.get_model_weights
    self.set_model_weights = process.set_model_weights

  def next(self, state, client_inputs, client_ids: Sequence[str]):
    """One round: `up_to_merge` on each site with its clients, then merge.

    Args:
      state: The learning state.
      client_inputs: Per client, its shard paths (relative, as
        `Sites.shard_paths` gives them) and data key.
      client_ids: The institution of each input, in order.

    Raises:
      SiteError: An institution no site serves, or a site failed or missed
        its deadline.
    """
    if len(client_ids) != len(client_inputs):
      raise ValueError(
        f'client_ids must name every input. Found {len(client_ids)} ids for '
        f'{len(client_inputs)} inputs.'
      )
    by_site: dict[str, list[Any]] = {}
    for institution, client_input in zip(
      client_ids, client_inputs, strict=True
    ):
      self.sites.shard_paths(institution)  # raises if no site serves it
      by_site.setdefault(self.sites.site_of[institution], []).append(
        client_input
      )
    names = list(by_site)
    partials = self.sites.run(
      [
        self.sites.connections[name].invoke(
          self.form.up_to_merge,
          [state, by_site[name]],
          self.sites.site_timeout,
        )
        for name in names
      ]
    )
    merged = partials[0]
    for partial in partials[1:]:
      merged = self.form.merge(merged, partial)
    # The result is all at SERVER: after_merge needs one slice of the
    # argument (as TFF's mergeable context does), and runs here.
    return self.form.after_merge([state, by_site[names[0]]], merged)
