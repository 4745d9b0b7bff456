"""featx extract --ray: a job's shards spread over Ray actors, with the output and the exactly-once
guarantee of a single-process run.

The driver (featx.runtime.extract) lists the inputs, prepares OUTDIR and holds its lock exactly
as a single-process run does, then puts the input listing into Ray's object store once and
starts ``actors`` ShardWorker actors, each holding one featx.Runner and running runs of whole
shards through the same C++ pipeline (ShardExtraction). An actor writes a shard's files into
OUTDIR atomically and streams its manifest entry back; only the driver writes the manifest.
OUTDIR must therefore be one folder visible to every node (a shared file system).

Failures: an actor process that dies mid-shard (SIGKILL, a lost node) leaves at most a temporary
file (removed when the job ends); Ray restarts the actor and the driver hands the shard, and
those queued behind it in that actor's run, to other actors (the shard up to MAX_ATTEMPTS times
in all). A shard rewritten after its files were already renamed into place gets the same bytes,
since a shard's content depends only on its inputs. A driver that dies takes its actors with
it; the same command resumes from the manifest. An error in a shard that is not the machine's
(a full disk) stops the job as it stops a single-process run.

Workers import only the runtime layer and Ray: never torch.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from featx.runtime.errors import FeatxError, missing_extra
from featx.runtime.inputs import Inputs
from featx.runtime.runner import Runner
from featx.runtime.shard_extraction import ShardExtraction
from featx.runtime.shards import ShardWriter

LOCAL = "local"
"""The --ray address that starts a Ray instance on this machine."""
MAX_ATTEMPTS = 3
"""How many actors may die running one shard before the job gives up on it."""
WAIT_SECONDS = 0.1
"""How long the driver waits for a shard at a time, so that Ctrl-C is heard."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a job runs: ``address`` of a running cluster ("auto", "HOST:PORT",
    "ray://HOST:PORT") or LOCAL; ``actors`` (None: as many as the cluster's CPUs hold, by
    ``cpus_per_actor``), each reserving ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs."""

    address: str = LOCAL
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def check(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise FeatxError(f"--ray-actors must be >= 1, got {self.actors}")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise FeatxError(
                f"--ray-cpus-per-actor must be > 0 and --ray-gpus-per-actor >= 0, got "
                f"{self.cpus_per_actor} and {self.gpus_per_actor}"
            )


@dataclass(frozen=True)
class ShardJob:
    """What every actor of a job needs to run any of its shards; ``cwd`` is the driver's working
    folder, where relative input paths are resolved on every node (a shared file system)."""

    cwd: str
    model: str
    out: str
    fmt: str
    dtype: str
    shard_size: int
    batch_size: int
    workers: int
    threads: int
    device: str


class ShardWorker:
    """A Ray actor's state: one Runner, the job's inputs, and the writer of its shards."""

    def __init__(self, job: ShardJob):
        os.chdir(job.cwd)
        self.job = job
        self.inputs: Inputs | None = None
        self.runner = Runner(job.model, device=job.device, threads=job.threads, spinning=False)
        self.writer = ShardWriter(Path(job.out), job.fmt, job.dtype)

    def pid(self) -> int:
        return os.getpid()

    def extract_shards(
        self, indices: list[int], shared_inputs: list[Any]
    ) -> Iterator[dict[str, Any]]:
        """Extracts shards ``indices`` into the output folder through one pipeline (no drain
        between them), yielding each one's manifest entry once its files are in place.
        ``shared_inputs`` holds the object-store reference of the job's listing, fetched on the
        first call (also after a restart); the driver holds it for the whole job."""
        if self.inputs is None:
            import ray

            self.inputs = ray.get(shared_inputs[0])
        extraction = ShardExtraction(
            self.runner, self.writer, self.inputs, self.job.shard_size, indices
        )
        yield from extraction.run(self.job.batch_size, self.job.workers)


def import_ray() -> Any:
    """The ray module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ModuleNotFoundError as err:
        extra = missing_extra(err, "--ray")
        if extra is None:
            raise
        raise extra from err
    return ray


