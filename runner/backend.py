"""Where kernels run: the seam between the run and its kernels.

The run (`runner.run`) knows sessions and results, never processes: it asks a `Backend` what
of its kernels decides a result (part of every cache key and verdict), hands it the sessions
the cache did not answer, and gets each session's results back. The local backend
(`runner.local`: uv envs, fork servers, bubblewrap) is the default; another (a remote Jupyter
server, a kernel gateway, a CI shard's worker) needs no change to the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from runner.beside import Beside
from runner.model import EnvSpec, Session, SnippetResult


class Backend(Protocol):
    """A place that runs sessions. The run calls, in this order:

    - `decides(env)` for each env of the project, before any post is looked up: what of this
      backend's kernels for `env` decides what a session prints (the runner, the lock, the
      kernel's environment; a server's address and kernel name). It is part of each cache key
      and verdict: results made by one backend are never replayed for another that differs;
    - `prepare(sessions)` once, with every session the cache did not answer (build or check
      the envs they need, start servers), and only when there is at least one;
    - `run(session, beside)` for each of those sessions, all at once: the backend bounds how
      many run together. It returns one result per snippet of the session, in order; a
      failure of any kind (an env that cannot be built, a kernel that dies, a deadline) is a
      failed result, never an exception;
    - `close()` once after `prepare`, however the run ends; it returns when every kernel has
      ended and what the backend made for the run is gone.
    """

    def decides(self, env: EnvSpec) -> Mapping[str, Any]: ...

    async def prepare(self, sessions: Sequence[Session]) -> None: ...

    async def run(self, session: Session, beside: Beside) -> tuple[SnippetResult, ...]: ...

    async def close(self) -> None: ...