def run_on_ray(
    options: RayOptions,
    job: ShardJob,
    inputs: Inputs,
    pending: list[int],
    on_shard: Callable[[dict[str, Any]], None],
    advance: Callable[[int], None],
    console: Console,
) -> None:
    """Extracts shards ``pending`` on Ray actors; ``on_shard`` records each committed shard's
    entry (in the order they finish), ``advance`` counts its inputs, ``console`` hears of
    retries."""
    options.check()
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        address = None if options.address == LOCAL else options.address
        try:
            ray.init(address=address, include_dashboard=False, logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise FeatxError(
                f"cannot reach a Ray cluster at {options.address!r} ({err}); start one (`ray "
                "start --head`) or pass --ray without an address for a local instance. A "
                "cluster with token authentication (`ray start` turns it on from Ray 2.59) "
                "also needs RAY_AUTH_MODE=token here and its token (~/.ray/auth_token or "
                "RAY_AUTH_TOKEN)."
            ) from err
    actors: list[Any] = []
    try:
        fit = _actors_that_fit(ray, options)
        count = options.actors or fit
        if count > fit:
            console.print(
                f"the Ray cluster holds {fit} of the {count} actors asked for now; the others "
                "start when the cluster has room for them (nodes joining, other work ending)"
            )
        worker = ray.remote(
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor,
            max_restarts=-1,
            max_task_retries=0,
        )(ShardWorker)
        shared_inputs = ray.put(inputs)
        actors = [worker.remote(job) for _ in range(min(count, len(pending)))]
        _Scheduler(ray, actors, [shared_inputs], pending, on_shard, advance, console).run()
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _actors_that_fit(ray: Any, options: RayOptions) -> int:
    resources = ray.cluster_resources()
    fit = int(resources.get("CPU", 1) // options.cpus_per_actor)
    if options.gpus_per_actor:
        fit = min(fit, int(resources.get("GPU", 0) // options.gpus_per_actor))
    if fit < 1:
        raise FeatxError(
            f"the Ray cluster has {resources.get('CPU', 0)} CPUs and {resources.get('GPU', 0)} "
            f"GPUs: not enough for one actor of {options.cpus_per_actor} CPUs and "
            f"{options.gpus_per_actor} GPUs; lower --ray-cpus-per-actor / --ray-gpus-per-actor."
        )
    return fit


@dataclass
class _Run:
    """One extract_shards call in flight: its actor and its shards not reported yet, in order."""

    actor: int
    shards: deque[int]


class _Scheduler:
    """Keeps one run of shards in flight per actor that has started (an actor the cluster has
    no room for yet waits without work). An idle actor takes ceil(queued / actors) shards
    (guided self-scheduling): they go through one pipeline, so few runs start and drain, while
    the last runs are short enough to end together. When an actor dies, its run's unreported
    shards go back to the queue and the first of them, the one it was running, counts the
    death."""

    def __init__(
        self,
        ray: Any,
        actors: list[Any],
        shared_inputs: list[Any],
        pending: list[int],
        on_shard: Callable[[dict[str, Any]], None],
        advance: Callable[[int], None],
        console: Console,
    ):
        self.ray = ray
        self.console = console
        self.idle: deque[int] = deque()
        self.starting = {actor.pid.remote(): index for index, actor in enumerate(actors)}
        self.start_deaths: dict[int, int] = {}
        self.actors = actors
        self.shared_inputs = shared_inputs
        self.queue = deque(pending)
        self.on_shard = on_shard
        self.advance = advance
        self.died_on: dict[int, set[int]] = {}
        self.running: dict[Any, _Run] = {}

    def run(self) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        while self.queue or self.running:
            self._assign()
            waiting = [*self.running, *self.starting]
            ready, _ = self.ray.wait(waiting, num_returns=1, timeout=WAIT_SECONDS)
            for ref in ready:
                if ref in self.starting:
                    self._started(ref)
                    continue
                run = self.running[ref]
                try:
                    entry = self.ray.get(next(ref))
                except StopIteration:
                    self._end(ref)
                except RayActorError as err:
                    self._end(ref)
                    self._died(run, err)
                except RayTaskError as err:
                    if isinstance(err.cause, FeatxError):
                        raise err.cause from None
                    raise
                else:
                    run.shards.popleft()
                    self.on_shard(entry)
                    self.advance(entry["inputs"])

    def _started(self, ready: Any) -> None:
        """An actor answered its first call: it has its Runner and takes work from now on. One
        whose process died while starting is asked again (Ray restarts it); one whose
        constructor failed, or that died starting MAX_ATTEMPTS times, stops the job."""
        from ray.exceptions import RayActorError

        actor = self.starting.pop(ready)
        try:
            self.ray.get(ready)
        except RayActorError as err:
            self.start_deaths[actor] = self.start_deaths.get(actor, 0) + 1
            if not err.actor_init_failed and self.start_deaths[actor] < MAX_ATTEMPTS:
                self.starting[self.actors[actor].pid.remote()] = actor
                return
            raise FeatxError(
                f"a Ray actor could not start ({_last_line(err)}); check that featx "
                "and its runtime are installed on every node and that the model and inputs are "
                "at the same path there (a shared file system)."
            ) from err
        self.idle.append(actor)

    def _end(self, generator: Any) -> None:
        self.idle.append(self.running.pop(generator).actor)

    def _died(self, run: _Run, err: Exception) -> None:
        if not run.shards:
            return  # it died after its last shard was reported: nothing is lost
        shard = run.shards[0]
        died_on = self.died_on.setdefault(shard, set())
        died_on.add(run.actor)
        if len(died_on) >= MAX_ATTEMPTS:
            raise FeatxError(
                f"shard {shard} failed {len(died_on)} times, each time because the worker "
                f"process running it died (last: {type(err).__name__}: {err}); the finished "
                "shards are kept: look for what kills the workers (memory, a damaged input), "
                "then run the same command again to resume."
            )
        self.console.print(
            f"a worker died running shard {shard} ({type(err).__name__}); its shard goes to "
            "another worker"
        )
        self.queue.extendleft(reversed(run.shards))

    def _may_run(self, shard: int, actor: int) -> bool:
        """A shard goes to an actor it has died on only when it has died on every actor."""
        died_on = self.died_on.get(shard, set())
        return actor not in died_on or len(died_on) == len(self.actors)

    def _assign(self) -> None:
        for actor in list(self.idle):
            size = -(-len(self.queue) // len(self.actors))
            shards = deque([s for s in self.queue if self._may_run(s, actor)][:size])
            if not shards:
                continue
            self.idle.remove(actor)
            for shard in shards:
                self.queue.remove(shard)
            method = self.actors[actor].extract_shards.options(num_returns="streaming")
            generator = method.remote(list(shards), self.shared_inputs)
            self.running[generator] = _Run(actor, shards)


def _last_line(err: Exception) -> str:
    """The line of a Ray error that says what went wrong: its last (Ray puts the remote
    traceback, colour codes included, before it)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines()]
    return next((line for line in reversed(lines) if line), type(err).__name__)
